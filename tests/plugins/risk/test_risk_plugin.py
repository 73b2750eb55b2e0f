"""The risk plugin on a real kernel: orders in, decisions out on the bus, control commands,
the circuit breaker, and decisions that replay identically on recorded data."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tickbus.kernel import (
    PluginContext,
    Strategy,
    StrategyConfig,
    TickbusError,
    hookimpl,
    strategy_plugin,
)
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.schemas import (
    NOTIONAL_SCALE,
    SCALE,
    BookTop,
    ControlCommand,
    ControlReply,
    Fill,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    Position,
    RiskState,
)

T0 = 1_723_161_254_000_000_000


def wait_for(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


class collector:
    """Test plugin: every decision, cancel, state and reply risk publishes, in order."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        for prefix in ("ord.accepted", "ord.rejected", "ord.cancel", "risk.state", "ctl.reply"):
            ctx.subscribe(prefix, seen.append)
        return seen


class Bus:
    """An in-process kernel with risk; publish on its lane, read what came out."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.lane = k.lanes["main"]
        self.seen: list[Any] = k.contexts["col"].component
        self.risk = k.contexts["risk"].component
        self.n = 0

    def pub(self, topic: str, msg: Any) -> None:
        self.lane.call(self.lane.publish, topic, msg)

    def book(self, bid: int = 60_000 * SCALE, ask: int = 60_000 * SCALE + 2 * 10**6) -> None:
        self.pub("md.book.BTCUSDT", BookTop("BTCUSDT", 1, True, bid, SCALE, ask, SCALE, b"",
                                             b"", T0, T0))  # fmt: skip

    def order(self, side: str = "buy", qty: int = SCALE // 10, **kw: Any) -> OrderRequest:
        self.n += 1
        args: dict[str, Any] = dict(
            client_order_id=f"o{self.n}", strategy_id="s1", symbol="BTCUSDT", side=side,
            order_type="limit", tif="GTC", qty=qty, px=60_000 * SCALE, expire_at_ns=0,
            reduce_only=False, replaces="", ts_recv_ns=T0, ts_created_ns=T0,
        )  # fmt: skip
        args.update(kw)
        o = OrderRequest(**args)
        self.pub("ord.request", o)
        return o

    def decision(self, o: OrderRequest) -> OrderAccepted | OrderRejected:
        def found() -> Any:
            for m in self.seen:
                if isinstance(m, OrderAccepted | OrderRejected) and m.order is o:
                    return m
            return None

        wait_for(found)
        return found()

    def command(self, command: str, *args: str, rid: str | None = None) -> ControlReply:
        self.n += 1
        rid = rid or f"r{self.n}"
        before = sum(isinstance(m, ControlReply) for m in self.seen)
        self.pub("ctl.risk", ControlCommand(rid, command, list(args), T0))
        wait_for(lambda: sum(isinstance(m, ControlReply) for m in self.seen) > before)
        return [m for m in self.seen if isinstance(m, ControlReply)][-1]

    def of(self, cls: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, cls)]


@pytest.fixture
def bus(start_kernel: Callable[..., Kernel]) -> Callable[..., Bus]:
    def make(**risk: Any) -> Bus:
        cfg = {"state_interval_s": 0.0, **risk}
        k = start_kernel({"plugins": {"risk": cfg, "col": {}}}, {"col": collector})
        return Bus(k)

    return make


def test_orders_are_accepted_or_rejected_with_the_rule_and_numbers(bus) -> None:
    b = bus()
    assert b.of(RiskState)[0].state == "active"  # published at start
    no_book = b.decision(b.order())
    assert isinstance(no_book, OrderRejected) and no_book.rule == "no_market"
    b.book()
    ok = b.decision(b.order())
    assert isinstance(ok, OrderAccepted) and ok.ts_accepted_ns > 0
    big = b.decision(b.order(qty=SCALE * 6 // 10))
    assert isinstance(big, OrderRejected)
    assert (big.rule, big.reason) == ("max_order_size", "qty 0.6 > max_order_size 0.5")
    status = json.loads(b.command("status").body)
    assert status["accepted"] == 1
    assert status["rejected"] == {"no_market": 1, "max_order_size": 1}
    assert status["open_orders_total"] == 1
    assert status["positions"]["BTCUSDT"]["working_buy"] == SCALE // 10


def test_bad_input_is_rejected_logged_once_and_changes_nothing(bus, caplog) -> None:
    b = bus()
    b.book()
    first = b.order()
    assert isinstance(b.decision(first), OrderAccepted)
    before = json.loads(b.command("status").body)
    bad = [
        b.order(qty=0), b.order(qty=-5), b.order(symbol="NOPEUSDT"), b.order(px=60_000 * SCALE + 1),
        b.order(client_order_id=first.client_order_id), b.order(qty=0),
    ]  # fmt: skip
    rules = [b.decision(o).rule for o in bad]
    assert rules == ["bad_qty", "bad_qty", "unknown_symbol", "tick_size", "duplicate_id", "bad_qty"]
    b.pub("ord.request", Fill("x", "s1", "BTCUSDT", "buy", 1, 1, 1, 0, "maker", 0, 0, 0))
    after = json.loads(b.command("status").body)
    for key in ("positions", "open_orders", "accepted", "state", "kill_switch", "gross_exposure"):
        assert after[key] == before[key], key
    assert b.risk.bad_input == 1  # the Fill on ord.request
    logged = [r.getMessage() for r in caplog.records if "bad order input" in r.getMessage()]
    assert len(logged) == 3  # bad_qty, unknown_symbol, duplicate_id: once each, with a sample


def test_kill_switch_command_cancels_and_flattens(bus) -> None:
    b = bus(flatten_on_kill=True)
    b.book()
    long_ = b.order(qty=SCALE * 3 // 10)
    rest = b.order(qty=SCALE // 10)
    assert isinstance(b.decision(rest), OrderAccepted)
    # the first order is filled (0.3), the second still works
    b.pub("exec.fill", Fill(long_.client_order_id, "s1", "BTCUSDT", "buy", 1, 60_000 * SCALE,
                            SCALE * 3 // 10, 0, "taker", T0, T0, T0))  # fmt: skip
    reply = b.command("kill-switch", "on")
    assert reply.ok and reply.target == "risk"
    body = json.loads(reply.body)
    assert body["kill_switch"] is True and body["canceled"] == 2
    cancels = b.of(OrderCancel)
    assert {c.client_order_id for c in cancels} == {long_.client_order_id, rest.client_order_id}
    flat = [m for m in b.of(OrderAccepted) if m.order.strategy_id == "risk"]
    assert len(flat) == 1
    assert (flat[0].order.side, flat[0].order.qty, flat[0].order.order_type) == (
        "sell", SCALE * 3 // 10, "market"
    )  # fmt: skip
    assert flat[0].order.reduce_only
    assert b.of(RiskState)[-1].kill_switch is True
    # again (no broker here: nothing was cancelled or filled yet): no second flattening
    # order, and risk never cancels its own
    again = json.loads(b.command("kill-switch", "on").body)
    assert again["flatten"] == [
        {"symbol": "BTCUSDT", "qty": SCALE * 3 // 10, "skipped": "already flattening"}
    ]
    assert len([m for m in b.of(OrderAccepted) if m.order.strategy_id == "risk"]) == 1
    assert all(c.strategy_id == "s1" for c in b.of(OrderCancel))
    # the very next order is rejected
    nxt = b.decision(b.order())
    assert isinstance(nxt, OrderRejected) and nxt.rule == "kill_switch"
    assert b.command("kill-switch", "off").ok
    assert isinstance(b.decision(b.order(side="sell", px=60_000 * SCALE + 2 * 10**6)),
                      OrderAccepted)  # fmt: skip


def test_control_command_checks(bus) -> None:
    b = bus()
    before = json.loads(b.command("status").body)
    bad = b.command("explode")
    assert not bad.ok and "unknown command 'explode'" in json.loads(bad.body)["error"]
    assert not b.command("kill-switch", "maybe").ok
    assert not b.command("kill-switch", "on", "frobnicate").ok
    assert not b.command("state", "sleepy").ok
    after = json.loads(b.command("status").body)
    assert (after["state"], after["kill_switch"]) == (before["state"], before["kill_switch"])
    # a repeated request id is answered from the cache and done once
    r1 = b.command("kill-switch", "on", rid="same")
    r2 = b.command("kill-switch", "on", rid="same")
    assert r1 == r2
    assert sum(s.kill_switch for s in b.of(RiskState)) == 1  # one change, one state message


def test_circuit_breaker_on_loss_halts_then_operator_resumes(bus) -> None:
    b = bus(max_loss=100.0)
    b.book()

    def pos(pnl_usdt: str) -> None:
        value = int(float(pnl_usdt) * 100) * NOTIONAL_SCALE // 100
        b.pub("pos.BTCUSDT", Position("BTCUSDT", 0, 0, value, 0, 0, 0, 1, T0, T0))

    pos("-99.99")
    assert isinstance(b.decision(b.order()), OrderAccepted)
    pos("-100")
    states = b.of(RiskState)
    assert states[-1].state == "halted" and "loss 100.00 >= max_loss 100.00" in states[-1].reason
    rej = b.decision(b.order())
    assert isinstance(rej, OrderRejected) and rej.rule == "halted"
    assert b.command("state", "active").ok
    assert isinstance(b.decision(b.order()), OrderAccepted)


def test_circuit_breaker_on_drawdown(bus) -> None:
    b = bus(max_drawdown=50.0)
    b.book()
    b.pub("pos.BTCUSDT", Position("BTCUSDT", 0, 0, 80 * NOTIONAL_SCALE, 0, 0, 0, 1, T0, T0))
    b.pub("pos.BTCUSDT", Position("BTCUSDT", 0, 0, 31 * NOTIONAL_SCALE, 0, 0, 0, 1, T0, T0))
    assert b.of(RiskState)[-1].state == "active"  # 49 below the peak of 80
    # fees count: 31 - 1 = 30 is 50 below the peak
    b.pub("pos.BTCUSDT", Position("BTCUSDT", 0, 0, 31 * NOTIONAL_SCALE, 0, NOTIONAL_SCALE, 0, 2,
                                  T0, T0))  # fmt: skip
    assert b.of(RiskState)[-1].state == "halted"
    assert "drawdown 50.00 (peak 80.00, now 30.00)" in b.of(RiskState)[-1].reason


def test_circuit_breaker_on_too_many_rejects(bus) -> None:
    b = bus(max_rejects=3, reject_window_s=60.0)
    b.book()
    for _ in range(2):
        b.decision(b.order(qty=SCALE))
    assert b.of(RiskState)[-1].state == "active"
    b.decision(b.order(qty=SCALE))
    assert b.of(RiskState)[-1].state == "halted"
    assert "3 rejected orders within" in b.of(RiskState)[-1].reason


def test_reducing_state_from_the_operator(bus) -> None:
    b = bus()
    b.book()
    assert b.command("state", "reducing").ok
    rej = b.decision(b.order())
    assert isinstance(rej, OrderRejected) and rej.rule == "reducing"


@pytest.mark.parametrize(
    "risk, key",
    [
        ({"max_order_size": -1.0}, "plugins.risk.max_order_size"),
        ({"max_orders_per_second": 0.0}, "plugins.risk.max_orders_per_second"),
        ({"risk_gateway": "http://x"}, "plugins.risk.risk_gateway"),
        ({"filters_file": "nope.json"}, "plugins.risk.filters_file"),
        # a directory others may write to: anyone could put a gateway there
        ({"risk_gateway": "ipc:///tmp/tickbus-test-gw"}, "plugins.risk.risk_gateway"),
    ],
)
def test_config_errors_name_the_key(start_kernel, risk: dict[str, Any], key: str) -> None:
    with pytest.raises(TickbusError) as err:
        start_kernel({"plugins": {"risk": risk}})
    assert key in str(err.value)
    assert "[kernel]" not in str(err.value)  # the switch to name is the plugin's own


# --------------------------------------------------------------------------- replay


class Eager(Strategy):
    """Three orders per valid book: enough to meet the rate limit and the position limit."""

    Config = StrategyConfig

    def on_book(self, book: BookTop) -> None:
        if book.valid:
            for _ in range(3):
                self.buy(book.symbol, qty=self.to_qty("0.001"), px=book.bid_px)


def _backtest(rt: Path) -> tuple[list[tuple[Any, ...]], Kernel]:
    raw = {
        "kernel": {"clock": "replay", "status_interval_s": 0, "runtime_dir": str(rt)},
        "plugins": {
            "book": {"market": "spot", "depth": 5},
            "replay_feed": {"speed": 0.0, "exit_at_end": True},
            "risk": {"max_rejects": 0},  # before the strategy: it sees each book first
            "eager": {"plugin": "eager", "symbols": ["BTCUSDT"]},
            "col": {},
        },
    }
    k = Kernel(parse_config(raw, "bt.toml"), extra_plugins={"eager": strategy_plugin(Eager),
                                                             "col": collector})  # fmt: skip
    assert k.run(handle_signals=False) == 0
    seen = k.contexts["col"].component
    out = []
    for m in seen:
        if isinstance(m, OrderAccepted | OrderRejected):
            o = m.order
            out.append((type(m).__name__, getattr(m, "rule", ""), o.px, o.qty, o.ts_created_ns))
    return out, k


def test_decisions_replay_identically(rt) -> None:
    first, k = _backtest(rt)
    second, _ = _backtest(rt)
    rules = {r for _, r, *_ in first}
    assert {"", "rate_limit", "max_position"} <= rules, rules  # accepted and both limits met
    assert "no_market" not in rules  # risk saw every book before the strategy acted on it
    accepted = [d for d in first if d[0] == "OrderAccepted"]
    assert len(accepted) == 1000  # 1.0 BTC of 0.001 working buys, never filled here
    assert first == second


def test_status_fragment_and_periodic_state(bus) -> None:
    b = bus(state_interval_s=0.05)
    b.book()
    b.decision(b.order())
    b.decision(b.order(qty=SCALE))
    ctx = b.k.contexts["risk"]
    line = b.lane.call(b.k.manager.status, ctx)
    assert line.startswith("active; 1 accepted, 1 rejected (max_order_size 1); 1 working;"), line
    assert "gross 6000.00" in line
    n = len(b.of(RiskState))
    wait_for(lambda: len(b.of(RiskState)) >= n + 3)  # every 50 ms of clock time
    assert b.of(RiskState)[-1].open_orders == 1


# --------------------------------------------------------------------------- with the broker


class Trader(Strategy):
    """Every 5th valid book: a market order (buy/sell in turn), a passive limit at the touch,
    and a cancel of the oldest working order - fills, partial fills and cancels for risk."""

    Config = StrategyConfig
    n = 0

    def on_book(self, book: BookTop) -> None:
        if not book.valid:
            return
        self.n += 1
        if self.n % 5:
            return
        side = "buy" if self.n % 10 else "sell"
        qty = self.to_qty("0.002") if side == "buy" else self.to_qty("0.001")
        self.submit(book.symbol, side, qty, order_type="market", tif="IOC")
        px = book.bid_px if side == "buy" else book.ask_px
        self.submit(book.symbol, side, self.to_qty("0.001"), px=px)
        if len(self.orders) > 6:
            self.cancel(next(iter(self.orders)))


def test_risk_state_follows_the_paper_broker(rt: Path) -> None:
    """On real data through the real broker, risk's position (from fills) and working orders
    (from reports) equal the broker's, and its PnL is the broker's (pos.total not counted)."""
    last: dict[str, Any] = {}
    reports: dict[str, str] = {}

    class watch:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            ctx.subscribe("pos.", lambda p: last.__setitem__(p.symbol, p))
            ctx.subscribe("exec.report", lambda u: reports.__setitem__(u.client_order_id,
                                                                       u.status))  # fmt: skip

    raw = {
        "kernel": {"clock": "replay", "status_interval_s": 0, "runtime_dir": str(rt)},
        "plugins": {
            "book": {"market": "spot", "depth": 20},
            "replay_feed": {"speed": 0.0, "exit_at_end": True},
            "risk": {"max_rejects": 0, "price_band_bps": 0.0},
            "paper_broker": {"publish_total": True, "mark_interval_ms": 0.0},
            "trader": {"plugin": "trader", "symbols": ["BTCUSDT"]},
            "watch": {},
        },
    }
    k = Kernel(parse_config(raw, "bt.toml"), extra_plugins={"trader": strategy_plugin(Trader),
                                                            "watch": watch})  # fmt: skip
    assert k.run(handle_signals=False) == 0
    risk = k.contexts["risk"].component
    s = risk.engine.syms["BTCUSDT"]
    pos = last["BTCUSDT"]
    assert pos.fills > 50 and pos.qty != 0
    assert s.pos == pos.qty
    final = {"filled", "canceled", "expired", "rejected"}
    open_ = {cid for cid, st in reports.items() if st not in final}
    assert {cid for _sid, cid in risk.engine.working} == open_
    assert s.open_buy + s.open_sell == sum(w.leaves for w in risk.engine.working.values())
    assert risk.breaker.total == pos.realized_pnl + pos.unrealized_pnl - pos.fees
    assert "total" in last  # the broker did publish the sum: risk must not add it again
