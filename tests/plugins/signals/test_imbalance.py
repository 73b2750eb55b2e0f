"""The imbalance strategy's rules, case by case, in a real in-process kernel on the replay
clock: threshold edge, clamp, confidence and its suppression reason, holding clamp, decay,
and the way from a signal to order requests (size, cap, touch/market, one intent, requote,
stale cancel, holding-period and flip exits, bad books, bad vectors)."""

from __future__ import annotations

import math

import pytest
from signals_harness import ASK, BID, T0, Harness

from tickbus.kernel import TickbusError
from tickbus.plugins.signals.imbalance import plugin
from tickbus.schemas import SCALE, OrderCancel, OrderRequest, Signal

# confidence is 1.0 with these (|momentum| >= 0.01, volatility <= 0.01): the rules of the
# signal itself are tested first, the confidence term separately
MOM, VOL = 0.02, 0.0


def h(start_kernel, **settings) -> Harness:
    return Harness(start_kernel, plugin, **settings)


def test_threshold_edge_and_clamp(start_kernel) -> None:
    x = h(start_kernel)
    x.tick(0.2999999, MOM, VOL, uid=1)
    assert x.of(Signal) == [], "below the threshold: no signal at all"
    x.tick(-0.2999999, MOM, VOL, uid=2)
    assert x.of(Signal) == []
    x.tick(0.3, MOM, VOL, uid=3)
    x.tick(-0.3, MOM, VOL, uid=4)
    x.tick(0.95, MOM, VOL, uid=5)
    x.tick(-1.0, MOM, VOL, uid=6)
    sigs = x.of(Signal)
    assert [(s.direction, s.strength) for s in sigs] == [(1, 1.0), (-1, -1.0), (1, 1.0), (-1, -1.0)]
    assert all(s.strategy_id == "s" and s.suppressed == "" for s in sigs)
    assert x.errors() == 0


def test_strength_is_imbalance_over_threshold_when_it_is_below_one(start_kernel) -> None:
    """|imbalance| >= threshold always gives |strength| 1 after the clamp; the decayed
    strength is what varies: strength_now halves every signal_decay_ms."""
    x = h(start_kernel, imbalance_threshold=0.25, signal_decay_ms=200)
    x.tick(0.5, MOM, VOL)
    assert x.of(Signal)[0].strength == 1.0
    assert x.s.strength_now("BTCUSDT") == 1.0
    x.after_ms(200)
    assert x.lane.call(x.s.strength_now, "BTCUSDT") == pytest.approx(0.5)
    x.after_ms(400)
    assert x.lane.call(x.s.strength_now, "BTCUSDT") == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("mom", "vol", "conf"),
    [
        (0.02, 0.0, 1.0),  # both terms saturate (volatility floored at 0.001)
        (0.005, 0.0, 0.75),  # momentum half way
        (-0.005, 0.0, 0.75),  # |momentum|
        (0.0, 0.02, 0.25),  # volatility twice the scale: 0.01 / 0.02
        (0.0, 0.0005, 0.5),  # floor: 0.01 / max(0.0005, 0.001) = 10 -> 1
        (0.0, 0.0, 0.5),
    ],
)
def test_confidence_formula_and_suppression_reason(start_kernel, mom, vol, conf) -> None:
    x = h(start_kernel)
    x.tick(0.4, mom, vol)
    (sig,) = x.of(Signal)
    assert sig.confidence == pytest.approx(conf)
    if conf < 0.7:
        assert sig.suppressed == f"confidence {sig.confidence:.4g} < min_confidence 0.7"
        assert x.of(OrderRequest) == [], "a suppressed signal never trades"
    else:
        assert sig.suppressed == ""
        assert len(x.of(OrderRequest)) == 1


def test_confidence_at_min_confidence_exactly_is_active(start_kernel) -> None:
    # scales that make the arithmetic exact in binary: (0.125/0.25 + 1) / 2 = 0.75
    x = h(start_kernel, momentum_scale=0.25, min_confidence=0.75)
    x.tick(0.4, 0.125, 0.0)
    assert x.of(Signal)[0].confidence == 0.75
    assert x.of(Signal)[0].suppressed == ""
    x2 = h(start_kernel, momentum_scale=0.25, min_confidence=0.75)
    x2.tick(0.4, 0.1249, 0.0)
    assert x2.of(Signal)[0].suppressed.startswith("confidence 0.7498 < min_confidence 0.75")


