"""The persistence database: tables, views, migrations, and opening a file safely.

Units (the bus's exact integers, never floats):

* prices and quantities (``px``, ``qty``, ``avg_px``, ``mark_px``...): INTEGER in 1/SCALE
  units (1e-8), as on the bus;
* money (``fee``, ``cost``, ``realized_pnl``, ``unrealized_pnl``, ``fees``, ``pnl``,
  ``gross_exposure``...): the exact integer in 1/NOTIONAL_SCALE units (1e-16) of the quote
  asset, stored as TEXT - a position of 1 BTC at 60,000 USDT is 6e20 such units, beyond
  SQLite's 64-bit INTEGER, and a REAL would round it. ``int(text)`` reads it back exactly;
* times (``ts_*_ns``, ``timestamp_ns``): INTEGER nanoseconds since the Unix epoch on the
  kernel clock (recorded time in a replay); ``runs`` times are wall-clock;
* booleans: INTEGER 0/1; ratios (signal strength, confidence): REAL.

Every journal table has ``run_id`` (the ``runs`` row of the process that wrote it) and
``seq`` (arrival order in the persistence lane, one counter per run across all tables), so
the interleaving of the stream can be rebuilt. The ``v_*`` views show the same rows with
REAL prices, quantities and money and ISO-8601 times, for people and ad-hoc SQL.

The schema version is ``PRAGMA user_version``; :data:`MIGRATIONS` holds the scripts that
bring a database from one version to the next (append, never edit one that shipped).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from tickbus.kernel import TickbusError

# --------------------------------------------------------------------------- version 1

_V1 = """
CREATE TABLE runs (
    run_id        INTEGER PRIMARY KEY,
    process       TEXT NOT NULL,             -- [kernel] name
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    version       TEXT NOT NULL,             -- tickbus version
    clock         TEXT NOT NULL,             -- live | replay
    config_path   TEXT,
    config_text   TEXT,                      -- the whole TOML file as it was at start
    started_ns    INTEGER NOT NULL,          -- wall clock
    stopped_ns    INTEGER,                   -- NULL: running, or killed (SIGKILL, crash)
    exit_reason   TEXT,
    restored_from INTEGER                    -- run whose state was restored at start
);

-- one row per order and run: the request, then its latest state (the original design's
-- table); seq is that of the first message about it (reports can overtake their request
-- across lanes); an order restored at start is copied into the new run (reason "restored")
CREATE TABLE orders (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    client_order_id TEXT NOT NULL,
    strategy_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    order_type      TEXT NOT NULL,
    tif             TEXT NOT NULL,
    qty             INTEGER NOT NULL,
    px              INTEGER NOT NULL,
    expire_at_ns    INTEGER NOT NULL,
    reduce_only     INTEGER NOT NULL,
    replaces        TEXT NOT NULL,
    ts_recv_ns      INTEGER NOT NULL,
    ts_created_ns   INTEGER NOT NULL,
    status          TEXT NOT NULL,           -- latest: new, accepted, ..., filled, rejected
    filled_qty      INTEGER NOT NULL,
    leaves_qty      INTEGER NOT NULL,
    avg_px          INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    ts_accepted_ns  INTEGER,                 -- risk let it through
    ts_updated_ns   INTEGER NOT NULL,        -- latest transition
    restored_qty    INTEGER NOT NULL DEFAULT 0, -- filled before this run (restored orders)
    PRIMARY KEY (run_id, strategy_id, client_order_id)
);
CREATE INDEX orders_symbol ON orders (symbol, ts_created_ns);
CREATE INDEX orders_working ON orders (run_id, status)
    WHERE status IN ('new', 'accepted', 'partially_filled');
CREATE INDEX orders_replaces ON orders (run_id, strategy_id, replaces) WHERE replaces != '';

