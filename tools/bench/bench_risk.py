"""Risk benchmark: the pre-trade check per order, and the risk-gateway round trip (not a test).

    python -m tickbus.tools.bench.bench_risk [--capture FILE] [--runs R] [--rtt N] [--json FILE]

Input: the real ``md.book`` messages of a capture (default: the bundled 3-minute BTCUSDT
sample), made once by replaying it through ``replay_feed -> book``. Every figure is a
per-call ``perf_counter_ns`` sample; p50/p90/p99 over all samples of all runs.

1. **check per order**: for each valid book, one order request built beforehand (seeded: a
   limit order a few ticks from the touch, either side, 0.001-0.05 BTC; 5 % market orders, and
   ~3 % bad ones - off the tick grid, oversized, duplicate id - so several rules fire). The
   book is applied first (timed apart: risk's cost on the market-data path); then the order
   is checked and, if it passes, counted as working. A simulated broker (untimed) fills or
   cancels the oldest order once 50 work, so projections always have working orders to
   count. Rows:

   * ``tickbus check``: ``RiskEngine.check`` + ``accept`` (the rules and the state update);
   * ``tickbus on_request``: the plugin's handler, which adds the clock read, the
     ``OrderAccepted``/``OrderRejected`` message and the publish call (a no-op here);
   * ``baseline``: the same rules, written the common careful way in plain Python: a chain
     of rule methods over dict state (exact ints, working quantity per side kept per symbol,
     gross exposure summed over the symbols per order, a float token bucket). Both see the
     same orders interleaved (order alternating) and must agree on every verdict's rule.

2. **gateway round trip over ipc**: the reference gateway (``tools/risk_gateway.py``, Python)
   in another process; the plugin's ``GatewayClient`` on an asyncio loop asks about one order
   at a time, timed from ``ask`` to the verdict callback. Floor: a bare blocking pyzmq DEALER
   send + recv to the same gateway. An OCaml gateway would answer faster than the Python
   one; the client's share is the difference to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import zmq

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.clock import ReplayClock
from tickbus.kernel.config import parse_config
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.risk.filters import Filters, load
from tickbus.plugins.risk.gateway import GatewayClient
from tickbus.plugins.risk.plugin import Config, Risk
from tickbus.plugins.risk.rules import Limits, RiskEngine
from tickbus.schemas import (
    SCALE,
    BookTop,
    Fill,
    OrderRequest,
    OrderUpdate,
    RiskCheckReply,
    RiskCheckRequest,
)

from .bench_feed import summary

NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}
WORKING = 50
clock = time.perf_counter_ns


def books_of(capture: Path) -> list[BookTop]:
    """The valid ``md.book`` messages of a replay through the real plugins."""
    books: list[BookTop] = []

    class grab:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            ctx.subscribe("md.book.", books.append)

    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        raw = {
            "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning"},
            "bus": NO_ENDPOINTS,
            "plugins": {
                "replay_feed": {"files": [str(capture)], "progress": False},
                "book": {"depth": 5}, "grab": {},
            },
        }  # fmt: skip
        rc = Kernel(parse_config(raw), extra_plugins={"grab": grab}).run(handle_signals=False)
    if rc:
        raise SystemExit(f"the replay of {capture.name} failed (exit status {rc})")
    return [b for b in books if b.valid]


def orders_for(books: list[BookTop], seed: int) -> list[OrderRequest]:
    """One order per book (seeded), as described in the module docstring."""
    rng = random.Random(seed)
    tick = 10**6  # 0.01
    out: list[OrderRequest] = []
    for i, b in enumerate(books):
        side = rng.choice(("buy", "sell"))
        qty = rng.randint(1, 50) * 100_000  # 0.001 .. 0.05
        kind = "market" if rng.random() < 0.05 else "limit"
        px = 0
        if kind == "limit":
            k = rng.randint(0, 20) * tick
            px = b.bid_px - k if side == "buy" else b.ask_px + k
        cid = f"bench-{i}"
        bad = rng.random()
        if bad < 0.01 and kind == "limit":
            px += 1  # off the tick grid
        elif bad < 0.02:
            qty = SCALE  # over max_order_size
        elif bad < 0.03 and out:
            cid = out[-1].client_order_id  # duplicate
        out.append(OrderRequest(cid, "bench", b.symbol, side, kind, "GTC", qty, px, 0, False, "",  # type: ignore[arg-type]
                                b.ts_recv_ns, b.ts_exchange_ns))  # fmt: skip
    return out


def limits() -> Limits:
    return Limits(
        max_position=10 * SCALE, max_order=SCALE // 2, max_notional=10**6 * SCALE * SCALE,
        rate=1e6, burst=10**6, band_cbps=10_000, dedup_window=1_000_000,
    )  # fmt: skip


# ----------------------------------------------------------------------------- baseline


class BaselineRisk:
    """The same rules as a chain of methods over plain dicts (see the module docstring)."""

    def __init__(self, lim: Limits, filters: dict[str, Filters]) -> None:
        self.lim = lim
        self.filters = filters
        self.pos: dict[str, int] = {}
        self.working: dict[tuple[str, str], list[Any]] = {}
        self.open_qty: dict[tuple[str, str], int] = {}  # (symbol, side) -> leaves
        self.mid: dict[str, int] = {}
        self.seen: set[tuple[str, str]] = set()
        self.tokens = float(lim.burst)
        self.last = 0.0
        self.kill = False
        self.rules = [
            self.r_qty, self.r_symbol, self.r_dup, self.r_price, self.r_kill, self.r_tick,
            self.r_lot, self.r_order, self.r_market, self.r_band, self.r_min_notional,
            self.r_position, self.r_notional, self.r_rate,
        ]  # fmt: skip

    def on_book(self, b: BookTop) -> None:
        if b.valid:
            self.mid[b.symbol] = (b.bid_px + b.ask_px) // 2
        else:
            self.mid.pop(b.symbol, None)

    def check(self, o: OrderRequest, now_ns: int) -> str | None:
        for rule in self.rules:
            broken = rule(o, now_ns)
            if broken:
                return broken
        self.working[(o.strategy_id, o.client_order_id)] = [o, o.qty]
        key = (o.symbol, o.side)
        self.open_qty[key] = self.open_qty.get(key, 0) + o.qty
        return None

    def r_qty(self, o: OrderRequest, now: int) -> str | None:
        return "bad_qty" if o.qty <= 0 else None

    def r_symbol(self, o: OrderRequest, now: int) -> str | None:
        return None if o.symbol in self.filters else "unknown_symbol"

    def r_dup(self, o: OrderRequest, now: int) -> str | None:
        key = (o.strategy_id, o.client_order_id)
        if key in self.seen:
            return "duplicate_id"
        self.seen.add(key)
        return None

    def r_price(self, o: OrderRequest, now: int) -> str | None:
        return "bad_price" if o.order_type != "market" and o.px <= 0 else None

    def r_kill(self, o: OrderRequest, now: int) -> str | None:
        return "kill_switch" if self.kill else None

    def r_tick(self, o: OrderRequest, now: int) -> str | None:
        f = self.filters[o.symbol]
        if o.order_type == "market":
            return None
        if o.px % f.tick:
            return "tick_size"
        return "price_filter" if o.px < f.min_px or (f.max_px and o.px > f.max_px) else None

    def r_lot(self, o: OrderRequest, now: int) -> str | None:
        f = self.filters[o.symbol]
        bad = o.qty % f.step or o.qty < f.min_qty or (f.max_qty and o.qty > f.max_qty)
        return "lot_size" if bad else None

    def r_order(self, o: OrderRequest, now: int) -> str | None:
        return "max_order_size" if o.qty > self.lim.max_order else None

    def r_market(self, o: OrderRequest, now: int) -> str | None:
        return None if o.symbol in self.mid else "no_market"

    def r_band(self, o: OrderRequest, now: int) -> str | None:
        if o.order_type == "market" or not self.lim.band_cbps:
            return None
        mid = self.mid[o.symbol]
        return "price_band" if abs(o.px - mid) * 1_000_000 > self.lim.band_cbps * mid else None

    def r_min_notional(self, o: OrderRequest, now: int) -> str | None:
        px = self.mid[o.symbol] if o.order_type == "market" else o.px
        return "min_notional" if px * o.qty < self.filters[o.symbol].min_notional else None

    def _projected(self, symbol: str, o: OrderRequest | None) -> tuple[int, int]:
        pos = self.pos.get(symbol, 0)
        buys = self.open_qty.get((symbol, "buy"), 0)
        sells = self.open_qty.get((symbol, "sell"), 0)
        if o is not None and o.symbol == symbol:
            if o.side == "buy":
                buys += o.qty
            else:
                sells += o.qty
        return pos + buys, pos - sells

    def r_position(self, o: OrderRequest, now: int) -> str | None:
        long_, short = self._projected(o.symbol, o)
        over = long_ > self.lim.max_position if o.side == "buy" else -short > self.lim.max_position
        return "max_position" if over else None

    def r_notional(self, o: OrderRequest, now: int) -> str | None:
        gross = 0
        for symbol, mid in self.mid.items():
            long_, short = self._projected(symbol, o)
            gross += max(abs(long_), abs(short)) * mid
        return "max_notional" if gross > self.lim.max_notional else None

    def r_rate(self, o: OrderRequest, now: int) -> str | None:
        t = now / 1e9
        self.tokens = min(float(self.lim.burst), self.tokens + (t - self.last) * self.lim.rate)
        self.last = t
        if self.tokens < 1.0:
            return "rate_limit"
        self.tokens -= 1.0
        return None

    def finish(self, o: OrderRequest, filled: bool) -> None:
        w = self.working.pop((o.strategy_id, o.client_order_id), None)
        if w is None:
            return
        self.open_qty[(o.symbol, o.side)] -= w[1]
        if filled:
            self.pos[o.symbol] = self.pos.get(o.symbol, 0) + (w[1] if o.side == "buy" else -w[1])


# ----------------------------------------------------------------------------- 1. check


def _finish_tickbus(e: RiskEngine, o: OrderRequest, filled: bool, n: int) -> None:
    """The simulated broker's answer (untimed): a full fill or a cancel."""
    if filled:
        e.on_fill(Fill(o.client_order_id, o.strategy_id, o.symbol, o.side, n, o.px or 1, o.qty,
                       0, "taker", 0, 0, 0))  # fmt: skip
    status = "filled" if filled else "canceled"
    e.on_update(OrderUpdate(o.client_order_id, o.strategy_id, o.symbol, o.side, o.order_type,
                            status, o.px, o.qty, o.qty if filled else 0, 0, 0, "", 0, 0))  # type: ignore[arg-type]  # fmt: skip


