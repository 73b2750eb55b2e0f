"""From a signal to order requests: what the built-in strategies share.

A :class:`SignalTrader` turns each ``feat.<SYMBOL>`` vector into a decision
(:meth:`SignalTrader.evaluate`, written by the concrete strategy), publishes it on
``sig.<SYMBOL>`` (a suppressed one with its reason), and trades an active one:

* **size** ``order_size_fraction x max_position_size``, capped so that the position plus
  every working order on that side (including orders asked to cancel and not yet confirmed)
  never exceeds ``max_position_size``; floored to ``lot_size`` when set;
* **price** (``price_mode``): ``touch`` = a limit at our side's best price (buy at the bid),
  ``cross`` = a limit at the other side's best price (buy at the ask), ``market``;
* **one working intent per symbol**: at most one order of ours per symbol is "the" order;
  a newer decision replaces it (cancel-replace), never adds a second one;
* **stale orders**: a working limit order whose price is off the touch is replaced at the
  new touch; an entry is cancelled once its signal has decayed (half-life
  ``signal_decay_ms`` on the kernel clock) to ``stale_strength`` of its initial strength, or
  the book turns invalid;
* **exits** (``exit_price_mode``, reduce-only): when the holding period of the latest
  signal ends (a timer on the kernel clock, armed at the entry fill and pushed back by every
  later signal in the same direction) or when an active signal points the other way;
* **never on a bad book**: no order while the symbol's book is missing, invalid, has an
  empty side, or is older than ``max_book_age_ms`` (kernel clock; in a replay, measured at
  the receive time of the message being handled - see :meth:`SignalTrader.event_now`,
  so a strategy in a lane of its own decides as it would in the replay's lane, as long as
  no timer is involved: timers of another lane fire when the replay passes their time,
  not in order with this lane's data); the signal is published
  suppressed with that reason. A feature vector with a NaN/inf in a field the strategy
  uses gives a suppressed signal (direction 0), is counted and logged once per field.

In one lane the bus is synchronous: a paper broker may fill an order inside our own
``submit`` call, so the fill/order callbacks only update state and timers, and the code
that submits reads the outcome from ``self.orders`` afterwards.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

from tickbus.kernel import PluginContext, ReplayClock, Strategy, StrategyConfig, TickbusError
from tickbus.schemas import SCALE, BookTop, FeatureVector, Fill, OrderUpdate, Side

PriceMode = Literal["touch", "cross", "market"]
_FINAL = frozenset({"filled", "canceled", "expired", "rejected"})


class TraderConfig(StrategyConfig, frozen=True):
    """Settings of every built-in strategy (the signal-to-order part)."""

    min_confidence: float = 0.7
    """Signals below this confidence are published suppressed, never traded."""
    signal_decay_ms: float = 500.0
    """Half-life of a signal's strength on the kernel clock."""
    stale_strength: float = 0.5
    """A working entry is cancelled once its signal's strength has decayed to this fraction
    of its initial value (0.5: after one ``signal_decay_ms`` half-life; 0: never)."""
    max_position_size: float = 1.0
    """Largest position per symbol, in base-asset units (BTC for BTCUSDT)."""
    order_size_fraction: float = 0.5
    """Entry size as a fraction of ``max_position_size``."""
    lot_size: float = 0.0
    """Order quantities are floored to a multiple of this (0: exact)."""
    price_mode: PriceMode = "touch"
    """Entries: ``touch`` (limit at our side's best), ``cross`` (limit at the other side's
    best) or ``market``."""
    exit_price_mode: PriceMode = "market"
    """Exits (holding period over, signal flipped), reduce-only."""
    max_book_age_ms: float = 1000.0
    """Never act on a book older than this (kernel clock; in a replay, the time of the
    message being handled; 0: no age limit)."""
    min_holding_ms: int = 100
    """Holding periods are clamped to [min_holding_ms, max_holding_ms]."""
    max_holding_ms: int = 10_000
    reject_backoff_ms: float = 1000.0
    """After a rejection (risk or broker), send nothing for this symbol for this long
    (kernel clock): an order risk refuses would be refused again on every book."""


class Decision(NamedTuple):
    """What :meth:`SignalTrader.evaluate` concluded from one feature vector."""

    direction: int
    """+1 buy, -1 sell."""
    strength: float
    """Signed, in [-1, 1]."""
    confidence: float
    holding_ms: int
    suppressed: str = ""
    """Why it must not be traded ("" = active)."""


