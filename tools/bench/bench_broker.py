"""Paper-broker benchmark on real Binance data: tickbus's broker vs. a fair plain-Python
baseline, with 100 working orders.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_broker [--quick] [--capture FILE ...] [--orders N]
                                               [--runs N] [--model risk_averse|prob] [--json FILE]

The capture (default: the 11-minute spot BTCUSDT capture in ``../shared/data`` when present,
else the bundled 3-minute sample) is turned into the ``md.book`` (top 20) and ``md.trade``
messages the plugins publish (parser + book sync, no bus). A market maker keeps ``--orders``
GTC limit orders working: 5 per price on each of the 10 best levels of each side, topped up
after fills and re-centred every 50 books (orders no longer within the 10 best levels are
cancelled). Each broker replays the capture alone (one after the other, the order rotating
between runs: interleaving them per message would let each evict the others' data from the
caches); the market maker follows the broker's own reports, which must be identical.

What is timed (``perf_counter_ns`` around one handler call; the broker publishes into a list,
no bus):

* **accept**: ``OrderAccepted`` -> order validated, accepted (``OrderUpdate`` built and
  published), queued behind the displayed quantity at its price;
* **book**: one ``BookTop`` with the orders working: queue positions (cancels ahead),
  orders the other side reached, the taken-liquidity memory, the mark;
* **trade**: one ``Trade``: through and at-price fills, queue advance.

Rows: ``tickbus`` (the plugin's engine: orders indexed by price level, one compiled scan per
book side, the risk-averse min kept per level and applied lazily), ``tickbus-py`` (the same
engine with the scan in plain Python: what the compiled kernel buys) and ``baseline``: what a
careful engineer writes first - msgspec messages, exact ints, a dict of working orders in
time priority, each book side decoded once into a dict, every working order checked per
event (eager ``min`` per order) - with the same fill rules. Before any figure is printed the
three must have produced identical output (every Fill, OrderUpdate and Position), or the run
stops. Per run p50/p99; the median over the runs, and the range of the per-run p50s as a
noise indicator; ``tickbus/baseline`` divides the medians (< 1: tickbus takes less time).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tickbus.plugins.binance.capture import read_frames
from tickbus.plugins.broker.engine import BrokerConfig, PaperBroker
from tickbus.plugins.broker.matching import CAP, DEC, SHOWN, UNKNOWN, SideBook, warmup
from tickbus.plugins.broker.positions import PositionBook, fee_of, rate_of
from tickbus.schemas import (
    SCALE,
    BookTop,
    Fill,
    Liquidity,
    Msg,
    OrderAccepted,
    OrderCancel,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Position,
    Trade,
)

from .compare import TickbusFeedBook, default_capture

KINDS = ("accept", "book", "trade")


# --------------------------------------------------------------------------- data


def market_messages(paths: list[Path], depth: int = 20) -> tuple[str, list[BookTop | Trade]]:
    """The valid ``md.book`` and ``md.trade`` messages of the capture's first symbol."""
    feed = TickbusFeedBook("spot", depth)
    out: list[BookTop | Trade] = []
    symbol = ""
    for ts, kind, sym, payload in read_frames(*paths):
        if kind == "ws":
            msg = feed.on_frame(payload, ts)
        elif kind == "rest":
            msg = feed.on_rest(payload, sym or "BTCUSDT", ts)
        else:
            continue
        if type(msg) is BookTop and msg.valid or type(msg) is Trade:
            symbol = symbol or msg.symbol
            if msg.symbol == symbol:
                out.append(msg)  # type: ignore[arg-type]
    return symbol, out


class Clock:
    """The kernel clock as the broker sees it: the current message's time."""

    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


# --------------------------------------------------------------------------- baseline


class BOrder:
    __slots__ = ("req", "buy", "px", "qty", "filled", "leaves", "notional", "status", "ahead")
    status: OrderStatus

    def __init__(self, req: OrderRequest) -> None:
        self.req = req
        self.buy = req.side == "buy"
        self.px = req.px
        self.qty = req.qty
        self.filled = 0
        self.leaves = req.qty
        self.notional = 0
        self.status = "accepted"
        self.ahead = 0


