"""The risk engine: every pre-trade rule over exact integer state, no lock, no I/O.

It is pure state plus functions of it: the plugin feeds it bus messages (order requests, book
tops, fills, order updates) and publishes what it decides. One check is a straight run of
integer comparisons over per-symbol slots - the exposure over all symbols is kept up to date
incrementally (on every mid, fill and working-order change) rather than summed per order.

Units: prices and quantities 1/SCALE, notionals 1/NOTIONAL_SCALE (= price x quantity).
"""

from __future__ import annotations

from collections import deque

import msgspec

from tickbus.kernel import from_fixed
from tickbus.schemas import BookTop, Fill, OrderRequest, OrderUpdate, TradingState

from .breaker import money
from .bucket import TokenBucket
from .filters import Filters

_FINAL = frozenset({"filled", "canceled", "expired", "rejected"})
BAD_INPUT = frozenset({"bad_qty", "bad_price", "unknown_symbol", "duplicate_id"})
"""Rules that say the order itself is malformed (logged once per rule with a sample)."""
NOT_COUNTED = frozenset({"kill_switch", "halted"})
"""Rejections that do not feed the circuit breaker's reject window (they are its effect)."""


class Limits(msgspec.Struct, frozen=True):
    """The limits as exact ints, converted once from the config's units."""

    max_position: int
    """Per symbol, |position + working orders on one side + this order|, 1/SCALE."""
    max_order: int
    """One order's quantity, 1/SCALE."""
    max_notional: int
    """Gross exposure over all symbols at the mid, 1/NOTIONAL_SCALE."""
    rate: float
    """Orders per second (token bucket refill)."""
    burst: int
    """Token bucket capacity."""
    band_cbps: int
    """Price band in hundredths of a basis point (0: off)."""
    dedup_window: int
    """How many recent client order ids are remembered for duplicate detection."""


class Sym:
    """Risk state of one symbol (filters copied into slots: one attribute load each)."""

    __slots__ = (
        "symbol", "tick", "step", "min_qty", "max_qty", "min_px", "max_px", "min_notional",
        "mid", "valid", "pos", "open_buy", "open_sell", "qmax", "exp",
    )  # fmt: skip

    def __init__(self, symbol: str, f: Filters) -> None:
        self.symbol = symbol
        self.tick = f.tick
        self.step = f.step
        self.min_qty = f.min_qty
        self.max_qty = f.max_qty
        self.min_px = f.min_px
        self.max_px = f.max_px
        self.min_notional = f.min_notional
        self.mid = 0
        """Last valid mid ((bid + ask) // 2); kept while the book is invalid, for exposure."""
        self.valid = False
        """The book is valid now: orders may be checked against ``mid``."""
        self.pos = 0
        """Signed position from the fills seen."""
        self.open_buy = 0
        self.open_sell = 0
        """Leaves quantity of working (accepted, or awaiting the gateway) orders per side."""
        self.qmax = 0
        """max(|pos + open_buy|, |pos - open_sell|): the projected quantity at risk."""
        self.exp = 0
        """``qmax`` x mid: this symbol's part of the gross exposure."""


class Working(msgspec.Struct, gc=False):
    """An order risk let through (or is asking the gateway about) and not yet finished.

    ``gc=False``: it holds only an (untracked) message and ints, and there may be many of
    them - the cyclic GC never needs to walk them."""

    order: OrderRequest
    leaves: int
    pending: bool
    counted: int = 0
    """Filled quantity already moved from ``leaves`` into the position."""
    filled: int = 0
    """Filled quantity seen as fills (may lag or lead the reports)."""


