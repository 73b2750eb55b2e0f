"""The order state machine: what the paper broker knows of one order, and the only
transitions it may make.

::

    new ──► accepted ──► partially_filled ──► filled
     │          │   │          │   ▲  │
     │          │   │          └───┘  ├──► canceled
     ▼          ▼   └──────────────►  └──► expired
    rejected ◄──┘           filled / canceled / expired

``new`` is the ``OrderRequest`` itself (the broker never publishes it); every other state is
entered through :meth:`Order.to`, which refuses anything not in :data:`TRANSITIONS`, and is
announced as an ``OrderUpdate`` on ``exec.report``.
"""

from __future__ import annotations

from typing import Any

from tickbus.kernel import TickbusError
from tickbus.schemas import OrderRequest, OrderStatus, OrderUpdate

TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"accepted", "rejected"}),
    "accepted": frozenset({"partially_filled", "filled", "canceled", "expired", "rejected"}),
    "partially_filled": frozenset({"partially_filled", "filled", "canceled", "expired"}),
    "filled": frozenset(),
    "canceled": frozenset(),
    "expired": frozenset(),
    "rejected": frozenset(),
}
"""Legal transitions, as agreed in ``schemas.OrderUpdate``; final states have none."""

FINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
WORKING = frozenset({"accepted", "partially_filled"})


class IllegalTransition(TickbusError):
    """An order was asked to move to a state it cannot reach from where it is (a bug)."""


class Order:
    """One order's state in the broker. ``ahead`` is the market quantity estimated in front
    of it in its price level's queue (passive orders only)."""

    __slots__ = (
        "req", "key", "symbol", "buy", "px", "qty", "status", "filled", "leaves", "notional",
        "fees", "ahead", "timer", "level",
    )  # fmt: skip

    def __init__(self, req: OrderRequest) -> None:
        self.req = req
        self.key = (req.strategy_id, req.client_order_id)
        self.symbol = req.symbol
        self.buy = req.side == "buy"
        self.px = req.px
        self.qty = req.qty
        self.status: OrderStatus = "new"
        self.filled = 0
        self.leaves = req.qty
        self.notional = 0
        """Sum of fill price x quantity (1/NOTIONAL_SCALE), for the average price."""
        self.fees = 0
        self.ahead = 0
        self.timer: Any = None
        """The GTD expiry timer while the order rests."""
        self.level: Any = None
        """The price level it rests in (matching.Level), or None."""

    @property
    def working(self) -> bool:
        """Accepted and not finished: it may still fill."""
        return self.status in WORKING

    @property
    def avg_px(self) -> int:
        """Average fill price in 1/SCALE units, rounded half up (0 before any fill)."""
        f = self.filled
        return (2 * self.notional + f) // (2 * f) if f else 0

    def to(self, status: OrderStatus) -> None:
        """Move to ``status``; raises :class:`IllegalTransition` unless it is legal."""
        if status not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"order {self.req.client_order_id} ({self.req.strategy_id}): "
                f"{self.status} -> {status} is not a legal transition"
            )
        self.status = status

    def add_fill(self, px: int, qty: int, fee: int) -> None:
        """Account one execution and move to ``partially_filled`` or ``filled``."""
        if not 0 < qty <= self.leaves:
            raise IllegalTransition(
                f"order {self.req.client_order_id}: fill of {qty} with {self.leaves} left"
            )
        self.filled += qty
        self.leaves -= qty
        self.notional += px * qty
        self.fees += fee
        self.to("filled" if self.leaves == 0 else "partially_filled")

    def update(self, reason: str, ts_recv_ns: int, now_ns: int) -> OrderUpdate:
        """The ``OrderUpdate`` announcing the current state."""
        r = self.req
        st = self.status
        f = self.filled
        return OrderUpdate(
            r.client_order_id, r.strategy_id, r.symbol, r.side, r.order_type, st, r.px, r.qty,
            f, self.leaves if st == "accepted" or st == "partially_filled" else 0,
            (2 * self.notional + f) // (2 * f) if f else 0, reason, ts_recv_ns, now_ns,
        )  # fmt: skip  # (working and avg_px inlined: this runs for every report)