def _side(packed: bytes) -> tuple[dict[int, int], list[tuple[int, int]], bool]:
    """A book side decoded: price -> qty, the levels best first, and whether it is full."""
    v = np.frombuffer(packed, "<i8").tolist()
    lv = [(p, q) for p, q in zip(v[0::2], v[1::2], strict=True) if p > 0]
    return dict(lv), lv, len(lv) == len(packed) // 16 and len(lv) > 0


class BaselineBroker:
    """GTC limit orders filled by the same rules as tickbus's risk-averse queue model,
    written plainly: every working order is looked at on every event."""

    def __init__(self, cfg: BrokerConfig, publish: Callable[[str, Msg], None], clock: Clock):
        self.publish = publish
        self.clock = clock
        self.orders: dict[tuple[str, str], BOrder] = {}  # insertion order = time priority
        self.ids: set[tuple[str, str]] = set()
        self.book: BookTop | None = None
        self.sides: list[Any] = [None, None]
        self.taken: list[dict[int, int]] = [{}, {}]  # bids, asks
        self.pos = PositionBook("")
        self.next_mark = 0
        self.mark_ns = round(cfg.mark_interval_ms * 1e6)
        self.maker, self.taker = rate_of(cfg.maker_fee_bps), rate_of(cfg.taker_fee_bps)
        self.fill_ids = itertools.count(1)

    def side(self, bids: bool) -> Any:
        i = 0 if bids else 1
        if self.sides[i] is None:
            assert self.book is not None
            self.sides[i] = _side(self.book.bids if bids else self.book.asks)
        return self.sides[i]

    def update(self, o: BOrder, ts_recv: int) -> OrderUpdate:
        r = o.req
        avg = (2 * o.notional + o.filled) // (2 * o.filled) if o.filled else 0
        leaves = o.leaves if o.status in ("accepted", "partially_filled") else 0
        return OrderUpdate(r.client_order_id, r.strategy_id, r.symbol, r.side, r.order_type,
                           o.status, r.px, r.qty, o.filled, leaves, avg, "", ts_recv,
                           self.clock.ns)  # fmt: skip

    def fill(self, o: BOrder, px: int, qty: int, maker: bool, ts_ex: int, ts_recv: int) -> None:
        fee = fee_of(px * qty, self.maker if maker else self.taker)
        o.filled += qty
        o.leaves -= qty
        o.notional += px * qty
        o.status = "filled" if o.leaves == 0 else "partially_filled"
        r = o.req
        now = self.clock.ns
        liq: Liquidity = "maker" if maker else "taker"
        self.publish("exec.fill", Fill(r.client_order_id, r.strategy_id, r.symbol, r.side,
                                       next(self.fill_ids), px, qty, fee, liq, ts_ex, ts_recv,
                                       now))  # fmt: skip
        if o.leaves == 0:
            del self.orders[(r.strategy_id, r.client_order_id)]
        self.publish("exec.report", self.update(o, ts_recv))
        self.pos.symbol = r.symbol
        self.pos.fill(o.buy, px, qty, fee)
        self.mark(ts_recv, now)

    def mark(self, ts_recv: int, now: int) -> None:
        self.next_mark = now + self.mark_ns
        b = self.book
        assert b is not None
        mid = (b.bid_px + b.ask_px) // 2
        self.publish(f"pos.{self.pos.symbol}", self.pos.message(mid, ts_recv, now))

    def take(self, levels: list[tuple[int, int]], taken: dict[int, int], qty: int, limit: int,
             buy: bool) -> list[tuple[int, int]]:  # fmt: skip
        out = []
        for px, shown in levels:
            if qty <= 0 or (px > limit if buy else px < limit):
                break
            avail = shown - taken.get(px, 0)
            if avail > 0:
                q = min(avail, qty)
                out.append((px, q))
                qty -= q
        return out

    def on_accepted(self, msg: OrderAccepted) -> None:
        req = msg.order
        key = (req.strategy_id, req.client_order_id)
        # the same checks as tickbus (the bench sends only good limit GTC orders)
        book = self.book
        bad = (
            not req.client_order_id or not req.strategy_id or key in self.ids or req.qty <= 0
            or req.px <= 0 or req.order_type != "limit" or req.tif != "GTC" or req.replaces
            or book is None or not book.valid
        )  # fmt: skip
        if bad or book is None:
            raise ValueError("the bench sends only good limit GTC orders")
        self.ids.add(key)
        o = BOrder(req)
        self.orders[key] = o
        self.publish("exec.report", self.update(o, req.ts_recv_ns))
        other = self.side(not o.buy)
        taken_other = self.taken[1 if o.buy else 0]
        for px, q in self.take(other[1], taken_other, o.leaves, o.px, o.buy):
            taken_other[px] = taken_other.get(px, 0) + q
            self.fill(o, px, q, False, book.ts_exchange_ns, req.ts_recv_ns)
        if o.leaves:
            shown_map, lv, full = self.side(o.buy)
            shown = shown_map.get(o.px)
            if shown is None:
                beyond = full and (o.px < lv[-1][0] if o.buy else o.px > lv[-1][0])
                shown = UNKNOWN if beyond else 0
            t = self.taken[0 if o.buy else 1].get(o.px)
            o.ahead = shown if t is None else max(shown - t, 0)

    def on_cancel(self, msg: OrderCancel) -> None:
        o = self.orders.pop((msg.strategy_id, msg.client_order_id))
        o.status = "canceled"
        self.publish("exec.report", self.update(o, o.req.ts_recv_ns))

    def on_book(self, book: BookTop) -> None:
        self.book = book
        self.sides = [None, None]
        for i, bids in ((0, True), (1, False)):
            taken = self.taken[i]
            if taken:
                shown_map = self.side(bids)[0]
                for px, q in list(taken.items()):
                    s = shown_map.get(px)
                    if s is None:
                        del taken[px]
                    elif s < q:
                        taken[px] = s
        if self.orders:
            bids, asks = self.side(True), self.side(False)
            for o in self.orders.values():
                shown_map, lv, full = bids if o.buy else asks
                if full and (o.px < lv[-1][0] if o.buy else o.px > lv[-1][0]):
                    continue
                q = shown_map.get(o.px, 0)
                if q < o.ahead:
                    o.ahead = q
            for buy, other, best in ((True, asks, book.ask_px), (False, bids, book.bid_px)):
                cross = [o for o in self.orders.values() if o.buy == buy
                         and (o.px >= best if buy else o.px <= best)]  # fmt: skip
                cross.sort(key=(lambda o: -o.px) if buy else (lambda o: o.px))  # stable: FIFO
                taken = self.taken[1 if buy else 0]
                for o in cross:
                    got = self.take(other[1], taken, o.leaves, o.px, buy)
                    if not got:
                        break
                    for px, q in got:
                        taken[px] = taken.get(px, 0) + q
                    self.fill(o, o.px, sum(q for _, q in got), True, book.ts_exchange_ns,
                              book.ts_recv_ns)  # fmt: skip
        if self.pos.qty and self.clock.ns >= self.next_mark:
            self.mark(book.ts_recv_ns, self.clock.ns)

    def on_trade(self, t: Trade) -> None:
        buy = t.buyer_is_maker  # a sell hit the bids: our buys
        taken = self.taken[0 if buy else 1]
        for px in list(taken):  # the trade consumed the front of its level and better ones
            if (px > t.px) if buy else (px < t.px):
                del taken[px]
            elif px == t.px:
                if taken[px] > t.qty:
                    taken[px] -= t.qty
                else:
                    del taken[px]
        mine = [o for o in self.orders.values() if o.buy == buy]
        through = [o for o in mine if (o.px > t.px if buy else o.px < t.px)]
        through.sort(key=(lambda o: -o.px) if buy else (lambda o: o.px))
        fills = []
        used = 0
        for o in through:
            o.ahead = 0
            left = t.qty - used
            if left > 0:
                f = min(left, o.leaves)
                fills.append((o, f))
                used += f
        for o in mine:
            if o.px == t.px:
                over = t.qty - o.ahead - used
                if over > 0:
                    f = min(over, o.leaves)
                    fills.append((o, f))
                    used += f
                o.ahead = max(o.ahead - t.qty, 0)
        for o, f in fills:
            self.fill(o, o.px, f, True, t.ts_exchange_ns, t.ts_recv_ns)


