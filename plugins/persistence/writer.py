"""Rows from bus messages, batched into one transaction per commit.

Each message becomes one row (two or three statements for the order life: the ``orders``
row is inserted once and then moved along its states by guarded UPDATEs). Rows wait in
per-statement lists in arrival order; :meth:`Writer.flush` writes all of them with one
``executemany`` per statement inside ``BEGIN IMMEDIATE ... COMMIT`` and empties the lists
only when the commit succeeded - a failed commit (disk full, database locked) rolls back
and keeps every row for the next attempt.

The ``orders`` row is made by whichever message about the order arrives first and only
ever moves forward (risk's verdict moves a ``new`` order; a report moves it to a later
state; a finished order stays finished), so the result does not depend on the order in
which the messages arrive - which, across lanes, is not the order they were made in (see
``ORDER_STATE``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from msgspec.structs import astuple

from tickbus.schemas import (
    Fill,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    RiskState,
    Signal,
    StrategySnapshot,
)

from .schema import FINAL_STATUSES, JOURNAL_COLUMNS, ORDER_COLUMNS

Row = tuple[Any, ...]


def _insert(table: str, columns: tuple[str, ...], verb: str = "INSERT") -> str:
    names = ("run_id", "seq", *columns)
    return f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


_RANK = ("CASE {} WHEN 'new' THEN 0 WHEN 'accepted' THEN 1 WHEN 'partially_filled' THEN 2"
         " ELSE 3 END")
_ORDER_ALL = ("run_id", "seq", *ORDER_COLUMNS, "status", "filled_qty", "leaves_qty", "avg_px",
              "reason", "ts_accepted_ns", "ts_updated_ns")  # fmt: skip
_REQUEST_SET = ", ".join(f"{c} = excluded.{c}" for c in (
    "order_type", "tif", "qty", "px", "expire_at_ns", "reduce_only", "replaces", "ts_recv_ns",
    "ts_created_ns"))  # fmt: skip

_REQUEST_VALUES = ", ".join("?" * (2 + len(ORDER_COLUMNS)))
ORDER_INSERT = (
    f"INSERT INTO orders ({', '.join(_ORDER_ALL)}) VALUES ({_REQUEST_VALUES},"
    " 'new', 0, ?, 0, '', NULL, ?) ON CONFLICT (run_id, strategy_id, client_order_id)"
    " DO UPDATE SET"
    f" {_REQUEST_SET} WHERE orders.tif = ''"
)
"""The request (from ord.request, or ord.accepted/ord.rejected, which carry it): makes the
row, or completes one the broker's report made first (``tif = ''``: request not seen yet).
A second request with the same id changes nothing (risk rejects it; see ``rejections``)."""

ORDER_STATE = (
    f"INSERT INTO orders ({', '.join(_ORDER_ALL)}) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?, 0, 0,"
    " '', ?, 0, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (run_id, strategy_id, client_order_id)"
    " DO UPDATE SET"
    " status = excluded.status, filled_qty = excluded.filled_qty,"
    " leaves_qty = excluded.leaves_qty, avg_px = excluded.avg_px, reason = excluded.reason,"
    " ts_updated_ns = excluded.ts_updated_ns"
    f" WHERE orders.status NOT IN ({', '.join(repr(s) for s in FINAL_STATUSES)})"
    f" AND ({_RANK.format('excluded.status')} > {_RANK.format('orders.status')}"
    " OR (excluded.status = orders.status AND excluded.filled_qty > orders.filled_qty))"
)
"""The broker's report moves the order forward, never back: reports may arrive before the
request (another lane receives a nested publish - the report made while risk's
``ord.accepted`` was being handled - before the outer message), and a finished order stays
finished."""

ORDER_RESTORED = _insert("orders", (*_ORDER_ALL[2:], "restored_qty"))
"""A working order restored at start, copied into the new run (so the run's own rows hold
every order alive in it, and its reports move that copy)."""

_STUB_FILL = ", ".join(
    f"{c} = CASE WHEN orders.tif = '' THEN excluded.{c} ELSE orders.{c} END" for c in (
        "order_type", "tif", "qty", "px", "expire_at_ns", "reduce_only", "replaces",
        "ts_recv_ns", "ts_created_ns"))  # fmt: skip
ORDER_ACCEPTED = (
    f"INSERT INTO orders ({', '.join(_ORDER_ALL)}) VALUES ({_REQUEST_VALUES},"
    " 'accepted', 0, ?, 0, '', ?, ?) ON CONFLICT (run_id, strategy_id, client_order_id)"
    f" DO UPDATE SET {_STUB_FILL},"
    " ts_accepted_ns = coalesce(orders.ts_accepted_ns, excluded.ts_accepted_ns),"
    " ts_updated_ns = CASE orders.status WHEN 'new' THEN excluded.ts_updated_ns"
    " ELSE orders.ts_updated_ns END,"
    " status = CASE orders.status WHEN 'new' THEN 'accepted' ELSE orders.status END"
)
"""Risk let it through (one statement: makes the row if it is the first message about the
order - it usually is, the request reaches other lanes after what risk did with it - or
completes a report's stub, stamps the acceptance and moves a ``new`` order on)."""

ORDER_REJECTED = (
    "UPDATE orders SET status = 'rejected', leaves_qty = 0, reason = ?, ts_updated_ns = ?"
    " WHERE run_id = ? AND strategy_id = ? AND client_order_id = ? AND status = 'new'"
)

JOURNAL = {table: _insert(table, cols) for table, cols in JOURNAL_COLUMNS.items()}

STATEMENTS: tuple[str, ...] = (
    ORDER_INSERT, ORDER_ACCEPTED, ORDER_STATE, *JOURNAL.values(), ORDER_REJECTED,
)  # fmt: skip
"""Every statement, in the order a commit runs them (see the module docstring)."""

STATEMENT_TABLE = {
    ORDER_INSERT: "orders", ORDER_STATE: "orders", ORDER_ACCEPTED: "orders",
    ORDER_REJECTED: "orders", **{sql: table for table, sql in JOURNAL.items()},
}  # fmt: skip

DATA_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError,
    TypeError, ValueError,
)  # fmt: skip
"""A row the database refuses for what it holds (an int beyond 64 bits...): bad input -
skipped, counted and logged once per kind. Every other ``sqlite3.Error`` is the database's
(locked, disk full, I/O): the batch is kept and retried."""

