"""Exact positions and PnL: integers in the bus's units, long and short, flips through zero.

Quantities and prices are ints in 1/SCALE units, money (cost basis, PnL, fees) ints in
1/NOTIONAL_SCALE units of the quote asset, so ``px * qty`` is money with no scaling at all.
Per symbol, with signed ``qty`` and ``cost`` (the cost basis of the open quantity, qty x
average entry price):

* a fill in the direction of the position (or from flat) adds ``dq * px`` to ``cost``;
* a fill against it first closes ``c = min(|dq|, |qty|)``: the closed part takes its share
  of the cost basis, ``cost * c / qty`` (the one division; rounded half away from zero, and
  exactly ``cost`` when the position closes to zero, so nothing is left over), and
  ``realized += c * px * sign(qty) - share``; what is left of the fill opens the other side
  at ``px`` (a flip through zero).

``realized - cost`` therefore changes by exactly the fill's cash flow, whatever the rounding:
``realized + unrealized - fees == cash + qty * mark - fees`` holds exactly at every step (no
drift after millions of fills); the rounding only moves at most half a unit (1e-16 of the
quote asset) per partial close between realized and unrealized.

(The original design's sketch did ``qty = max(qty - fill, 0)`` on a sell and
``avg = (avg*qty + px*fill) / (qty+fill)`` on every fill: no short positions, a sell that
*raises* the average price, and no realized PnL. tests/plugins/broker/test_broker_positions.py
shows the difference.)
"""

from __future__ import annotations

from fractions import Fraction

from tickbus.schemas import Position


def rate_of(bps: float) -> Fraction:
    """A rate in basis points (as written in the config: ``7.5``) as an exact fraction of 1.
    The float's shortest repr is what the operator wrote, so ``7.5`` is exactly 15/20000."""
    return Fraction(repr(float(bps))) / 10_000


def div_round(num: int, den: int) -> int:
    """``num / den`` rounded half away from zero (``den > 0``), exact on ints."""
    q, r = divmod(abs(num), den)
    if 2 * r >= den:
        q += 1
    return q if num >= 0 else -q


def fee_of(notional: int, rate: Fraction) -> int:
    """The fee on ``notional`` (1/NOTIONAL_SCALE) at ``rate``, rounded half away from zero;
    negative for a rebate."""
    return div_round(notional * rate.numerator, rate.denominator)


class PositionBook:
    """One symbol's position (all strategies of the process together: the account)."""

    __slots__ = ("symbol", "qty", "cost", "realized", "fees", "fills", "cash", "topic")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.qty = 0
        self.cost = 0
        self.realized = 0
        self.fees = 0
        self.fills = 0
        self.cash = 0
        """Cash flow of all fills, fees apart (sells in, buys out): for the invariant."""
        self.topic = f"pos.{symbol}"

    def fill(self, buy: bool, px: int, qty: int, fee: int) -> None:
        """Account one execution of ``qty`` at ``px`` (``qty > 0``; ``buy`` its side)."""
        dq = qty if buy else -qty
        self.cash -= dq * px
        self.fees += fee
        self.fills += 1
        pos = self.qty
        if pos == 0 or (pos > 0) == buy:  # opening or adding
            self.qty = pos + dq
            self.cost += dq * px
            return
        close = min(qty, abs(pos))
        if close == abs(pos):
            share = self.cost
        else:
            share = div_round(self.cost * close, abs(pos))
        # realized - cost moves by the cash flow: a long sells close*px, a short pays it
        self.realized += (close * px if pos > 0 else -close * px) - share
        self.cost -= share
        self.qty = pos + dq
        if qty > close:  # flipped through zero: the rest opens the other side at px
            self.cost = self.qty * px

    @classmethod
    def restored(cls, p: Position) -> PositionBook:
        """The book of a position restored from an earlier run (checked by the caller): the
        next fills continue its exact accounting. ``cash`` is ``realized - cost``, as both
        start at 0 and their difference moves by exactly each fill's cash flow."""
        book = cls(p.symbol)
        book.qty, book.cost, book.realized, book.fees, book.fills = (
            p.qty, p.cost, p.realized_pnl, p.fees, p.fills)  # fmt: skip
        book.cash = p.realized_pnl - p.cost
        return book

    def unrealized(self, mark_px: int) -> int:
        """The open quantity marked at ``mark_px`` minus its cost basis."""
        return self.qty * mark_px - self.cost  # flat: cost is exactly 0

    def avg_px(self) -> int:
        """Average entry price (1/SCALE, rounded half away from zero); 0 when flat."""
        if not self.qty:
            return 0
        return div_round(self.cost if self.qty > 0 else -self.cost, abs(self.qty))

    def message(self, mark_px: int, ts_recv_ns: int, now_ns: int) -> Position:
        """The ``Position`` marked at ``mark_px``."""
        return Position(
            self.symbol, self.qty, self.cost, self.realized, self.unrealized(mark_px),
            self.fees, mark_px, self.fills, ts_recv_ns, now_ns,
        )  # fmt: skip


def total(books: list[PositionBook], marks: dict[str, int], ts_recv_ns: int, now_ns: int,
          name: str = "total") -> Position:  # fmt: skip
    """The sum over symbols of the money fields (meaningful when they share a quote asset);
    ``qty`` and ``mark_px`` are 0 (a sum of quantities of different assets means nothing)."""
    cost = realized = unrealized = fees = fills = 0
    for b in books:
        cost += b.cost
        realized += b.realized
        unrealized += b.unrealized(marks.get(b.symbol, 0))
        fees += b.fees
        fills += b.fills
    return Position(name, 0, cost, realized, unrealized, fees, 0, fills, ts_recv_ns, now_ns)