def test_scale_constants_are_parameters(start_kernel) -> None:
    x = h(start_kernel, momentum_scale=2e-5, volatility_scale=1e-8, volatility_floor=1e-9)
    x.tick(0.4, 1e-5, 2e-8)  # (0.5 + 0.5) / 2
    assert x.of(Signal)[0].confidence == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("imb", "settings", "ms"),
    [
        (0.3, {}, 3333),  # 1000 / 0.3
        (-0.5, {}, 2000),
        (1.0, {}, 1000),
        (0.005, {"imbalance_threshold": 0.001}, 10_000),  # 1000 / max(0.005, 0.01) = 1e5
        (1.0, {"holding_scale_ms": 50.0}, 100),  # clamped up to 100
        (0.2, {"imbalance_threshold": 0.1, "max_holding_ms": 4000}, 4000),
    ],
)
def test_holding_period_clamp(start_kernel, imb, settings, ms) -> None:
    x = h(start_kernel, **settings)
    x.tick(imb, MOM, VOL)
    assert x.of(Signal)[0].holding_period_ms == ms


def test_order_size_price_and_one_intent(start_kernel) -> None:
    x = h(start_kernel, max_position_size=0.8, order_size_fraction=0.5)
    x.tick(0.4, MOM, VOL, uid=1)
    (req,) = x.of(OrderRequest)
    assert (req.side, req.order_type, req.qty, req.px) == ("buy", "limit", SCALE * 4 // 10, BID)
    assert req.strategy_id == "s" and not req.reduce_only and req.replaces == ""
    assert req.ts_recv_ns == T0, "stamped with the tick that caused it"
    x.tick(0.5, MOM, VOL, uid=2)  # same direction, same touch: nothing new
    assert len(x.of(OrderRequest)) == 1
    x.tick(0.5, MOM, VOL, uid=3, bid=BID + SCALE)  # the touch moved: replace
    new = x.of(OrderRequest)[-1]
    assert (new.replaces, new.px, new.qty) == (req.client_order_id, BID + SCALE, req.qty)
    x.tick(-0.5, MOM, VOL, uid=4, bid=BID + SCALE)  # flat, signal flips: replace with a sell
    sell = x.of(OrderRequest)[-1]
    assert (sell.side, sell.replaces, sell.px) == ("sell", new.client_order_id, ASK)
    assert x.errors() == 0


@pytest.mark.parametrize(("mode", "side_px"), [("touch", (BID, ASK)), ("cross", (ASK, BID)),
                                               ("market", (0, 0))])  # fmt: skip
def test_price_modes(start_kernel, mode, side_px) -> None:
    for imb, px in zip((0.4, -0.4), side_px, strict=True):
        x = h(start_kernel, price_mode=mode)
        x.tick(imb, MOM, VOL)
        (req,) = x.of(OrderRequest)
        assert req.px == px
        assert req.order_type == ("market" if mode == "market" else "limit")


def test_position_never_exceeds_the_limit(start_kernel) -> None:
    x = h(start_kernel, max_position_size=1.0, order_size_fraction=0.7)
    x.tick(0.4, MOM, VOL, uid=1)
    first = x.of(OrderRequest)[-1]
    assert first.qty == SCALE * 7 // 10
    x.fill(first)
    assert x.s.net_qty("BTCUSDT") == first.qty
    x.tick(0.4, MOM, VOL, uid=2)
    second = x.of(OrderRequest)[-1]
    assert second.qty == SCALE * 3 // 10, "capped: 0.7 held + 0.3 = the limit"
    x.tick(0.4, MOM, VOL, uid=3)
    assert x.of(OrderRequest)[-1] is second, "working order counted against the limit"
    x.fill(second)
    x.tick(0.4, MOM, VOL, uid=4)
    assert x.of(OrderRequest)[-1] is second, "at the limit: no order"
    assert x.s.net_qty("BTCUSDT") == SCALE


def test_orders_asked_to_cancel_still_count_until_confirmed(start_kernel) -> None:
    x = h(start_kernel, max_position_size=1.0, order_size_fraction=0.6, signal_decay_ms=100)
    x.tick(0.4, MOM, VOL, uid=1)
    x.after_ms(150)  # stale: cancelled, not yet confirmed by a broker
    assert len(x.of(OrderCancel)) == 1
    x.tick(0.4, MOM, VOL, uid=2)
    assert x.of(OrderRequest)[-1].qty == SCALE * 4 // 10, "0.6 may still fill: 0.4 left"


def test_stale_entry_is_cancelled_after_the_signal_decays(start_kernel) -> None:
    x = h(start_kernel, signal_decay_ms=300, stale_strength=0.25)  # two half-lives
    x.tick(0.4, MOM, VOL)
    (req,) = x.of(OrderRequest)
    x.after_ms(599)
    assert x.of(OrderCancel) == []
    x.after_ms(1)
    (cancel,) = x.of(OrderCancel)
    assert cancel.client_order_id == req.client_order_id
    assert cancel.ts_created_ns == T0 + 600_000_000, "fired at its time on the kernel clock"
    assert x.s.counts["stale_cancels"] == 1


def test_a_fresh_signal_keeps_the_entry_alive(start_kernel) -> None:
    x = h(start_kernel, signal_decay_ms=300)
    x.tick(0.4, MOM, VOL, uid=1)
    x.after_ms(200)
    x.tick(0.4, MOM, VOL, uid=2)
    x.after_ms(200)
    assert x.of(OrderCancel) == []
    x.after_ms(100)
    assert len(x.of(OrderCancel)) == 1


def test_holding_period_exit(start_kernel) -> None:
    x = h(start_kernel, price_mode="market")
    x.tick(0.5, MOM, VOL)  # holding 2000 ms
    entry = x.of(OrderRequest)[-1]
    x.fill(entry)
    x.after_ms(1999)
    x.book(2)
    assert x.of(OrderRequest)[-1] is entry
    x.after_ms(1)
    ex = x.of(OrderRequest)[-1]
    assert (ex.side, ex.qty, ex.reduce_only, ex.order_type) == ("sell", entry.qty, True, "market")
    x.fill(ex)
    assert x.s.net_qty("BTCUSDT") == 0
    assert x.s.counts["exits"] == 1


def test_same_direction_signal_extends_the_holding_period(start_kernel) -> None:
    x = h(start_kernel, price_mode="market", max_position_size=0.5, order_size_fraction=1.0)
    x.tick(0.5, MOM, VOL, uid=1)  # 2000 ms
    x.fill(x.of(OrderRequest)[-1])
    x.after_ms(1500)
    x.tick(1.0, MOM, VOL, uid=2)  # at the limit: no order, but hold 1000 ms more from now
    n = len(x.of(OrderRequest))
    x.after_ms(999)
    assert len(x.of(OrderRequest)) == n
    x.after_ms(1)
    assert x.of(OrderRequest)[-1].reduce_only


def test_an_exit_deferred_by_a_stale_book_goes_out_on_the_next_book(start_kernel) -> None:
    x = h(start_kernel, stale_strength=0.0)  # entries never go stale here
    x.tick(0.5, MOM, VOL, uid=1)  # holding 2000 ms
    a = x.of(OrderRequest)[-1]
    x.fill(a)
    x.tick(0.5, MOM, VOL, uid=2)  # adds: b works at the touch
    b = x.of(OrderRequest)[-1]
    assert (b.side, b.qty) == ("buy", a.qty)
    x.after_ms(2000)  # holding over, but the last book is 2 s old: no order on it
    assert x.of(OrderRequest)[-1] is b
    x.book(3)
    ex = x.of(OrderRequest)[-1]
    assert (ex.side, ex.qty, ex.reduce_only, ex.replaces) == (
        "sell", a.qty, True, b.client_order_id,
    )  # fmt: skip


def test_flip_exits_the_position(start_kernel) -> None:
    x = h(start_kernel, exit_price_mode="touch")
    x.tick(0.5, MOM, VOL, uid=1)
    entry = x.of(OrderRequest)[-1]
    x.fill(entry)
    x.tick(-0.5, MOM, VOL, uid=2)
    ex = x.of(OrderRequest)[-1]
    assert (ex.side, ex.qty, ex.reduce_only, ex.px) == ("sell", entry.qty, True, ASK)
    x.tick(-0.6, MOM, VOL, uid=3)  # exiting: no new entry, no second exit
    assert x.of(OrderRequest)[-1] is ex
    x.tick(-0.6, MOM, VOL, uid=4, ask=ASK + SCALE)  # the exit is requoted at the touch
    assert (x.of(OrderRequest)[-1].px, x.of(OrderRequest)[-1].replaces) == (
        ASK + SCALE, ex.client_order_id,
    )  # fmt: skip


def test_partial_fill_then_flip_replaces_the_entry_with_the_exit(start_kernel) -> None:
    x = h(start_kernel)
    x.tick(0.5, MOM, VOL, uid=1)
    entry = x.of(OrderRequest)[-1]
    x.fill(entry, entry.qty // 5)
    x.tick(-0.5, MOM, VOL, uid=2)
    ex = x.of(OrderRequest)[-1]
    assert (ex.side, ex.qty, ex.replaces, ex.reduce_only) == (
        "sell", entry.qty // 5, entry.client_order_id, True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("invalid", "book invalid"),
        ("stale", "book stale: 1001 ms old > max_book_age_ms 1000"),
        ("empty", "book has an empty side"),
    ],
)
def test_never_on_a_bad_book(start_kernel, setup, reason) -> None:
    x = h(start_kernel)
    if setup == "invalid":
        x.book(-1, valid=False)
        x.feat(0.5, MOM, VOL, uid=-1)
    elif setup == "stale":
        x.book(1)
        x.after_ms(1001)
        x.feat(0.5, MOM, VOL, uid=1)
    else:
        x.book(1, bid=0)
        x.feat(0.5, MOM, VOL, uid=1)
    (sig,) = x.of(Signal)
    assert sig.suppressed == reason
    assert x.of(OrderRequest) == []


def test_in_a_replay_book_age_is_measured_at_the_message_not_the_replay_clock(
    start_kernel,
) -> None:
    """A strategy in a lane of its own lags the replay lane, whose position is the replay
    clock: its book is as old as the message it handles says, not as far as the replay got."""
    x = h(start_kernel)
    x.after_ms(5000)  # the replay lane is 5 s further
    x.tick(0.5, MOM, VOL, uid=1, t=T0)  # book and vector recorded at T0
    (sig,) = x.of(Signal)
    assert sig.suppressed == ""
    assert len(x.of(OrderRequest)) == 1


def test_no_book_yet_waits_for_the_book_of_the_vector(start_kernel) -> None:
    """features subscribed before the strategy: the vector arrives before our md.book
    handler saw its book; the decision waits for that book and prices on it."""
    x = h(start_kernel)
    x.feat(0.5, MOM, VOL, uid=7)
    assert x.of(Signal) == []
    x.book(7, bid=BID - SCALE)
    (sig,) = x.of(Signal)
    assert sig.suppressed == ""
    assert x.of(OrderRequest)[0].px == BID - SCALE
    x.feat(-0.5, MOM, VOL, uid=9)  # book 8 seen... not yet: 9 is pending
    x.book(8)
    assert len(x.of(Signal)) == 1
    x.book(9)
    assert len(x.of(Signal)) == 2


def test_invalid_book_cancels_the_working_entry(start_kernel) -> None:
    x = h(start_kernel)
    x.tick(0.5, MOM, VOL, uid=1)
    (req,) = x.of(OrderRequest)
    x.book(-1, valid=False)
    (cancel,) = x.of(OrderCancel)
    assert cancel.client_order_id == req.client_order_id


@pytest.mark.parametrize("field", ["imbalance", "momentum", "volatility"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_features_are_suppressed_never_traded(start_kernel, field, value) -> None:
    x = h(start_kernel)
    kw = {"imbalance": 0.5, "momentum": MOM, "volatility": VOL, field: value}
    x.book(1)
    x.feat(kw.pop("imbalance"), kw.pop("momentum"), kw.pop("volatility"), uid=1, **kw)
    (sig,) = x.of(Signal)
    assert sig.direction == 0 and sig.suppressed.startswith(f"non-finite feature {field}=")
    assert x.of(OrderRequest) == []
    assert x.s.counts["bad_features"] == 1
    assert x.lane.call(x.s.status).startswith("1 signals (1 suppressed, 1 bad vectors)")
    x.tick(0.5, MOM, VOL, uid=2)  # the next good vector trades
    assert len(x.of(OrderRequest)) == 1
    assert x.errors() == 0


def test_lot_size_floors_the_quantity(start_kernel) -> None:
    x = h(start_kernel, max_position_size=0.0123456, order_size_fraction=0.5, lot_size=0.0001)
    x.tick(0.5, MOM, VOL)
    assert x.of(OrderRequest)[0].qty == 61 * SCALE // 10_000


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("order_size_fraction", 1.5),
        ("order_size_fraction", 0.0),
        ("max_position_size", -1.0),
        ("min_confidence", 1.2),
        ("imbalance_threshold", 0.0),
        ("signal_decay_ms", 0.0),
        ("volatility_floor", 0.0),
        ("min_holding_ms", 0),
    ],
)
def test_bad_settings_are_one_line_errors(start_kernel, key, value) -> None:
    with pytest.raises(TickbusError, match=rf"plugins\.s\.{key}: must") as err:
        h(start_kernel, **{key: value})
    assert "\n" not in str(err.value)


def test_status_line(start_kernel) -> None:
    x = h(start_kernel)
    x.tick(0.5, MOM, VOL, uid=1)
    x.tick(0.5, 0.0, 0.05, uid=2)
    status = x.lane.call(x.s.status)
    assert status.startswith("2 signals (1 suppressed); 1 orders")


def test_a_symbol_that_only_shares_a_prefix_is_not_ours(start_kernel) -> None:
    """Topics are prefix subscriptions: ``feat.BTCUSD`` also receives ``feat.BTCUSDT``."""
    x = h(start_kernel, symbols=["BTCUSD"])
    x.tick(0.5, MOM, VOL, uid=1)  # BTCUSDT
    assert x.of(Signal) == [] and x.errors() == 0
    x.tick(0.5, MOM, VOL, uid=2, symbol="BTCUSD")
    assert [s.symbol for s in x.of(Signal)] == ["BTCUSD"]
    assert x.errors() == 0