-- every transition of every order (exec.report), as the broker published it
CREATE TABLE order_updates (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    client_order_id TEXT NOT NULL,
    strategy_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    order_type      TEXT NOT NULL,
    status          TEXT NOT NULL,
    px              INTEGER NOT NULL,
    qty             INTEGER NOT NULL,
    filled_qty      INTEGER NOT NULL,
    leaves_qty      INTEGER NOT NULL,
    avg_px          INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    ts_recv_ns      INTEGER NOT NULL,
    ts_update_ns    INTEGER NOT NULL
);
CREATE INDEX order_updates_order ON order_updates (run_id, strategy_id, client_order_id);

-- cancel requests of the strategies (ord.cancel); the outcome is in order_updates
CREATE TABLE cancels (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    client_order_id TEXT NOT NULL,
    strategy_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    ts_created_ns   INTEGER NOT NULL
);

-- orders risk refused (ord.rejected): the request, the rule and the reason with the numbers
CREATE TABLE rejections (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    client_order_id TEXT NOT NULL,
    strategy_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    order_type      TEXT NOT NULL,
    tif             TEXT NOT NULL,
    qty             INTEGER NOT NULL,
    px              INTEGER NOT NULL,
    expire_at_ns    INTEGER NOT NULL,
    reduce_only     INTEGER NOT NULL,
    replaces        TEXT NOT NULL,
    ts_recv_ns      INTEGER NOT NULL,
    ts_created_ns   INTEGER NOT NULL,
    rule            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ts_rejected_ns  INTEGER NOT NULL
);
CREATE INDEX rejections_rule ON rejections (rule);

-- every execution (exec.fill), with its fee and liquidity
CREATE TABLE fills (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    client_order_id TEXT NOT NULL,
    strategy_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    fill_id         INTEGER NOT NULL,        -- the broker's, unique within a run
    px              INTEGER NOT NULL,
    qty             INTEGER NOT NULL,
    fee             TEXT NOT NULL,           -- money, negative for a rebate
    liquidity       TEXT NOT NULL,           -- maker | taker
    ts_exchange_ns  INTEGER NOT NULL,
    ts_recv_ns      INTEGER NOT NULL,
    ts_fill_ns      INTEGER NOT NULL
);
CREATE INDEX fills_order ON fills (run_id, strategy_id, client_order_id);
CREATE INDEX fills_run ON fills (run_id, fill_id);

-- the account's position per symbol after every fill and every mark (pos.<SYMBOL>)
CREATE TABLE positions (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    symbol          TEXT NOT NULL,
    qty             INTEGER NOT NULL,        -- signed
    cost            TEXT NOT NULL,           -- money: signed cost basis of the open qty
    realized_pnl    TEXT NOT NULL,           -- money, gross of fees
    unrealized_pnl  TEXT NOT NULL,           -- money, at mark_px
    fees            TEXT NOT NULL,           -- money
    mark_px         INTEGER NOT NULL,
    fills           INTEGER NOT NULL,
    ts_recv_ns      INTEGER NOT NULL,
    ts_update_ns    INTEGER NOT NULL
);
CREATE INDEX positions_symbol ON positions (symbol, run_id, seq);

-- the account as restored at the start of run_id: every committed fill of the earlier runs
-- of the same clock (live or replay), folded with the broker's exact accounting
CREATE TABLE restored_positions (
    run_id          INTEGER NOT NULL,
    symbol          TEXT NOT NULL,
    qty             INTEGER NOT NULL,
    cost            TEXT NOT NULL,
    realized_pnl    TEXT NOT NULL,
    fees            TEXT NOT NULL,
    mark_px         INTEGER NOT NULL,
    fills           INTEGER NOT NULL,
    PRIMARY KEY (run_id, symbol)
);

