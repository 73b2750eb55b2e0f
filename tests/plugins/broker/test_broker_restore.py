"""Restart: the broker takes back what the persistence plugin restored from an earlier run.

A first kernel (replay clock) trades through the real broker with the real persistence
plugin writing a real SQLite file; a second kernel on that file restores it (persistence in
a lane of its own, the broker ``after`` it) and the broker goes on as if nothing happened:
the position continues its exact accounting (checked against a hand computation), restored
orders fill, cancel, expire and keep their ids. Malformed restore messages (published by a
small plugin) are refused whole, counted, and leave nothing behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker_support import Driver, Venue, runtime_dir

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.plugins.broker.positions import div_round
from tickbus.plugins.persistence.messages import Restored
from tickbus.schemas import (
    SCALE,
    Msg,
    OrderAccepted,
    OrderRequest,
    OrderUpdate,
    Position,
)

Q = SCALE  # a quantity of 1
U = SCALE * SCALE  # the notional of 1 at a price of 1
S = "BTCUSDT"
NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}


def px(x: float) -> int:
    return round(x * SCALE)


class restored:
    """Test plugin: what persistence published for the account (``restore.*`` but the
    strategies' own positions, ``restore.net.*``)."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        for topic in ("restore.pos.", "restore.order", "restore.report", "restore.done"):
            ctx.subscribe(topic, seen.append)
        return seen


class Restart(Venue):
    """A Venue (broker + driver in lane "main", replay clock from ``ts``, a synthetic market
    fed from the test) with more ``plugins`` (``extra``: their objects) in the ``before``
    lane, which the broker starts after."""

    def __init__(self, start_kernel: Callable[..., Kernel], ts: int, plugins: dict[str, Any],
                 extra: dict[str, Any], **broker: Any) -> None:  # fmt: skip
        self.driver = Driver()
        before = {name: {"lane": "before", **cfg} for name, cfg in plugins.items()}
        self.k = start_kernel(
            {
                "kernel": {"clock": "replay", "runtime_dir": runtime_dir()},
                "bus": NO_ENDPOINTS,
                "lanes": {"main": {}, "before": {}},
                "plugins": {
                    **before,
                    "restored": {"lane": "main"},
                    "paper_broker": {"lane": "main", "after": list(plugins), **broker},
                    "driver": {"lane": "main"},
                },
            },
            extra={"driver": self.driver, "restored": restored, **extra},
        )
        self.lane = self.k.lanes["main"]
        self.broker = self.k.contexts["paper_broker"].component
        self.seen: list[Any] = self.k.contexts["restored"].component
        self.depth = 5
        self.ts = ts
        self.uid = 100


def run(start_kernel: Callable[..., Kernel], db: Path, ts: int, restore: bool) -> Restart:
    """The broker with the persistence plugin on ``db``, restoring from it or not."""
    cfg = {"path": str(db), "restore": "on" if restore else "off"}
    return Restart(start_kernel, ts, {"persistence": cfg}, {})


def book_a(v: Venue, asks: tuple[float, ...] = (101, 102, 103)) -> None:
    """Bids 100 (5), 99, 98; asks as given (1 each)."""
    v.book([(px(100), 5 * Q), (px(99), Q), (px(98), Q)], [(px(a), Q) for a in asks])


def fee(notional: int) -> int:
    """10 bps (the default maker and taker fee), exact for these notionals."""
    assert notional % 1000 == 0
    return notional // 1000


def test_a_restart_continues_the_account_and_the_working_orders(
    start_kernel: Callable[..., Kernel], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.db"
    t0 = 1_700_000_000_000_000_000
    one = run(start_kernel, db, t0, restore=False)
    book_a(one)
    e = one.order("buy", Q, px(100), cid="E").client_order_id  # behind the 5 at 100
    one.trade(px(100), 5 * Q, sell=True)  # ... and now at the front of the queue
    a = one.order("buy", 3 * Q, px(102), cid="A").client_order_id  # takes 101 + 102, rests 1
    b = one.order("sell", 2 * Q, px(104), cid="B").client_order_id
    expiry = one.ts + 10_000_000_000
    c = one.order("buy", Q, px(97), tif="GTD", expire_at_ns=expiry, cid="C").client_order_id
    d = one.order("buy", Q, px(99), cid="D").client_order_id
    assert [one.status(x) for x in (a, b, c, d, e)] == ["partially_filled", *["accepted"] * 4]
    before = one.driver.positions[-1]
    held = (before.qty, before.cost, before.realized_pnl, before.fees, before.fills)
    assert held == (2 * Q, 203 * U, 0, fee(203 * U), 2)
    assert one.k.stop()

    with caplog.at_level(logging.INFO, logger="tickbus.paper_broker"):
        two = run(start_kernel, db, one.ts + 1_000_000_000, restore=True)
    assert len(said(caplog, logging.INFO, "restored from run 1: 1 of 1 position(s), 5 of 5")) == 1
    br = two.broker
    # what persistence restored is what the broker holds, before any market data
    [pos] = [m for m in two.seen if type(m) is Position]
    book = br.markets[S].pos
    assert (book.qty, book.cost, book.realized, book.fees, book.fills) == held
    assert (pos.qty, pos.cost, pos.realized_pnl, pos.fees, pos.fills) == held
    assert br.stats["restored_positions"] == 1 and br.stats["restored_orders"] == 5
    assert br.stats["restore_refused"] == 0
    ra = br.working[("s1", a)]
    assert (ra.status, ra.filled, ra.leaves, ra.avg_px) == ("partially_filled", 2 * Q, Q, px(101.5))
    states = {k[1]: o.status for k, o in br.working.items()}
    assert states == {a: "partially_filled", b: "accepted", c: "accepted", d: "accepted",
                      e: "accepted"}  # fmt: skip
    assert two.driver.reports == []  # restoring says nothing on the bus

    # the asks moved away (our first run took 101 and 102): nothing crosses
    book_a(two, asks=(103, 105, 106))
    mark = two.driver.positions[-1]  # the open position is marked: from the restored values
    assert (mark.qty, mark.cost, mark.realized_pnl, mark.fees, mark.fills) == held
    two.trade(px(101), Q, sell=True)  # through A's 102: its last 1 fills there, as maker
    assert two.status(a) == "filled"
    up = two.driver.updates(a)[-1]
    assert (up.filled_qty, up.avg_px) == (3 * Q, (2 * 305 * SCALE * Q + 3 * Q) // (6 * Q))
    two.trade(px(105), 2 * Q, sell=False)  # through B's 104: B sells 2 of the 3 held
    assert two.status(b) == "filled"
    # by hand: 3 at a cost of 101 + 102 + 102 = 305; selling 2 at 104 closes 2/3 of it
    share = div_round(305 * U * 2, 3)
    last = two.driver.positions[-1]
    fees = fee(203 * U) + fee(102 * U) + fee(208 * U)
    assert (last.qty, last.cost, last.realized_pnl, last.fees, last.fills) == (
        Q, 305 * U - share, 208 * U - share, fees, 4)  # fmt: skip
    assert last.realized_pnl - last.cost == 208 * U - 305 * U  # exactly the cash flow

    two.cancel(d)
    assert two.status(d) == "canceled" and ("s1", d) not in br.working
    for cid in (c, d):  # a restored id, working or not, cannot be used again
        two.order("buy", Q, px(95), cid=cid)
    assert br.reject_kinds == {"duplicate": 2} and two.status(c) == "rejected"

    # E was at the front in the first run; restored, it is at the back of the 5 at 100
    two.trade(px(100), 5 * Q, sell=True)
    assert two.driver.fills_of(e) == []
    two.trade(px(100), Q, sell=True)
    assert [(f.px, f.qty, f.liquidity) for f in two.driver.fills_of(e)] == [(px(100), Q, "maker")]

    # C's expiry is armed again on the kernel clock
    two.advance((expiry - two.ts) / 1e6 - 1)
    assert ("s1", c) in br.working
    two.advance(2)
    assert [u.status for u in two.driver.updates(c, "s1")][-1] == "expired"
    assert ("s1", c) not in br.working and br.working == {}


# --------------------------------------------------------------------------- bad input


class Feeder:
    """Test plugin: publishes (topic, message) pairs from its start hook (before the
    broker's, which lists it in ``after``); declares persistence's ``Restored``."""

    def __init__(self, msgs: list[tuple[str, Msg]]) -> None:
        self.msgs = msgs

    @hookimpl
    def tickbus_message_types(self) -> list[type[Msg]]:
        return [Restored]

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        for topic, msg in self.msgs:
            ctx.publish(topic, msg)


T = 1_700_000_000_000_000_000


def req(cid: str = "o1", *, sid: str = "s1", symbol: str = S, side: str = "buy",
        kind: str = "limit", tif: str = "GTC", qty: int = 3 * Q, price: int = px(100),
        expire: int = 0) -> OrderRequest:  # fmt: skip
    return OrderRequest(cid, sid, symbol, side, kind, tif, qty, price, expire, False,  # type: ignore[arg-type]
                        "", T, T)  # fmt: skip


def report(r: OrderRequest, status: str = "accepted", filled: int = 0,
           leaves: int | None = None, avg: int = 0, **kw: Any) -> OrderUpdate:  # fmt: skip
    fields = {"client_order_id": r.client_order_id, "strategy_id": r.strategy_id,
              "symbol": r.symbol, "side": r.side, "order_type": r.order_type, "px": r.px,
              "qty": r.qty, **kw}  # fmt: skip
    return OrderUpdate(
        fields["client_order_id"], fields["strategy_id"], fields["symbol"], fields["side"],
        fields["order_type"], status, fields["px"], fields["qty"], filled,  # type: ignore[arg-type]
        r.qty - filled if leaves is None else leaves, avg, "restored", T, T,
    )  # fmt: skip


def pair(r: OrderRequest, u: OrderUpdate | None = None) -> list[tuple[str, Msg]]:
    return [("restore.order", OrderAccepted(r, T)), ("restore.report", u or report(r))]


def stated(cid: str, status: str, filled: int, leaves: int, avg: int = 0) -> list[tuple[str, Msg]]:
    """A restored order of 3 and the report of its state."""
    r = req(cid)
    return pair(r, report(r, status, filled, leaves, avg))


def position(qty: int, cost: int, symbol: str = S) -> tuple[str, Position]:
    return f"restore.pos.{symbol}", Position(symbol, qty, cost, 0, 0, 0, 0, 1, T, T)


BAD: dict[str, list[tuple[str, Msg]]] = {
    "negative leaves": stated("b1", "partially_filled", 4 * Q, -Q, px(100)),
    "filled + leaves != qty": stated("b2", "partially_filled", Q, Q, px(100)),
    "no leaves": stated("b3", "accepted", 3 * Q, 0),
    "negative filled": stated("b4", "accepted", -Q, 4 * Q),
    "final status": stated("b5", "filled", 3 * Q, 0, px(100)),
    "status against filled": stated("b6", "accepted", Q, 2 * Q, px(100)),
    "filled without a price": stated("b7", "partially_filled", Q, 2 * Q),
    "unknown symbol": pair(req("b8", symbol="ETHUSDT")),
    "not a symbol": pair(req("b9", symbol="btc/usdt")),
    "price 0": pair(req("b10", price=0)),
    "negative price": pair(req("b11", price=-px(1))),
    "quantity 0": pair(req("b12", qty=0), report(req("b12", qty=0), leaves=0)),
    "GTD without expiry": pair(req("b15", tif="GTD")),
    "empty id": pair(req("")),
    "report of another order": pair(req("b16"), report(req("b16"), client_order_id="zz")),
    "report of another price": pair(req("b17"), report(req("b17"), px=px(101))),
    "report without order": [("restore.report", report(req("b19")))],
    "order without report": [("restore.order", OrderAccepted(req("b18"), T))],
    "wrong type": [("restore.order", position(Q, 100 * U)[1]),
                   ("restore.report", report(req("b20")))],
    "flat position with a cost": [position(0, U)],
    "long with a negative cost": [position(Q, -100 * U)],
    "position of an unknown symbol": [position(Q, 100 * U, "ETHUSDT")],
    "a second position": [position(Q, 100 * U)],
}  # fmt: skip
GOOD = pair(req("g1", side="sell", qty=2 * Q, price=px(101))) + [position(-Q, -100 * U)]
DUPLICATE = pair(req("g1", side="buy", qty=Q, price=px(99)))  # the id of a restored order
LATE_GTD = pair(req("g2", tif="GTD", expire=T - 1))  # its time is up already
# working at the kill, they died with the process: reported expired, never resting again
NEVER_RESTS = pair(req("n1", tif="IOC")) + pair(req("n2", kind="market", price=0))


def feed(start_kernel: Callable[..., Kernel], msgs: list[tuple[str, Msg]]) -> Restart:
    """The broker, for BTCUSDT only, started after a feeder published ``msgs`` and
    ``restore.done``."""
    done = ("restore.done", Restored(2, 1, 0, 0, 0, T))
    return Restart(start_kernel, T, {"feeder": {}}, {"feeder": Feeder([*msgs, done])},
                   symbols=[S])  # fmt: skip


def said(caplog: pytest.LogCaptureFixture, level: int, start: str) -> list[str]:
    """The broker's log lines at ``level`` that start with ``start``."""
    return [r.getMessage() for r in caplog.records if r.name == "tickbus.paper_broker"
            and r.levelno == level and r.getMessage().startswith(start)]  # fmt: skip


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return said(caplog, logging.ERROR, "restore: refused")


def test_malformed_restore_messages_are_refused_whole_and_counted(
    start_kernel: Callable[..., Kernel], caplog: pytest.LogCaptureFixture
) -> None:
    msgs = [m for bad in BAD.values() for m in bad]
    v = feed(start_kernel, [*GOOD, *msgs, *DUPLICATE, *LATE_GTD, *NEVER_RESTS])
    br = v.broker
    assert br.stats["restore_refused"] == len(BAD) + 1  # + the duplicate
    lines = refusals(caplog)
    assert len(lines) == len(BAD) + 1  # one line each, with what was refused
    for cid in [f"b{i}" for i in range(1, 21) if i not in (13, 14)]:
        assert sum(f"'{cid}'" in line for line in lines) == 1, cid
    assert len(said(caplog, logging.ERROR, "restored from run 1: 1 of 0 position(s)")) == 1
    # only the good order and position were taken back; nothing of the refused ones
    assert set(br.working) == {("s1", "g1"), ("s1", "g2")}
    assert br._ids == {("s1", "g1"), ("s1", "g2"), ("s1", "n1"), ("s1", "n2")}
    assert set(br.markets) == {S}
    side = br.markets[S]
    assert side.buys.count == 1 and side.sells.count == 1  # g2 and g1
    g1 = br.working[("s1", "g1")]
    assert (g1.buy, g1.px, g1.qty, g1.leaves) == (False, px(101), 2 * Q, 2 * Q)
    pos = side.pos
    assert (pos.qty, pos.cost, pos.fills) == (-Q, -100 * U, 1)
    assert [(u.client_order_id, u.status, u.leaves_qty) for u in v.driver.reports] == [
        ("n1", "expired", 0), ("n2", "expired", 0)]  # fmt: skip
    assert v.driver.fills == []
    # the expired GTD goes at the first tick of the clock, reported
    v.advance(1)
    assert v.status("g2") == "expired" and set(br.working) == {("s1", "g1")}
    # the restored order works: a buy through 101 fills it, as maker, at its price
    v.book([(px(100), Q)], [(px(102), Q)])
    v.trade(px(102), 2 * Q, sell=False)
    fills = [(f.px, f.qty, f.liquidity) for f in v.driver.fills_of("g1")]
    assert fills == [(px(101), 2 * Q, "maker")]
    last = v.driver.positions[-1]
    assert (last.qty, last.cost, last.realized_pnl) == (-3 * Q, -302 * U, 0)


def test_restore_messages_after_the_start_are_refused(
    start_kernel: Callable[..., Kernel], caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker started, a late restore (no ``after``) would race the live fills:
    it is refused, loudly, and changes nothing."""
    v = feed(start_kernel, [])
    assert v.broker.trading
    v.book([(px(100), Q)], [(px(101), Q)])
    late = [position(Q, 100 * U), *pair(req("late"))]
    v.lane.call(lambda: [v.lane.publish(t, m) for t, m in late])
    br = v.broker
    assert br.stats["restore_refused"] == 2 and len(refusals(caplog)) == 2
    assert br.working == {} and br._ids == set() and br.markets[S].pos is None
    v.order("buy", Q, px(100), cid="late")  # the id is free: nothing was taken back
    assert v.status("late") == "accepted"