def bench_check(books: list[BookTop], runs: int) -> dict[str, Any]:
    table = load("spot", None, {}, "bench")
    t_check: list[float] = []
    t_handler: list[float] = []
    t_base: list[float] = []
    t_book: list[float] = []
    t_book_base: list[float] = []
    verdicts: dict[str, int] = {}
    for run in range(runs):
        orders = orders_for(books, seed=run)
        engine = RiskEngine(limits(), table)
        base = BaselineRisk(limits(), table)
        # the plugin's handler on a stand-in context (no bus: publish is a no-op)
        rclock = ReplayClock()
        ctx = SimpleNamespace(
            name="risk", log=logging.getLogger("bench"), clock=rclock,
            publish=lambda topic, msg: None, resolve_path=Path,
        )  # fmt: skip
        risk = Risk(ctx, Config(max_position_size=10.0, max_orders_per_second=1e6,  # type: ignore[arg-type]
                                burst=10**6, max_notional_exposure=1e6, max_rejects=0))  # fmt: skip
        q_t: deque[OrderRequest] = deque()
        q_b: deque[OrderRequest] = deque()
        q_h: deque[OrderRequest] = deque()
        rng = random.Random(run)
        for i, (b, o) in enumerate(zip(books, orders, strict=True)):
            now = b.ts_exchange_ns
            rclock.advance(now)
            t0 = clock()
            engine.on_book(b)
            t1 = clock()
            base.on_book(b)
            t2 = clock()
            risk.engine.on_book(b)
            t_book.append((t1 - t0) / 1e3)
            t_book_base.append((t2 - t1) / 1e3)
            first_tickbus = i % 2 == 0  # alternate who goes first (caches, branch history)
            for who in ("t", "b") if first_tickbus else ("b", "t"):
                if who == "t":
                    t0 = clock()
                    v = engine.check(o, now)
                    if v is None:
                        engine.accept(o)
                    t_check.append((clock() - t0) / 1e3)
                else:
                    t0 = clock()
                    vb = base.check(o, now)
                    t_base.append((clock() - t0) / 1e3)
            if (v[0] if v else None) != vb:
                raise SystemExit(f"verdicts differ on order {i}: tickbus {v}, baseline {vb}")
            verdicts[vb or "accepted"] = verdicts.get(vb or "accepted", 0) + 1
            t0 = clock()
            risk.on_request(o)
            t_handler.append((clock() - t0) / 1e3)
            if v is None:
                q_t.append(o)
                q_b.append(o)
                q_h.append(o)
            if len(q_t) > WORKING:
                filled = rng.random() < 0.5
                _finish_tickbus(engine, q_t.popleft(), filled, i)
                base.finish(q_b.popleft(), filled)
                _finish_tickbus(risk.engine, q_h.popleft(), filled, i)
    timer = [0.0] * 10_000
    for k in range(len(timer)):
        t0 = clock()
        timer[k] = (clock() - t0) / 1e3
    return {
        "orders": len(t_check),
        "verdicts": verdicts,
        "tickbus check": summary(t_check),
        "tickbus on_request": summary(t_handler),
        "baseline": summary(t_base),
        "md.book (risk's cost per book)": summary(t_book),
        "md.book baseline": summary(t_book_base),
        "timer floor": summary(timer),
    }


