"""The strategy API: a Strategy subclass becomes a plugin; callbacks get the bus messages;
orders carry the causing tick's receive time and unique ids; timers run on the clock."""

from __future__ import annotations

import time

import pytest

from tickbus.kernel import Strategy, StrategyConfig, TickbusError, strategy_plugin
from tickbus.schemas import (
    SCALE,
    BookTop,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
)


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


class Cfg(StrategyConfig):
    qty: float = 0.01


class Dipper(Strategy):
    """Buys at the bid once per valid book, tracks what comes back."""

    Config = Cfg

    def on_start(self) -> None:
        self.seen: list[object] = []

    def on_book(self, book: BookTop) -> None:
        if book.valid and not self.working(book.symbol):
            self.buy(book.symbol, self.to_qty(self.config.qty), px=book.bid_px)
            self.set_timer("again", 0.05, book.last_update_id)

    def on_order(self, update: OrderUpdate) -> None:
        self.seen.append(update)

    def on_fill(self, fill: Fill) -> None:
        self.seen.append(fill)

    def on_timer(self, name: str, payload: object) -> None:
        self.seen.append((name, payload))


def book(uid: int, recv: int, valid: bool = True) -> BookTop:
    return BookTop("BTCUSDT", uid, valid, 60_000 * SCALE, SCALE, 60_001 * SCALE, SCALE,
                   b"", b"", recv, recv)  # fmt: skip


def test_a_strategy_class_runs_as_a_plugin(start_kernel) -> None:
    k = start_kernel(
        {
            "plugins": {
                "dip": {"plugin": "dipper", "symbols": ["BTCUSDT"], "qty": 0.5},
                "tb_recorder": {"prefix": "ord."},
            }
        },
        {"dipper": strategy_plugin(Dipper)},
    )
    lane = k.lanes["main"]
    strat: Dipper = k.contexts["dip"].component
    rec = k.contexts["tb_recorder"].component
    lane.call(lane.publish, "md.book.BTCUSDT", book(1, 111, valid=False))
    lane.call(lane.publish, "md.book.BTCUSDT", book(2, 222))
    lane.call(lane.publish, "md.book.BTCUSDT", book(3, 333))  # one working order already
    wait_for(lambda: len(rec["objs"]) == 1)
    req = rec["objs"][0]
    assert isinstance(req, OrderRequest)
    assert (req.strategy_id, req.side, req.qty) == ("dip", "buy", SCALE // 2)
    assert req.px == 60_000 * SCALE
    assert req.ts_recv_ns == 222, "the order carries the receive time of the tick that caused it"
    assert req.client_order_id.startswith("dip-")
    # risk rejects it: the strategy sees a rejected update and forgets the order
    rej = OrderRejected(req, "max_order_size", "qty 0.5 > 0.4", 5)
    lane.call(lane.publish, "ord.rejected", rej)
    assert strat.orders == {}
    assert strat.seen[0].status == "rejected" and "max_order_size" in strat.seen[0].reason
    # a fill of another strategy is not ours
    other = Fill("x-1", "other", "BTCUSDT", "buy", 1, SCALE, SCALE, 0, "maker", 0, 0, 0)
    lane.call(lane.publish, "exec.fill", other)
    assert strat.net_qty("BTCUSDT") == 0
    wait_for(lambda: ("again", 2) in strat.seen)
    assert "1 orders" in strat.status()


def test_order_ids_are_unique_and_bad_orders_raise(start_kernel) -> None:
    k = start_kernel({"plugins": {"s": {"plugin": "dipper"}}}, {"dipper": strategy_plugin(Dipper)})
    s: Dipper = k.contexts["s"].component
    ids = {s.order_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    with pytest.raises(ValueError):
        k.lanes["main"].call(s.buy, "BTCUSDT", 0, 1)
    with pytest.raises(ValueError):
        k.lanes["main"].call(lambda: s.submit("BTCUSDT", "sell", 5, order_type="limit"))


def test_bad_symbols_in_config_are_one_line_errors(start_kernel) -> None:
    with pytest.raises(TickbusError, match="symbols"):
        start_kernel(
            {"plugins": {"s": {"plugin": "dipper", "symbols": ["btc/usdt"]}}},
            {"dipper": strategy_plugin(Dipper)},
        )


def test_only_strategy_classes_become_plugins() -> None:
    with pytest.raises(TypeError):
        strategy_plugin(object)  # type: ignore[arg-type]


class Keeper(Dipper):
    """Keeps a counter of books; saves and restores it."""

    def on_start(self) -> None:
        super().on_start()
        self.restored_before_start = getattr(self, "got", None)

    def on_book(self, book: BookTop) -> None:
        self.books_seen = getattr(self, "books_seen", 0) + 1

    def snapshot(self) -> object:
        return {"books": getattr(self, "books_seen", 0)}

    def restore(self, state: object) -> None:
        self.got = state


def test_snapshots_go_out_when_asked_and_at_stop_and_come_back_before_the_start(
    start_kernel,
) -> None:
    """Persistence asks on ctl.snapshot; the base publishes snap.<id> with the counters and
    ``snapshot()``; a restart hands that state to ``restore()`` before ``on_start``, and
    restored state arriving after the start is refused (it would race live orders)."""
    from tickbus.kernel import PluginContext, hookimpl
    from tickbus.schemas import ControlCommand, StrategySnapshot

    class snaps:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> list[StrategySnapshot]:
            got: list[StrategySnapshot] = []
            ctx.subscribe("snap.", got.append)
            return got

    k = start_kernel({"plugins": {"s": {"plugin": "keeper"}, "rec": {}}},
                     {"keeper": strategy_plugin(Keeper), "rec": snaps})  # fmt: skip
    lane = k.lanes["main"]
    for uid in (1, 2, 3):
        lane.call(lane.publish, "md.book.BTCUSDT", book(uid, uid))
    lane.call(lane.publish, "ctl.snapshot", ControlCommand("r1", "snapshot", [], 5))
    lane.call(lane.publish, "ctl.snapshot", ControlCommand("r2", "status", [], 5))  # not ours
    got = k.contexts["rec"].component
    assert len(got) == 1 and got[0].strategy_id == "s"
    saved = got[0]
    k.stop()
    assert len(got) == 2, "a last snapshot at the stop"

    class feeder:
        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            ctx.publish("restore.snap.s", saved)

    k2 = start_kernel({"plugins": {"f": {}, "s": {"plugin": "keeper", "after": ["f"]}}},
                      {"keeper": strategy_plugin(Keeper), "f": feeder})  # fmt: skip
    s2: Keeper = k2.contexts["s"].component
    assert s2.restored_before_start == {"books": 3}
    # after the start: refused, nothing applied
    lane2 = k2.lanes["main"]
    other = StrategySnapshot("s", '{"stats": {"orders": 99}, "state": {"books": 7}}', 9)
    lane2.call(lane2.publish, "restore.snap.s", other)
    assert s2.got == {"books": 3} and s2.stats["orders"] == 0
