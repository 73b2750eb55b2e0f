"""The order lifecycle in the paper broker: only legal transitions, each one an OrderUpdate;
duplicate ids, cancel, cancel-replace and bad orders answered with a reason and nothing else
disturbed; queue rules on hand-made books; latency; tick-to-trade; bad input; status."""

from __future__ import annotations

import itertools
import time

import msgspec
import pytest
from broker_support import Venue

from tickbus.plugins.broker.orders import TRANSITIONS, IllegalTransition, Order
from tickbus.schemas import SCALE, OrderAccepted, OrderRequest, Trade

STATES = ["new", "accepted", "partially_filled", "filled", "canceled", "expired", "rejected"]
# schemas.OrderUpdate: new -> accepted -> partially_filled* -> filled | canceled | expired;
# new -> rejected; accepted -> canceled | expired | rejected
LEGAL = {
    ("new", "accepted"), ("new", "rejected"),
    ("accepted", "partially_filled"), ("accepted", "filled"), ("accepted", "canceled"),
    ("accepted", "expired"), ("accepted", "rejected"),
    ("partially_filled", "partially_filled"), ("partially_filled", "filled"),
    ("partially_filled", "canceled"), ("partially_filled", "expired"),
}  # fmt: skip
P = 100 * SCALE  # a price of 100
Q = SCALE  # a quantity of 1


def request(cid: str = "c1", qty: int = Q) -> OrderRequest:
    return OrderRequest(cid, "s1", "BTCUSDT", "buy", "limit", "GTC", qty, P, 0, False, "", 1, 2)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(STATES, STATES)))
def test_only_legal_transitions_are_made(src: str, dst: str) -> None:
    order = Order(request())
    order.status = src  # type: ignore[assignment]
    if (src, dst) in LEGAL:
        order.to(dst)  # type: ignore[arg-type]
        assert order.status == dst
    else:
        with pytest.raises(IllegalTransition):
            order.to(dst)  # type: ignore[arg-type]
        assert order.status == src
    assert {(s, d) for s, nxt in TRANSITIONS.items() for d in nxt} == LEGAL


def test_a_fill_beyond_what_is_left_is_refused() -> None:
    order = Order(request(qty=3))
    order.to("accepted")
    order.add_fill(P, 2, 0)
    with pytest.raises(IllegalTransition):
        order.add_fill(P, 2, 0)
    assert (order.status, order.filled, order.leaves) == ("partially_filled", 2, 1)
    order.add_fill(P, 1, 0)
    with pytest.raises(IllegalTransition):
        order.to("canceled")


def book5(v: Venue, bid_qty: int = 5 * Q, ms: float = 1) -> None:
    """Bids 100, 99, 98 and asks 101, 102, 103 (1 each unless said)."""
    v.book([(P, bid_qty), (P - SCALE, Q), (P - 2 * SCALE, Q)],
           [(P + SCALE, Q), (P + 2 * SCALE, Q), (P + 3 * SCALE, Q)], ms=ms)  # fmt: skip


def transitions_are_legal(v: Venue, cid: str) -> list[str]:
    seq = ["new", *(u.status for u in v.driver.updates(cid))]
    assert all(pair in LEGAL for pair in itertools.pairwise(seq)), seq
    return seq[1:]