class _Sym:
    """Per-symbol trading state."""

    __slots__ = ("intent", "pending", "sig_dir", "sig_strength", "sig_t_ns", "sig_hold_ms",
                 "exit_due", "exit_at_ns", "quiet_until_ns")  # fmt: skip

    def __init__(self) -> None:
        self.intent = ""
        """Client order id of the working intent ("" = none)."""
        self.pending: FeatureVector | None = None
        """A vector computed on a book update this strategy has not seen yet."""
        self.sig_dir = 0
        self.sig_strength = 0.0
        self.sig_t_ns = 0
        self.sig_hold_ms = 0
        self.exit_due = False
        self.exit_at_ns = 0
        self.quiet_until_ns = 0
        """No order before this (after a rejection)."""


class SignalTrader(Strategy):
    """Base of the built-in strategies: subclass it and write :meth:`evaluate`."""

    Config = TraderConfig
    uses: tuple[str, ...] = ()
    """FeatureVector fields :meth:`evaluate` reads (checked to be finite first)."""

    def __init__(self, ctx: PluginContext, config: Any) -> None:
        super().__init__(ctx, config)
        cfg: TraderConfig = config
        self._check(0.0 <= cfg.min_confidence <= 1.0, "min_confidence", "must be in [0, 1]")
        self._check(cfg.signal_decay_ms > 0, "signal_decay_ms", "must be > 0")
        self._check(0.0 <= cfg.stale_strength < 1.0, "stale_strength", "must be in [0, 1)")
        self._check(cfg.max_position_size > 0, "max_position_size", "must be > 0")
        self._check(
            0.0 < cfg.order_size_fraction <= 1.0, "order_size_fraction", "must be in (0, 1]"
        )
        self._check(cfg.lot_size >= 0, "lot_size", "must be >= 0")
        self._check(cfg.max_book_age_ms >= 0, "max_book_age_ms", "must be >= 0")
        self._check(
            0 < cfg.min_holding_ms <= cfg.max_holding_ms, "min_holding_ms",
            "must be > 0 and <= max_holding_ms",
        )  # fmt: skip
        self.limit = self.to_qty(cfg.max_position_size)
        self.lot = self.to_qty(cfg.lot_size)
        self.size = self._floor(self.to_qty(cfg.order_size_fraction * cfg.max_position_size))
        self._check(self.size > 0, "order_size_fraction", "gives an order size below one lot")
        self.max_age_ns = int(cfg.max_book_age_ms * 1e6)
        self.decay_ns = cfg.signal_decay_ms * 1e6
        self.stale_half_lives = -math.log2(cfg.stale_strength) if cfg.stale_strength else 0.0
        self.state = {s: _Sym() for s in self.symbols}
        self.counts = {"signals": 0, "suppressed": 0, "bad_features": 0, "exits": 0,
                       "requotes": 0, "stale_cancels": 0, "backoff": 0}  # fmt: skip
        self._warned: set[str] = set()
        self._replay = isinstance(ctx.clock, ReplayClock)
        self._event_ns = 0
        """Receive time of the message being handled (0: none, e.g. in a timer)."""

    def _check(self, ok: bool, key: str, what: str) -> None:
        if not ok:
            value = getattr(self.config, key)
            raise TickbusError(f"plugins.{self.id}.{key}: {what} (got {value!r})")

    # ------------------------------------------------------------------ to write

    def evaluate(self, fv: FeatureVector) -> Decision | None:
        """The strategy's view of one vector: None for no signal, else a Decision (with
        ``suppressed`` set if the strategy's own filters reject it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ signals

    def on_features(self, fv: FeatureVector) -> None:
        prev, self._event_ns = self._event_ns, fv.ts_recv_ns
        try:
            self._on_features(fv)
        finally:  # handlers nest in one lane (a broker may fill inside our submit)
            self._event_ns = prev

    def _on_features(self, fv: FeatureVector) -> None:
        st = self.state.get(fv.symbol)
        if st is None:  # feat.BTCUSD (a prefix) also delivers feat.BTCUSDT
            return
        book = self.books.get(fv.symbol)
        if book is None or book.last_update_id < fv.book_update_id:
            # features subscribed before us in this lane: our md.book handler runs next
            st.pending = fv
            return
        st.pending = None
        self.decide(fv)

    def decide(self, fv: FeatureVector) -> None:
        """Evaluate one vector, publish the signal, trade it if active."""
        for name in self.uses:
            value = getattr(fv, name)
            if not math.isfinite(value):
                self._bad(f"non-finite feature {name}={value}", fv)
                self.signal(fv.symbol, 0, 0.0, 0.0, 0, f"non-finite feature {name}={value}")
                self.counts["signals"] += 1
                self.counts["suppressed"] += 1
                return
        d = self.evaluate(fv)
        if d is None:
            return
        why = d.suppressed or self.book_problem(fv.symbol)
        self.signal(fv.symbol, d.direction, d.strength, d.confidence, d.holding_ms, why)
        self.counts["signals"] += 1
        if why:
            self.counts["suppressed"] += 1
            return
        self.act(fv.symbol, d)

    def book_problem(self, symbol: str) -> str:
        """Why the book of ``symbol`` must not be traded on ("" if it may)."""
        book = self.books.get(symbol)
        if book is None:
            return "no book yet"
        if not book.valid:
            return "book invalid"
        if book.bid_px <= 0 or book.ask_px <= 0:
            return "book has an empty side"
        # ts_recv_ns is on the monotonic clock live (the recorded time in a replay)
        now = self._event_ns if self._replay and self._event_ns else self.ctx.clock.mono_ns()
        age = now - book.ts_recv_ns
        if self.max_age_ns and age > self.max_age_ns:
            return (
                f"book stale: {age / 1e6:.0f} ms old > max_book_age_ms"
                f" {self.config.max_book_age_ms:g}"
            )
        return ""

    def event_now(self) -> int:
        """Now, for this strategy: live, the kernel clock; in a replay, the receive time of
        the message being handled (the replay clock is the replay lane's, which runs ahead
        of a strategy in a lane of its own), else (timers, queries) the clock - exact when
        the strategy shares the replay's lane, early by the lag when it does not."""
        if self._replay and self._event_ns:
            return self._event_ns
        return self.now_ns()

    def strength_now(self, symbol: str) -> float:
        """The latest active signal's strength, decayed to now (half-life
        ``signal_decay_ms``); 0.0 if there is none."""
        st = self.state[symbol]
        if not st.sig_dir:
            return 0.0
        return st.sig_strength * 0.5 ** ((self.event_now() - st.sig_t_ns) / self.decay_ns)

    # ------------------------------------------------------------------ trading

    def act(self, symbol: str, d: Decision) -> None:
        """Trade an active decision (the book was checked)."""
        st = self.state[symbol]
        pos = self.net_qty(symbol)
        if pos and (pos > 0) != (d.direction > 0):
            st.exit_due = True
            self.exit(symbol)
            return
        now = self.event_now()
        st.sig_dir, st.sig_strength, st.sig_t_ns, st.sig_hold_ms = (
            d.direction, d.strength, now, d.holding_ms,
        )  # fmt: skip
        if pos:
            if st.exit_due:
                return
            # the signal still says hold: push the exit back
            self._arm_exit(symbol, now + d.holding_ms * 1_000_000)
        side: Side = "buy" if d.direction > 0 else "sell"
        order = self.orders.get(st.intent)
        if order is not None:
            req = order.request
            if req.reduce_only:
                return  # an exit is working
            if req.side == side:
                self._arm_stale(symbol)
                self.requote(symbol)
                return
            qty = self.entry_qty(symbol, side, excluding=st.intent)
            if qty <= 0:
                self._drop_intent(symbol)
                return
            self._send(symbol, side, qty, self.config.price_mode, replaces=st.intent)
            self._arm_stale(symbol)
            return
        qty = self.entry_qty(symbol, side)
        if qty > 0:
            self._send(symbol, side, qty, self.config.price_mode)
            self._arm_stale(symbol)

    def entry_qty(self, symbol: str, side: Side, excluding: str = "") -> int:
        """The entry size, capped so that position + working orders on ``side`` stay within
        ``max_position_size`` (orders being replaced are not counted: the replacement is)."""
        pos = self.net_qty(symbol)
        exposure = pos if side == "buy" else -pos
        for cid, o in self.orders.items():
            r = o.request
            if (r.symbol == symbol and r.side == side and not r.reduce_only
                    and o.status != "replacing" and cid != excluding):  # fmt: skip
                exposure += o.leaves_qty
        return self._floor(min(self.size, self.limit - exposure))

    def exit(self, symbol: str) -> None:
        """Close the position (reduce-only), replacing any working entry; deferred to the
        next good book if this one may not be traded on."""
        st = self.state[symbol]
        pos = self.net_qty(symbol)
        if not pos:
            st.exit_due = False
            self._drop_intent(symbol)
            return
        if self.book_problem(symbol):
            return  # on_book retries
        side: Side = "sell" if pos > 0 else "buy"
        order = self.orders.get(st.intent)
        if order is not None and order.request.reduce_only and order.request.side == side:
            self.requote(symbol)
            return
        self.counts["exits"] += 1
        self._send(symbol, side, abs(pos), self.config.exit_price_mode,
                   replaces=st.intent if order is not None else "", reduce_only=True)  # fmt: skip

    def requote(self, symbol: str) -> None:
        """Replace the working limit order at the current touch if it is off it."""
        st = self.state[symbol]
        order = self.orders.get(st.intent)
        if order is None or order.request.order_type == "market" or order.status == "replacing":
            return
        req = order.request
        mode = self.config.exit_price_mode if req.reduce_only else self.config.price_mode
        px = self.price(symbol, req.side, mode)
        if px and px != req.px and order.leaves_qty > 0:
            self.counts["requotes"] += 1
            self._send(symbol, req.side, order.leaves_qty, mode, replaces=st.intent,
                       reduce_only=req.reduce_only)  # fmt: skip

    def price(self, symbol: str, side: Side, mode: PriceMode) -> int:
        """Limit price for ``mode`` from the current book (0 for market)."""
        if mode == "market":
            return 0
        book = self.books[symbol]
        near = (side == "buy") == (mode == "touch")
        return book.bid_px if near else book.ask_px

    def _send(self, symbol: str, side: Side, qty: int, mode: PriceMode, *,
              replaces: str = "", reduce_only: bool = False) -> None:  # fmt: skip
        st = self.state[symbol]
        if st.quiet_until_ns and self.ctx.clock.now_ns() < st.quiet_until_ns:
            self.counts["backoff"] += 1
            return
        px = self.price(symbol, side, mode)
        cid = self.submit(
            symbol, side, qty, px=px, order_type="market" if mode == "market" else "limit",
            replaces=replaces, reduce_only=reduce_only,
        )  # fmt: skip
        # an in-lane broker may have finished it inside submit()
        st.intent = cid if cid in self.orders else ""

    def _drop_intent(self, symbol: str) -> None:
        st = self.state[symbol]
        if st.intent in self.orders:
            self.cancel(st.intent)
        st.intent = ""

    def _floor(self, qty: int) -> int:
        if qty <= 0:
            return 0
        return qty - qty % self.lot if self.lot else qty

    # ------------------------------------------------------------------ timers

    def _arm_stale(self, symbol: str) -> None:
        """Cancel the entry when the signal has decayed to ``stale_strength`` of itself."""
        if self.stale_half_lives:
            self.set_timer(f"stale.{symbol}", self.stale_half_lives * self.decay_ns / 1e9, symbol)

    def _arm_exit(self, symbol: str, at_ns: int) -> None:
        st = self.state[symbol]
        if at_ns > st.exit_at_ns:
            st.exit_at_ns = at_ns
            self.set_timer(f"exit.{symbol}", (at_ns - self.event_now()) / 1e9, symbol)

    def on_timer(self, name: str, payload: Any) -> None:
        symbol: str = payload
        st = self.state[symbol]
        if name.startswith("stale."):
            order = self.orders.get(st.intent)
            if order is not None and not order.request.reduce_only:
                self.counts["stale_cancels"] += 1
                self._drop_intent(symbol)
        elif name.startswith("exit."):
            st.exit_at_ns = 0
            if self.net_qty(symbol):
                st.exit_due = True
                self.exit(symbol)

    # ------------------------------------------------------------------ events

    def on_book(self, book: BookTop) -> None:
        prev, self._event_ns = self._event_ns, book.ts_recv_ns
        try:
            self._on_book(book)
        finally:
            self._event_ns = prev

    def _on_book(self, book: BookTop) -> None:
        st = self.state.get(book.symbol)
        if st is None:  # only shares a prefix with one of ours
            return
        fv = st.pending
        if fv is not None and (not book.valid or book.last_update_id >= fv.book_update_id):
            st.pending = None
            self.decide(fv)
        if not book.valid:
            order = self.orders.get(st.intent)
            if order is not None and not order.request.reduce_only:
                self._drop_intent(book.symbol)  # quoted on a book we can no longer trust
            return
        if self.book_problem(book.symbol):
            return
        if st.exit_due:  # an exit put off by a bad book, or one working: (re)quote it
            self.exit(book.symbol)
        elif st.intent in self.orders:
            self.requote(book.symbol)

    def on_fill(self, fill: Fill) -> None:
        prev, self._event_ns = self._event_ns, fill.ts_recv_ns
        try:
            self._on_fill(fill)
        finally:
            self._event_ns = prev

    def _on_fill(self, fill: Fill) -> None:
        st = self.state.get(fill.symbol)
        if st is None:
            return
        pos = self.net_qty(fill.symbol)
        if not pos:
            st.exit_due = False
            st.exit_at_ns = 0
            self.cancel_timer(f"exit.{fill.symbol}")
        elif (pos > 0) == (fill.side == "buy") and not st.exit_due:
            # an entry filled: hold for the holding period of the signal behind it
            self._arm_exit(fill.symbol, self.event_now() + st.sig_hold_ms * 1_000_000)

    def on_order(self, update: OrderUpdate) -> None:
        st = self.state.get(update.symbol)
        if st is not None and update.client_order_id == st.intent and update.status in _FINAL:
            st.intent = ""
        if st is not None and update.status == "rejected":
            st.quiet_until_ns = self.ctx.clock.now_ns() + int(self.config.reject_backoff_ms * 1e6)

    # ------------------------------------------------------------------ restart

    _SAVED = ("intent", "sig_dir", "sig_strength", "sig_t_ns", "sig_hold_ms", "exit_due",
              "exit_at_ns", "quiet_until_ns")  # fmt: skip

    def snapshot(self) -> Any:
        """Per symbol: the working intent, the last signal, the exit deadline, the back-off."""
        return {sym: {k: getattr(st, k) for k in self._SAVED} for sym, st in self.state.items()}

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict):
            self.log.error("restored state refused (not a table of symbols): %r", state)
            return
        for sym, saved in state.items():
            st = self.state.get(sym)
            if st is None or not isinstance(saved, dict):
                continue  # a symbol no longer traded
            fresh = _Sym()
            for k in self._SAVED:
                v = saved.get(k, getattr(fresh, k))
                if type(v) is not type(getattr(fresh, k)):
                    self.log.error("restored %s.%s refused: %r", sym, k, v)
                    v = getattr(fresh, k)
                setattr(st, k, v)
            if st.intent not in self.orders:
                st.intent = ""  # finished while we were down (or never restored)

    def on_start(self) -> None:
        for sym, st in self.state.items():
            if not self.net_qty(sym):
                st.exit_due, st.exit_at_ns = False, 0
            elif st.exit_at_ns:  # a restored position: its holding period goes on
                self.set_timer(f"exit.{sym}", payload=sym, at_ns=st.exit_at_ns)
            elif not st.exit_due:
                # a position with no known deadline (killed before a snapshot): exit it
                self.log.warning("%s: restored position %g with no holding deadline: exiting",
                                 sym, self.net_qty(sym) / SCALE)  # fmt: skip
                st.exit_due = True

    def on_stop(self) -> None:
        for symbol in self.symbols:
            self._drop_intent(symbol)
        c, s = self.counts, self.stats
        self.log.info(
            "%d signals (%d suppressed, %d bad vectors); %d order requests (%d requotes, %d"
            " exits), %d cancels (%d stale), %d fills, %d rejects",
            c["signals"], c["suppressed"], c["bad_features"], s["orders"], c["requotes"],
            c["exits"], s["cancels"], c["stale_cancels"], s["fills"], s["rejects"],
        )  # fmt: skip

    # ------------------------------------------------------------------ reporting

    def _bad(self, kind: str, sample: Any) -> None:
        self.counts["bad_features"] += 1
        label = kind.split("=")[0]
        if label not in self._warned:
            self._warned.add(label)
            self.log.warning("suppressed a signal (%s); sample: %r", kind, sample)

    def status(self) -> str:
        c = self.counts
        bad = f", {c['bad_features']} bad vectors" if c["bad_features"] else ""
        return f"{c['signals']} signals ({c['suppressed']} suppressed{bad}); " + super().status()


def clamp(x: float, lo: float, hi: float) -> float:
    """``x`` limited to [lo, hi]."""
    return lo if x < lo else hi if x > hi else x