# --------------------------------------------------------------------------- variants


def _py_scan(self: SideBook, packed: bytes) -> int:
    """SideBook.scan without the compiled kernel: the same work in plain Python."""
    if self.dirty:
        self._rebuild(None)
    v = memoryview(packed).cast("q").tolist()
    lv = [(p, q) for p, q in zip(v[0::2], v[1::2], strict=True) if p > 0]
    shown_map = dict(lv)
    full = len(lv) == len(packed) // 16 and len(lv) > 0
    worst = lv[-1][0] if lv else 0
    st, n, buy = self.st, self.n, self.buy
    px, cap, shown, dec = st.tolist()
    fell = dropped = 0
    for k, p in enumerate(px):
        if full and (p < worst if buy else p > worst):
            if k < n:
                dec[k] = -1
            elif cap[k] > 0:
                cap[k] = 0
                dropped = 1
            continue
        q = shown_map.get(p, 0)
        if q < cap[k]:
            cap[k] = q
            dropped |= q == 0 and k >= n
        if k < n:
            s = shown[k]
            if 0 <= q < s:
                dec[k] = s - q
                fell += 1
            else:
                dec[k] = 0
            shown[k] = q
    st[CAP], st[SHOWN], st[DEC] = cap, shown, dec
    if dropped:
        self.dirty = True
    return fell


