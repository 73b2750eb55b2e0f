"""Fills on real recorded data: the bundled BTCUSDT sample replayed through replay_feed ->
book -> paper_broker on the replay clock. Aggressive fills equal a hand computation from the
book levels at that update id; passive orders never fill before the quantity ahead of them
has traded or been cancelled; post-only never takes; GTD expires on the replay clock; entry
latency picks the book in effect on arrival; every Position satisfies the PnL identity."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
from broker_support import Driver, replay

from tickbus.schemas import SCALE, BookTop, Fill, OrderUpdate, Position, Trade


def levels(packed: bytes) -> list[tuple[int, int]]:
    a = np.frombuffer(packed, "<i8").reshape(-1, 2)
    return [(int(p), int(q)) for p, q in a if p > 0]


def hand_walk(book_side: list[list[int]], qty: int, limit: int = 0, buy: bool = True):
    """Take ``qty`` from ``book_side`` ([[px, remaining], ...], best first, consumed in
    place) up to ``limit``: the fills, by hand."""
    out = []
    for lv in book_side:
        px, left = lv
        if qty == 0 or (limit and (px > limit if buy else px < limit)):
            break
        take = min(left, qty)
        if take:
            out.append((px, take))
            lv[1] -= take
            qty -= take
    return out


def fee10(px: int, qty: int) -> int:
    """10 bps of px x qty, rounded half away from zero, by hand."""
    exact = Fraction(px * qty, 1000)
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def test_aggressive_fills_equal_a_hand_computation(start_kernel) -> None:
    at: dict[str, Any] = {}

    def on_book(d: Driver, book: BookTop) -> None:
        if not book.valid or "book" in at:
            return
        at["n"] = at.get("n", 0) + 1
        if at["n"] < 300:
            return
        asks, bids = levels(book.asks), levels(book.bids)
        if len(asks) < 5 or asks[3][1] < 2 or len(bids) < 4:
            return
        at["book"] = book
        (a1, q1), (a2, q2), (a3, q3), (a4, q4), (a5, _) = asks[:5]
        b3 = bids[2][0]
        shown_bids = sum(q for _, q in bids)
        at["orders"] = {
            # FOK one unit more than shows up to a2: nothing; exactly that much: all of it
            "fok_short": d.order("buy", q1 + q2 + 1, a2, tif="FOK", cid="fok_short"),
            "fok_exact": d.order("buy", q1 + q2, a2, tif="FOK", cid="fok_exact"),
            # a market order walks on from where those fills left the book
            "market": d.order("buy", q3 + q4 // 2, cid="market"),
            # an IOC up to a5 for far more than shows: the rest is canceled
            "ioc": d.order("buy", 10 * SCALE, a5, tif="IOC", cid="ioc"),
            # the bids: an IOC sell down to b3, then a market sell of more than all shown
            "ioc_sell": d.order(
                "sell", bids[0][1] + bids[1][1] + SCALE, b3, tif="IOC", cid="ioc_sell"
            ),  # fmt: skip
            "market_sell": d.order("sell", shown_bids + SCALE, cid="market_sell"),
        }

    d = Driver(on_book)
    replay(start_kernel, d, taker_fee_bps=10.0)
    book: BookTop = at["book"]
    ask_side = [list(lv) for lv in levels(book.asks)]
    bid_side = [list(lv) for lv in levels(book.bids)]
    expect = {}
    for cid, req in at["orders"].items():
        side = ask_side if req.side == "buy" else bid_side
        if req.tif == "FOK":
            shown = sum(min(q, req.qty) for px, q in side if px <= req.px)
            if shown < req.qty:
                expect[cid] = []
                continue
        expect[cid] = hand_walk(side, req.qty, req.px, req.side == "buy")
    for cid, want in expect.items():
        got = d.fills_of(cid)
        assert [(f.px, f.qty) for f in got] == want, cid
        assert all(f.liquidity == "taker" and f.fee == fee10(f.px, f.qty) for f in got)
        assert all(f.ts_exchange_ns == book.ts_exchange_ns for f in got)
    assert len(expect["market"]) == 2 and len(expect["ioc"]) >= 2  # several prices each
    status = {cid: d.updates(cid)[-1] for cid in expect}
    assert status["fok_short"].status == "canceled" and status["fok_exact"].status == "filled"
    assert status["market"].status == "filled"
    for cid in ("ioc", "ioc_sell", "market_sell"):  # never more than the book displays
        assert status[cid].status == "canceled" and "not filled" in status[cid].reason
        assert sum(q for _, q in expect[cid]) < at["orders"][cid].qty


def test_entry_latency_fills_against_the_book_in_effect_on_arrival(start_kernel) -> None:
    sent: dict[str, Any] = {}

    def on_book(d: Driver, book: BookTop) -> None:
        if book.valid and "t" not in sent and book.last_update_id % 7 == 0 and len(d.log) > 3000:
            sent["t"] = d.now()
            sent["req"] = d.order("buy", 2 * SCALE, cid="late")

    d = Driver(on_book)
    replay(start_kernel, d, entry_latency_ms=250, response_latency_ms=100)
    arrive = sent["t"] + 250_000_000
    books = [m for m in d.log if isinstance(m, BookTop) and m.valid]
    in_effect = [b for b in books if b.ts_recv_ns < arrive][-1]
    at_send = [b for b in books if b.ts_recv_ns <= sent["t"]][-1]
    assert in_effect.last_update_id != at_send.last_update_id
    want = hand_walk([list(lv) for lv in levels(in_effect.asks)], 2 * SCALE)
    fills = d.fills_of("late")
    assert [(f.px, f.qty) for f in fills] == want
    assert all(f.ts_fill_ns == arrive for f in fills)
    # the reports reach the bus 100 ms after the venue made them
    first = d.log.index(fills[0])
    before = [m for m in d.log[:first] if isinstance(m, BookTop | Trade)][-1]
    after = next(m for m in d.log[first:] if isinstance(m, BookTop | Trade))
    assert before.ts_recv_ns < arrive + 100_000_000 <= after.ts_recv_ns


def first_fill_reference(log: list[Any], cid: str, optimistic: bool = False) -> int | None:
    """Where (log index of the market message) a passive order placed right after the book
    before its ``accepted`` update first fills, by the rule: trades at its price (aggressor
    on the other side) and cancels ahead of it consume the quantity displayed ahead of it
    when it joined; a trade or a book through its price fills it. Risk-averse: a decrease
    of the level is ahead of us only when less is displayed than we think is ahead;
    ``optimistic``: every decrease was ahead of us (the most any queue model may assume)."""
    i = next(k for k, m in enumerate(log) if isinstance(m, OrderUpdate)
             and m.client_order_id == cid and m.status == "accepted")  # fmt: skip
    acc = log[i]
    buy, px = acc.side == "buy", acc.px
    book = next(m for m in reversed(log[:i]) if isinstance(m, BookTop))
    own = levels(book.bids if buy else book.asks)
    shown = dict(own).get(px, 0)
    ahead = shown
    for k in range(i + 1, len(log)):
        m = log[k]
        if isinstance(m, OrderUpdate) and m.client_order_id == cid and m.status == "canceled":
            return None
        if isinstance(m, BookTop) and m.valid:
            other = levels(m.asks if buy else m.bids)
            if other and (other[0][0] <= px if buy else other[0][0] >= px):
                return k
            lv = levels(m.bids if buy else m.asks)
            full = len(lv) == len(m.bids if buy else m.asks) // 16
            if full and (px < lv[-1][0] if buy else px > lv[-1][0]):
                continue  # beyond the displayed depth
            q = dict(lv).get(px, 0)
            if optimistic and q < shown:
                ahead -= shown - q
            ahead = max(min(ahead, q), 0)
            shown = q
        elif isinstance(m, Trade) and m.buyer_is_maker == buy:
            if (m.px < px) if buy else (m.px > px):
                return k
            if m.px == px:
                if m.qty > ahead:
                    return k
                ahead -= m.qty
    return None


def passive_schedule(every: int = 150, keep: int = 120):
    """A driver that joins the touch every ``every`` books (buy at the bid, then sell at the
    ask, ...) and cancels after ``keep`` books if still working."""
    state = {"n": 0, "open": []}

    def on_book(d: Driver, book: BookTop) -> None:
        if not book.valid:
            return
        state["n"] += 1
        n = state["n"]
        for placed, cid in list(state["open"]):
            if n - placed == keep:
                d.cancel(cid)
                state["open"].remove((placed, cid))
        if n % every == 0:
            buy = (n // every) % 2 == 1
            cid = f"p{n}"
            d.order("buy" if buy else "sell", SCALE // 100, book.bid_px if buy else book.ask_px,
                    cid=cid)  # fmt: skip
            state["open"].append((n, cid))

    return on_book


def trigger(log: list[Any], fill: Fill) -> int:
    """Index of the market message a fill came from (the last one before it)."""
    k = log.index(fill)
    return next(i for i in range(k - 1, -1, -1) if isinstance(log[i], BookTop | Trade))


def test_passive_orders_never_fill_before_the_queue_ahead_is_gone(start_kernel) -> None:
    runs = {}
    for model in ("risk_averse", "prob"):
        d = Driver(passive_schedule())
        replay(start_kernel, d, queue_model=model, mark_interval_ms=500)
        runs[model] = d
    ra, prob = runs["risk_averse"], runs["prob"]
    cids = [r.client_order_id for _, r in ra.sent]
    assert cids == [r.client_order_id for _, r in prob.sent] and len(cids) >= 10
    filled = 0
    for cid in cids:
        ref = first_fill_reference(ra.log, cid)
        fills = ra.fills_of(cid)
        if ref is None:
            assert fills == [], cid
        else:  # risk-averse: exactly where the reference says, not a message earlier
            filled += 1
            assert trigger(ra.log, fills[0]) == ref, cid
        # prob: never before the most optimistic reading of the cancels (all of every
        # decrease ahead of us), never after the risk-averse reading
        pf = prob.fills_of(cid)
        opt = first_fill_reference(prob.log, cid, optimistic=True)
        averse = first_fill_reference(prob.log, cid)
        if not pf:
            assert averse is None, cid
            continue
        assert opt is not None and opt <= trigger(prob.log, pf[0]), cid
        assert averse is None or trigger(prob.log, pf[0]) <= averse, cid
    assert filled >= 3, "the sample must exercise passive fills"
    check_positions(ra)


def check_positions(d: Driver) -> None:
    """Every Position: qty is the sum of the fills so far, and realized + unrealized - fees
    == cash flow + qty x mark - fees, exactly; marks no closer than the interval."""
    qty = cash = fees = 0
    last_mark = None
    for m in d.log:
        if isinstance(m, Fill):
            dq = m.qty if m.side == "buy" else -m.qty
            qty += dq
            cash -= dq * m.px
            fees += m.fee
            last_mark = None
        elif isinstance(m, Position):
            assert m.qty == qty and m.fees == fees
            assert m.realized_pnl + m.unrealized_pnl - m.fees == cash + qty * m.mark_px - fees
            if last_mark is not None:
                assert m.ts_update_ns - last_mark >= 500_000_000
            last_mark = m.ts_update_ns


def test_post_only_never_takes(start_kernel) -> None:
    tick = SCALE // 100  # BTCUSDT's 0.01
    state = {"n": 0, "open": [], "cross": set(), "rest": set()}

    def on_book(d: Driver, book: BookTop) -> None:
        if not book.valid:
            return
        state["n"] += 1
        if state["n"] % 40:
            return
        for cid in state["open"]:
            d.cancel(cid)
        state["open"] = []
        n = state["n"]
        for side, px, crosses in (
            ("buy", book.bid_px, False), ("buy", book.bid_px - tick, False),
            ("buy", book.ask_px, True), ("buy", book.ask_px + 5 * tick, True),
            ("sell", book.ask_px, False), ("sell", book.ask_px + tick, False),
            ("sell", book.bid_px, True), ("sell", book.bid_px - 5 * tick, True),
        ):  # fmt: skip
            cid = f"{side}{n}_{px}"
            d.order(side, SCALE // 50, px, order_type="post_only", cid=cid)
            if crosses:
                state["cross"].add(cid)
            else:
                state["rest"].add(cid)
                state["open"].append(cid)

    d = Driver(on_book)
    replay(start_kernel, d)
    for cid in state["cross"]:
        (up,) = d.updates(cid)
        assert up.status == "rejected" and up.reason.startswith("post_only: "), up
    for cid in state["rest"]:
        assert d.updates(cid)[0].status == "accepted"
    assert d.fills and all(f.liquidity == "maker" for f in d.fills)
    orders = {r.client_order_id: r for _, r in d.sent}
    assert all(f.px == orders[f.client_order_id].px for f in d.fills)
    check_positions(d)


def test_gtd_expires_on_the_replay_clock(start_kernel) -> None:
    at: dict[str, Any] = {}

    def on_book(d: Driver, book: BookTop) -> None:
        if book.valid and "req" not in at and len(d.log) > 2000:
            at["exp"] = d.now() + 5_000_000_000
            at["req"] = d.order("buy", SCALE // 100, book.bid_px - 1000 * SCALE, tif="GTD",
                                expire_at_ns=at["exp"], cid="gtd")  # fmt: skip
            at["past"] = d.order("buy", SCALE // 100, book.bid_px - 1000 * SCALE, tif="GTD",
                                 expire_at_ns=d.now(), cid="gtd_past")  # fmt: skip

    d = Driver(on_book)
    replay(start_kernel, d)
    ups = d.updates("gtd")
    assert [u.status for u in ups] == ["accepted", "expired"]
    assert ups[-1].ts_update_ns == at["exp"]
    k = d.log.index(ups[-1])
    market = [m for m in d.log if isinstance(m, BookTop | Trade)]
    before = [m for m in d.log[:k] if isinstance(m, BookTop | Trade)][-1]
    assert before.ts_recv_ns < at["exp"] <= market[market.index(before) + 1].ts_recv_ns
    (past,) = d.updates("gtd_past")
    assert past.status == "rejected" and past.reason.startswith("expire_at: ")


def test_touch_model_is_reproducible_with_its_seed(start_kernel) -> None:
    def run(seed: int) -> list[tuple[str, int, int]]:
        d = Driver(passive_schedule(every=60, keep=50))
        replay(start_kernel, d, fill_model="touch", fill_probability_at_touch=0.3,
               queue_position=0.2, seed=seed)  # fmt: skip
        return [(f.client_order_id, f.qty, f.ts_recv_ns) for f in d.fills]

    a, b, c = run(7), run(7), run(8)
    assert a == b and a
    assert a != c


def test_same_replay_same_fills(start_kernel) -> None:
    """Determinism of the default model: two replays give identical output."""
    outs = []
    for _ in range(2):
        d = Driver(passive_schedule(every=100, keep=90))
        replay(start_kernel, d)
        outs.append([m for m in d.log if isinstance(m, Fill | OrderUpdate | Position)])
    assert outs[0] == outs[1] and any(isinstance(m, Fill) for m in outs[0])
