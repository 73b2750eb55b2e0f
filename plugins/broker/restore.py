"""Restart: the account and the working orders of an earlier run, as the persistence plugin
restores them, checked before the broker takes them back.

At its start, persistence publishes ``restore.pos.<S>`` (``Position``: qty, cost basis,
realized PnL and fees folded from every committed fill), then for each working order
``restore.order`` (``OrderAccepted``) immediately followed by ``restore.report`` (its latest
``OrderUpdate``; the filled quantity comes from the committed fills), then ``restore.done``.
The broker lists ``after = ["persistence"]``, so all of it has reached it before its own
start hook, and it takes back:

* each **position** exactly (:meth:`.positions.PositionBook.restored`): the next fills
  continue its accounting, and ``pos.<S>`` goes on from the restored values;
* each **working order** with its state, filled and leaves quantities and its average price
  (its filled notional becomes ``avg_px x filled``, so a later average is within half a tick
  of the exact one), resting again as if it had been placed now: at the *back* of its price
  level as the book shows it then (the first book that shows the level, if it arrives before
  any book) - where it stood in the old queue is unknown, and the back is the cautious guess;
  a GTD order's expiry is armed again on the kernel clock (one already past expires at the
  first chance, with its ``expired`` report); its id cannot be used again.

Everything comes from the bus, so each message is checked whole and refused whole (one
error line with its content, counted in ``restore_refused``), never half applied. So is any
restore message that arrives after the broker started trading: a position set then would
overwrite the accounting of the fills made since, an order would appear after the
strategies took its id or acted on its absence - and with the kernel's start barrier it can
only come from a broker that does not list ``after = ["persistence"]``.
"""

from __future__ import annotations

from typing import Any

from tickbus.schemas import OrderAccepted, OrderRequest, OrderUpdate, Position

from .orders import WORKING


def is_symbol(s: str) -> bool:
    """The symbols the broker knows: upper case letters and digits, at most 20."""
    return s.isalnum() and s.isupper() and len(s) <= 20


def position_problem(p: Any) -> str:
    """Why the restored position ``p`` cannot be taken back ("" if it can); the symbol is
    the broker's to judge."""
    if type(p) is not Position:
        return f"a {type(p).__name__}, not a Position"
    if p.fills < 0:
        return f"fills {p.fills} < 0"
    if (p.cost > 0) != (p.qty > 0) or (p.cost < 0) != (p.qty < 0):
        # prices are > 0: the cost basis has the sign of the open quantity, 0 when flat
        return f"cost basis {p.cost} does not go with qty {p.qty}"
    return ""


def never_rests(r: OrderRequest) -> bool:
    """A market, IOC or FOK order: it lived only in the instant it reached the venue. One
    still working at a kill died with the process (its fills, if any, are the committed
    ones): the broker reports it expired rather than resting it again."""
    return r.order_type == "market" or r.tif not in ("GTC", "GTD")


def order_problem(a: Any, u: Any) -> str:
    """Why the restored order ``a`` with its report ``u`` cannot rest again ("" if it can);
    the symbol and the id's uniqueness are the broker's to judge."""
    if type(a) is not OrderAccepted:
        return f"a {type(a).__name__} on restore.order, not an OrderAccepted"
    if type(u) is not OrderUpdate:
        return f"a {type(u).__name__} on restore.report, not an OrderUpdate"
    r = a.order
    if not r.client_order_id or not r.strategy_id:
        return "client_order_id and strategy_id must not be empty"
    mine = (r.client_order_id, r.strategy_id, r.symbol, r.side, r.order_type, r.px, r.qty)
    theirs = (u.client_order_id, u.strategy_id, u.symbol, u.side, u.order_type, u.px, u.qty)
    if mine != theirs:
        return f"its restore.report is about another order: {theirs}"
    if r.qty <= 0:
        return f"quantity {r.qty} <= 0"
    if r.px <= 0 and r.order_type != "market":
        return f"price {r.px} <= 0"
    if r.tif == "GTD" and r.expire_at_ns <= 0:
        return f"GTD with expire_at_ns {r.expire_at_ns}"
    if u.status not in WORKING:
        return f"status {u.status!r} is not a working state"
    filled, leaves = u.filled_qty, u.leaves_qty
    if filled < 0 or leaves <= 0 or filled + leaves != r.qty:
        return f"filled {filled} + leaves {leaves} do not make up qty {r.qty} (leaves > 0)"
    if (u.status == "partially_filled") != (filled > 0):
        return f"status {u.status!r} with filled {filled}"
    if (u.avg_px > 0) != (filled > 0) or u.avg_px < 0:
        return f"avg_px {u.avg_px} with filled {filled}"
    return ""