-- round trips of the account per symbol: flat -> position -> flat (or through zero)
CREATE TABLE trades (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    symbol          TEXT NOT NULL,
    direction       TEXT NOT NULL,           -- long | short
    opened_ns       INTEGER NOT NULL,
    closed_ns       INTEGER NOT NULL,
    fills           INTEGER NOT NULL,
    max_qty         INTEGER NOT NULL,        -- largest absolute position of the trade
    entry_px        INTEGER NOT NULL,        -- average entry price at that size
    realized_pnl    TEXT NOT NULL,           -- money, gross
    fees            TEXT NOT NULL,           -- money
    pnl             TEXT NOT NULL            -- money: realized_pnl - fees
);
CREATE INDEX trades_symbol ON trades (symbol, closed_ns);

-- every signal of every strategy (sig.<SYMBOL>), suppressed ones with the reason
CREATE TABLE signals (
    run_id            INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    symbol            TEXT NOT NULL,
    strategy_id       TEXT NOT NULL,
    direction         INTEGER NOT NULL,
    strength          REAL NOT NULL,
    confidence        REAL NOT NULL,
    holding_period_ms INTEGER NOT NULL,
    suppressed        TEXT NOT NULL,
    timestamp_ns      INTEGER NOT NULL,
    ts_recv_ns        INTEGER NOT NULL
);
CREATE INDEX signals_symbol ON signals (symbol, timestamp_ns);

-- risk's trading state (risk.state: on every change and periodically)
CREATE TABLE risk_states (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    state           TEXT NOT NULL,
    kill_switch     INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    open_orders     INTEGER NOT NULL,
    gross_exposure  TEXT NOT NULL,           -- money
    ts_ns           INTEGER NOT NULL
);

-- what strategies published on snap.<strategy_id> (state: JSON chosen by the strategy)
CREATE TABLE strategy_snapshots (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    strategy_id     TEXT NOT NULL,
    state           TEXT NOT NULL,
    ts_ns           INTEGER NOT NULL
);
CREATE INDEX strategy_snapshots_strategy ON strategy_snapshots (strategy_id, run_id, seq);

-- the account every performance_interval_ms (kernel clock) and at the end; symbol 'total'
-- is the sum over symbols (meaningful when they share a quote asset)
CREATE TABLE performance_metrics (
    run_id          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    ts_ns           INTEGER NOT NULL,
    symbol          TEXT NOT NULL,
    position_qty    INTEGER NOT NULL,
    realized_pnl    TEXT NOT NULL,
    unrealized_pnl  TEXT NOT NULL,
    fees            TEXT NOT NULL,
    net_pnl         TEXT NOT NULL,           -- realized + unrealized - fees
    gross_exposure  TEXT NOT NULL,           -- |qty| x mark
    peak_net_pnl    TEXT NOT NULL,
    drawdown        TEXT NOT NULL,           -- peak_net_pnl - net_pnl
    fills           INTEGER NOT NULL,
    trades          INTEGER NOT NULL,        -- closed this run
    wins            INTEGER NOT NULL
);
CREATE INDEX performance_metrics_symbol ON performance_metrics (symbol, ts_ns);

CREATE VIEW v_orders AS SELECT run_id, seq, client_order_id, strategy_id, symbol, side,
    order_type, tif, qty / 1e8 AS qty, px / 1e8 AS px, reduce_only, replaces, status,
    filled_qty / 1e8 AS filled_qty, leaves_qty / 1e8 AS leaves_qty, avg_px / 1e8 AS avg_px,
    reason, strftime('%Y-%m-%d %H:%M:%f', ts_created_ns / 1e9, 'unixepoch') AS created,
    strftime('%Y-%m-%d %H:%M:%f', ts_updated_ns / 1e9, 'unixepoch') AS updated
    FROM orders;
CREATE VIEW v_order_updates AS SELECT run_id, seq, client_order_id, strategy_id, symbol, side,
    status, px / 1e8 AS px, qty / 1e8 AS qty, filled_qty / 1e8 AS filled_qty,
    leaves_qty / 1e8 AS leaves_qty, avg_px / 1e8 AS avg_px, reason,
    strftime('%Y-%m-%d %H:%M:%f', ts_update_ns / 1e9, 'unixepoch') AS time
    FROM order_updates;