class PyScanSideBook(SideBook):
    __slots__ = ()
    scan = _py_scan

    def scan_both(self, asks: SideBook, bids_packed: bytes, asks_packed: bytes) -> None:
        self.scan(bids_packed)
        asks.scan(asks_packed)


def _no_timer(*args: Any) -> None:
    raise AssertionError("the bench uses no latency and no GTD: no timers")


# --------------------------------------------------------------------------- the run


class Maker:
    """The order flow: ``n`` GTC orders, 5 per price on the 10 best levels of each side."""

    def __init__(self, n: int, symbol: str) -> None:
        self.n = n
        self.symbol = symbol
        self.working: dict[str, OrderRequest] = {}
        self.seq = itertools.count(1)
        self.slot = itertools.cycle(range(20))

    def observe(self, msg: Msg) -> None:
        """What the broker said (the first broker's outputs drive the flow)."""
        if type(msg) is OrderUpdate and msg.status in ("filled", "canceled"):
            self.working.pop(msg.client_order_id, None)

    def top_up(self, book: BookTop) -> list[OrderAccepted]:
        bids, asks = _side(book.bids)[1][:10], _side(book.asks)[1][:10]
        out = []
        while len(self.working) < self.n:
            k = next(self.slot)
            buy = k < 10
            lv = (bids if buy else asks)[k % 10 % max(len(bids if buy else asks), 1)]
            cid = f"m{next(self.seq)}"
            req = OrderRequest(cid, "mm", self.symbol, "buy" if buy else "sell", "limit",
                               "GTC", SCALE // 1000, lv[0], 0, False, "", book.ts_recv_ns,
                               book.ts_recv_ns)  # fmt: skip
            self.working[cid] = req
            out.append(OrderAccepted(req, book.ts_recv_ns))
        return out

    def recentre(self, book: BookTop) -> list[OrderCancel]:
        bids, asks = _side(book.bids)[1][:10], _side(book.asks)[1][:10]
        lo_b, hi_a = bids[-1][0], asks[-1][0]
        out = []
        for cid, r in list(self.working.items()):
            if (r.side == "buy" and (r.px < lo_b or r.px >= book.ask_px)) or (
                r.side == "sell" and (r.px > hi_a or r.px <= book.bid_px)
            ):
                out.append(OrderCancel(cid, "mm", self.symbol, book.ts_recv_ns))
        return out


