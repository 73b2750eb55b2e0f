"""A strategy instance in a real in-process kernel on the replay clock, driven message by
message from the test: books, feature vectors, fills, clock steps; everything the strategy
publishes on ``sig.`` and ``ord.`` is recorded in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import SCALE, BookTop, FeatureVector, Fill, OrderRequest, OrderUpdate

T0 = 1_723_000_000_000_000_000  # ns, August 2024
BID = 60_000 * SCALE
ASK = BID + SCALE // 100
NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}
"""Bus settings for several kernels in one test (no ipc endpoints to collide on)."""


class out_collector:
    """Test plugin: every sig./ord. message, in order."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        ctx.subscribe("sig.", seen.append)
        ctx.subscribe("ord.", seen.append)
        return seen


def fv(imb: float, mom: float = 0.0, vol: float = 0.0, *, uid: int = 1, t: int = T0,
       symbol: str = "BTCUSDT", **kw: float) -> FeatureVector:  # fmt: skip
    """A feature vector with the given imbalance/momentum/volatility (others neutral)."""
    f: dict[str, Any] = dict(
        symbol=symbol, timestamp_ns=t, mid=(BID + ASK) // 2, volatility=vol, momentum=mom,
        imbalance=imb, weighted_imbalance=imb, spread_bps=0.0017, depth_ratio=1.0,
        bid_pressure=0.5, ask_pressure=0.5, vwap=BID, trade_flow=0.0, toxicity=0.0,
        price_acceleration=0.0, volume_surge=1.0, book_update_id=uid, ts_recv_ns=t,
    )  # fmt: skip
    f.update(kw)
    return FeatureVector(**f)


def book(uid: int = 1, t: int = T0, bid: int = BID, ask: int = ASK, valid: bool = True,
         symbol: str = "BTCUSDT") -> BookTop:  # fmt: skip
    return BookTop(symbol, uid, valid, bid, SCALE, ask, SCALE, b"", b"", t, t)


class Harness:
    """Drive one strategy instance ``s`` (plugin ``plugin``) with ``settings``."""

    def __init__(self, start_kernel: Callable[..., Any], plugin: Any, **settings: Any) -> None:
        settings.setdefault("symbols", ["BTCUSDT"])
        self.k = start_kernel(
            {
                "kernel": {"clock": "replay"},
                "bus": NO_ENDPOINTS,
                "plugins": {"s": {"plugin": "strat", **settings}, "out": {}},
            },
            {"strat": plugin, "out": out_collector},
        )
        self.lane = self.k.lanes["main"]
        self.s = self.k.contexts["s"].component
        self.seen: list[Any] = self.k.contexts["out"].component
        self.t = T0
        self.advance(T0)

    def advance(self, t: int) -> None:
        """Move the replay clock to ``t`` (timers due by then fire)."""
        self.t = t
        self.lane.call(self.k.clock.advance, t)

    def after_ms(self, ms: float) -> None:
        self.advance(self.t + int(ms * 1_000_000))

    def pub(self, topic: str, msg: Any) -> None:
        self.lane.call(self.lane.publish, topic, msg)

    def book(self, uid: int = 1, **kw: Any) -> None:
        kw.setdefault("t", self.t)
        b = book(uid, **kw)
        self.pub(f"md.book.{b.symbol}", b)

    def feat(self, imb: float, mom: float = 0.0, vol: float = 0.0, uid: int = 1,
             **kw: Any) -> None:  # fmt: skip
        kw.setdefault("t", self.t)
        v = fv(imb, mom, vol, uid=uid, **kw)
        self.pub(f"feat.{v.symbol}", v)

    def tick(self, imb: float, mom: float = 0.0, vol: float = 0.0, uid: int = 1,
             **kw: Any) -> None:  # fmt: skip
        """A book update and the feature vector computed on it."""
        book_kw = {k: kw.pop(k) for k in ("bid", "ask") if k in kw}
        for k in ("symbol", "t"):
            if k in kw:
                book_kw[k] = kw[k]
        self.book(uid, **book_kw)
        self.feat(imb, mom, vol, uid, **kw)

    def fill(self, req: OrderRequest, qty: int | None = None) -> None:
        """The broker filled (part of) ``req`` at its price: exec.report + exec.fill."""
        q = req.qty if qty is None else qty
        px = req.px or BID
        status = "filled" if q == req.qty else "partially_filled"
        self.pub("exec.report", OrderUpdate(
            req.client_order_id, req.strategy_id, req.symbol, req.side, req.order_type,
            status, req.px, req.qty, q, req.qty - q, px, "", self.t, self.t,
        ))  # fmt: skip
        self.pub("exec.fill", Fill(
            req.client_order_id, req.strategy_id, req.symbol, req.side, 1, px, q, 0, "maker",
            self.t, self.t, self.t,
        ))  # fmt: skip

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind)]

    def clear(self) -> None:
        self.lane.call(self.seen.clear)

    def errors(self) -> int:
        return self.lane.stats.handler_errors