CREATE VIEW v_rejections AS SELECT run_id, seq, client_order_id, strategy_id, symbol, side,
    qty / 1e8 AS qty, px / 1e8 AS px, rule, reason,
    strftime('%Y-%m-%d %H:%M:%f', ts_rejected_ns / 1e9, 'unixepoch') AS time
    FROM rejections;
CREATE VIEW v_fills AS SELECT run_id, seq, client_order_id, strategy_id, symbol, side, fill_id,
    px / 1e8 AS px, qty / 1e8 AS qty, (px / 1e8) * (qty / 1e8) AS notional,
    CAST(fee AS REAL) / 1e16 AS fee, liquidity,
    strftime('%Y-%m-%d %H:%M:%f', ts_fill_ns / 1e9, 'unixepoch') AS time
    FROM fills;
CREATE VIEW v_positions AS SELECT run_id, seq, symbol, qty / 1e8 AS qty,
    CAST(cost AS REAL) / 1e16 AS cost, CAST(realized_pnl AS REAL) / 1e16 AS realized_pnl,
    CAST(unrealized_pnl AS REAL) / 1e16 AS unrealized_pnl, CAST(fees AS REAL) / 1e16 AS fees,
    (CAST(realized_pnl AS REAL) + CAST(unrealized_pnl AS REAL) - CAST(fees AS REAL)) / 1e16
        AS net_pnl,
    mark_px / 1e8 AS mark_px, fills,
    strftime('%Y-%m-%d %H:%M:%f', ts_update_ns / 1e9, 'unixepoch') AS time
    FROM positions;
CREATE VIEW v_positions_latest AS SELECT * FROM v_positions p
    WHERE seq = (SELECT MAX(seq) FROM positions q WHERE q.symbol = p.symbol
                 AND q.run_id = p.run_id)
      AND run_id = (SELECT MAX(run_id) FROM positions q WHERE q.symbol = p.symbol);
CREATE VIEW v_trades AS SELECT run_id, seq, symbol, direction,
    strftime('%Y-%m-%d %H:%M:%f', opened_ns / 1e9, 'unixepoch') AS opened,
    strftime('%Y-%m-%d %H:%M:%f', closed_ns / 1e9, 'unixepoch') AS closed,
    (closed_ns - opened_ns) / 1e9 AS seconds, fills, max_qty / 1e8 AS max_qty,
    entry_px / 1e8 AS entry_px, CAST(realized_pnl AS REAL) / 1e16 AS realized_pnl,
    CAST(fees AS REAL) / 1e16 AS fees, CAST(pnl AS REAL) / 1e16 AS pnl
    FROM trades;
CREATE VIEW v_signals AS SELECT run_id, seq, symbol, strategy_id, direction, strength,
    confidence, holding_period_ms, suppressed,
    strftime('%Y-%m-%d %H:%M:%f', timestamp_ns / 1e9, 'unixepoch') AS time
    FROM signals;
CREATE VIEW v_performance AS SELECT run_id, seq,
    strftime('%Y-%m-%d %H:%M:%f', ts_ns / 1e9, 'unixepoch') AS time, symbol,
    position_qty / 1e8 AS position_qty, CAST(realized_pnl AS REAL) / 1e16 AS realized_pnl,
    CAST(unrealized_pnl AS REAL) / 1e16 AS unrealized_pnl, CAST(fees AS REAL) / 1e16 AS fees,
    CAST(net_pnl AS REAL) / 1e16 AS net_pnl,
    CAST(gross_exposure AS REAL) / 1e16 AS gross_exposure,
    CAST(drawdown AS REAL) / 1e16 AS drawdown, fills, trades, wins
    FROM performance_metrics;