NAMES = ("tickbus", "tickbus-py", "baseline")


def brokers(cfg: BrokerConfig) -> tuple[str, ...]:
    """The brokers compared: the baseline implements the risk-averse queue rule only."""
    return NAMES if cfg.queue_model == "risk_averse" else NAMES[:2]


def replay_one(
    name: str, msgs: list[BookTop | Trade], symbol: str, cfg: BrokerConfig, n_orders: int
) -> tuple[dict[str, list[int]], list[tuple[Any, ...]]]:
    """One broker replays the capture alone (interleaving brokers per message would let one
    evict the other's data from the caches); the market maker follows its reports. Returns
    the samples per kind and every output (as compared)."""
    clock = Clock()
    out: list[Msg] = []
    publish = _appender(out)
    broker: Any
    if name == "baseline":
        broker = BaselineBroker(cfg, publish, clock)
    else:
        broker = PaperBroker(cfg, publish=publish, clock=clock, call_at=_no_timer)
    samples: dict[str, list[int]] = {k: [] for k in KINDS}
    s_accept, s_book, s_trade = samples["accept"], samples["book"], samples["trade"]
    keys: list[tuple[Any, ...]] = []
    maker = Maker(n_orders, symbol)
    on_book, on_trade, on_accepted = broker.on_book, broker.on_trade, broker.on_accepted
    books = 0
    perf = time.perf_counter_ns
    for msg in msgs:
        clock.ns = msg.ts_recv_ns
        if type(msg) is BookTop:
            if name == "tickbus-py" and not books:
                on_book(msg)  # creates the market; its sides then use the Python scan
                m = broker.markets[msg.symbol]
                m.buys.__class__ = m.sells.__class__ = PyScanSideBook
            else:
                t0 = perf()
                on_book(msg)
                s_book.append(perf() - t0)
        else:
            t0 = perf()
            on_trade(msg)
            s_trade.append(perf() - t0)
        if out:
            _observe(out, maker, keys)
        if type(msg) is not BookTop:
            continue
        books += 1
        for c in maker.recentre(msg) if books % 50 == 0 else []:
            broker.on_cancel(c)
        for a in maker.top_up(msg):
            t0 = perf()
            on_accepted(a)
            s_accept.append(perf() - t0)
        _observe(out, maker, keys)
    return samples, keys


def _appender(out: list[Msg]) -> Callable[[str, Msg], None]:
    def publish(topic: str, msg: Msg) -> None:
        out.append(msg)

    return publish


def _observe(out: list[Msg], maker: Maker, keys: list[tuple[Any, ...]]) -> None:
    """The order flow follows the broker's reports; keep what must be equal."""
    for m in out:
        maker.observe(m)
        keys.append(_key(m))
    del out[:]


def run_once(
    msgs: list[BookTop | Trade], symbol: str, cfg: BrokerConfig, n_orders: int, order: int
) -> tuple[dict[str, dict[str, list[int]]], int]:
    """Each broker replays once, in a rotating order; all must have said exactly the same.
    Returns the samples per broker and kind, and how many outputs were compared."""
    names = brokers(cfg)
    names = names[order % len(names) :] + names[: order % len(names)]
    samples: dict[str, dict[str, list[int]]] = {}
    outputs: dict[str, list[tuple[Any, ...]]] = {}
    for name in names:
        samples[name], outputs[name] = replay_one(name, msgs, symbol, cfg, n_orders)
    ref = outputs["tickbus"]
    for name in brokers(cfg)[1:]:
        other = outputs[name]
        if other != ref:
            i = next((k for k, (a, b) in enumerate(zip(ref, other, strict=False)) if a != b),
                     min(len(ref), len(other)))  # fmt: skip
            raise SystemExit(
                f"{name} and tickbus disagree at output {i}: "
                f"{other[i] if i < len(other) else None} != {ref[i] if i < len(ref) else None}"
            )
    return samples, len(ref)


