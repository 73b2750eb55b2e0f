"""The paper broker's core: orders in, fills out, as the recorded or live market would have
filled them (fill models in :mod:`.matching`, the state machine in :mod:`.orders`, exact
positions in :mod:`.positions`).

:class:`PaperBroker` takes plain callables (publish, clock, ``call_at``), so the plugin wires
it to the bus and the benchmark drives it directly. Every handler runs on the broker's lane,
one message at a time: no locks.

Latency (kernel clock): an order or cancel reaches the simulated venue ``entry_latency_ms``
after the broker received it, and everything the venue says (``exec.report``,
``exec.fill``, ``pos.``) reaches the bus ``response_latency_ms`` later. Both are FIFO queues,
each entry popped by its own timer, so nothing overtakes anything else even if timers of the
same instant fire in another order.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

import msgspec
import numpy as np

from tickbus.kernel import TickbusError, from_fixed
from tickbus.schemas import (
    NOTIONAL_SCALE,
    SCALE,
    BookTop,
    Fill,
    Msg,
    OrderAccepted,
    OrderCancel,
    OrderRequest,
    OrderUpdate,
    Position,
    Trade,
)

from .matching import (
    UNKNOWN,
    QueueModel,
    SideBook,
    SideView,
    displayed_at,
    queue_fills,
    side_view,
    through_fills,
    walk,
)
from .orders import Order
from .positions import PositionBook, div_round, rate_of, total
from .restore import is_symbol, never_rests, order_problem, position_problem

_EPOCH_NS = 10**18
"""A receive time above this is wall-clock (epoch) time - 2001 in ns; a monotonic clock would
need 31 years of uptime - below it, monotonic."""


class BrokerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.paper_broker]``."""

    symbols: list[str] = msgspec.field(default_factory=list)
    """Only these symbols (upper case); empty: every symbol with a ``md.book``."""
    fill_model: Literal["queue", "touch"] = "queue"
    """``queue``: queue position from trades and book decreases; ``touch``: the original
    design's touch probability (``fill_probability_at_touch``, ``queue_position``)."""
    queue_model: Literal["risk_averse", "prob"] = "risk_averse"
    """``queue`` only: a decrease of the displayed quantity at our price counts as ahead of
    us only when it must (``risk_averse``), or with probability (``prob``)."""
    queue_prob_power: float = 2.0
    """``prob``: a decrease is ahead of us with probability front^n / (front^n + back^n)."""
    fill_probability_at_touch: float = 0.5
    """``touch``: chance that a trade reaching the order fills it."""
    queue_position: float = 0.5
    """``touch``: where a new order joins the displayed quantity (0 front, 1 back)."""
    adverse_selection_bps: float = 0.0
    """Taker fills are this much worse than the level's price (a maker fill is never worse
    than its limit: its adverse selection is in the queue model)."""
    maker_fee_bps: float = 10.0
    """Fee on a maker fill's notional (negative: a rebate). Binance spot default: 10."""
    taker_fee_bps: float = 10.0
    entry_latency_ms: float = 0.0
    """Order or cancel -> venue, on the kernel clock."""
    response_latency_ms: float = 0.0
    """Venue -> reports on the bus, on the kernel clock."""
    seed: int = 0
    """Seed of the only random source (``touch``): a replay is reproducible."""
    mark_interval_ms: float = 1000.0
    """An open position is marked to the mid on ``pos.<SYMBOL>`` at most this often (and
    after every fill); 0: on every book."""
    publish_total: bool = False
    """Also publish the sum over symbols on ``pos.total`` (symbol "total", qty 0) with each
    position (meaningful when the symbols share a quote asset)."""
    latency_samples: int = 65_536
    """Size of the tick-to-trade ring (live clock only)."""
    finished_memory: int = 10_000
    """Finished orders remembered to answer a late cancel or replace with their state
    (about 1 KB each: the cap is what keeps a long run's memory flat)."""
    dedup_window: int = 10_000
    """A client order id equal to a working one or to one of the last this many (per
    strategy) is a duplicate (as risk's ``dedup_window``; bounded so memory stays flat)."""

    def validate(self, key: str) -> None:
        """Raise TickbusError naming the first bad setting."""
        checks = [
            ("queue_prob_power", self.queue_prob_power >= 0),
            ("fill_probability_at_touch", 0 <= self.fill_probability_at_touch <= 1),
            ("queue_position", 0 <= self.queue_position <= 1),
            ("adverse_selection_bps", 0 <= self.adverse_selection_bps < 10_000),
            ("maker_fee_bps", -10_000 < self.maker_fee_bps < 10_000),
            ("taker_fee_bps", -10_000 < self.taker_fee_bps < 10_000),
            ("entry_latency_ms", 0 <= self.entry_latency_ms < 3_600_000),
            ("response_latency_ms", 0 <= self.response_latency_ms < 3_600_000),
            ("mark_interval_ms", 0 <= self.mark_interval_ms < 86_400_000),
            ("latency_samples", self.latency_samples >= 1),
            ("finished_memory", self.finished_memory >= 0),
            ("dedup_window", self.dedup_window >= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise TickbusError(f"{key}.{name}: out of range ({getattr(self, name)!r})")
        bad = [s for s in self.symbols if not is_symbol(s)]
        if bad:
            raise TickbusError(f"{key}.symbols: not upper-case symbols: {bad}")


class Market:
    """One symbol as the broker sees it: the latest book, its two sides as the broker keeps
    them (our resting orders, the liquidity we took), the position."""

    __slots__ = (
        "symbol", "valid", "book", "bid", "ask", "mid", "buys", "sells", "pos", "next_mark",
        "views",
    )  # fmt: skip

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.valid = False
        self.book: BookTop | None = None
        self.bid = self.ask = self.mid = 0
        self.buys = SideBook(True)
        """The bid side: our buy orders, what our sells took from the bids."""
        self.sells = SideBook(False)
        self.pos: PositionBook | None = None
        self.next_mark = 0
        self.views: list[SideView | None] = [None, None]

    def levels(self, bids: bool) -> SideView:
        """A side of the latest book, decoded once per book, when a cold path needs it."""
        i = 0 if bids else 1
        got = self.views[i]
        if got is None:
            assert self.book is not None
            got = self.views[i] = side_view(self.book.bids if bids else self.book.asks)
        return got


class PaperBroker:
    """Simulated venue + account for every strategy of the process."""

    def __init__(
        self,
        cfg: BrokerConfig,
        *,
        publish: Callable[[str, Msg], None],
        clock: Any,
        call_at: Callable[..., Any],
        log: logging.Logger | None = None,
        live: bool = False,
    ) -> None:
        self.cfg = cfg
        self._publish = publish
        self._now = clock.now_ns
        self._call_at = call_at
        self.log = log or logging.getLogger("tickbus.paper_broker")
        self.live = live
        """Live clock: tick-to-trade is recorded (in replay ``ts_recv_ns`` is recorded time)."""
        self._wanted = set(cfg.symbols)
        self.markets: dict[str, Market] = {}
        self.working: dict[tuple[str, str], Order] = {}
        self.finished: OrderedDict[tuple[str, str], Order] = OrderedDict()
        self._ids: set[tuple[str, str]] = set()
        self._id_window: deque[tuple[str, str]] = deque()  # _ids in the order they came
        self._fill_ids = itertools.count(1)
        kind = "touch" if cfg.fill_model == "touch" else cfg.queue_model
        self.model = QueueModel(
            kind, power=cfg.queue_prob_power, p_touch=cfg.fill_probability_at_touch,
            queue_position=cfg.queue_position, seed=cfg.seed,
        )  # fmt: skip
        self._prob = self.model.prob
        self._join = self.model.join if kind == "touch" else None
        maker, taker = rate_of(cfg.maker_fee_bps), rate_of(cfg.taker_fee_bps)
        self._maker = (maker.numerator, maker.denominator)
        self._taker = (taker.numerator, taker.denominator)
        slip = rate_of(cfg.adverse_selection_bps)
        self._slip_buy, self._slip_sell = 1 + slip, 1 - slip
        self._slipped = bool(slip)
        self._entry_ns = round(cfg.entry_latency_ms * 1e6)
        self._resp_ns = round(cfg.response_latency_ms * 1e6)
        self._mark_ns = round(cfg.mark_interval_ms * 1e6)
        self._inbox: deque[Msg] = deque()
        self._outbox: deque[tuple[str, Msg]] = deque()
        self._emit: Callable[[str, Msg], None] = self._emit_later if self._resp_ns else publish
        """Everything the venue says goes out through this (publish, or after the latency)."""
        self._stopping = False
        self.trading = False
        """The start hook ran: restore messages are refused from now on (:mod:`.restore`)."""
        self._held: Any = None
        """A ``restore.order`` waiting for its ``restore.report``."""
        self._expired_at_start: list[Order] = []
        """Restored orders that never rest, reported expired when trading starts."""
        self.stats: dict[str, int] = dict.fromkeys(
            ("orders", "accepted", "rejected", "fills", "canceled", "expired",
             "cancel_rejected", "bad", "restored_positions", "restored_orders",
             "restore_refused"), 0,
        )  # fmt: skip
        self.reject_kinds: dict[str, int] = {}
        self._bad_kinds: set[str] = set()
        # tick-to-trade: preallocated ring of accept time - the order's ts_recv_ns
        self._t2t = np.zeros(cfg.latency_samples, np.int64)
        self._t2t_n = 0
        self._wall_minus_perf = time.time_ns() - time.perf_counter_ns()

    # ------------------------------------------------------------------ handlers

    def on_book(self, book: BookTop) -> None:
        """``md.book.<S>``: queue positions, crossed resting orders, marks."""
        m = self.markets.get(book.symbol)
        if m is None:
            m = self._market(book.symbol)
            if m is None:
                return
        if not book.valid:
            m.valid = False
            return
        if len(book.bids) & 15 or len(book.asks) & 15:
            self._bad("book levels not packed (price, qty) int64 pairs", book)
            m.valid = False
            return
        m.book = book
        m.valid = True
        views = m.views
        views[0] = views[1] = None
        bid, ask = book.bid_px, book.ask_px
        m.bid, m.ask = bid, ask
        m.mid = (bid + ask) // 2 if bid > 0 and ask > 0 else bid or ask
        buys, sells = m.buys, m.sells
        b_on = buys.count or buys.nt
        s_on = sells.count or sells.nt
        if b_on and s_on:
            buys.scan_both(sells, book.bids, book.asks)
        elif b_on:
            buys.scan(book.bids)
        elif s_on:
            sells.scan(book.asks)
        if self._prob:
            if buys.count:
                self.model.cancels(buys)
            if sells.count:
                self.model.cancels(sells)
        if buys.count and buys.best >= ask > 0:
            self._cross(m, buys, book)
        if sells.count and sells.best <= bid:
            self._cross(m, sells, book)
        pos = m.pos
        if pos is not None and pos.qty:
            now = self._now()
            if now >= m.next_mark:
                self._emit_pos(m, pos, book.ts_recv_ns, now)

    def on_trade(self, trade: Trade) -> None:
        """``md.trade.<S>``: trades at and through our resting prices."""
        m = self.markets.get(trade.symbol)
        if m is None:
            return
        buy = trade.buyer_is_maker  # a sell hit the bids: our buys may fill
        side = m.buys if buy else m.sells
        if not (side.count or side.nt):
            return
        px = trade.px
        if trade.qty <= 0 or px <= 0:
            self._bad("trade with a quantity or price <= 0", trade)
            return
        if side.nt:
            side.traded(px, trade.qty)
        if (side.best >= px) if buy else (side.best <= px):
            self._trade_fills(m, side, trade)

    def on_accepted(self, msg: OrderAccepted) -> None:
        """``ord.accepted``: an order risk let through reaches the broker."""
        if type(msg) is not OrderAccepted:
            self._bad(f"{type(msg).__name__} on ord.accepted", msg)
            return
        if self.live:
            self._stamp(msg.order.ts_recv_ns)
        self.stats["orders"] += 1
        if self._entry_ns and not self._stopping:
            self._inbox.append(msg)
            self._call_at(self._now() + self._entry_ns, self._arrive)
        else:
            self._place(msg.order)

    def on_cancel(self, msg: OrderCancel) -> None:
        """``ord.cancel``: a strategy cancels a working order."""
        if type(msg) is not OrderCancel:
            self._bad(f"{type(msg).__name__} on ord.cancel", msg)
            return
        if self._entry_ns and not self._stopping:
            self._inbox.append(msg)
            self._call_at(self._now() + self._entry_ns, self._arrive)
        else:
            self._cancel(msg)

    # ------------------------------------------------------------------ restart

    def on_restore_pos(self, p: Position) -> None:
        """``restore.pos.<S>``: a symbol's account at the end of the earlier run."""
        problem = self._late() or position_problem(p) or self._symbol_problem(p.symbol)
        m = None if problem else self.markets.get(p.symbol)
        if m is not None and m.pos is not None:
            problem = f"{p.symbol} already has a position (restored twice?)"
        if problem:
            self._refuse("a position", problem, p)
            return
        m = m or self._market(p.symbol)
        assert m is not None
        m.pos = PositionBook.restored(p)
        self.stats["restored_positions"] += 1

    def on_restore_order(self, msg: OrderAccepted) -> None:
        """``restore.order``: a working order of the earlier run; its state follows at once
        on ``restore.report``."""
        self._unpaired()
        self._held = msg

    def on_restore_report(self, up: OrderUpdate) -> None:
        """``restore.report``: the state of the order just restored - it rests again."""
        held, self._held = self._held, None
        if held is None:
            self._refuse("an order", "restore.report without its restore.order", up)
            return
        problem = self._late() or order_problem(held, up) or self._order_problem(held.order)
        if problem:
            self._refuse("an order", problem, held, up)
            return
        r: OrderRequest = held.order
        order = Order(r)
        order.to("accepted")
        if up.filled_qty:
            order.to("partially_filled")
        order.filled, order.leaves = up.filled_qty, up.leaves_qty
        order.notional = up.avg_px * up.filled_qty  # the exact one is not restored
        self._use_id(order.key)
        if never_rests(r):
            # its owner, risk and the database must see it end, or it "works" for ever
            order.to("expired")
            self.stats["expired"] += 1
            self.stats["restored_orders"] += 1  # taken back, and ended at once
            self._remember(order)
            # reported at the start: every plugin has its restored copy by then, whatever
            # the order of their subscriptions
            self._expired_at_start.append(order)
            return
        self.working[order.key] = order
        m = self.markets.get(r.symbol) or self._market(r.symbol)
        assert m is not None
        self._rest(m, order)
        self.stats["restored_orders"] += 1

    def on_restore_done(self, msg: Any) -> None:
        """``restore.done`` (persistence's ``Restored``, read by field name): one line of
        what came back - an error if anything was refused, a warning if it came after the
        start even with nothing to restore (the broker does not wait for persistence)."""
        self._unpaired()
        counts = [getattr(msg, f, None) for f in ("from_run", "positions", "orders")]
        if not all(type(c) is int for c in counts):
            self._bad("restore.done without its counts", msg)
            return
        run, n_pos, n_ord = counts
        s = self.stats
        got_pos, got_ord, refused = (
            s["restored_positions"], s["restored_orders"], s["restore_refused"])  # fmt: skip
        lost = got_pos != n_pos or got_ord != n_ord or refused
        self.log.log(
            logging.ERROR if lost else logging.WARNING if self.trading else logging.INFO,
            "restored from %s: %d of %d position(s), %d of %d working order(s); %d restore "
            "message(s) refused%s", f"run {run}" if run else "no earlier run", got_pos, n_pos,
            got_ord, n_ord, refused,
            " (restore.done came after the start)" if self.trading else "",
        )  # fmt: skip

    def start(self) -> None:
        """The broker starts trading: from now on restore messages are refused."""
        self._unpaired()
        self.trading = True
        now = self._now()
        for order in self._expired_at_start:
            r = order.req
            self._publish("exec.report", order.update(
                f"restored from an earlier run: a {r.order_type} {r.tif} order does not survive"
                " a restart", r.ts_recv_ns, now))  # fmt: skip
        self._expired_at_start.clear()

    def _unpaired(self) -> None:
        """Refuse the ``restore.order`` held, if any: its ``restore.report`` never came."""
        if self._held is not None:
            self._refuse("an order", "restore.order without its restore.report", self._held)
            self._held = None

    def _late(self) -> str:
        if not self.trading:
            return ""
        return ("it arrived after the broker started trading (it would race the fills made "
                'since): list after = ["persistence"] in the broker\'s table')  # fmt: skip

    def _order_problem(self, r: OrderRequest) -> str:
        key = (r.strategy_id, r.client_order_id)
        if key in self._ids or key in self.working:
            return f"client_order_id {r.client_order_id} of {r.strategy_id} is already used"
        return self._symbol_problem(r.symbol)

    def _use_id(self, key: tuple[str, str]) -> None:
        """Remember an id as used: the last ``dedup_window`` (working ones always count)."""
        self._ids.add(key)
        window = self._id_window
        window.append(key)
        if len(window) > self.cfg.dedup_window:
            self._ids.discard(window.popleft())

    def _symbol_problem(self, symbol: str) -> str:
        if self._wanted and symbol not in self._wanted:
            return f"symbol {symbol!r} is not among this broker's symbols"
        if not is_symbol(symbol):
            return f"{symbol!r} is not a symbol"
        return ""

    def _refuse(self, what: str, why: str, *msgs: Any) -> None:
        """A restore message not taken back: one error line with all it said, counted."""
        self.stats["restore_refused"] += 1
        self.log.error("restore: refused %s: %s; it said %.2000r", what, why,
                       msgs[0] if len(msgs) == 1 else msgs)  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    def _arrive(self) -> None:
        """An order or cancel reaches the venue (entry latency elapsed), oldest first."""
        if not self._inbox:
            return  # flushed at stop
        msg = self._inbox.popleft()
        if type(msg) is OrderAccepted:
            self._place(msg.order)
        else:
            self._cancel(msg)  # type: ignore[arg-type]

    def _reject(self, order: Order, kind: str, reason: str, remember: bool = True) -> None:
        """new -> rejected; ``remember``: a later cancel of this id is told it was rejected
        (not for a duplicate id, which must not shadow the original order)."""
        order.to("rejected")
        self.stats["rejected"] += 1
        self.reject_kinds[kind] = self.reject_kinds.get(kind, 0) + 1
        self._emit("exec.report", order.update(f"{kind}: {reason}", order.req.ts_recv_ns,
                                               self._now()))  # fmt: skip
        if remember:
            self._remember(order)

    def _check(self, req: OrderRequest, m: Market | None) -> tuple[str, str]:
        """(kind, reason) why the venue refuses ``req``, or ("", "")."""
        if req.qty <= 0:
            return "qty", f"quantity {req.qty} <= 0"
        if req.order_type == "market":
            if req.px != 0:
                return "price", f"a market order has px 0 (got {req.px})"
        elif req.px <= 0:
            return "price", f"a {req.order_type} order needs a price > 0 (got {req.px})"
        if req.tif == "GTD" and req.expire_at_ns <= self._now():
            return "expire_at", (
                f"GTD expire_at_ns {req.expire_at_ns} is not after the clock's {self._now()}"
            )
        if req.order_type == "post_only" and req.tif in ("IOC", "FOK"):
            return "tif", f"post_only rests by definition; tif {req.tif} makes no sense"
        if m is None or not m.valid:
            return "no_book", f"no valid book for {req.symbol} (never trade on a wrong book)"
        if req.order_type == "post_only":
            px = from_fixed(req.px)
            if req.side == "buy" and 0 < m.ask <= req.px:
                return "post_only", f"buy at {px} would cross the ask {from_fixed(m.ask)}"
            if req.side == "sell" and req.px <= m.bid:
                return "post_only", f"sell at {px} would cross the bid {from_fixed(m.bid)}"
        return "", ""

    def _place(self, req: OrderRequest) -> None:
        """The venue receives an order: validate, replace, accept, execute."""
        order = Order(req)
        key = order.key
        if not req.client_order_id or not req.strategy_id:
            self._reject(order, "id", "client_order_id and strategy_id must not be empty",
                         remember=False)  # fmt: skip
            return
        if key in self._ids or key in self.working:
            self._reject(order, "duplicate", f"client_order_id {req.client_order_id} was "
                         f"already used by {req.strategy_id}", remember=False)  # fmt: skip
            return
        self._use_id(key)
        m = self.markets.get(req.symbol)
        kind, reason = self._check(req, m)
        if not kind and req.replaces:
            old = self.working.get((req.strategy_id, req.replaces))
            if old is None:
                done = self.finished.get((req.strategy_id, req.replaces))
                kind = "replace"
                reason = (
                    f"order {req.replaces} to replace is already {done.status}" if done
                    else f"order {req.replaces} to replace is unknown"
                )  # fmt: skip
            else:
                old.to("canceled")
                self.stats["canceled"] += 1
                self._finish(old)
                self._emit("exec.report", old.update(f"replaced by {req.client_order_id}",
                                                     req.ts_recv_ns, self._now()))  # fmt: skip
        if kind:
            self._reject(order, kind, reason)
            return
        assert m is not None
        order.to("accepted")
        self.stats["accepted"] += 1
        self.working[key] = order
        self._emit("exec.report", order.update("", req.ts_recv_ns, self._now()))
        kind = req.order_type
        limit = req.px if kind != "market" else 0
        buy = order.buy
        if kind != "market" and (limit < m.ask or m.ask <= 0 if buy else limit > m.bid):
            if req.tif == "GTC" or req.tif == "GTD" or kind == "post_only":
                self._rest(m, order)  # a passive order: nothing to take
                return
        fok = req.tif == "FOK"
        got = 0
        if not limit or (0 < m.ask <= limit if buy else limit <= m.bid):  # it takes
            other = m.sells if buy else m.buys
            fills = walk(m.levels(not buy)[0], order.leaves, limit, buy, other)
            got = sum(q for _, q in fills)
            if fok and got < order.leaves:
                fills = []
            if fills:
                other.take(fills)
            book = m.book
            assert book is not None
            for px, q in fills:
                self._fill(m, order, self._slip(px, buy), q, False, book.ts_exchange_ns,
                           req.ts_recv_ns)  # fmt: skip
        if not order.working:
            return
        if req.order_type == "market" or req.tif in ("IOC", "FOK"):
            what = "FOK" if fok else ("market order" if req.order_type == "market" else "IOC")
            order.to("canceled")
            self.stats["canceled"] += 1
            self._finish(order)
            upto = f" up to {from_fixed(limit)}" if limit else ""
            self._emit("exec.report", order.update(
                f"{what}: {from_fixed(order.leaves)} of {from_fixed(order.qty)} not filled "
                f"(displayed liquidity{upto}: {from_fixed(got)})", req.ts_recv_ns, self._now(),
            ))  # fmt: skip
            return
        self._rest(m, order)

    def _rest(self, m: Market, order: Order) -> None:
        """Put a (remainder of a) limit order in its price level's queue: behind what the
        book shows at its price, less what we took from it. Before any book (a restored
        order) it is behind an unknown quantity, which the first book that shows the level
        bounds: the back of the level then."""
        buy = order.buy
        if m.book is None:
            shown = UNKNOWN
        else:
            view = m.views[0 if buy else 1] or m.levels(buy)
            got = view[2].get(order.px)
            shown = displayed_at(view, order.px, buy) if got is None else got
        side = m.buys if buy else m.sells
        ahead = shown
        if side.nt and shown < UNKNOWN:
            ahead = max(side.available(order.px, shown), 0)
        side.add(order, shown, self._join(ahead) if self._join else ahead)
        if order.req.tif == "GTD":
            order.timer = self._call_at(order.req.expire_at_ns, self._expire, order)

    def _cancel(self, msg: OrderCancel) -> None:
        key = (msg.strategy_id, msg.client_order_id)
        order = self.working.get(key)
        now = self._now()
        if order is not None:
            order.to("canceled")
            self.stats["canceled"] += 1
            self._finish(order)
            self._emit("exec.report", order.update("canceled by the strategy",
                                                   order.req.ts_recv_ns, now))  # fmt: skip
            return
        self.stats["cancel_rejected"] += 1
        done = self.finished.get(key)
        if done is not None:
            r = done.req
            up = OrderUpdate(
                r.client_order_id, r.strategy_id, r.symbol, r.side, r.order_type, "rejected",
                r.px, r.qty, done.filled, 0, done.avg_px,
                f"cancel: order {r.client_order_id} is already {done.status}", r.ts_recv_ns, now,
            )  # fmt: skip
        else:  # nothing is known of it: side and type are placeholders, quantities 0
            up = OrderUpdate(
                msg.client_order_id, msg.strategy_id, msg.symbol, "buy", "limit", "rejected",
                0, 0, 0, 0, 0, f"cancel: unknown order {msg.client_order_id}", 0, now,
            )  # fmt: skip
        self._emit("exec.report", up)

    def _expire(self, order: Order) -> None:
        """A GTD order's time is up (kernel clock)."""
        if not order.working:
            return
        order.timer = None
        order.to("expired")
        self.stats["expired"] += 1
        self._finish(order)
        self._emit("exec.report", order.update(
            f"GTD: expired at {order.req.expire_at_ns}", order.req.ts_recv_ns, self._now()
        ))  # fmt: skip

    def _finish(self, order: Order) -> None:
        """``order`` reached a final state: out of the queue, the timers and the working set."""
        if order.level is not None:
            (self.markets[order.symbol].buys if order.buy else
             self.markets[order.symbol].sells).remove(order)  # fmt: skip
        if order.timer is not None:
            order.timer.cancel()
            order.timer = None
        self.working.pop(order.key, None)
        self._remember(order)

    def _remember(self, order: Order) -> None:
        if self.cfg.finished_memory:
            fin = self.finished
            fin[order.key] = order
            if len(fin) > self.cfg.finished_memory:
                fin.popitem(last=False)

    # ------------------------------------------------------------------ fills

    def _slip(self, px: int, buy: bool) -> int:
        """A taker fill's price after adverse selection, rounded against us."""
        if not self._slipped:
            return px
        f: Fraction = self._slip_buy if buy else self._slip_sell
        return -((-px * f.numerator) // f.denominator) if buy else px * f.numerator // f.denominator

    def _fill(
        self, m: Market, order: Order, px: int, qty: int, maker: bool, ts_exchange_ns: int,
        ts_recv_ns: int,
    ) -> None:  # fmt: skip
        """One execution: order state, fill, report, position."""
        num, den = self._maker if maker else self._taker
        fee = div_round(px * qty * num, den)  # fee_of, with the rate's terms at hand
        order.add_fill(px, qty, fee)
        now = self._now()
        r = order.req
        self.stats["fills"] += 1
        self._emit("exec.fill", Fill(
            r.client_order_id, r.strategy_id, r.symbol, r.side, next(self._fill_ids), px, qty,
            fee, "maker" if maker else "taker", ts_exchange_ns, ts_recv_ns, now,
        ))  # fmt: skip
        if not order.working:
            self._finish(order)
        self._emit("exec.report", order.update("", ts_recv_ns, now))
        pos = m.pos
        if pos is None:
            pos = m.pos = PositionBook(m.symbol)
        pos.fill(order.buy, px, qty, fee)
        self._emit_pos(m, pos, ts_recv_ns, now)

    def _emit_pos(self, m: Market, pos: PositionBook, ts_recv_ns: int, now: int) -> None:
        """Publish the position marked at the mid; the next mark is due an interval later."""
        m.next_mark = now + self._mark_ns
        mark = m.mid or pos.avg_px()
        self._emit(pos.topic, pos.message(mark, ts_recv_ns, now))
        if self.cfg.publish_total:
            self._emit("pos.total", self.total(ts_recv_ns, now))

    def _trade_fills(self, m: Market, side: SideBook, trade: Trade) -> None:
        """Fills of our resting orders on ``side`` from one trade (aggressor on the other
        side): through our better-priced levels first, then the queue at its price."""
        px, qty = trade.px, trade.qty
        fills: list[tuple[Order, int]] = []
        used = 0
        if side.best != px:  # we have levels better than the trade: it went through them
            for better in side.ordered():
                if (better.px <= px) if side.buy else (better.px >= px):
                    break
                got, used = through_fills(better.orders, qty, used)
                fills += got
        at = side.levels.get(px)
        if at is not None:
            side.settle(at)
            if self._prob:
                at.traded += qty
            got, used = queue_fills(at.orders, qty, used, self.model.gate)
            fills += got
        for order, q in fills:
            self._fill(m, order, order.px, q, True, trade.ts_exchange_ns, trade.ts_recv_ns)

    def _cross(self, m: Market, side: SideBook, book: BookTop) -> None:
        """The other side of the book reached our resting prices: those orders fill at their
        own price, as makers, from what is displayed there (minus what we took)."""
        levels = m.levels(not side.buy)[0]
        other = m.sells if side.buy else m.buys
        best_other = book.ask_px if side.buy else book.bid_px
        took: dict[int, int] = {}  # committed once at the end (a take rebuilds the state)
        fills: list[tuple[Order, int]] = []
        for lv in side.ordered():
            if (lv.px < best_other) if side.buy else (lv.px > best_other):
                break
            for order in lv.orders:
                got = walk(levels, order.leaves, lv.px, side.buy, other, took)
                if not got:
                    break  # nothing left to take at our prices
                for px, q in got:
                    took[px] = took.get(px, 0) + q
                fills.append((order, sum(q for _, q in got)))
        if took:
            other.take(list(took.items()))
        for order, q in fills:
            self._fill(m, order, order.px, q, True, book.ts_exchange_ns, book.ts_recv_ns)

    # ------------------------------------------------------------------ output

    def _emit_later(self, topic: str, msg: Msg) -> None:
        """``_emit`` with a response latency: out after it, in order."""
        self._outbox.append((topic, msg))
        self._call_at(self._now() + self._resp_ns, self._send_one)

    def _send_one(self) -> None:
        if self._outbox:
            self._publish(*self._outbox.popleft())

    def stop(self) -> None:
        """The engine stops: what is in flight arrives and is reported now (the kernel cancels
        timers after stop), and from now on there is no simulated latency."""
        self._stopping = True
        self._emit = self._publish
        while self._inbox:
            self._arrive()
        while self._outbox:
            self._send_one()

    # ------------------------------------------------------------------ state

    def _market(self, sym: str) -> Market | None:
        if self._wanted and sym not in self._wanted:
            return None
        m = self.markets[sym] = Market(sym)
        return m

    def _stamp(self, ts_recv_ns: int) -> None:
        """Record accept time - the causing tick's receive time (tick-to-trade), in the
        clock ``ts_recv_ns`` was taken on (epoch or monotonic, told apart by magnitude)."""
        now = time.perf_counter_ns()
        if ts_recv_ns <= 0:
            return
        if ts_recv_ns > _EPOCH_NS:
            now += self._wall_minus_perf
        ring = self._t2t
        ring[self._t2t_n % ring.shape[0]] = now - ts_recv_ns
        self._t2t_n += 1

    def tick_to_trade_ns(self) -> np.ndarray:
        """Tick-to-trade samples (ns, oldest first) of the orders accepted on a live clock:
        the broker's receipt of the order minus the ``ts_recv_ns`` of the tick that caused
        it. Empty in replay, where ``ts_recv_ns`` is recorded time."""
        ring, n = self._t2t, self._t2t_n
        size = ring.shape[0]
        if n <= size:
            return ring[:n].copy()
        i = n % size
        return np.concatenate((ring[i:], ring[:i]))

    def total(self, ts_recv_ns: int = 0, now: int = 0) -> Any:
        """The account over all symbols (a ``Position`` named "total")."""
        books = [m.pos for m in self.markets.values() if m.pos is not None]
        marks = {m.symbol: m.mid for m in self.markets.values()}
        return total(books, marks, ts_recv_ns, now or self._now())

    def status(self) -> str:
        """Short fragment for the status line."""
        s = self.stats
        tot = self.total()
        pnl = (tot.realized_pnl + tot.unrealized_pnl - tot.fees) / NOTIONAL_SCALE
        pos = ", ".join(
            f"{m.symbol} {m.pos.qty / SCALE:g}" for m in self.markets.values()
            if m.pos is not None and m.pos.qty
        )  # fmt: skip
        return (
            f"{len(self.working)} working, {s['fills']} fills, {s['rejected']} rejected; "
            f"PnL {pnl:+.2f} (fees {tot.fees / NOTIONAL_SCALE:.2f}){'; ' + pos if pos else ''}"
        )

    def _bad(self, kind: str, sample: Any) -> None:
        """Bad input: counted, logged once per kind, skipped."""
        self.stats["bad"] += 1
        if kind not in self._bad_kinds:
            self._bad_kinds.add(kind)
            self.log.warning("skipped bad input (%s): %.200r", kind, sample)