class RiskEngine:
    """Every rule; see the module docstring. ``check`` is the hot path."""

    def __init__(self, limits: Limits, filters: dict[str, Filters], now_ns: int = 0) -> None:
        self.limits = limits
        self.syms = {s: Sym(s, f) for s, f in filters.items()}
        self.working: dict[tuple[str, str], Working] = {}
        """(strategy_id, client_order_id) -> working order."""
        self._late: dict[tuple[str, str], int] = {}
        """Finished orders whose reports counted fills not yet seen: quantity to absorb."""
        self.kill_switch = False
        self.state: TradingState = "active"
        self.reason = ""
        self.gross = 0
        self.bucket = TokenBucket(limits.rate, limits.burst, now_ns)
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()
        self._dedup_max = limits.dedup_window
        self._seen_order: deque[tuple[str, str]] = deque()

    # ------------------------------------------------------------------ the check (hot path)

    def check(self, o: OrderRequest, now_ns: int) -> tuple[str, str] | None:
        """None if ``o`` passes every rule (a rate-limit token is then taken), else
        (rule, reason with the numbers). Records the order id either way."""
        qty = o.qty
        if qty <= 0:
            return "bad_qty", f"qty {from_fixed(qty)} <= 0"
        s = self.syms.get(o.symbol)
        if s is None:
            return "unknown_symbol", f"no exchange filters for symbol {o.symbol[:40]!r}"
        key = (o.strategy_id, o.client_order_id)
        seen = self._seen
        if key in seen:
            return "duplicate_id", f"client order id {o.client_order_id[:80]!r} already used"
        seen.add(key)
        window = self._seen_order
        if len(window) >= self._dedup_max:
            seen.discard(window.popleft())
        window.append(key)
        market = o.order_type == "market"
        px = o.px
        if not market and px <= 0:
            return "bad_price", f"{o.order_type} order px {from_fixed(px)} <= 0"
        if self.kill_switch:
            return "kill_switch", "kill switch is on"
        # working orders on each side after this order (a cancel-replace drops the old one)
        buy = o.side == "buy"
        ob = s.open_buy
        os_ = s.open_sell
        if o.replaces:
            old = self.working.get((o.strategy_id, o.replaces))
            if old is not None and old.order.symbol == o.symbol:
                if old.order.side == "buy":
                    ob -= old.leaves
                else:
                    os_ -= old.leaves
        if buy:
            ob += qty
        else:
            os_ += qty
        pos = s.pos
        if self.state != "active" or o.reduce_only:
            if self.state == "halted":
                return "halted", f"trading halted: {self.reason}"
            if not (pos < 0 and pos + ob <= 0 if buy else pos > 0 and pos - os_ >= 0):
                rule = "reduce_only" if self.state == "active" else "reducing"
                return rule, (
                    f"{o.side} {from_fixed(qty)} does not reduce position {from_fixed(pos)}"
                    f" (working {'buys' if buy else 'sells'} after it"
                    f" {from_fixed(ob if buy else os_)})"
                    + ("" if rule == "reduce_only" else f"; trading reducing: {self.reason}")
                )
        if not market:
            if px % s.tick:
                return (
                    "tick_size",
                    f"px {from_fixed(px)} not a multiple of tick {from_fixed(s.tick)}",
                )
            if px < s.min_px or (s.max_px and px > s.max_px):
                return "price_filter", (
                    f"px {from_fixed(px)} outside [{from_fixed(s.min_px)},"
                    f" {from_fixed(s.max_px) if s.max_px else 'inf'}]"
                )
        if qty % s.step:
            return "lot_size", f"qty {from_fixed(qty)} not a multiple of step {from_fixed(s.step)}"
        if qty < s.min_qty or (s.max_qty and qty > s.max_qty):
            return "lot_size", (
                f"qty {from_fixed(qty)} outside [{from_fixed(s.min_qty)},"
                f" {from_fixed(s.max_qty) if s.max_qty else 'inf'}]"
            )
        limits = self.limits
        if qty > limits.max_order:
            return "max_order_size", (
                f"qty {from_fixed(qty)} > max_order_size {from_fixed(limits.max_order)}"
            )
        mid = s.mid
        if not s.valid:
            return "no_market", f"no valid book for {o.symbol} (nothing to price the order at)"
        if not market:
            if limits.band_cbps and abs(px - mid) * 1_000_000 > limits.band_cbps * mid:
                return "price_band", (
                    f"px {from_fixed(px)} is {abs(px - mid) * 10_000 / mid:.2f} bps from mid"
                    f" {from_fixed(mid)} > price_band_bps {limits.band_cbps / 100:g}"
                )
        value_px = mid if market else px
        if value_px * qty < s.min_notional:
            return "min_notional", (
                f"notional {money(value_px * qty)} < min_notional {money(s.min_notional)}"
                + (" (market order valued at the mid)" if market else "")
            )
        long_ = pos + ob
        short = pos - os_
        if long_ > limits.max_position if buy else -short > limits.max_position:
            return "max_position", (
                f"position {from_fixed(pos)} {'+' if buy else '-'} working"
                f" {'buys' if buy else 'sells'} {from_fixed((ob if buy else os_) - qty)}"
                f" {'+' if buy else '-'} order {from_fixed(qty)}"
                f" = {from_fixed(long_ if buy else short)}, beyond max_position_size"
                f" {from_fixed(limits.max_position)}"
            )
        a = long_ if long_ >= 0 else -long_
        b = short if short >= 0 else -short
        exp = (a if a > b else b) * mid
        gross = self.gross - s.exp + exp
        if gross > limits.max_notional:
            return "max_notional", (
                f"gross exposure {money(gross)} (this symbol {money(exp)} at mid"
                f" {from_fixed(mid)}) > max_notional_exposure {money(limits.max_notional)}"
            )
        if not self.bucket.take(now_ns):
            return "rate_limit", (
                f"more than {limits.rate:g} orders/s (burst {limits.burst});"
                f" {self.bucket.tokens(now_ns):.3f} tokens left"
            )
        return None

    def accept(self, o: OrderRequest, pending: bool = False) -> None:
        """Count a checked order as working (``pending``: still awaiting the gateway)."""
        s = self.syms[o.symbol]
        if o.replaces:
            old = self.working.pop((o.strategy_id, o.replaces), None)
            if old is not None:
                self._drop_leaves(self.syms[old.order.symbol], old)
        qty = o.qty
        self.working[(o.strategy_id, o.client_order_id)] = Working(o, qty, pending)
        if o.side == "buy":
            s.open_buy += qty
        else:
            s.open_sell += qty
        self._reprice(s)
        if not pending:
            self.accepted += 1

    def confirm(self, o: OrderRequest) -> bool:
        """The gateway approved a pending order; False if it is no longer working."""
        w = self.working.get((o.strategy_id, o.client_order_id))
        if w is None:
            return False
        w.pending = False
        self.accepted += 1
        return True

    def withdraw(self, o: OrderRequest) -> None:
        """A pending order was not approved after all: forget it."""
        w = self.working.pop((o.strategy_id, o.client_order_id), None)
        if w is not None:
            self._drop_leaves(self.syms[o.symbol], w)
            self._reprice(self.syms[o.symbol])

    def count_reject(self, rule: str) -> None:
        self.rejected[rule] = self.rejected.get(rule, 0) + 1

    # ------------------------------------------------------------------ restart

    def restore_position(self, symbol: str, qty: int) -> None:
        """The position the previous run left (persistence: every committed fill)."""
        s = self.syms[symbol]
        s.pos = qty
        self._reprice(s)

    def restore_order(self, o: OrderRequest, filled: int, leaves: int) -> bool:
        """A working order of the previous run, counted as accepted with ``leaves`` still
        open (its ``filled`` part is in the restored position: counted already) and its id
        used; False if that id is already known (nothing changed)."""
        key = (o.strategy_id, o.client_order_id)
        if key in self._seen or key in self.working:
            return False
        self._seen.add(key)
        window = self._seen_order
        if len(window) >= self._dedup_max:
            self._seen.discard(window.popleft())
        window.append(key)
        s = self.syms[o.symbol]
        self.working[key] = Working(o, leaves, False, filled, filled)
        if o.side == "buy":
            s.open_buy += leaves
        else:
            s.open_sell += leaves
        self._reprice(s)
        return True

    # ------------------------------------------------------------------ state updates

    def on_book(self, book: BookTop) -> None:
        """A book top: the mid moves (exposure repriced); an invalid book stops new orders.
        On the market-data path: a dict hit and a few int operations."""
        s = self.syms.get(book.symbol)
        if s is None:
            return
        bid = book.bid_px
        ask = book.ask_px
        if book.valid and bid > 0 and ask > 0:
            s.valid = True
            mid = (bid + ask) // 2
            if mid != s.mid:
                s.mid = mid
                if s.qmax:
                    exp = s.qmax * mid
                    self.gross += exp - s.exp
                    s.exp = exp
        else:
            s.valid = False

    def on_fill(self, fill: Fill) -> None:
        """Move a fill from the order's leaves into the position (exactly once, whether the
        fill or the order's report arrives first)."""
        s = self.syms.get(fill.symbol)
        if s is None or fill.qty <= 0:
            return
        key = (fill.strategy_id, fill.client_order_id)
        w = self.working.get(key)
        qty = fill.qty
        if w is not None:
            w.filled += qty
            qty = w.filled - w.counted if w.filled > w.counted else 0  # not yet reported
            if qty:
                self._fill_leaves(s, w, qty)
        else:
            ahead = self._late.get(key, 0)
            if ahead:  # its final report already moved this quantity
                used = min(ahead, qty)
                qty -= used
                if ahead - used:
                    self._late[key] = ahead - used
                else:
                    del self._late[key]
        if qty:
            s.pos += qty if fill.side == "buy" else -qty
        self._reprice(s)

    def on_update(self, u: OrderUpdate) -> None:
        """An order's transition: fills the report counts move to the position now; a final
        state drops what is left of the order."""
        key = (u.strategy_id, u.client_order_id)
        w = self.working.get(key)
        if w is None:
            return
        s = self.syms[w.order.symbol]
        if u.filled_qty > w.counted:
            qty = u.filled_qty - w.counted
            self._fill_leaves(s, w, qty)
            s.pos += qty if w.order.side == "buy" else -qty
        if u.status in _FINAL:
            del self.working[key]
            self._drop_leaves(s, w)
            if w.counted > w.filled and len(self._late) < 100_000:
                self._late[key] = w.counted - w.filled
        self._reprice(s)

    @staticmethod
    def _fill_leaves(s: Sym, w: Working, qty: int) -> None:
        w.counted += qty
        take = min(qty, w.leaves)  # a fill beyond the order's quantity is position only
        w.leaves -= take
        if w.order.side == "buy":
            s.open_buy -= take
        else:
            s.open_sell -= take

    @staticmethod
    def _drop_leaves(s: Sym, w: Working) -> None:
        if w.order.side == "buy":
            s.open_buy -= w.leaves
        else:
            s.open_sell -= w.leaves
        w.leaves = 0

    def _reprice(self, s: Sym) -> None:
        a = s.pos + s.open_buy
        b = s.pos - s.open_sell
        if a < 0:
            a = -a
        if b < 0:
            b = -b
        s.qmax = a if a > b else b  # max(|long|, |short|), without calls
        exp = s.qmax * s.mid
        self.gross += exp - s.exp
        s.exp = exp

    # ------------------------------------------------------------------ operator

    def set_state(self, state: TradingState, reason: str) -> bool:
        """Change the trading state; True if it changed."""
        if state == self.state and reason == self.reason:
            return False
        self.state = state
        self.reason = reason
        return True
