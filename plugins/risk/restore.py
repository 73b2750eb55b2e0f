"""Range checks for the state persistence restores at a restart (``restore.*``, published by
plugins/persistence/plugin.py at its start): everything on the bus is input, so each check
returns why a message cannot be applied ("" when it can) and the plugin applies a message
whole or not at all. Persistence's ``Restored`` (``restore.done``) is read by field name:
plugins depend on the kernel and the schemas only."""

from __future__ import annotations

from typing import Any

from tickbus.kernel import from_fixed
from tickbus.schemas import OrderAccepted, OrderRequest, OrderUpdate, Position

I64 = 2**63 - 1
"""Quantities, prices and counts are int64 on the wire."""
MONEY = 2**126
"""Money is a product of two of them (qty x px): beyond this it cannot be real."""
WORKING = frozenset({"new", "accepted", "partially_filled"})
"""The states of an order that still works (persistence restores only those)."""
SIDES = frozenset({"buy", "sell"})


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi  # not a bool, a float or a str


def _qty(value: Any) -> str:
    return from_fixed(value) if type(value) is int else f"{value!r:.40}"


def position_error(pos: Any, symbols: Any) -> str:
    """Why a ``restore.pos.<S>`` cannot be applied ("" if it can): a ``Position`` of a symbol
    risk has filters for, ints in range, and the schema's invariants (nothing open costs
    nothing; unrealized is the open quantity at the mark)."""
    if type(pos) is not Position:
        return f"not a Position but {type(pos).__name__}"
    if type(pos.symbol) is not str or pos.symbol not in symbols:
        return f"symbol {str(pos.symbol)[:40]!r} has no exchange filters here"
    for name in ("qty", "mark_px", "fills"):
        lo = -I64 if name == "qty" else 0
        if not _int(getattr(pos, name), lo, I64):
            return f"{name} {getattr(pos, name)!r:.40} is not an int in {lo}..{I64}"
    for name in ("cost", "realized_pnl", "unrealized_pnl", "fees"):
        if not _int(getattr(pos, name), -MONEY, MONEY):
            return f"{name} {getattr(pos, name)!r:.40} is not an int within 2**126"
    if pos.qty == 0 and pos.cost:
        return f"cost {pos.cost} with nothing open"
    if pos.unrealized_pnl != pos.qty * pos.mark_px - pos.cost:
        return (
            f"unrealized_pnl {pos.unrealized_pnl} != qty x mark_px - cost"
            f" ({pos.qty * pos.mark_px - pos.cost})"
        )
    return ""


def order_error(msg: Any, symbols: Any) -> str:
    """Why a ``restore.order`` cannot be counted as a working order ("" if it can). Only what
    risk's counting needs is checked: the exchange filters applied when it was accepted."""
    if type(msg) is not OrderAccepted or type(msg.order) is not OrderRequest:
        return f"not an OrderAccepted but {type(msg).__name__}"
    o = msg.order
    for name in ("client_order_id", "strategy_id"):
        value = getattr(o, name)
        if type(value) is not str or not 0 < len(value) <= 256:
            return f"{name} {value!r:.40} is not a string of 1..256 characters"
    if type(o.symbol) is not str or o.symbol not in symbols:
        return f"symbol {str(o.symbol)[:40]!r} has no exchange filters here"
    if o.side not in SIDES:
        return f"side {o.side!r:.40} is not buy or sell"
    if not _int(o.qty, 1, I64) or not _int(o.px, 0, I64):
        return f"qty {_qty(o.qty)} or px {_qty(o.px)} out of range"
    return ""


def report_error(u: Any, o: OrderRequest) -> str:
    """Why a ``restore.report`` cannot be the state of the restored order ``o`` that came
    just before it ("" if it can): the same order, still working, filled + leaves = qty."""
    if type(u) is not OrderUpdate:
        return f"not an OrderUpdate but {type(u).__name__}"
    same = (u.client_order_id, u.strategy_id, u.symbol, u.side, u.qty)
    if same != (o.client_order_id, o.strategy_id, o.symbol, o.side, o.qty):
        return (
            f"report of {u.strategy_id!s:.40}/{u.client_order_id!s:.80} {u.symbol!s:.40}"
            f" {u.side!s:.8} {_qty(u.qty)} does not match the order before it:"
            f" {o.strategy_id}/{o.client_order_id} {o.symbol} {o.side} {from_fixed(o.qty)}"
        )
    if u.status not in WORKING:
        return f"status {u.status!r:.40} is not a working order's"
    if not _int(u.filled_qty, 0, o.qty - 1) or not _int(u.leaves_qty, 1, o.qty):
        return f"filled {_qty(u.filled_qty)} / leaves {_qty(u.leaves_qty)} out of range"
    if u.filled_qty + u.leaves_qty != o.qty:
        return (
            f"filled {from_fixed(u.filled_qty)} + leaves {from_fixed(u.leaves_qty)}"
            f" != qty {from_fixed(o.qty)}"
        )
    return ""


def done_error(msg: Any) -> str:
    """Why a ``restore.done`` is not persistence's ``Restored`` ("" if it is)."""
    for name in ("from_run", "positions", "orders"):
        if not _int(getattr(msg, name, None), 0, I64):
            return f"a {type(msg).__name__} without an int {name} in 0..{I64}"
    return ""
