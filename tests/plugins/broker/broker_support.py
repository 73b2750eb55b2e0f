"""Helpers of the broker tests: a driver plugin that sends orders at chosen moments and
records what the broker says, and a replay of the bundled sample through the real plugins
(replay_feed -> book -> paper_broker, one lane, replay clock)."""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import (
    BookTop,
    Fill,
    OrderAccepted,
    OrderCancel,
    OrderRequest,
    OrderUpdate,
    Position,
    Trade,
)


def runtime_dir() -> str:
    """A runtime dir of its own (a kernel locks its dir; a test may run several kernels),
    with a short path (ipc paths are limited to 107 bytes); removed at exit."""
    path = tempfile.mkdtemp(prefix="tbb", dir="/tmp")
    atexit.register(shutil.rmtree, path, True)
    return path


class Driver:
    """Test plugin: ``on_book(driver, book)`` / ``on_trade(driver, trade)`` run on every
    market message; orders go out by a timer due now, which the replay clock fires after
    every handler of this message and before the next one (so the broker has seen this
    book). ``log`` keeps every market message and broker output in bus order."""

    def __init__(
        self,
        on_book: Callable[[Driver, BookTop], None] | None = None,
        on_trade: Callable[[Driver, Trade], None] | None = None,
    ) -> None:
        self.on_book = on_book
        self.on_trade = on_trade
        self.log: list[Any] = []
        self.reports: list[OrderUpdate] = []
        self.fills: list[Fill] = []
        self.positions: list[Position] = []
        self.sent: list[tuple[int, OrderRequest]] = []
        """(book update id when sent, order)."""
        self.last_book: BookTop | None = None
        self._ids = itertools.count(1)
        self.ctx: PluginContext | None = None

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> Driver:
        self.ctx = ctx
        ctx.subscribe("md.book.", self._book)
        ctx.subscribe("md.trade.", self._trade)
        ctx.subscribe("exec.report", self._out(self.reports))
        ctx.subscribe("exec.fill", self._out(self.fills))
        ctx.subscribe("pos.", self._out(self.positions))
        return self

    def _out(self, into: list[Any]) -> Callable[[Any], None]:
        def keep(msg: Any) -> None:
            into.append(msg)
            self.log.append(msg)

        return keep

    def _book(self, book: BookTop) -> None:
        self.last_book = book
        self.log.append(book)
        if self.on_book is not None:
            self.on_book(self, book)

    def _trade(self, trade: Trade) -> None:
        self.log.append(trade)
        if self.on_trade is not None:
            self.on_trade(self, trade)

    def now(self) -> int:
        assert self.ctx is not None
        return self.ctx.clock.now_ns()

    def order(
        self, side: str, qty: int, px: int = 0, *, order_type: str = "", tif: str = "GTC",
        expire_at_ns: int = 0, replaces: str = "", cid: str | None = None,
        strategy: str = "s1", symbol: str = "BTCUSDT", now: bool = False,
    ) -> OrderRequest:  # fmt: skip
        """Send an order (as risk would: OrderAccepted) right after the current message, or
        at once (``now``: from a test thread through ``lane.call``)."""
        req = OrderRequest(
            f"o{next(self._ids)}" if cid is None else cid, strategy, symbol, side,  # type: ignore[arg-type]
            order_type or ("limit" if px else "market"), tif, qty, px,  # type: ignore[arg-type]
            expire_at_ns, False, replaces, self.last_book.ts_recv_ns if self.last_book else 0,
            self.now(),
        )  # fmt: skip
        self.sent.append((self.last_book.last_update_id if self.last_book else -1, req))
        self._send("ord.accepted", OrderAccepted(req, self.now()), now)
        return req

    def cancel(
        self, cid: str, strategy: str = "s1", symbol: str = "BTCUSDT", now: bool = False
    ) -> None:
        self._send("ord.cancel", OrderCancel(cid, strategy, symbol, self.now()), now)

    def _send(self, topic: str, msg: Any, now: bool) -> None:
        assert self.ctx is not None
        if now:
            self.ctx.publish(topic, msg)
        else:
            self.ctx.call_at(self.now(), self.ctx.publish, topic, msg)

    def updates(self, cid: str, strategy: str | None = None) -> list[OrderUpdate]:
        return [u for u in self.reports if u.client_order_id == cid
                and strategy in (None, u.strategy_id)]  # fmt: skip

    def fills_of(self, cid: str) -> list[Fill]:
        return [f for f in self.fills if f.client_order_id == cid]


