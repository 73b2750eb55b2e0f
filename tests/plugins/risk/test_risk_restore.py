"""Risk after a restart, on a real kernel: it starts from the positions, PnL and working orders
persistence restores (``restore.*``) - published at start by a feeder plugin risk starts
after, or by the real persistence plugin from a real SQLite file - and refuses, counts and
logs every restored message it cannot apply, applying nothing of it."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from msgspec.structs import replace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "persistence"))
from persistence_support import NO_ENDPOINTS, Feeder  # noqa: E402
from test_risk_plugin import T0, Bus, collector, wait_for  # noqa: E402

from tickbus.kernel import from_fixed  # noqa: E402
from tickbus.kernel.app import Kernel  # noqa: E402
from tickbus.plugins.persistence.messages import Restored  # noqa: E402
from tickbus.schemas import (  # noqa: E402
    NOTIONAL_SCALE,
    SCALE,
    BookTop,
    Fill,
    OrderAccepted,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    RiskState,
)
from tickbus.tools.ctl import format_status  # noqa: E402

PX = 60_000 * SCALE
USDT = NOTIONAL_SCALE
Msgs = list[tuple[str, Any]]


def position(qty: int, *, realized: int = 0, fees: int = 0, fills: int = 3, cost_px: int = PX,
             mark: int = PX, symbol: str = "BTCUSDT") -> Position:  # fmt: skip
    """A restored position as persistence folds it (unrealized = qty x mark - cost)."""
    cost = qty * cost_px
    return Position(symbol, qty, cost, realized, qty * mark - cost, fees, mark, fills, T0, T0)


def request(cid: str, side: str, qty: int, px: int = PX) -> OrderRequest:
    return OrderRequest(cid, "s1", "BTCUSDT", side, "limit", "GTC", qty, px, 0, False, "",  # type: ignore[arg-type]
                        T0, T0)  # fmt: skip


def report(o: OrderRequest, filled: int, **kw: Any) -> OrderUpdate:
    args: dict[str, Any] = dict(
        client_order_id=o.client_order_id, strategy_id=o.strategy_id, symbol=o.symbol,
        side=o.side, order_type=o.order_type,
        status="partially_filled" if filled else "accepted", px=o.px, qty=o.qty,
        filled_qty=filled, leaves_qty=o.qty - filled, avg_px=o.px if filled else 0,
        reason="restored from run 1", ts_recv_ns=T0, ts_update_ns=T0,
    )  # fmt: skip
    args.update(kw)
    return OrderUpdate(**args)


def working(cid: str, side: str, qty: int, filled: int = 0) -> Msgs:
    """A restored working order: ``restore.order`` and right after it ``restore.report``."""
    o = request(cid, side, qty)
    return [("restore.order", OrderAccepted(o, T0)), ("restore.report", report(o, filled))]


def done(positions: int, orders: int) -> tuple[str, Restored]:
    return ("restore.done", Restored(2, 1, positions, orders, 0, T0))


@pytest.fixture
def restored(start_kernel: Callable[..., Kernel]) -> Callable[..., Bus]:
    """A kernel whose risk starts after a plugin that publishes ``msgs`` at its start (as
    persistence publishes the restored state)."""

    def make(msgs: Msgs, **risk: Any) -> Bus:
        cfg = {"state_interval_s": 0.0, "after": ["restorer"], **risk}
        k = start_kernel({"plugins": {"restorer": {}, "risk": cfg, "col": {}}},
                         {"col": collector, "restorer": Feeder(msgs)})  # fmt: skip
        return Bus(k)

    return make


def status(b: Bus) -> dict[str, Any]:
    return json.loads(b.command("status").body)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "refused a restore." in r.getMessage()]  # fmt: skip


def test_a_restored_long_at_the_limit_refuses_buys_and_takes_sells(restored) -> None:
    b = restored([("restore.pos.BTCUSDT", position(SCALE, realized=-3 * USDT, fees=USDT)),
                  done(1, 0)])  # fmt: skip
    b.book()
    buy = b.decision(b.order("buy", SCALE // 10))
    assert isinstance(buy, OrderRejected)
    assert (buy.rule, buy.reason) == (
        "max_position",
        "position 1 + working buys 0 + order 0.1 = 1.1, beyond max_position_size 1",
    )
    assert isinstance(b.decision(b.order("sell", SCALE // 10)), OrderAccepted)
    body = status(b)
    assert body["restored"] == {"from_run": 1, "positions": 1, "orders": 0, "refused": 0,
                                "done": 1}  # fmt: skip
    p = body["positions"]["BTCUSDT"]
    assert (p["qty"], p["working_sell"], p["realized_pnl"], p["fees"]) == (
        SCALE,
        SCALE // 10,
        -3 * USDT,
        USDT,
    )
    assert body["pnl"] == {"total": -4 * USDT, "peak": -4 * USDT, "drawdown": 0}
    # what `tickbus ctl status` prints from that reply
    row = [ln.split() for ln in format_status(body).splitlines() if "BTCUSDT" in ln]
    assert row[0][:4] == ["BTCUSDT", "1", "0", "0.1"]
    assert row[0][-1] == "-4.0000"  # realized - fees: the restored loss


def test_restored_working_orders_count_until_the_broker_finishes_them(restored) -> None:
    """0.5 long of which 0.1 came from r1 (buy 0.4, leaves 0.3); r2 sells 0.2. Projected long
    0.8: a buy of 0.3 goes beyond 1, one of 0.2 does not; their fills and cancels from the
    broker move them as for any accepted order; their ids stay used."""
    b = restored([("restore.pos.BTCUSDT", position(SCALE // 2)),
                  *working("r1", "buy", SCALE * 4 // 10, SCALE // 10),
                  *working("r2", "sell", SCALE // 5), done(1, 2)])  # fmt: skip
    assert b.of(RiskState)[-1].open_orders == 2  # published at restore.done and at start
    b.book()
    over = b.decision(b.order("buy", SCALE * 3 // 10))
    assert isinstance(over, OrderRejected) and over.rule == "max_position"
    assert over.reason.startswith("position 0.5 + working buys 0.3 + order 0.3 = 1.1")
    ok = b.order("buy", SCALE // 5)
    assert isinstance(b.decision(ok), OrderAccepted)
    again = b.decision(b.order(client_order_id="r1"))
    assert isinstance(again, OrderRejected) and again.rule == "duplicate_id"
    body = status(b)
    assert body["open_orders_total"] == 3
    assert {o["client_order_id"]: o["leaves"] for o in body["open_orders"]} == {
        "r1": SCALE * 3 // 10,
        "r2": SCALE // 5,
        ok.client_order_id: SCALE // 5,
    }
    p = body["positions"]["BTCUSDT"]
    assert (p["qty"], p["working_buy"], p["working_sell"]) == (SCALE // 2, SCALE // 2, SCALE // 5)
    out = format_status(body)
    assert "open orders: 3" in out and any(ln.split()[:1] == ["r1"] for ln in
                                           (x.strip() for x in out.splitlines()))  # fmt: skip
    # the broker fills the rest of r1 and cancels r2
    b.pub("exec.fill", Fill("r1", "s1", "BTCUSDT", "buy", 9, PX, SCALE * 3 // 10, 0, "maker",
                            T0, T0, T0))  # fmt: skip
    b.pub("exec.report", report(request("r1", "buy", SCALE * 4 // 10), SCALE * 4 // 10,
                                status="filled", leaves_qty=0))  # fmt: skip
    b.pub("exec.report", report(request("r2", "sell", SCALE // 5), 0, status="canceled",
                                leaves_qty=0))  # fmt: skip
    body = status(b)
    p = body["positions"]["BTCUSDT"]
    assert (p["qty"], p["working_buy"], p["working_sell"]) == (SCALE * 8 // 10, SCALE // 5, 0)
    assert body["open_orders_total"] == 1


def test_a_restored_loss_beyond_max_loss_halts_at_once(restored) -> None:
    b = restored([("restore.pos.BTCUSDT", position(0, realized=-140 * USDT, fees=10 * USDT)),
                  done(1, 0)], max_loss=100.0)  # fmt: skip
    state = b.of(RiskState)[-1]
    assert state.state == "halted"
    assert state.reason == "circuit breaker: loss 150.00 >= max_loss 100.00 (restored from run 1)"
    b.book()
    assert b.decision(b.order()).rule == "halted"


def test_a_restored_loss_counts_with_this_runs_loss(restored) -> None:
    """-85 restored; this run's broker (which did not restore the account: its position
    counts this run's fills only) loses 20 more: -105 trips max_loss 100."""
    b = restored([("restore.pos.BTCUSDT", position(0, realized=-80 * USDT, fees=5 * USDT)),
                  done(1, 0)], max_loss=100.0)  # fmt: skip
    b.book()
    o = b.order("buy", SCALE // 10)
    assert isinstance(b.decision(o), OrderAccepted)
    b.pub("exec.fill", Fill(o.client_order_id, "s1", "BTCUSDT", "buy", 1, PX, SCALE // 10,
                            20 * USDT, "taker", T0, T0, T0))  # fmt: skip
    assert b.of(RiskState)[-1].state == "active"
    b.pub("pos.BTCUSDT", position(SCALE // 10, fees=20 * USDT, fills=1))
    state = b.of(RiskState)[-1]
    assert (state.state, state.reason) == (
        "halted",
        "circuit breaker: loss 105.00 >= max_loss 100.00",
    )


def test_a_broker_that_restored_the_account_is_not_counted_twice(restored) -> None:
    """The broker's position carries the restored account on (all its fills, risk's
    quantity): -85 restored and 10 more fees this run is -95, not -180."""
    b = restored([("restore.pos.BTCUSDT", position(0, realized=-80 * USDT, fees=5 * USDT)),
                  done(1, 0)], max_loss=100.0)  # fmt: skip
    assert status(b)["pnl"]["total"] == -85 * USDT
    b.book()
    o = b.order("buy", SCALE // 10)
    assert isinstance(b.decision(o), OrderAccepted)
    b.pub("exec.fill", Fill(o.client_order_id, "s1", "BTCUSDT", "buy", 1, PX, SCALE // 10,
                            10 * USDT, "taker", T0, T0, T0))  # fmt: skip
    b.pub("pos.BTCUSDT", position(SCALE // 10, realized=-80 * USDT, fees=15 * USDT, fills=4))
    assert b.of(RiskState)[-1].state == "active"
    assert status(b)["pnl"]["total"] == -95 * USDT


def test_the_drawdown_peak_restarts_at_the_restored_pnl(restored) -> None:
    """-80 restored with max_drawdown 50: no halt (the previous run's peak is not known), the
    drawdown counts from -80."""
    b = restored([("restore.pos.BTCUSDT", position(0, realized=-80 * USDT, fills=2)),
                  done(1, 0)], max_drawdown=50.0)  # fmt: skip
    assert b.of(RiskState)[-1].state == "active"
    assert status(b)["pnl"] == {"total": -80 * USDT, "peak": -80 * USDT, "drawdown": 0}
    b.pub("pos.BTCUSDT", position(0, realized=-130 * USDT, fills=3))  # a broker that restored
    state = b.of(RiskState)[-1]
    assert (state.state, state.reason) == (
        "halted", "circuit breaker: drawdown 50.00 (peak -80.00, now -130.00) >= max_drawdown"
        " 50.00")  # fmt: skip


def test_a_restored_long_closed_this_run_loses_the_whole_round_trip(restored) -> None:
    """Bought 0.5 at 60,000 before the restart, sold at 58,000 after it through a broker
    that knows only the sale (short 0.5 to it): the loss is 1,000, exactly."""
    b = restored([("restore.pos.BTCUSDT", position(SCALE // 2, mark=PX)), done(1, 0)],
                 max_loss=1000.0)  # fmt: skip
    assert b.of(RiskState)[-1].state == "active"
    b.book(bid=58_000 * SCALE, ask=58_000 * SCALE + 2 * 10**6)
    o = b.order("sell", SCALE // 2, px=58_000 * SCALE)
    assert isinstance(b.decision(o), OrderAccepted)
    b.pub("exec.fill", Fill(o.client_order_id, "s1", "BTCUSDT", "sell", 1, 58_000 * SCALE,
                            SCALE // 2, 0, "maker", T0, T0, T0))  # fmt: skip
    sold = position(-SCALE // 2, fills=1, cost_px=58_000 * SCALE, mark=58_000 * SCALE)
    b.pub("pos.BTCUSDT", sold)
    assert status(b)["pnl"]["total"] == -1000 * USDT
    assert b.of(RiskState)[-1].reason == "circuit breaker: loss 1000.00 >= max_loss 1000.00"


def test_malformed_restored_messages_are_refused_counted_and_not_applied(
    restored: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    good = position(
        SCALE, realized=7 * USDT, symbol="ETHUSDT", cost_px=3000 * SCALE, mark=3000 * SCALE
    )
    o = request("bad1", "buy", SCALE // 10)
    bad_pos = [
        replace(position(SCALE), qty=1.5),
        position(SCALE, symbol="XRPUSDT"),                          # no filters for it
        replace(position(SCALE), unrealized_pnl=5),                 # != qty x mark - cost
        replace(position(0), cost=PX, unrealized_pnl=-PX),          # cost with nothing open
        replace(position(SCALE), realized_pnl=2**130),              # money out of range
        report(o, 0),                                               # not a Position
    ]  # fmt: skip
    msgs: Msgs = [("restore.pos.BTCUSDT", p) for p in bad_pos]
    msgs += [("restore.pos.ETHUSDT", good), ("restore.pos.ETHUSDT", good)]  # the second: twice
    msgs += [
        ("restore.order", OrderAccepted(o, T0)), ("restore.report", report(o, 0, qty=SCALE)),
        ("restore.order", OrderAccepted(o, T0)),
        ("restore.report", report(o, SCALE // 20, leaves_qty=SCALE // 10)),  # 0.05 + 0.1 != 0.1
        ("restore.order", OrderAccepted(o, T0)),
        ("restore.report", report(o, 0, status="filled")),
        ("restore.order", OrderAccepted(o, T0)),                  # no report after it
        *working("ok1", "sell", SCALE // 10),
        ("restore.report", report(o, 0)),                         # no order before it
        ("restore.order", OrderAccepted(request("bad2", "hold", SCALE // 10), T0)),
        ("restore.report", report(request("bad2", "hold", SCALE // 10), 0)),  # so: none before
        *working("ok1", "sell", SCALE // 10),                     # its id again
        ("restore.order", position(SCALE)),                       # not an OrderAccepted
        done(5, 9),
    ]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        b = restored(msgs)
    body = status(b)
    assert body["restored"] == {"from_run": 1, "positions": 1, "orders": 1, "refused": 16,
                                "done": 1}  # fmt: skip
    assert len(refusals(caplog)) == 16
    assert any("restore incomplete: 1 of 5 position(s) and 1 of 9 working order(s)"
               in r.getMessage() for r in caplog.records)  # fmt: skip
    assert {s: p["qty"] for s, p in body["positions"].items()} == {"ETHUSDT": SCALE,
                                                                   "BTCUSDT": 0}  # fmt: skip
    assert body["positions"]["BTCUSDT"]["working_sell"] == SCALE // 10  # ok1
    assert [o["client_order_id"] for o in body["open_orders"]] == ["ok1"]
    assert b.risk.engine.syms["BTCUSDT"].pos == 0
    assert body["pnl"]["total"] == 7 * USDT  # only the good position's


def test_restore_messages_after_done_are_refused(restored, caplog) -> None:
    b = restored([done(0, 0)])
    b.pub("restore.pos.BTCUSDT", position(SCALE))
    [line] = refusals(caplog)
    assert "the restore is done already" in line
    assert status(b)["restored"] == {"from_run": 1, "positions": 0, "orders": 0, "refused": 1,
                                     "done": 1}  # fmt: skip
    assert b.risk.engine.syms["BTCUSDT"].pos == 0


def test_restore_messages_after_live_orders_are_refused_loudly(restored, caplog) -> None:
    """Risk that did not start after persistence (no ``after``) checked an order of this
    run before the restore came: the restore would now overwrite or double what it did."""
    b = restored([])
    b.book()
    assert isinstance(b.decision(b.order()), OrderAccepted)
    b.pub("restore.pos.BTCUSDT", position(SCALE))
    for topic, msg in working("late", "buy", SCALE // 10):
        b.pub(topic, msg)
    b.pub(*done(1, 1))
    [line, *rest] = refusals(caplog)
    assert "risk already checks this run's orders" in line
    assert 'after = ["persistence"]' in line and len(rest) == 3
    assert status(b)["restored"] == {"from_run": 0, "positions": 0, "orders": 0, "refused": 4,
                                     "done": 0}  # fmt: skip
    assert b.risk.engine.syms["BTCUSDT"].pos == 0
    assert [o["client_order_id"] for o in status(b)["open_orders"]] == ["o1"]  # its own only


@pytest.mark.parametrize("lane", ["main", "persist"])
def test_risk_restores_what_the_real_persistence_plugin_restores(
    start_kernel: Callable[..., Kernel], tmp_path: Path, lane: str
) -> None:
    """Run 1 writes fills and a partly filled working order to SQLite; run 2's persistence
    (in risk's lane, or its own) restores them, and risk (after it) starts from them. In a
    lane of its own the position is small: a Position's money crosses lanes only within 64
    bits (about 922 USDT of cost basis)."""
    q = SCALE // 10 if lane == "main" else SCALE // 1000
    db = tmp_path / "state.db"
    filled = request("f1", "buy", 6 * q)
    w1 = request("w1", "buy", 4 * q)

    def fill(o: OrderRequest, qty: int, fid: int) -> Fill:
        return Fill(o.client_order_id, "s1", "BTCUSDT", o.side, fid, PX, qty, USDT, "maker", T0,
                    T0, T0)  # fmt: skip

    run1: Msgs = []
    for o in (filled, w1):
        run1 += [("ord.request", o), ("ord.accepted", OrderAccepted(o, T0)),
                 ("exec.report", report(o, 0))]  # fmt: skip
    run1 += [("exec.fill", fill(filled, filled.qty, 1)),
             ("exec.report", report(filled, filled.qty, status="filled", leaves_qty=0)),
             ("exec.fill", fill(w1, q, 2)), ("exec.report", report(w1, q))]  # fmt: skip
    k = start_kernel({"bus": NO_ENDPOINTS,
                      "plugins": {"persistence": {"path": str(db)}, "feeder": {}}},
                     {"feeder": Feeder(run1)})  # fmt: skip
    k.stop()

    limits = {"max_position_size": 10 * q / SCALE, "max_order_size": 5 * q / SCALE}
    k = start_kernel({
        "bus": NO_ENDPOINTS,
        "lanes": {"main": {}, "persist": {}},
        "plugins": {
            "persistence": {"path": str(db), "lane": lane},
            "risk": {"state_interval_s": 0.0, "after": ["persistence"], **limits},
            "col": {},
        },
    }, {"col": collector})  # fmt: skip
    b = Bus(k)
    body = status(b)
    assert body["restored"]["positions"] == body["restored"]["orders"] == 1
    assert body["restored"]["refused"] == 0 and body["restored"]["from_run"] >= 1
    p = body["positions"]["BTCUSDT"]
    assert (p["qty"], p["working_buy"], p["fees"]) == (7 * q, 3 * q, 2 * USDT)
    assert body["pnl"]["total"] == -2 * USDT  # the fees: every fill was at the mark
    b.book()
    buy = b.decision(b.order("buy", q))
    assert isinstance(buy, OrderRejected) and buy.rule == "max_position"
    assert buy.reason.startswith(f"position {from_fixed(7 * q)} + working buys"
                                 f" {from_fixed(3 * q)} + order {from_fixed(q)} =")  # fmt: skip
    assert isinstance(b.decision(b.order("sell", q)), OrderAccepted)
    assert b.decision(b.order(client_order_id="w1", qty=q)).rule == "duplicate_id"
    rows = [ln.split() for ln in format_status(status(b)).splitlines()]
    assert [from_fixed(x) for x in (7 * q, 3 * q, q)] in [r[1:4] for r in rows if r[:1] == [
        "BTCUSDT"]]  # fmt: skip
    assert ["w1"] in [r[:1] for r in rows]


def test_with_the_real_broker_restored_too_the_account_is_counted_once(
    start_kernel: Callable[..., Kernel], tmp_path: Path
) -> None:
    """Persistence, the paper broker and risk restart from one SQLite file: the broker's
    positions carry the restored account on (it restored it), so risk's PnL is the broker's
    - not the restored account twice - at its marks and after this run's fills."""
    db = tmp_path / "state.db"
    f1, f2 = request("f1", "buy", SCALE // 10), request("f2", "sell", SCALE // 20, 59_000 * SCALE)
    w1 = request("w1", "buy", SCALE // 10, 57_000 * SCALE)
    run1: Msgs = [("ord.request", w1), ("ord.accepted", OrderAccepted(w1, T0)),
                  ("exec.report", report(w1, 0))]  # fmt: skip
    for i, (o, fee) in enumerate(((f1, 5 * USDT), (f2, 3 * USDT))):
        run1 += [("exec.fill", Fill(o.client_order_id, "s1", "BTCUSDT", o.side, i + 1, o.px,
                                    o.qty, fee, "taker", T0, T0, T0))]  # fmt: skip
    k = start_kernel({"bus": NO_ENDPOINTS,
                      "plugins": {"persistence": {"path": str(db)}, "feeder": {}}},
                     {"feeder": Feeder(run1)})  # fmt: skip
    k.stop()

    k = start_kernel({
        "bus": NO_ENDPOINTS,
        "plugins": {
            "persistence": {"path": str(db)},
            "paper_broker": {"after": ["persistence"], "mark_interval_ms": 0.0},
            "risk": {"state_interval_s": 0.0, "after": ["persistence"], "max_loss": 200.0,
                     "price_band_bps": 0.0},
            "col": {},
        },
    }, {"col": collector})  # fmt: skip
    b = Bus(k)
    body = status(b)
    # 0.05 sold 1,000 lower (-50), 0.05 open 1,000 below cost at the last fill (-50), fees 8
    assert body["pnl"]["total"] == -108 * USDT
    assert body["positions"]["BTCUSDT"]["working_buy"] == SCALE // 10  # w1
    mid = 58_000 * SCALE + 10**6
    bid, ask = 58_000 * SCALE, 58_000 * SCALE + 2 * 10**6
    levels = [np.array([px, SCALE, 0, 0], "<i8").tobytes() for px in (bid, ask)]
    b.pub("md.book.BTCUSDT", BookTop("BTCUSDT", 1, True, bid, SCALE, ask, SCALE, *levels, T0,
                                     T0))  # the broker marks at the mid  # fmt: skip

    def broker(fills: int) -> Position:
        wait_for(lambda: b.risk.positions["BTCUSDT"].fills == fills)
        return b.risk.positions["BTCUSDT"]

    pos = broker(2)
    assert pos.mark_px == mid and pos.qty == SCALE // 20  # the restored account, marked
    pnl = pos.realized_pnl + pos.unrealized_pnl - pos.fees
    assert pnl == -50 * USDT - (SCALE // 20) * (2_000 * SCALE - 10**6) - 8 * USDT  # -158
    assert status(b)["pnl"]["total"] == pnl  # counted twice it would be -266: halted
    # this run sells the restored 0.05: flat, realized through the restored cost basis
    sell = b.order("sell", SCALE // 20, order_type="market", tif="IOC", px=0)
    assert isinstance(b.decision(sell), OrderAccepted)
    pos = broker(3)
    body = status(b)
    assert pos.qty == body["positions"]["BTCUSDT"]["qty"] == 0
    assert body["pnl"]["total"] == pos.realized_pnl - pos.fees
    assert -200 * USDT < body["pnl"]["total"] < -150 * USDT
    assert body["state"] == "active" and body["open_orders_total"] == 1  # w1 rests