_N_REQ = len(ORDER_COLUMNS)
# the broker's rejected reports of a cancel (of an unknown or finished order) or of a
# duplicate id are about that request, not a transition of the order with the same id
_NOT_A_TRANSITION = ("cancel:", "duplicate:")


class Writer:
    """Pending rows of one run and the commits that write them (one thread: the lane's)."""

    def __init__(self, conn: sqlite3.Connection, run_id: int,
                 log: logging.Logger | None = None) -> None:  # fmt: skip
        self.conn = conn
        self.run_id = run_id
        self.log = log or logging.getLogger("tickbus.persistence")
        self.seq = 0
        """Arrival order of the messages of this run (the ``seq`` column)."""
        self.pending: dict[str, list[Row]] = {sql: [] for sql in STATEMENTS}
        self.rows = 0
        """Rows (statements to execute) waiting for the next commit."""
        self.written = 0
        self.commits = 0
        self.bad = 0
        self.latencies_ns: list[int] = []
        """Commit latencies since the caller last emptied the list."""
        self._bad_kinds: set[str] = set()
        p = self.pending
        self._order_insert = p[ORDER_INSERT].append
        self._accepted = p[ORDER_ACCEPTED].append
        self._rejected = p[ORDER_REJECTED].append
        self._state = p[ORDER_STATE].append
        self._journal = {table: p[sql].append for table, sql in JOURNAL.items()}
        self.handlers: dict[type, Callable[[Any], None]] = {
            OrderRequest: self.order_request,
            OrderAccepted: self.order_accepted,
            OrderRejected: self.order_rejected,
            OrderCancel: self._plain("cancels"),
            OrderUpdate: self.order_update,
            Fill: self._money("fills", (7,)),
            Position: self._money("positions", (2, 3, 4, 5)),
            Signal: self._plain("signals"),
            RiskState: self._money("risk_states", (4,)),
            StrategySnapshot: self._plain("strategy_snapshots"),
        }
        """Message type -> the method that turns it into rows."""

    # ------------------------------------------------------------------ messages -> rows

    def next_seq(self) -> int:
        """The next ``seq`` of this run."""
        self.seq += 1
        return self.seq

    def _plain(self, table: str) -> Callable[[Any], None]:
        add = self._journal[table]
        n = len(JOURNAL_COLUMNS[table])

        def row(msg: Any) -> None:
            self.seq += 1
            add((self.run_id, self.seq, *astuple(msg)[:n]))
            self.rows += 1

        return row

    def _money(self, table: str, money: tuple[int, ...]) -> Callable[[Any], None]:
        """Rows whose fields at ``money`` indexes are exact money ints (stored as TEXT)."""
        add = self._journal[table]
        n = len(JOURNAL_COLUMNS[table])

        def row(msg: Any) -> None:
            values = list(astuple(msg)[:n])
            for i in money:
                values[i] = str(values[i])
            self.seq += 1
            add((self.run_id, self.seq, *values))
            self.rows += 1

        return row

    def _order_row(self, o: OrderRequest, seq: int) -> Row:
        return (self.run_id, seq, *astuple(o)[:_N_REQ], o.qty, o.ts_created_ns)

    def order_request(self, o: OrderRequest) -> None:
        """``ord.request``: the ``orders`` row, status ``new``."""
        self._order_insert(self._order_row(o, self.next_seq()))
        self.rows += 1

    def order_accepted(self, a: OrderAccepted) -> None:
        """``ord.accepted``: risk let it through (the row is made if it is not there yet)."""
        o = a.order
        self._accepted((self.run_id, self.next_seq(), *astuple(o)[:_N_REQ], o.qty, a.ts_accepted_ns,
                        a.ts_accepted_ns))  # fmt: skip
        self.rows += 1

    def order_rejected(self, r: OrderRejected) -> None:
        """``ord.rejected``: a ``rejections`` row; the order (if it is this one) is final."""
        o = r.order
        seq = self.next_seq()
        self._order_insert(self._order_row(o, seq))
        self._journal["rejections"]((self.run_id, seq, *astuple(o)[:_N_REQ], r.rule, r.reason,
                                     r.ts_rejected_ns))  # fmt: skip
        self.rows += 2
        if r.rule != "duplicate_id":  # the id's first order is another one
            self._rejected((f"{r.rule}: {r.reason}", r.ts_rejected_ns, self.run_id,
                            o.strategy_id, o.client_order_id))  # fmt: skip
            self.rows += 1

    def order_update(self, u: OrderUpdate) -> None:
        """``exec.report``: an ``order_updates`` row, and the order's latest state."""
        self._journal["order_updates"]((self.run_id, self.next_seq(), *astuple(u)[:14]))
        self.rows += 1
        if u.status == "rejected" and u.reason.startswith(_NOT_A_TRANSITION):
            return
        self._state((self.run_id, self.seq, u.client_order_id, u.strategy_id, u.symbol, u.side,
                     u.order_type, u.qty, u.px, u.ts_recv_ns, u.status, u.filled_qty,
                     u.leaves_qty, u.avg_px, u.reason, u.ts_update_ns))  # fmt: skip
        self.rows += 1

    def derived(self, table: str, values: tuple[Any, ...]) -> None:
        """A row the plugin computed itself (``trades``, ``performance_metrics``)."""
        self._journal[table]((self.run_id, self.next_seq(), *values))
        self.rows += 1

    # ------------------------------------------------------------------ commit

    def flush(self) -> int:
        """Write every pending row in one transaction; the number of rows written.

        Raises ``sqlite3.Error`` (the rows stay pending) when the database fails. A row it
        refuses for its content is skipped, counted in ``bad`` and logged once per kind."""
        if not self.rows:
            return 0
        t0 = time.perf_counter_ns()
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in self.pending.items():
                if rows:
                    conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except DATA_ERRORS:
            self._rollback()
            self._flush_row_by_row()
        except BaseException:
            self._rollback()
            raise
        n = self.rows
        self._clear()
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.written += n
        self.commits += 1
        return n

    def _flush_row_by_row(self) -> None:
        """One transaction again, each row on its own: only the refused rows are left out."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in self.pending.items():
                for row in rows:
                    try:
                        conn.execute(sql, row)
                    except DATA_ERRORS as err:
                        self._refused(sql, row, err)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _refused(self, sql: str, row: Row, err: Exception) -> None:
        self.bad += 1
        self.rows -= 1
        kind = f"{STATEMENT_TABLE[sql]}:{type(err).__name__}"
        if kind not in self._bad_kinds and len(self._bad_kinds) < 64:
            self._bad_kinds.add(kind)
            self.log.warning("the database refused a %s row (%s: %s), skipped; logged once per"
                             " kind; sample %r", STATEMENT_TABLE[sql], type(err).__name__, err,
                             row[:12])  # fmt: skip

    def _rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # a failed rollback leaves the transaction to SQLite's own recovery

    def _clear(self) -> None:
        for rows in self.pending.values():
            rows.clear()
        self.rows = 0
