"""What a restarted process gets back from the database: positions, working orders and the
strategies' latest snapshots, as bus messages (published by the plugin at start on
``restore.*``, see plugin.py).

* **Positions** (``Position`` per symbol): every committed fill, folded with the broker's
  exact accounting (:class:`Account`) - from the account restored at the start of the
  latest earlier run (``restored_positions``), so a restart reads only the fills since.
  The restored quantity is therefore always the sum of the committed fills, whatever the
  commit boundaries cut (a fill without its position, a position without its fill) and
  in whatever order the messages arrived.
* **Working orders** (``OrderAccepted`` + ``OrderUpdate``): the orders of the previous run
  (of the same clock; it holds a copy of those it restored itself) that risk accepted and
  whose latest committed state is not final, less those a later accepted order replaced;
  their filled quantity comes from the committed fills (authoritative, like the position),
  so an order whose last fill was committed without its report is not resent.
* **Snapshots** (``StrategySnapshot``): the latest per strategy.
* **Strategy positions** (``Position`` per strategy and symbol): each strategy's own fills
  folded, so a strategy that died before its first snapshot still knows what it holds.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from tickbus.schemas import (
    OrderAccepted,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    Position,
    StrategySnapshot,
)

from .schema import ORDER_COLUMNS


def div_round(num: int, den: int) -> int:
    """``num / den`` rounded half away from zero (``den > 0``), exact on ints."""
    q, r = divmod(abs(num), den)
    if 2 * r >= den:
        q += 1
    return q if num >= 0 else -q


class Account:
    """One symbol's exact position, accounted as the paper broker does (signed qty, cost
    basis of the open quantity, realized PnL gross of fees, fees; a fill against the
    position closes its share of the cost basis, what is left opens the other side)."""

    __slots__ = ("qty", "cost", "realized", "fees", "fills")

    def __init__(self, qty: int = 0, cost: int = 0, realized: int = 0, fees: int = 0,
                 fills: int = 0) -> None:  # fmt: skip
        self.qty, self.cost, self.realized, self.fees, self.fills = (
            qty, cost, realized, fees, fills)  # fmt: skip

    def fill(self, buy: bool, px: int, qty: int, fee: int) -> None:
        """Account one execution of ``qty > 0`` at ``px``."""
        dq = qty if buy else -qty
        self.fees += fee
        self.fills += 1
        pos = self.qty
        if pos == 0 or (pos > 0) == buy:
            self.qty = pos + dq
            self.cost += dq * px
            return
        close = min(qty, abs(pos))
        share = self.cost if close == abs(pos) else div_round(self.cost * close, abs(pos))
        self.realized += (close * px if pos > 0 else -close * px) - share
        self.cost -= share
        self.qty = pos + dq
        if qty > close:  # through zero: the rest opens the other side at px
            self.cost = self.qty * px

    def position(self, symbol: str, mark: int, ts_recv_ns: int, ts_update_ns: int) -> Position:
        """The account as a ``Position`` message, marked at ``mark``."""
        return Position(symbol, self.qty, self.cost, self.realized, self.qty * mark - self.cost,
                        self.fees, mark, self.fills, ts_recv_ns, ts_update_ns)  # fmt: skip


@dataclass
class Restored:
    """The state read back from the database (empty when there is nothing before)."""

    from_run: int | None = None
    positions: list[Position] = field(default_factory=list)
    orders: list[tuple[OrderAccepted, OrderUpdate]] = field(default_factory=list)
    snapshots: list[StrategySnapshot] = field(default_factory=list)
    strategy_positions: list[tuple[str, Position]] = field(default_factory=list)
    """(strategy id, its own position in a symbol): every committed fill of the strategy."""


_REQ = ", ".join(ORDER_COLUMNS)
_SAME_CLOCK = "run_id IN (SELECT run_id FROM runs WHERE clock = ?)"


def load(conn: sqlite3.Connection, before_run: int) -> Restored:
    """Everything the runs before ``before_run`` with the same clock (a backtest's fills
    never become a live account's) committed that a restart needs."""
    out = Restored()
    row = conn.execute("SELECT clock FROM runs WHERE run_id = ?", (before_run,)).fetchone()
    clock = row[0] if row else "live"
    row = conn.execute("SELECT MAX(run_id) FROM runs WHERE run_id < ? AND clock = ?",
                       (before_run, clock)).fetchone()  # fmt: skip
    if row is None or row[0] is None:
        return out
    out.from_run = row[0]
    out.positions = _positions(conn, before_run, clock)
    out.orders = _orders(conn, out.from_run)
    out.strategy_positions = _strategy_positions(conn, before_run, clock)
    out.snapshots = [
        StrategySnapshot(sid, state, ts)
        for sid, state, ts, _ in conn.execute(
            "SELECT strategy_id, state, ts_ns, MAX(run_id * 4294967296 + seq)"
            f" FROM strategy_snapshots WHERE run_id < ? AND {_SAME_CLOCK}"
            " GROUP BY strategy_id ORDER BY strategy_id",
            (before_run, clock),
        )
    ]
    return out


def _positions(conn: sqlite3.Connection, before_run: int, clock: str) -> list[Position]:
    """The latest restored base (the account at the start of an earlier run) plus every
    committed fill since, in the broker's order (``fill_id``). The quantity, the fees and
    realized - cost do not depend on that order at all; only how a partial close splits
    between realized and the cost basis could, and only if the broker applied two fills
    out of their id order (a fill made while another's handlers ran)."""
    row = conn.execute(
        f"SELECT MAX(run_id) FROM restored_positions WHERE run_id < ? AND {_SAME_CLOCK}",
        (before_run, clock),
    ).fetchone()
    base_run = row[0] if row else None
    accounts: dict[str, Account] = {}
    marks: dict[str, int] = {}
    times: dict[str, tuple[int, int]] = {}
    if base_run is not None:
        for sym, qty, cost, realized, fees, mark, fills in conn.execute(
            "SELECT symbol, qty, cost, realized_pnl, fees, mark_px, fills FROM"
            " restored_positions WHERE run_id = ?", (base_run,)
        ):  # fmt: skip
            accounts[sym] = Account(qty, int(cost), int(realized), int(fees), fills)
            marks[sym] = mark
    for sym, side, px, qty, fee, ts_recv, ts_fill in conn.execute(
        "SELECT symbol, side, px, qty, fee, ts_recv_ns, ts_fill_ns FROM fills"
        f" WHERE run_id >= ? AND run_id < ? AND {_SAME_CLOCK} ORDER BY run_id, fill_id, seq",
        (base_run or 0, before_run, clock),  # the base run's fills came after its base
    ):
        acc = accounts.get(sym)
        if acc is None:
            acc = accounts[sym] = Account()
        acc.fill(side == "buy", px, qty, int(fee))
        marks[sym] = px
        times[sym] = (ts_recv, ts_fill)
    out = []
    for sym, acc in sorted(accounts.items()):
        row = conn.execute(
            "SELECT mark_px FROM positions WHERE symbol = ? AND run_id < ?"
            " ORDER BY run_id DESC, seq DESC LIMIT 1",
            (sym, before_run),
        ).fetchone()
        mark = row[0] if row and row[0] else marks.get(sym, 0)
        ts_recv, ts_update = times.get(sym, (0, 0))
        out.append(acc.position(sym, mark, ts_recv, ts_update))
    return out


def _strategy_positions(
    conn: sqlite3.Connection, before_run: int, clock: str
) -> list[tuple[str, Position]]:
    """Each strategy's own position per symbol, folded from all its committed fills (a
    strategy's net is its own business: the account's position sums every strategy)."""
    accounts: dict[tuple[str, str], Account] = {}
    last: dict[tuple[str, str], tuple[int, int, int]] = {}
    for sid, sym, side, px, qty, fee, ts_recv, ts_fill in conn.execute(
        "SELECT strategy_id, symbol, side, px, qty, fee, ts_recv_ns, ts_fill_ns FROM fills"
        f" WHERE run_id < ? AND {_SAME_CLOCK} ORDER BY run_id, fill_id, seq",
        (before_run, clock),
    ):
        acc = accounts.get((sid, sym))
        if acc is None:
            acc = accounts[sid, sym] = Account()
        acc.fill(side == "buy", px, qty, int(fee))
        last[sid, sym] = (px, ts_recv, ts_fill)
    out = []
    for (sid, sym), acc in sorted(accounts.items()):
        mark, ts_recv, ts_fill = last[sid, sym]
        out.append((sid, acc.position(sym, mark, ts_recv, ts_fill)))
    return out


def _orders(
    conn: sqlite3.Connection, from_run: int
) -> list[tuple[OrderAccepted, OrderUpdate]]:
    """Orders of run ``from_run`` (which holds those it restored itself) risk accepted and
    not finished, less those an accepted order of the run replaced."""
    out = []
    rows = conn.execute(
        f"SELECT {_REQ}, reason, ts_accepted_ns, ts_updated_ns, avg_px, restored_qty"
        " FROM orders o WHERE run_id = ? AND status IN ('new', 'accepted', 'partially_filled')"
        " AND ts_accepted_ns IS NOT NULL AND tif != '' AND NOT EXISTS (SELECT 1 FROM orders r"
        " WHERE r.run_id = o.run_id AND r.strategy_id = o.strategy_id"
        " AND r.replaces = o.client_order_id AND r.replaces != ''"
        " AND r.ts_accepted_ns IS NOT NULL) ORDER BY ts_accepted_ns, seq",
        (from_run,),
    ).fetchall()
    n = len(ORDER_COLUMNS)
    for row in rows:
        req = list(row[:n])
        req[9] = bool(req[9])  # reduce_only
        o = OrderRequest(*req)
        reason, ts_accepted, ts_updated, avg_px, carried = row[n:]
        filled = carried
        notional = carried * avg_px  # restored part: at the average it was restored with
        for px, qty in conn.execute(
            "SELECT px, qty FROM fills WHERE run_id = ? AND strategy_id = ?"
            " AND client_order_id = ?",
            (from_run, o.strategy_id, o.client_order_id),
        ):
            filled += qty
            notional += px * qty
        leaves = o.qty - filled
        if leaves <= 0:
            continue  # its last fill was committed, its "filled" report was not
        state: OrderStatus = "partially_filled" if filled else "accepted"
        avg = (2 * notional + filled) // (2 * filled) if filled else 0  # half up, as the broker
        out.append((
            OrderAccepted(o, ts_accepted),
            OrderUpdate(o.client_order_id, o.strategy_id, o.symbol, o.side, o.order_type, state,
                        o.px, o.qty, filled, leaves, avg,
                        f"restored from run {from_run}" + (f" ({reason})" if reason else ""),
                        o.ts_recv_ns, ts_updated),
        ))  # fmt: skip
    return out