# ----------------------------------------------------------------------------- 2. gateway


def bench_gateway(n: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        ep = f"ipc://{rt}/gw"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickbus.tools.risk_gateway", "--endpoint", ep],
            stderr=subprocess.PIPE, text=True, cwd=root,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            if not line.startswith("risk-gateway: listening"):
                raise SystemExit(f"the reference gateway did not start: {line}")
            order = OrderRequest("g-1", "bench", "BTCUSDT", "buy", "limit", "GTC", SCALE // 100,
                                 60_000 * SCALE, 0, False, "", 0, 0)  # fmt: skip
            return {
                "GatewayClient ask -> verdict": summary(_client_rtt(ep, order, n)),
                "bare pyzmq DEALER send+recv (floor)": summary(_bare_rtt(ep, order, n)),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def _client_rtt(ep: str, order: OrderRequest, n: int) -> list[float]:
    loop = asyncio.new_event_loop()
    out: list[float] = []
    state: dict[str, Any] = {}

    def verdict(o: OrderRequest, ok: bool, reason: str) -> None:
        out.append((clock() - state["t0"]) / 1e3)
        state["fut"].set_result(ok)

    def none(o: OrderRequest, why: str) -> None:
        state["fut"].set_exception(RuntimeError(why))

    async def run() -> None:
        client = GatewayClient(ep, 1.0, loop, verdict, none, logging.getLogger("bench"))
        await asyncio.sleep(0.2)  # connected
        for i in range(n + 200):
            state["fut"] = loop.create_future()
            state["t0"] = clock()
            why = client.ask(order, 0, 60_000 * SCALE, i)
            if why:
                raise SystemExit(why)
            await state["fut"]
        client.close()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return out[200:]  # the first ones warm up


def _bare_rtt(ep: str, order: OrderRequest, n: int) -> list[float]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ep)
    enc = msgspec.msgpack.Encoder().encode
    dec = msgspec.msgpack.Decoder(RiskCheckReply).decode
    out: list[float] = []
    try:
        for i in range(n + 200):
            t0 = clock()
            sock.send(enc(RiskCheckRequest(i, order, 0, 60_000 * SCALE, i)))
            dec(sock.recv())
            out.append((clock() - t0) / 1e3)
    finally:
        sock.close(linger=0)
        ctx.term()
    return out[200:]


# ----------------------------------------------------------------------------- main


def _row(name: str, s: dict[str, float]) -> str:
    return (
        f"  {name:<40} p50 {s['p50']:7.2f}  p90 {s['p90']:7.2f}  p99 {s['p99']:8.2f}  (n={s['n']})"
    )


def main() -> int:
    p = argparse.ArgumentParser(prog="bench_risk", description=__doc__.split("\n")[0])
    p.add_argument("--capture", type=Path, default=SAMPLE, help="capture to take books from")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rtt", type=int, default=3000, help="gateway round trips to time")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    books = books_of(args.capture)
    print(f"{platform.python_implementation()} {platform.python_version()},"
          f" {len(books)} valid books of {args.capture.name}, {args.runs} runs")  # fmt: skip
    check = bench_check(books, args.runs)
    print("1. pre-trade risk per order (us):")
    for name in ("tickbus check", "tickbus on_request", "baseline",
                 "md.book (risk's cost per book)", "md.book baseline", "timer floor"):  # fmt: skip
        print(_row(name, check[name]))
    ratio = check["baseline"]["p50"] / check["tickbus check"]["p50"]
    print(f"  baseline / tickbus check, p50: {ratio:.2f}x; verdicts {check['verdicts']}")
    gw = bench_gateway(args.rtt)
    print("2. risk-gateway round trip over ipc, reference gateway in another process (us):")
    for name, s in gw.items():
        print(_row(name, s))
    if args.json:
        args.json.write_text(json.dumps({"check": check, "gateway": gw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