CREATE VIEW v_runs AS SELECT run_id, process, host, pid, version, clock, config_path,
    strftime('%Y-%m-%d %H:%M:%f', started_ns / 1e9, 'unixepoch') AS started,
    strftime('%Y-%m-%d %H:%M:%f', stopped_ns / 1e9, 'unixepoch') AS stopped,
    exit_reason, restored_from
    FROM runs;
"""

MIGRATIONS: tuple[str, ...] = (_V1,)
"""``MIGRATIONS[i]`` brings a database from version ``i`` to ``i + 1`` (one transaction)."""

SCHEMA_VERSION = len(MIGRATIONS)

MONEY = "money"
"""Marks a column holding an exact 1/NOTIONAL_SCALE integer as TEXT."""

JOURNAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "order_updates": (
        "client_order_id", "strategy_id", "symbol", "side", "order_type", "status", "px", "qty",
        "filled_qty", "leaves_qty", "avg_px", "reason", "ts_recv_ns", "ts_update_ns",
    ),
    "cancels": ("client_order_id", "strategy_id", "symbol", "ts_created_ns"),
    "rejections": (
        "client_order_id", "strategy_id", "symbol", "side", "order_type", "tif", "qty", "px",
        "expire_at_ns", "reduce_only", "replaces", "ts_recv_ns", "ts_created_ns", "rule",
        "reason", "ts_rejected_ns",
    ),
    "fills": (
        "client_order_id", "strategy_id", "symbol", "side", "fill_id", "px", "qty", "fee",
        "liquidity", "ts_exchange_ns", "ts_recv_ns", "ts_fill_ns",
    ),
    "positions": (
        "symbol", "qty", "cost", "realized_pnl", "unrealized_pnl", "fees", "mark_px", "fills",
        "ts_recv_ns", "ts_update_ns",
    ),
    "signals": (
        "symbol", "strategy_id", "direction", "strength", "confidence", "holding_period_ms",
        "suppressed", "timestamp_ns", "ts_recv_ns",
    ),
    "risk_states": (
        "state", "kill_switch", "reason", "open_orders", "gross_exposure", "ts_ns",
    ),
    "strategy_snapshots": ("strategy_id", "state", "ts_ns"),
    "trades": (
        "symbol", "direction", "opened_ns", "closed_ns", "fills", "max_qty", "entry_px",
        "realized_pnl", "fees", "pnl",
    ),
    "performance_metrics": (
        "ts_ns", "symbol", "position_qty", "realized_pnl", "unrealized_pnl", "fees", "net_pnl",
        "gross_exposure", "peak_net_pnl", "drawdown", "fills", "trades", "wins",
    ),
}  # fmt: skip
"""Columns of the append-only tables after ``run_id, seq`` (message field order)."""

ORDER_COLUMNS: tuple[str, ...] = (
    "client_order_id", "strategy_id", "symbol", "side", "order_type", "tif", "qty", "px",
    "expire_at_ns", "reduce_only", "replaces", "ts_recv_ns", "ts_created_ns",
)  # fmt: skip
"""The request columns of ``orders`` (after ``run_id, seq``): ``OrderRequest``'s fields."""

MONEY_COLUMNS = frozenset(
    {"fee", "cost", "realized_pnl", "unrealized_pnl", "fees", "pnl", "gross_exposure",
     "net_pnl", "peak_net_pnl", "drawdown"}
)  # fmt: skip
"""Columns holding money as TEXT (exact 1/NOTIONAL_SCALE integers)."""

DEFAULT_NAME = "tickbus.db"
FINAL_STATUSES = ("filled", "canceled", "expired", "rejected")


def _error(path: Path, what: str) -> TickbusError:
    return TickbusError(f"database {path}: {what}")


