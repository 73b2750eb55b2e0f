"""Everything published during a replay with the strategy, risk and the paper broker
enabled is in the database, row for row: count and content, in arrival order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from persistence_support import (
    TABLE_OF,
    as_messages,
    builtins,
    everything,
    query,
    rejections,
    requests,
    trading_config,
)

from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.schemas import (
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
)

pytest.importorskip("tickbus.plugins.broker.plugin", reason="the paper broker (issue 8)")
pytest.importorskip("tickbus.plugins.signals.imbalance", reason="the strategies (issue 7)")


class Replayed(NamedTuple):
    db: Path
    published: list[Any]
    """In publish order."""
    on_bus: list[Any]
    """In the order the persistence lane received them."""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    rt = tmp_path_factory.mktemp("rt")
    db = rt / "trading.db"
    # a small batch: many commits during the replay, not one at the end
    raw = trading_config(rt, db, batch_rows=500)
    k = Kernel(parse_config(raw, "test.toml"), extra_plugins={"everything": everything})
    assert k.run(handle_signals=False) == 0
    return Replayed(db, k.contexts["published"].component, k.contexts["on_bus"].component)


def of(seen: list[Any], cls: type) -> list[Any]:
    return [m for m in seen if type(m) is cls]


def test_the_replay_traded(replayed: Replayed) -> None:
    seen = replayed.published
    kinds = {type(m).__name__ for m in seen}
    assert {"OrderRequest", "OrderAccepted", "OrderUpdate", "Fill", "Position", "Signal",
            "RiskState"} <= kinds, kinds  # fmt: skip
    assert len(of(seen, OrderUpdate)) > 50


@pytest.mark.parametrize("cls", list(TABLE_OF), ids=lambda c: c.__name__)
def test_every_journal_message_is_a_row_with_the_same_content(
    replayed: Replayed, cls: type
) -> None:
    db, seen = replayed.db, replayed.published
    published = of(seen, cls)
    stored = as_messages(db, TABLE_OF[cls], cls)
    assert len(stored) == len(published)
    assert builtins(stored) == builtins(published)


def test_every_order_request_is_an_orders_row(replayed: Replayed) -> None:
    db, seen = replayed.db, replayed.published
    assert builtins(requests(db)) == builtins(of(seen, OrderRequest))


def test_risk_decisions_are_recorded(replayed: Replayed) -> None:
    db, seen = replayed.db, replayed.published
    accepted = {(a.order.strategy_id, a.order.client_order_id): a.ts_accepted_ns
                for a in of(seen, OrderAccepted)}  # fmt: skip
    stored = {(s, c): t for s, c, t in query(
        db, "SELECT strategy_id, client_order_id, ts_accepted_ns FROM orders"
            " WHERE ts_accepted_ns IS NOT NULL")}  # fmt: skip
    assert stored == accepted
    assert builtins(rejections(db)) == builtins(of(seen, OrderRejected))


def test_each_order_row_holds_its_last_state(replayed: Replayed) -> None:
    """Its last state as published (the row only moves forward, whatever the arrival
    order of the messages about it)."""
    db, seen = replayed.db, replayed.published
    last: dict[tuple[str, str], tuple[Any, ...]] = {}
    for m in seen:
        if type(m) is OrderUpdate:
            last[(m.strategy_id, m.client_order_id)] = (
                m.status, m.filled_qty, m.leaves_qty, m.avg_px, m.reason, m.ts_update_ns)
        elif type(m) is OrderRejected:
            o = m.order
            last[(o.strategy_id, o.client_order_id)] = (
                "rejected", 0, 0, 0, f"{m.rule}: {m.reason}", m.ts_rejected_ns)
    stored = {(r[0], r[1]): tuple(r[2:]) for r in query(
        db, "SELECT strategy_id, client_order_id, status, filled_qty, leaves_qty, avg_px,"
            " reason, ts_updated_ns FROM orders")}  # fmt: skip
    assert stored == last


def test_seq_is_the_arrival_order_across_tables(replayed: Replayed) -> None:
    """``seq`` over the journal tables rebuilds the order in which the persistence lane
    received the messages (``orders`` rows carry the seq of the first message about them) -
    the publish order: a lane sends a message out before its own handlers publish what it
    causes, so other lanes get causes before effects."""
    db, seen = replayed.db, replayed.published
    names = {OrderRejected: "rejections", **TABLE_OF}
    expected = [names[type(m)] for m in seen if names.get(type(m))]
    union = " UNION ALL ".join(
        f"SELECT seq, '{t}' FROM {t}" for t in set(names.values()) if t
    )
    stored = [t for _, t in query(db, f"SELECT * FROM ({union}) ORDER BY seq")]
    assert stored == expected


def test_trades_add_up_to_the_account(replayed: Replayed) -> None:
    """Round trips: their PnL sums to the realized PnL after fees of the closed part."""
    db, seen = replayed.db, replayed.published
    last = of(seen, Position)[-1]
    trades = query(db, "SELECT realized_pnl, fees, pnl FROM trades")
    assert trades, "the replay closed no round trip"
    assert all(int(r) - int(f) == int(p) for r, f, p in trades)
    if last.qty == 0:
        assert sum(int(p) for _, _, p in trades) == last.realized_pnl - last.fees
    total = query(db, "SELECT net_pnl, trades FROM performance_metrics WHERE symbol = 'total'"
                      " ORDER BY seq DESC LIMIT 1")  # fmt: skip
    assert total == [(str(last.realized_pnl + last.unrealized_pnl - last.fees), len(trades))]


def test_the_run_is_recorded(replayed: Replayed) -> None:
    [(clock, stopped, reason)] = query(replayed.db,
                                       "SELECT clock, stopped_ns, exit_reason FROM runs")
    assert clock == "replay" and stopped and "replay finished" in reason


def test_cancels_exist(replayed: Replayed) -> None:
    assert of(replayed.published, OrderCancel), "no cancel: the cancels table is untested"