def replay(start_kernel: Callable[..., Any], driver: Driver, depth: int = 20,
           **broker: Any) -> Any:  # fmt: skip
    """Play the bundled sample through replay_feed -> book -> paper_broker (+ driver) in one
    lane on the replay clock; returns the stopped kernel."""
    k = start_kernel(
        {
            "kernel": {"clock": "replay", "runtime_dir": runtime_dir()},
            "lanes": {"hot": {}},
            "plugins": {  # the driver first: it logs each market message before the
                # broker's answer to it (subscribers run in set-up order)
                "driver": {"lane": "hot"},
                "replay_feed": {"lane": "hot", "exit_at_end": False, "progress": False},
                "book": {"lane": "hot", "depth": depth},
                "paper_broker": {"lane": "hot", **broker},
            },
        },
        extra={"driver": driver},
    )
    rep = k.contexts["replay_feed"].component
    end = time.monotonic() + 120
    while not rep.done:
        assert time.monotonic() < end, "the replay did not finish"
        time.sleep(0.02)
    assert k.stop()
    return k


def packed(levels: list[tuple[int, int]], depth: int = 5) -> bytes:
    """Levels as BookTop carries them: <i8 (price, qty) pairs, zero padded to ``depth``."""
    flat = [v for lv in levels for v in lv] + [0, 0] * (depth - len(levels))
    return np.array(flat, "<i8").tobytes()


class Venue:
    """The broker (+ a Driver) in a kernel on the replay clock, fed synthetic books and
    trades from the test thread; every call returns once the lane has handled it."""

    SYMBOL = "BTCUSDT"

    def __init__(self, start_kernel: Callable[..., Any], depth: int = 5, **cfg: Any) -> None:
        self.driver = Driver()
        self.k = start_kernel(
            {
                "kernel": {"clock": "replay", "runtime_dir": runtime_dir()},
                "plugins": {"paper_broker": cfg, "driver": {}},
            },
            extra={"driver": self.driver},
        )
        self.lane = self.k.lanes["main"]
        self.broker = self.k.contexts["paper_broker"].component
        self.depth = depth
        self.ts = 1_700_000_000_000_000_000
        self.uid = 100

    def _push(self, topic: str, msg: Any) -> None:
        def run() -> None:
            self.k.clock.advance(self.ts)
            self.lane.publish(topic, msg)

        self.lane.call(run)

    def advance(self, ms: float) -> None:
        """Move the clock (timers due fire)."""
        self.ts += round(ms * 1e6)
        self.lane.call(self.k.clock.advance, self.ts)

    def book(
        self, bids: list[tuple[int, int]], asks: list[tuple[int, int]], ms: float = 1,
        valid: bool = True,
    ) -> BookTop:  # fmt: skip
        self.ts += round(ms * 1e6)
        self.uid += 1
        b0, a0 = (bids or [(0, 0)])[0], (asks or [(0, 0)])[0]
        bb, aa = packed(bids, self.depth), packed(asks, self.depth)
        top = BookTop(self.SYMBOL, self.uid, valid, *b0, *a0, bb, aa, self.ts, self.ts)
        self._push(f"md.book.{self.SYMBOL}", top)
        return top

    def trade(self, px: int, qty: int, sell: bool, ms: float = 1) -> Trade:
        """A public trade; ``sell``: the aggressor sold (hit the bids)."""
        self.ts += round(ms * 1e6)
        self.uid += 1
        t = Trade(self.SYMBOL, self.uid, px, qty, sell, self.ts, self.ts)
        self._push(f"md.trade.{self.SYMBOL}", t)
        return t

    def order(self, side: str, qty: int, px: int = 0, **kw: Any) -> OrderRequest:
        return self.lane.call(lambda: self.driver.order(side, qty, px, now=True, **kw))

    def cancel(self, cid: str, **kw: Any) -> None:
        self.lane.call(lambda: self.driver.cancel(cid, now=True, **kw))

    def status(self, cid: str, strategy: str = "s1") -> str:
        ups = self.driver.updates(cid, strategy)
        return ups[-1].status if ups else "none"