def migrate(conn: sqlite3.Connection, path: Path,
            migrations: Sequence[str] = MIGRATIONS) -> tuple[int, int]:  # fmt: skip
    """Bring the database to ``len(migrations)``; returns (version before, after).

    A database newer than this code, or one that is not a tickbus database (tables but no
    version), is refused with a one-line TickbusError and left untouched. Each step runs in
    its own transaction together with its ``user_version``, so a failure leaves the
    previous version intact."""
    target = len(migrations)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > target:
        raise _error(path, f"schema version {version} is newer than this tickbus knows "
                           f"({target}); use a newer tickbus, or another path")  # fmt: skip
    if version == 0:
        foreign = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]  # fmt: skip
        if foreign:
            raise _error(path, f"not a tickbus database (it holds {', '.join(foreign[:5])}"
                               f"{'...' if len(foreign) > 5 else ''}, no schema version); "
                               "choose another path")  # fmt: skip
    start = version
    while version < target:
        script = migrations[version]
        version += 1
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\n"
                               "COMMIT;")  # fmt: skip
        except sqlite3.Error:
            if conn.in_transaction:
                conn.rollback()
            raise
    return start, version


class DatabaseLock:
    """An exclusive ``flock`` on ``<db>.lock`` for the life of a run: two processes writing
    (and restoring from) one database would interleave their state. The lock dies with its
    holder, so a killed run never leaves a stale one; the file names the holder."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise _error(path, f"cannot create {self.path.name}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _error(path, f"in use by {holder}; stop it or choose another path"
                             ) from None  # fmt: skip
            raise _error(path, f"cannot lock {self.path.name}: {err.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (the file stays, like the runtime dir's)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def ensure_dir(path: Path) -> None:
    """Create the database's directory; refuse (one line) a path that cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(path, f"cannot create directory {path.parent}: {err.strerror}") from None
    if path.exists() and not path.is_file():
        raise _error(path, "is not a regular file")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise _error(path, "not readable and writable by this user")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite needs the directory too: the WAL and shared-memory files live beside it
        raise _error(path, f"directory {path.parent} is not writable")


def open_database(path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 2000,
                  check: str = "quick") -> sqlite_utils.Database:  # fmt: skip
    """Open (or create) the database at ``path`` for writing: WAL mode, the schema migrated.

    Every problem is one TickbusError line naming the file, and nothing is overwritten: a
    directory that cannot be created or written, a file that is not a database or is
    corrupted (``check``: "quick" runs ``PRAGMA quick_check``, "off" only reads the header),
    a newer schema, a database of something else."""
    ensure_dir(path)
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT per batch)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header
        if check == "quick":
            bad = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if bad != ["ok"]:
                raise _error(path, f"corrupted ({'; '.join(bad)[:200]}); move it away and "
                                   "start a new one, or repair it with sqlite3's .recover")
        db = sqlite_utils.Database(conn)
        migrate(conn, path)  # refuses a foreign or newer database before WAL changes a byte
        if db.journal_mode != "wal":
            db.enable_wal()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA cache_size = -32768")  # 32 MB: the indexes of a long run
        return db
    except TickbusError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.DatabaseError as err:
        if conn is not None:
            conn.close()
        code = getattr(err, "sqlite_errorname", "") or type(err).__name__
        if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise _error(path, f"not a database or corrupted ({code}); nothing was changed; "
                               "move it away or choose another path") from None
        raise _error(path, f"cannot open it for writing ({code}: {err})") from None


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The column names of ``table`` in order (for checks and tools)."""
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def read_only(path: Path) -> sqlite3.Connection:
    """Open an existing database for reading (reports, ad-hoc tools): refuses a missing
    file, a newer schema and a non-tickbus file with one line; never creates or changes
    anything (``mode=ro``; WAL readers need no write access to the database file)."""
    if not path.is_file():
        raise _error(path, "no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as err:
        code = getattr(err, "sqlite_errorname", "") or type(err).__name__
        raise _error(path, f"not a database or unreadable ({code})") from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise _error(path, f"schema version {version} is newer than this tickbus knows "
                           f"({SCHEMA_VERSION})")  # fmt: skip
    if version == 0:
        conn.close()
        raise _error(path, "not a tickbus database (no schema version)")
    return conn

