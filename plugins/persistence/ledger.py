"""Round trips and performance of the account, from the ``Position`` stream alone.

A *trade* is a round trip of the account in one symbol: from flat to a position and back
to flat, or through zero (the fill that flips the position closes one trade and opens the
next; its fee goes to the one it closes). Its PnL is the change of ``realized_pnl - fees``
over it, exact. The broker publishes a ``Position`` after every fill (and marks between
them), so every change of sign is seen.
"""

from __future__ import annotations

from typing import Any

from tickbus.schemas import Position

from .restore import div_round


class _Open:
    __slots__ = ("opened_ns", "realized", "fees", "fills", "max_qty", "entry_px")

    def __init__(self, opened_ns: int, realized: int, fees: int, fills: int) -> None:
        self.opened_ns = opened_ns
        self.realized = realized
        self.fees = fees
        self.fills = fills
        self.max_qty = 0
        self.entry_px = 0


class _Book:
    __slots__ = ("last", "open", "net", "peak", "trades", "wins", "seeded")

    def __init__(self) -> None:
        self.seeded = False
        self.last: Position | None = None
        self.open: _Open | None = None
        self.net = 0
        self.peak = 0
        self.trades = 0
        self.wins = 0


def _net(p: Position) -> int:
    return p.realized_pnl + p.unrealized_pnl - p.fees


class Ledger:
    """Per symbol: the latest position, the open round trip, closed trades and wins; and
    the account's net PnL with its running peak (for the drawdown)."""

    def __init__(self) -> None:
        self.books: dict[str, _Book] = {}
        self.net = 0
        """Net PnL (realized + unrealized - fees) summed over symbols."""
        self.peak = 0

    def seed(self, p: Position, now_ns: int) -> None:
        """A position restored at start: a round trip open at restore time continues (if
        the broker continues from it too: see :meth:`on_position`)."""
        b = self.books.setdefault(p.symbol, _Book())
        b.last = p
        b.seeded = True
        if p.qty:
            b.open = self._open(p, now_ns, p.realized_pnl, p.fees, p.fills)
        self._mark(b, p)

    def on_position(self, p: Position) -> tuple[Any, ...] | None:
        """Account ``p``; the ``trades`` row values if it closed a round trip.

        Positions may arrive out of order (another lane gets a position published while the
        previous one's handlers ran before that one): one with fewer fills than the last is
        an older state and is skipped - unless the account was restored and the broker
        started from zero instead of from it (its first fills count from 1 again)."""
        if p.symbol == "total":
            return None
        b = self.books.get(p.symbol)
        if b is None:
            b = self.books[p.symbol] = _Book()
        prev = b.last
        if prev is not None and p.fills < prev.fills:
            if not b.seeded:
                return None  # an older state, arriving late
            prev, b.open = None, None
        b.seeded = False
        if prev is None:  # the broker's account starts at zero
            prev = Position(p.symbol, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        b.last = p
        self._mark(b, p)
        if p.fills == prev.fills:  # a mark: nothing traded
            return None
        row = None
        pq = prev.qty
        if pq and (p.qty == 0 or (p.qty > 0) != (pq > 0)):
            o = b.open
            if o is not None:
                realized = p.realized_pnl - o.realized
                fees = p.fees - o.fees
                pnl = realized - fees
                b.trades += 1
                b.wins += pnl > 0
                row = (p.symbol, "long" if pq > 0 else "short", o.opened_ns, p.ts_update_ns,
                       p.fills - o.fills, o.max_qty, o.entry_px, str(realized), str(fees),
                       str(pnl))  # fmt: skip
            b.open = None
            if p.qty:  # flipped: the rest of the fill opens the next one, fee already counted
                b.open = self._open(p, p.ts_update_ns, p.realized_pnl, p.fees, p.fills - 1)
        elif p.qty and b.open is None:
            b.open = self._open(p, p.ts_update_ns, prev.realized_pnl, prev.fees, prev.fills)
        elif b.open is not None and abs(p.qty) > b.open.max_qty:
            b.open.max_qty = abs(p.qty)
            b.open.entry_px = div_round(abs(p.cost), abs(p.qty))
        return row

    @staticmethod
    def _open(p: Position, at_ns: int, realized: int, fees: int, fills: int) -> _Open:
        o = _Open(at_ns, realized, fees, fills)
        o.max_qty = abs(p.qty)
        o.entry_px = div_round(abs(p.cost), abs(p.qty)) if p.qty else 0
        return o

    def _mark(self, b: _Book, p: Position) -> None:
        net = _net(p)
        self.net += net - b.net
        b.net = net
        b.peak = max(b.peak, net)
        self.peak = max(self.peak, self.net)

    def performance(self, ts_ns: int) -> list[tuple[Any, ...]]:
        """``performance_metrics`` row values: one per symbol and the ``total``."""
        rows = []
        tot = [0, 0, 0, 0, 0, 0, 0]  # realized, unrealized, fees, gross, fills, trades, wins
        for sym, b in sorted(self.books.items()):
            p = b.last
            if p is None:
                continue
            gross = abs(p.qty) * p.mark_px
            rows.append((ts_ns, sym, p.qty, str(p.realized_pnl), str(p.unrealized_pnl),
                         str(p.fees), str(b.net), str(gross), str(b.peak), str(b.peak - b.net),
                         p.fills, b.trades, b.wins))  # fmt: skip
            for i, v in enumerate((p.realized_pnl, p.unrealized_pnl, p.fees, gross, p.fills,
                                   b.trades, b.wins)):  # fmt: skip
                tot[i] += v
        if rows:
            rows.append((ts_ns, "total", 0, str(tot[0]), str(tot[1]), str(tot[2]), str(self.net),
                         str(tot[3]), str(self.peak), str(self.peak - self.net), tot[4], tot[5],
                         tot[6]))  # fmt: skip
        return rows
