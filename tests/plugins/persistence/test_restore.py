"""Restore at start: a real kernel with the persistence plugin writes a run (messages
published by a feeder plugin in its lane), a second kernel on the same database publishes
the restored state on ``restore.*`` before anything else starts."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from persistence_support import NO_ENDPOINTS, Feeder, probe

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.plugins.broker.positions import PositionBook
from tickbus.plugins.persistence.restore import Account
from tickbus.schemas import (
    SCALE,
    Fill,
    OrderAccepted,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    StrategySnapshot,
)

T0 = 1_723_000_000_000_000_000
PX = 60_000 * SCALE


def req(cid: str, side: str = "buy", qty: int = SCALE // 100, px: int = PX, *,
        replaces: str = "", sid: str = "s1") -> OrderRequest:  # fmt: skip
    return OrderRequest(cid, sid, "BTCUSDT", side, "limit", "GTC", qty, px, 0, False,  # type: ignore[arg-type]
                        replaces, T0, T0 + 1)  # fmt: skip


def update(o: OrderRequest, status: str, filled: int = 0, avg: int = 0) -> OrderUpdate:
    leaves = o.qty - filled if status in ("accepted", "partially_filled") else 0
    return OrderUpdate(o.client_order_id, o.strategy_id, o.symbol, o.side, o.order_type,
                       status, o.px, o.qty, filled, leaves, avg, "", T0, T0 + 5)  # type: ignore[arg-type]  # fmt: skip


_fill_ids = iter(range(1, 10**9))


def fill(o: OrderRequest, qty: int, px: int | None = None, fee: int = 7) -> Fill:
    return Fill(o.client_order_id, o.strategy_id, o.symbol, o.side, next(_fill_ids),
                o.px if px is None else px, qty, fee, "maker", T0, T0, T0 + 9)  # fmt: skip


def working(o: OrderRequest) -> list[tuple[str, Any]]:
    return [("ord.request", o), ("ord.accepted", OrderAccepted(o, T0 + 2)),
            ("exec.report", update(o, "accepted"))]  # fmt: skip


@pytest.fixture
def runs(start_kernel: Callable[..., Kernel], tmp_path: Path) -> Callable[..., list[Any]]:
    """``runs(msgs, clock="live", restore="auto")``: one kernel run on the test's database
    with ``msgs`` published at start; returns the restore.* messages it got."""
    db = tmp_path / "state.db"

    def run(msgs: list[tuple[str, Any]], clock: str = "live", restore: str = "auto",
            end: Callable[[Kernel], None] | None = None) -> list[Any]:  # fmt: skip
        raw = {
            "kernel": {"clock": clock},
            "bus": NO_ENDPOINTS,
            "plugins": {
                "persistence": {"path": str(db), "restore": restore},
                "probe": {},
                "feeder": {"after": ["persistence", "probe"]},
            },
        }
        k = start_kernel(raw, {"probe": probe, "feeder": Feeder(msgs)})
        seen = list(k.contexts["probe"].component)
        if end is not None:
            end(k)
        k.stop()
        return seen

    run.db = db  # type: ignore[attr-defined]
    return run


def of(seen: list[Any], cls: type) -> list[Any]:
    return [m for m in seen if type(m) is cls]


def test_a_first_run_restores_nothing_and_says_so(runs: Callable[..., list[Any]]) -> None:
    seen = runs([])
    assert [type(m).__name__ for m in seen] == ["Restored"]
    assert (seen[0].from_run, seen[0].positions, seen[0].orders) == (0, 0, 0)


def test_positions_are_the_committed_fills_folded_as_the_broker_does(
    runs: Callable[..., list[Any]],
) -> None:
    """Random fills both ways through zero: the restored position equals the broker's own
    exact accounting of the same fills (cost, realized, fees), whatever Position messages
    were published (here a stale one: the last committed position lags a fill)."""
    rng = random.Random(7)
    book = PositionBook("BTCUSDT")
    msgs: list[tuple[str, Any]] = []
    for i in range(300):
        o = req(f"o{i}", rng.choice(["buy", "sell"]), rng.randint(1, 5) * SCALE // 1000,
                PX + rng.randint(-500, 500) * SCALE // 100)  # fmt: skip
        f = fill(o, o.qty, fee=rng.randint(-3, 900_000))
        book.fill(o.side == "buy", f.px, f.qty, f.fee)
        msgs.append(("exec.fill", f))
        if i == 150:
            msgs.append(("pos.BTCUSDT", book.message(PX, T0, T0)))
    msgs.append(("pos.BTCUSDT", Position("BTCUSDT", 0, 0, 0, 0, 0, PX + 1, 151, T0, T0)))
    runs(msgs)
    [pos] = of(runs([]), Position)
    assert (pos.qty, pos.cost, pos.realized_pnl, pos.fees, pos.fills) == (
        book.qty, book.cost, book.realized, book.fees, book.fills)
    assert pos.mark_px == PX + 1  # the latest mark
    assert pos.unrealized_pnl == pos.qty * pos.mark_px - pos.cost


def test_account_matches_the_brokers_position_book_exactly() -> None:
    rng = random.Random(11)
    book, acc = PositionBook("X"), Account()
    for _ in range(5000):
        buy = rng.random() < 0.5
        px, qty, fee = rng.randint(1, 10**13), rng.randint(1, 10**9), rng.randint(-10**6, 10**9)
        book.fill(buy, px, qty, fee)
        acc.fill(buy, px, qty, fee)
        assert (acc.qty, acc.cost, acc.realized, acc.fees, acc.fills) == (
            book.qty, book.cost, book.realized, book.fees, book.fills)


def test_working_orders_are_restored_and_finished_ones_are_not(
    runs: Callable[..., list[Any]],
) -> None:
    a, b, c, d, e, f, g, h = (req(x) for x in "abcdefgh")
    g2 = req("g2", replaces="g")
    q = SCALE // 100
    msgs = [
        *working(a),                                                    # working
        *working(b), ("exec.fill", fill(b, q // 4, PX - 2)),            # partly: fill only
        *working(c), ("exec.fill", fill(c, q)),                         # filled, no report
        *working(d), ("exec.report", update(d, "canceled")),            # canceled
        ("ord.request", e), ("ord.rejected", OrderRejected(e, "max_order_size", "too big",
                                                           T0 + 2)),    # rejected by risk
        ("ord.request", f), ("ord.accepted", OrderAccepted(f, T0 + 2)),  # no broker report
        *working(g), *working(g2),                                      # g replaced by g2
        ("ord.request", h),                                             # risk never answered
    ]  # fmt: skip
    runs(msgs)
    seen = runs([])
    restored = {m.order.client_order_id: m for m in of(seen, OrderAccepted)}
    reports = {m.client_order_id: m for m in of(seen, OrderUpdate)}
    assert sorted(restored) == sorted(reports) == ["a", "b", "f", "g2"]
    assert restored["a"].order == a and restored["a"].ts_accepted_ns == T0 + 2
    rb = reports["b"]
    assert (rb.status, rb.filled_qty, rb.leaves_qty, rb.avg_px) == (
        "partially_filled", q // 4, q - q // 4, PX - 2)
    assert (reports["f"].status, reports["f"].filled_qty) == ("accepted", 0)
    # each order is announced, then its state
    kinds = [type(m).__name__ for m in seen]
    assert kinds[-1] == "Restored" and seen[-1].orders == 4
    i = kinds.index("OrderAccepted")
    assert kinds[i:i + 8] == ["OrderAccepted", "OrderUpdate"] * 4


def test_restored_orders_carry_over_to_the_next_restart(runs: Callable[..., list[Any]]) -> None:
    """Run 2 restores b (partly filled) and fills it a little more; run 3 restores it with
    both runs' fills - run 2's rows hold the copy it restored."""
    b = req("b")
    q = SCALE // 100
    runs([*working(b), ("exec.fill", fill(b, q // 4, PX))])
    runs([("exec.fill", fill(b, q // 4, PX - 4))])
    reports = of(runs([]), OrderUpdate)
    assert [(u.client_order_id, u.filled_qty, u.leaves_qty, u.avg_px) for u in reports] == [
        ("b", q // 2, q - q // 2, PX - 2)]


def test_positions_over_several_restarts_are_every_fill_since_the_start(
    runs: Callable[..., list[Any]],
) -> None:
    book = PositionBook("BTCUSDT")
    for n in range(3):
        msgs = []
        for i in range(5):
            o = req(f"r{n}-{i}", "buy" if i % 3 else "sell", (i + 1) * SCALE // 1000)
            f = fill(o, o.qty, fee=100 + i)
            book.fill(o.side == "buy", f.px, f.qty, f.fee)
            msgs.append(("exec.fill", f))
        seen = runs(msgs)
        if n:
            assert of(seen, Position)  # each restart restored the account so far
    [pos] = of(runs([]), Position)
    assert (pos.qty, pos.cost, pos.realized_pnl, pos.fees, pos.fills) == (
        book.qty, book.cost, book.realized, book.fees, book.fills)


def test_a_backtest_never_becomes_the_live_account(runs: Callable[..., list[Any]]) -> None:
    o = req("x")
    runs([("exec.fill", fill(o, SCALE))], clock="replay", restore="on")
    seen = runs([])  # live: the replay's fill is not this account's
    assert of(seen, Position) == [] and seen[-1].from_run == 0
    seen = runs([], clock="replay")  # restore "auto": a backtest starts from nothing
    assert seen == []
    seen = runs([], clock="replay", restore="on")
    assert [p.qty for p in of(seen, Position)] == [SCALE]


def test_the_latest_snapshot_of_each_strategy(runs: Callable[..., list[Any]]) -> None:
    runs([("snap.s1", StrategySnapshot("s1", '{"n": 1}', T0)),
          ("snap.s2", StrategySnapshot("s2", '{"n": 2}', T0)),
          ("snap.s1", StrategySnapshot("s1", '{"n": 3}', T0 + 1))])  # fmt: skip
    runs([("snap.s2", StrategySnapshot("s2", '{"n": 4}', T0 + 2))])
    seen = runs([])
    assert [(s.strategy_id, s.state) for s in of(seen, StrategySnapshot)] == [
        ("s1", '{"n": 3}'), ("s2", '{"n": 4}')]


def test_restore_comes_before_the_plugins_that_start_after_it(
    runs: Callable[..., list[Any]], start_kernel: Callable[..., Kernel]
) -> None:
    """A plugin with ``after = ["persistence"]`` in persistence's lane has every restored
    message when its own start hook runs."""
    o = req("a")
    runs([*working(o), ("exec.fill", fill(o, SCALE // 200))])

    class late:
        seen_at_start: list[str] = []

        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> list[Any]:
            seen: list[Any] = []
            ctx.subscribe("restore.", seen.append)
            return seen

        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            late.seen_at_start = [type(m).__name__ for m in ctx.component]

    k = start_kernel({
        "bus": NO_ENDPOINTS,
        "plugins": {"late": {"after": ["persistence"]},
                    "persistence": {"path": str(runs.db)}},  # type: ignore[attr-defined]
    }, {"late": late})  # fmt: skip
    k.stop()
    # the account's position, the working order, the strategy's own position, done
    assert late.seen_at_start == [
        "Position", "OrderAccepted", "OrderUpdate", "Position", "Restored"
    ]  # fmt: skip


def test_each_strategy_gets_its_own_position_back(
    start_kernel: Callable[..., Kernel], runs: Callable[..., list[Any]]
) -> None:
    """Two strategies in one symbol: the account nets them, each strategy's own position
    (``restore.net.<id>.<S>``) is its own fills folded - over several runs - so a strategy
    killed before its first snapshot still knows what it holds."""
    from persistence_support import net_probe

    a, b, c = req("a", "buy", sid="s1"), req("b", "sell", sid="s2"), req("c", "buy", sid="s1")
    runs([("exec.fill", fill(a, SCALE // 100, fee=5)), ("exec.fill", fill(b, SCALE // 50))])
    runs([("exec.fill", fill(c, SCALE // 200, PX + SCALE, fee=3))])
    k = start_kernel({
        "bus": NO_ENDPOINTS,
        "plugins": {"persistence": {"path": str(runs.db)},  # type: ignore[attr-defined]
                    "net": {}},
    }, {"net": net_probe})  # fmt: skip
    got = list(k.contexts["net"].component)
    k.stop()
    s1 = PositionBook("BTCUSDT")
    s1.fill(True, PX, SCALE // 100, 5)
    s1.fill(True, PX + SCALE, SCALE // 200, 3)
    assert [(p.symbol, p.qty, p.cost, p.fees, p.fills) for p in got] == [
        ("BTCUSDT", s1.qty, s1.cost, 8, 2),  # s1
        ("BTCUSDT", -SCALE // 50, -PX * SCALE // 50, 7, 1),  # s2
    ]
