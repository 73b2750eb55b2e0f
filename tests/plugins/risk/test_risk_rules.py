"""The risk engine's rules: each accepts just inside its limit and rejects just outside, with
the rule and the numbers; bad input is rejected without disturbing anything else."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tickbus.kernel import to_fixed
from tickbus.plugins.risk import filters
from tickbus.plugins.risk.rules import Limits, RiskEngine
from tickbus.schemas import SCALE, BookTop, Fill, OrderRequest, OrderUpdate

T0 = 1_723_161_254_000_000_000
_ids = itertools.count(1)


def px(text: str) -> int:
    return to_fixed(text)


def limits(**kw: Any) -> Limits:
    base = dict(
        max_position=px("1"), max_order=px("0.5"), max_notional=px("100000") * SCALE,
        rate=10.0, burst=10, band_cbps=10_000, dedup_window=1000,
    )  # fmt: skip
    base.update(kw)
    return Limits(**base)


NO_MIN = filters.SymbolFilters(min_notional="0")


def engine(over: dict[str, filters.SymbolFilters] | None = None, **kw: Any) -> RiskEngine:
    """The bundled spot filters; min notional off unless ``over`` says otherwise (so each
    test meets only the rule it is about)."""
    over = {"BTCUSDT": NO_MIN, "ETHUSDT": NO_MIN} if over is None else over
    e = RiskEngine(limits(**kw), filters.load("spot", None, over, "plugins.risk"), T0)
    book(e, "60000.00", "60000.02")  # mid 60000.01
    book(e, "3000.00", "3000.02", "ETHUSDT")  # mid 3000.01
    return e


def book(e: RiskEngine, bid: str, ask: str, symbol: str = "BTCUSDT", valid: bool = True) -> None:
    e.on_book(BookTop(symbol, 1, valid, px(bid), SCALE, px(ask), SCALE, b"", b"", T0, T0))


def order(
    side: str = "buy", qty: str = "0.1", price: str = "60000.00", *, symbol: str = "BTCUSDT",
    order_type: str = "limit", cid: str | None = None, strategy: str = "s1",
    reduce_only: bool = False, replaces: str = "",
) -> OrderRequest:  # fmt: skip
    return OrderRequest(
        cid or f"c{next(_ids)}", strategy, symbol, side, order_type, "GTC", px(qty),
        px(price) if order_type != "market" else 0, 0, reduce_only, replaces, T0, T0,
    )  # type: ignore[arg-type]  # fmt: skip


def submit(e: RiskEngine, o: OrderRequest, now: int = T0) -> tuple[str, str] | None:
    verdict = e.check(o, now)
    if verdict is None:
        e.accept(o)
    return verdict


def fill(e: RiskEngine, o: OrderRequest, qty: str, price: str = "60000.00") -> None:
    e.on_fill(Fill(o.client_order_id, o.strategy_id, o.symbol, o.side, next(_ids), px(price),
                   px(qty), 0, "taker", T0, T0, T0))  # fmt: skip


def update(e: RiskEngine, o: OrderRequest, status: str, filled: str, leaves: str) -> None:
    e.on_update(OrderUpdate(o.client_order_id, o.strategy_id, o.symbol, o.side, o.order_type,
                            status, o.px, o.qty, px(filled), px(leaves), o.px, "", T0, T0))  # type: ignore[arg-type]  # fmt: skip


def rule(verdict: tuple[str, str] | None) -> str | None:
    return None if verdict is None else verdict[0]


# --------------------------------------------------------------------------- each rule


def test_max_order_size() -> None:
    e = engine()
    assert submit(e, order(qty="0.5")) is None
    verdict = submit(e, order(qty="0.50001"))
    assert verdict == ("max_order_size", "qty 0.50001 > max_order_size 0.5")


def test_max_position_counts_working_orders_on_the_same_side() -> None:
    e = engine()
    first = order(qty="0.5")
    assert submit(e, first) is None
    assert submit(e, order(qty="0.5")) is None  # 0 + 0.5 working + 0.5 = 1.0: at the limit
    verdict = submit(e, order(qty="0.00001"))
    assert rule(verdict) == "max_position"
    assert "position 0 + working buys 1 + order 0.00001 = 1.00001" in verdict[1]
    # a sell does not add to the buy side: short side 0 - 0.5 = -0.5 is inside
    assert submit(e, order("sell", "0.5", "60000.02")) is None
    # a fill moves quantity from working into the position: the projection is unchanged
    fill(e, first, "0.2")
    assert rule(submit(e, order(qty="0.00001"))) == "max_position"
    # the rest of the first order is cancelled: 0.3 of room again
    update(e, first, "canceled", "0.2", "0.3")
    assert submit(e, order(qty="0.3")) is None
    assert rule(submit(e, order(qty="0.00001"))) == "max_position"


def test_max_position_short_side() -> None:
    e = engine()
    assert submit(e, order("sell", "0.5", "60000.02")) is None
    assert submit(e, order("sell", "0.5", "60000.02")) is None
    verdict = submit(e, order("sell", "0.00001", "60000.02"))
    assert rule(verdict) == "max_position" and "= -1.00001" in verdict[1]


def test_max_notional_exposure_over_all_symbols_at_the_mid() -> None:
    # BTC mid 60000.01, ETH mid 3000.01; limit 33000.01 = 0.5 BTC + 1 ETH exactly
    e = engine(max_notional=px("33000.015") * SCALE, max_position=px("100"), max_order=px("10"))
    assert submit(e, order(qty="0.5")) is None  # 30000.005
    assert submit(e, order(qty="1", price="3000.00", symbol="ETHUSDT")) is None  # +3000.01
    assert e.gross == px("33000.015") * SCALE
    verdict = submit(e, order(qty="0.0001", price="3000.00", symbol="ETHUSDT"))
    assert rule(verdict) == "max_notional"
    assert (
        "gross exposure 33000.32" in verdict[1]
        and "> max_notional_exposure 33000.02" in (verdict[1])
    )
    # the mid moves down: the same positions are worth less, there is room again
    book(e, "2999.00", "2999.02", "ETHUSDT")
    assert submit(e, order(qty="0.0001", price="3000.00", symbol="ETHUSDT")) is None


def test_price_band() -> None:
    e = engine()  # 100 bps around mid 60000.01: |px - mid| <= 600.0001
    assert submit(e, order(price="60600.01")) is None
    assert rule(submit(e, order(price="60600.02"))) == "price_band"
    assert submit(e, order("sell", price="59400.01")) is None
    verdict = submit(e, order("sell", price="59400.00"))
    assert rule(verdict) == "price_band" and "price_band_bps 100" in verdict[1]


def test_tick_size_and_price_filter() -> None:
    e = engine()
    assert submit(e, order(price="60000.01")) is None
    verdict = submit(e, order(price="60000.015"))
    assert verdict == ("tick_size", "px 60000.015 not a multiple of tick 0.01")
    e2 = engine({"BTCUSDT": filters.SymbolFilters(max_price="61000", min_notional=0)}, band_cbps=0)
    assert submit(e2, order(price="61000.00")) is None
    assert rule(submit(e2, order(price="61000.01"))) == "price_filter"


def test_lot_size() -> None:
    e = engine()
    assert submit(e, order(qty="0.00001")) is None
    verdict = submit(e, order(qty="0.000015"))
    assert verdict == ("lot_size", "qty 0.000015 not a multiple of step 0.00001")
    e2 = engine({"BTCUSDT": filters.SymbolFilters(min_qty="0.001", max_qty="0.2", min_notional=0)})
    assert submit(e2, order(qty="0.001")) is None
    assert rule(submit(e2, order(qty="0.00099"))) == "lot_size"
    assert submit(e2, order(qty="0.2")) is None
    assert rule(submit(e2, order(qty="0.20001"))) == "lot_size"


def test_min_notional() -> None:
    e = engine({})
    book(e, "50000.00", "50000.02")  # spot min notional 10 USDT
    assert submit(e, order(qty="0.0002", price="50000.00")) is None  # 10.00 exactly
    verdict = submit(e, order(qty="0.00019", price="50000.00"))
    assert verdict == ("min_notional", "notional 9.50 < min_notional 10.00")
    # a market order is valued at the mid (50000.01)
    assert submit(e, order(qty="0.0002", order_type="market")) is None
    verdict = submit(e, order(qty="0.00019", order_type="market"))
    assert rule(verdict) == "min_notional" and "valued at the mid" in verdict[1]


def test_rate_limit_token_bucket_on_the_clock() -> None:
    e = engine(rate=10.0, burst=10, max_position=px("100"), max_order=px("1"))
    small = "0.001"
    assert all(submit(e, order(qty=small), T0) is None for _ in range(10))  # the burst
    verdict = submit(e, order(qty=small), T0)
    assert rule(verdict) == "rate_limit" and "more than 10 orders/s" in verdict[1]
    # one token per 100 ms of clock time, not a nanosecond earlier
    assert rule(submit(e, order(qty=small), T0 + 99_999_999)) == "rate_limit"
    assert submit(e, order(qty=small), T0 + 100_000_000) is None
    assert rule(submit(e, order(qty=small), T0 + 100_000_000)) == "rate_limit"


def test_rate_limit_holds_under_a_burst_over_time() -> None:
    """2,000 orders over 10 s of clock time at 2,000/s: exactly burst + 10/s x 10 s pass."""
    e = engine(rate=10.0, burst=10, max_position=px("1000"), max_order=px("1"))
    passed = sum(
        submit(e, order(qty="0.001"), T0 + i * 5_000_000) is None for i in range(2000)
    )  # last order at T0 + 9.995 s: 99 tokens refilled
    assert passed == 10 + 99


def test_rate_limit_is_not_consumed_by_rejected_orders() -> None:
    e = engine(burst=1)
    assert rule(submit(e, order(qty="0.6"))) == "max_order_size"
    assert submit(e, order(qty="0.1")) is None


def test_no_valid_book_no_order() -> None:
    e = engine()
    book(e, "60000.00", "60000.02", valid=False)
    verdict = submit(e, order())
    assert rule(verdict) == "no_market"
    book(e, "60000.00", "60000.02")
    assert submit(e, order()) is None


# --------------------------------------------------------------------------- trading state


def test_kill_switch_rejects_everything() -> None:
    e = engine()
    e.kill_switch = True
    assert submit(e, order()) == ("kill_switch", "kill switch is on")
    e.kill_switch = False
    assert submit(e, order()) is None


def test_halted_and_reducing() -> None:
    e = engine()
    buy = order(qty="0.3")
    assert submit(e, buy) is None
    fill(e, buy, "0.3")
    update(e, buy, "filled", "0.3", "0")
    e.set_state("halted", "circuit breaker: test")
    assert submit(e, order("sell", "0.1", "60000.02")) == (
        "halted", "trading halted: circuit breaker: test"
    )  # fmt: skip
    e.set_state("reducing", "operator")
    verdict = submit(e, order("buy", "0.1"))
    assert rule(verdict) == "reducing"
    # selling the long position down to exactly zero reduces; a hair more does not
    assert submit(e, order("sell", "0.2", "60000.02")) is None
    assert rule(submit(e, order("sell", "0.10001", "60000.02"))) == "reducing"
    assert submit(e, order("sell", "0.1", "60000.02")) is None


def test_reduce_only_flag() -> None:
    e = engine()
    assert rule(submit(e, order("sell", "0.1", "60000.02", reduce_only=True))) == "reduce_only"


def test_cancel_replace_counts_only_the_new_order() -> None:
    e = engine()
    old = order(qty="0.5", cid="a")
    assert submit(e, order(qty="0.5")) is None
    assert submit(e, old) is None  # working buys 1.0
    new = order(qty="0.4", cid="b", replaces="a")
    assert submit(e, new) is None  # 0.5 + 0.4: the old 0.5 no longer counts
    assert e.syms["BTCUSDT"].open_buy == px("0.9")
    assert ("s1", "a") not in e.working


# --------------------------------------------------------------------------- bad input


def snapshot(e: RiskEngine) -> tuple[Any, ...]:
    s = e.syms["BTCUSDT"]
    return (
        dict(e.working), s.pos, s.open_buy, s.open_sell, s.exp, e.gross, e.accepted,
        e.bucket.level, e.state, e.kill_switch,
    )  # fmt: skip


@pytest.mark.parametrize(
    "bad, expect",
    [
        (dict(qty="0"), "bad_qty"),
        (dict(qty="-0.1"), "bad_qty"),
        (dict(symbol="DOGEUSDT"), "unknown_symbol"),
        (dict(price="60000.001"), "tick_size"),
        (dict(price="0"), "bad_price"),
        (dict(cid="dup"), "duplicate_id"),
    ],
)
def test_bad_input_is_rejected_and_disturbs_nothing(bad: dict[str, Any], expect: str) -> None:
    e = engine()
    assert submit(e, order(cid="dup")) is None
    before = snapshot(e)
    verdict = submit(e, order(**bad))
    assert rule(verdict) == expect, verdict
    assert snapshot(e) == before


def test_a_duplicate_id_is_per_strategy() -> None:
    e = engine()
    assert submit(e, order(cid="x", strategy="a")) is None
    assert submit(e, order(cid="x", strategy="b")) is None
    assert rule(submit(e, order(cid="x", strategy="a"))) == "duplicate_id"


def test_duplicate_window_is_bounded() -> None:
    e = engine(dedup_window=3, max_position=px("100"), burst=100)
    for cid in "abcd":
        assert submit(e, order(qty="0.001", cid=cid)) is None
    assert len(e._seen) == 3
    assert submit(e, order(qty="0.001", cid="a")) is None  # forgotten after 3 newer ids
    assert rule(submit(e, order(qty="0.001", cid="d"))) == "duplicate_id"


# --------------------------------------------------------------------------- positions


@pytest.mark.parametrize("fill_first", [True, False])
def test_fills_and_reports_count_once_in_either_order(fill_first: bool) -> None:
    e = engine()
    o = order(qty="0.4")
    assert submit(e, o) is None
    steps = [
        lambda: fill(e, o, "0.1"),
        lambda: update(e, o, "partially_filled", "0.1", "0.3"),
        lambda: fill(e, o, "0.3"),
        lambda: update(e, o, "filled", "0.4", "0"),
    ]
    order_ = [0, 1, 2, 3] if fill_first else [1, 0, 3, 2]
    for i in order_:
        steps[i]()
    s = e.syms["BTCUSDT"]
    assert (s.pos, s.open_buy, len(e.working), e._late) == (px("0.4"), 0, 0, {})
    assert e.gross == px("0.4") * s.mid


def test_gross_exposure_follows_the_mid_exactly() -> None:
    e = engine()
    o = order(qty="0.3")
    submit(e, o)
    fill(e, o, "0.3")
    update(e, o, "filled", "0.3", "0")
    book(e, "61000.00", "61000.03")  # mid 61000.015 -> floor to 1e-8
    assert e.syms["BTCUSDT"].mid == px("61000.015")
    assert e.gross == px("0.3") * px("61000.015")