def test_every_transition_is_an_update_and_queue_rules_hold(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    a = v.order("buy", 2 * Q, P).client_order_id  # behind 5 at 100
    v.trade(P, 3 * Q, sell=True)  # 3 traded ahead of us: 2 left ahead
    assert v.driver.fills_of(a) == []
    book5(v, bid_qty=Q)  # the level shows 1: a cancel must have been ahead of us
    t = v.trade(P, 2 * Q, sell=True)  # 1 ahead, so 1 of 2 reaches us
    (f,) = v.driver.fills_of(a)
    assert (f.qty, f.px, f.liquidity, f.ts_recv_ns) == (Q, P, "maker", t.ts_recv_ns)
    v.trade(P + SCALE, 10 * Q, sell=False)  # a buy at the ask: not our side
    v.trade(P - SCALE, Q // 2, sell=True)  # through our price: fills up to its quantity
    v.trade(P - SCALE, Q, sell=True)
    assert [f.qty for f in v.driver.fills_of(a)] == [Q, Q // 2, Q // 2]
    assert transitions_are_legal(v, a) == [
        "accepted",
        "partially_filled",
        "partially_filled",
        "filled",
    ]
    assert v.broker.working == {}


def test_one_trade_never_fills_more_than_its_quantity(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v, bid_qty=Q)
    a = v.order("buy", Q, P).client_order_id
    b = v.order("buy", Q, P).client_order_id  # same level, behind a
    v.trade(P, 3 * Q // 2, sell=True)  # 1 ahead of both: 0.5 reaches a, nothing b
    assert [f.qty for f in v.driver.fills if f.client_order_id == a] == [Q // 2]
    assert v.driver.fills_of(b) == []
    v.trade(P, Q, sell=True)  # a's 0.5 first, then b gets 0.5
    assert [f.qty for f in v.driver.fills_of(a)] == [Q // 2, Q // 2]
    assert [f.qty for f in v.driver.fills_of(b)] == [Q // 2]


def test_a_book_through_our_price_fills_as_maker_up_to_what_it_shows(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    a = v.order("sell", 3 * Q, P + 2 * SCALE).client_order_id  # resting ask at 102
    # the bids move up through 102: 0.5 at 103, 1 at 102 would meet our ask
    v.book([(P + 3 * SCALE, Q // 2), (P + 2 * SCALE, Q), (P, Q)], [(P + 4 * SCALE, Q)])
    assert [(f.px, f.qty, f.liquidity) for f in v.driver.fills_of(a)] == [
        (P + 2 * SCALE, 3 * Q // 2, "maker")
    ]
    # the same book again: what we took stays taken
    v.book([(P + 3 * SCALE, Q // 2), (P + 2 * SCALE, Q), (P, Q)], [(P + 4 * SCALE, Q)])
    assert len(v.driver.fills_of(a)) == 1
    # more shows up at 103: only the new quantity is ours
    v.book([(P + 3 * SCALE, Q), (P + 2 * SCALE, Q), (P, Q)], [(P + 4 * SCALE, Q)])
    assert [f.qty for f in v.driver.fills_of(a)] == [3 * Q // 2, Q // 2]


def test_liquidity_we_took_stays_taken_until_the_market_consumes_it(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)  # asks 101, 102, 103: 1 each

    def buy() -> list[tuple[int, int]]:
        cid = v.order("buy", Q).client_order_id
        return [(f.px, f.qty) for f in v.driver.fills_of(cid)]

    assert buy() == [(P + SCALE, Q)]
    assert buy() == [(P + 2 * SCALE, Q)]  # 101 is ours now, whatever the book repeats
    book5(v)
    assert buy() == [(P + 3 * SCALE, Q)]
    v.trade(P + SCALE, Q // 2, sell=False)  # the market eats half of 101's front
    assert buy() == [(P + SCALE, Q // 2)]  # that half is the market's again, not the rest
    v.trade(P + 3 * SCALE, Q // 10, sell=False)  # a buy at 103: 101 and 102 went through
    assert buy() == [(P + SCALE, Q)]
    v.book([(P, Q)], [(P + 2 * SCALE, Q), (P + 3 * SCALE, Q)])  # 101 left the book
    v.book([(P, Q)], [(P + SCALE, Q), (P + 2 * SCALE, Q)])  # and came back: all available
    assert buy() == [(P + SCALE, Q)]


def test_the_prob_model_moves_up_on_cancels_the_risk_averse_one_does_not(start_kernel) -> None:
    results = {}
    for model in ("risk_averse", "prob"):
        v = Venue(start_kernel, queue_model=model, queue_prob_power=1.0)
        book5(v, bid_qty=4 * Q)
        a = v.order("buy", Q, P).client_order_id  # 4 ahead, nothing behind
        v.order("buy", Q, P - SCALE)
        book5(v, bid_qty=6 * Q)  # 2 joined behind us
        book5(v, bid_qty=3 * Q)  # 3 canceled: with 4 ahead and 2 behind
        v.trade(P, 2 * Q, sell=True)
        results[model] = sum(f.qty for f in v.driver.fills_of(a))
    # risk-averse: min(4, 3) = 3 ahead, the trade of 2 does not reach us;
    # prob (n=1): 3 x 4/6 = 2 of the cancels were ahead, 2 left, the trade of 2 does not
    # either - but one more share traded does
    assert results == {"risk_averse": 0, "prob": 0}
    v = Venue(start_kernel, queue_model="prob", queue_prob_power=1.0)
    book5(v, bid_qty=4 * Q)
    a = v.order("buy", Q, P).client_order_id
    book5(v, bid_qty=6 * Q)
    book5(v, bid_qty=3 * Q)
    v.trade(P, 5 * Q // 2, sell=True)
    assert [f.qty for f in v.driver.fills_of(a)] == [Q // 2]


def test_cancels_unknown_finished_and_twice(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    keep = v.order("buy", Q, P - SCALE).client_order_id
    a = v.order("buy", Q, P).client_order_id
    ahead_before = v.broker.working[("s1", keep)].ahead
    v.cancel(a)
    v.cancel(a)
    v.cancel("nope")
    v.cancel(keep, strategy="other")  # not that strategy's order
    ups = v.driver.updates(a)
    assert [u.status for u in ups] == ["accepted", "canceled", "rejected"]
    assert "already canceled" in ups[-1].reason
    (unknown,) = v.driver.updates("nope")
    assert unknown.status == "rejected" and "unknown" in unknown.reason
    other = [u for u in v.driver.updates(keep) if u.strategy_id == "other"]
    assert [u.status for u in other] == ["rejected"]
    # nothing else disturbed: the other order still works, same place in its queue
    assert v.status(keep) == "accepted" and list(v.broker.working) == [("s1", keep)]
    assert v.broker.working[("s1", keep)].ahead == ahead_before
    assert v.broker.stats["cancel_rejected"] == 3


def test_duplicate_ids_are_rejected_per_strategy(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    v.order("buy", Q, P - SCALE, cid="x")
    v.order("buy", Q, P - SCALE, cid="x")
    v.order("buy", Q, P - SCALE, cid="x", strategy="s2")
    ups = [(u.strategy_id, u.status) for u in v.driver.updates("x")]
    assert ups == [("s1", "accepted"), ("s1", "rejected"), ("s2", "accepted")]
    assert "duplicate" in v.driver.updates("x")[1].reason
    v.cancel("x")  # the original, not shadowed by the duplicate
    assert v.driver.updates("x")[-1].status == "canceled"
    v.order("buy", Q, P - SCALE, cid="x")  # finished ids stay used
    assert v.driver.updates("x")[-1].status == "rejected"


def test_cancel_replace(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    old = v.order("buy", 2 * Q, P - SCALE).client_order_id
    new = v.order("buy", Q, P - 2 * SCALE, replaces=old).client_order_id
    assert v.driver.updates(old)[-1].status == "canceled"
    assert v.driver.updates(old)[-1].reason == f"replaced by {new}"
    assert v.status(new) == "accepted"
    # replacing a filled order is refused, and the new one is not placed
    filled = v.order("buy", Q, P + SCALE).client_order_id  # takes the ask
    assert v.status(filled) == "filled"
    bad = v.order("buy", Q, P - SCALE, replaces=filled).client_order_id
    assert v.status(bad) == "rejected" and "already filled" in v.driver.updates(bad)[-1].reason
    ghost = v.order("buy", Q, P - SCALE, replaces="ghost").client_order_id
    assert v.status(ghost) == "rejected" and "unknown" in v.driver.updates(ghost)[-1].reason
    theirs = v.order("buy", Q, P - SCALE, replaces=new, strategy="s2").client_order_id
    assert v.status(theirs, "s2") == "rejected"
    assert v.status(new) == "accepted"  # another strategy cannot replace it


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({"qty": 0, "px": P}, "qty"),
        ({"qty": -Q, "px": P}, "qty"),
        ({"px": 0, "order_type": "limit"}, "price"),
        ({"px": P, "order_type": "market"}, "price"),
        ({"px": P, "tif": "GTD", "expire_at_ns": 1}, "expire_at"),
        ({"px": P - SCALE, "order_type": "post_only", "tif": "IOC"}, "tif"),
        ({"px": P + SCALE, "order_type": "post_only"}, "post_only"),
        ({"px": P, "symbol": "ETHUSDT"}, "no_book"),
        ({"px": P, "cid": ""}, "id"),
    ],
)
def test_bad_orders_are_rejected_with_a_reason_and_nothing_else_moves(
    start_kernel, kw: dict, kind: str
) -> None:
    v = Venue(start_kernel)
    book5(v)
    keep = v.order("sell", Q, P + 2 * SCALE).client_order_id
    kw = {"qty": Q, **kw}
    req = v.order("buy", kw.pop("qty"), kw.pop("px"), **kw)
    (up,) = v.driver.updates(req.client_order_id) or [None]
    assert up is not None and up.status == "rejected" and up.reason.startswith(f"{kind}: ")
    assert v.broker.reject_kinds == {kind: 1}
    assert list(v.broker.working) == [("s1", keep)] and v.driver.fills == []


def test_nothing_trades_on_an_invalid_book(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    v.book([], [], valid=False)
    req = v.order("buy", Q)
    assert v.status(req.client_order_id) == "rejected"
    assert "no valid book" in v.driver.updates(req.client_order_id)[-1].reason


def test_entry_and_response_latency_on_the_kernel_clock(start_kernel) -> None:
    v = Venue(start_kernel, entry_latency_ms=10, response_latency_ms=5)
    book5(v)
    t0 = v.ts
    a = v.order("buy", Q).client_order_id  # market: reaches the venue 10 ms later
    v.cancel(a)  # arrives after the order (FIFO): too late, it has filled
    book5(v, ms=4)  # still the same prices at t0+4
    v.book([(P, Q)], [(P + 5 * SCALE, Q)], ms=4)  # at t0+8 the ask is 105
    assert v.driver.reports == []
    v.advance(3)  # t0+11: the order arrived at t0+10, took 105; its reports are 5 ms away
    assert v.driver.reports == []
    v.advance(5)  # t0+16: the order's reports, and the cancel's answer
    ups = v.driver.updates(a)
    assert [u.status for u in ups] == ["accepted", "filled", "rejected"]
    assert "already filled" in ups[-1].reason
    assert [u.ts_update_ns for u in ups] == [t0 + 10_000_000] * 3
    assert v.driver.fills[0].px == P + 5 * SCALE


def test_gtd_expires_on_the_kernel_clock(start_kernel) -> None:
    v = Venue(start_kernel)
    book5(v)
    at = v.ts + 50_000_000
    a = v.order("buy", Q, P - 2 * SCALE, tif="GTD", expire_at_ns=at).client_order_id
    v.advance(49)
    assert v.status(a) == "accepted"
    v.advance(2)
    (up,) = [u for u in v.driver.updates(a) if u.status == "expired"]
    assert up.ts_update_ns == at and v.broker.working == {}


def test_tick_to_trade_is_recorded_on_a_live_clock_only(start_kernel) -> None:
    k = start_kernel({"plugins": {"paper_broker": {}}})
    broker = k.contexts["paper_broker"].component
    lane = k.lanes["main"]
    wall = time.time_ns() - 2_000_000  # the feed stamps ts_recv_ns with the wall clock
    mono = time.monotonic_ns() - 3_000_000  # ... the schema says monotonic: both work
    for i, ts in enumerate((wall, mono)):
        req = OrderRequest(f"c{i}", "s1", "BTCUSDT", "buy", "market", "IOC", Q, 0, 0, False, "",
                           ts, ts)  # fmt: skip
        lane.call(lane.publish, "ord.accepted", OrderAccepted(req, ts))
    lat = broker.tick_to_trade_ns()
    assert len(lat) == 2 and 2_000_000 <= lat[0] < 1_000_000_000
    assert 3_000_000 <= lat[1] < 1_000_000_000
    v = Venue(start_kernel)  # replay: ts_recv_ns is recorded time, nothing to measure
    book5(v)
    v.order("buy", Q)
    assert len(v.broker.tick_to_trade_ns()) == 0


def test_the_latency_ring_keeps_the_latest_samples(start_kernel) -> None:
    k = start_kernel({"plugins": {"paper_broker": {"latency_samples": 4}}})
    broker = k.contexts["paper_broker"].component
    for i in range(1, 11):  # receive times 1..10 s: each sample ~1 s shorter than the last
        broker._stamp(i * 10**9)
    lat = broker.tick_to_trade_ns()
    steps = [int(b - a) for a, b in itertools.pairwise(lat)]
    assert len(lat) == 4 and all(-(10**9) < s < -(10**9) + 10**8 for s in steps)  # 7..10, in order


def test_bad_input_is_counted_and_skipped(start_kernel, caplog) -> None:
    v = Venue(start_kernel)
    book5(v)
    a = v.order("buy", Q, P).client_order_id
    v._push("md.book.BTCUSDT", msgspec.structs.replace(v.driver.last_book, bids=b"\x01" * 17))
    v._push("ord.accepted", Trade("BTCUSDT", 1, P, Q, True, 0, 0))
    v.trade(P, 0, sell=True)
    v.trade(P, -Q, sell=True)
    assert v.broker.stats["bad"] == 4 and v.driver.fills_of(a) == []
    logged = [r.getMessage() for r in caplog.records if "skipped bad input" in r.getMessage()]
    assert len(logged) == 3, logged  # once per kind, with a sample
    req = v.order("buy", Q)  # the book was marked invalid: no trading until a good one
    assert v.status(req.client_order_id) == "rejected"
    book5(v)
    assert v.status(v.order("buy", Q).client_order_id) == "filled"
    assert v.status(a) == "accepted"


def test_status_fragment(start_kernel, caplog) -> None:
    v = Venue(start_kernel)
    book5(v)
    v.order("buy", Q)
    v.order("buy", Q, P - SCALE)
    with caplog.at_level("INFO", logger="tickbus"):
        v.k.log_status()  # the kernel's periodic status line, through the hook
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("status:")]
    assert "paper_broker: 1 working, 1 fills, 0 rejected; PnL " in line and "BTCUSDT 1" in line


def test_the_total_over_symbols_is_published_when_asked(start_kernel) -> None:
    v = Venue(start_kernel, publish_total=True, taker_fee_bps=10.0)
    book5(v)
    v.order("buy", Q)
    v.order("sell", Q // 2)
    per_symbol = [p for p in v.driver.positions if p.symbol == "BTCUSDT"]
    totals = [p for p in v.driver.positions if p.symbol == "total"]
    assert len(totals) == len(per_symbol) == 2
    last, tot = per_symbol[-1], totals[-1]
    assert (tot.realized_pnl, tot.unrealized_pnl, tot.fees, tot.fills) == (
        last.realized_pnl,
        last.unrealized_pnl,
        last.fees,
        last.fills,
    )
    assert tot.qty == 0 and last.qty == Q // 2


def test_the_used_ids_are_a_bounded_window_but_a_working_id_never_expires(start_kernel) -> None:
    """Memory stays flat over a long run: only the last ``dedup_window`` ids are kept
    (the soak grew ~150 bytes per order for ever before) - but an order still working is
    never shadowed by a new one with its id, however old it is."""
    v = Venue(start_kernel, dedup_window=3)
    book5(v)
    v.order("buy", Q, P - 5 * SCALE, cid="old")  # rests, working throughout
    for i in range(6):
        v.order("buy", Q, P - SCALE, cid=f"c{i}")
        v.cancel(f"c{i}")
    assert len(v.broker._ids) == 3
    v.order("buy", Q, P - SCALE, cid="c5")  # within the window: a duplicate
    assert v.driver.updates("c5")[-1].status == "rejected"
    v.order("buy", Q, P - SCALE, cid="old")  # out of the window, but working
    assert [u.status for u in v.driver.updates("old")] == ["accepted", "rejected"]
    assert ("s1", "old") in v.broker.working  # the original, not shadowed