def _key(m: Msg) -> tuple[Any, ...]:
    """What must be equal: fills, order states, positions (not the pos topic's symbol)."""
    if type(m) is Fill:
        return ("fill", m.client_order_id, m.fill_id, m.px, m.qty, m.fee, m.liquidity,
                m.ts_recv_ns)  # fmt: skip
    if type(m) is OrderUpdate:
        return ("update", m.client_order_id, m.status, m.filled_qty, m.leaves_qty, m.avg_px)
    if type(m) is Position:
        return ("pos", m.qty, m.cost, m.realized_pnl, m.unrealized_pnl, m.fees, m.mark_px)
    return ("other", type(m).__name__)


def pct(a: list[int], q: float) -> float:
    return float(np.percentile(np.array(a, dtype=np.int64), q)) / 1000 if a else float("nan")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_broker",
        description="paper broker: accept / book / trade handler cost with working orders",
    )
    ap.add_argument("--capture", nargs="+", type=Path, help="capture files (default: see doc)")
    ap.add_argument("--orders", type=int, default=100, help="working orders (default 100)")
    ap.add_argument("--runs", type=int, default=5, help="replays (default 5)")
    ap.add_argument(
        "--model", choices=("risk_averse", "prob"), default="risk_averse",
        help="queue model (prob: no baseline row, the baseline is risk_averse only)",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="the bundled sample, 2 runs")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        from tickbus.plugins.binance.capture import SAMPLE

        args.capture, args.runs = args.capture or [SAMPLE], min(args.runs, 2)
    paths = args.capture or default_capture()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"# command: python -m tickbus.tools.bench.bench_broker {cmd}".rstrip())
    print(f"# CPython {platform.python_version()} numpy {np.__version__} on {platform.machine()}")
    t0 = time.perf_counter()
    warmup()
    symbol, msgs = market_messages(paths)
    nb = sum(type(m) is BookTop for m in msgs)
    print(f"# capture: {', '.join(p.name for p in paths)} ({symbol}: {nb:,} books, "
          f"{len(msgs) - nb:,} trades; loaded in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(f"# {args.orders} working GTC orders, queue model {args.model}; {args.runs} runs; "
          f"load average before: {_load()}")  # fmt: skip
    cfg = BrokerConfig(queue_model=args.model)
    runs: list[dict[str, dict[str, list[int]]]] = []
    gc.collect()
    gc.disable()
    try:
        for r in range(args.runs):
            samples, compared = run_once(msgs, symbol, cfg, args.orders, r)
            runs.append(samples)
    finally:
        gc.enable()
    print(f"# outputs identical in every run ({compared:,} Fill/OrderUpdate/Position each); "
          f"load average after: {_load()}")  # fmt: skip
    print(
        "# us per handler call: median over runs of the per-run p50 / p99 [range of per-run p50s]"
    )
    rows: list[dict[str, Any]] = []
    header = f"{'kind':7s} {'broker':11s} {'n':>8s} {'p50':>7s} {'p99':>8s} {'p50 range':>15s}"
    print(header)
    for kind in KINDS:
        med: dict[str, float] = {}
        for name in brokers(cfg):
            p50s = [pct(r[name][kind], 50) for r in runs]
            p99s = [pct(r[name][kind], 99) for r in runs]
            n = len(runs[0][name][kind])
            med[name] = float(np.median(p50s))
            p99 = float(np.median(p99s))
            rng = f"[{min(p50s):.2f}-{max(p50s):.2f}]"
            print(f"{kind:7s} {name:11s} {n:8d} {med[name]:7.2f} {p99:8.2f} {rng:>15s}")
            rows.append({"kind": kind, "broker": name, "n": n, "p50_us": med[name],
                         "p99_us": p99, "p50_runs_us": p50s})  # fmt: skip
        if "baseline" in med:
            ratio = med["tickbus"] / med["baseline"]
            print(f"{kind:7s} {'tickbus/baseline':20s} {ratio:15.2f}")
    if args.json:
        args.json.write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
