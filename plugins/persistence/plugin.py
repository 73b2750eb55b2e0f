"""The ``persistence`` plugin: everything that happened, in SQLite, and the state a restart
needs, read back from it.

Put it in a lane of its own (off the hot path). It subscribes to ``ord.``, ``exec.``,
``pos.``, ``risk.``, ``sig.`` and ``snap.`` and writes each message as rows (schema.py has
the tables and their units), batched: a commit when ``batch_rows`` rows wait (also in a
replay, so nothing waits on the wall clock) or ``commit_interval_ms`` after the first row
waiting (kernel clock). Once the kernel stops the plugins, every message that still arrives
is committed right away, and the shutdown hook - after the kernel has drained the bus -
commits the rest: whatever reached the lane is in the database.

A commit that fails (disk full, database locked by another process, I/O error) is rolled
back, its rows are kept and retried with backoff (logged once per episode; a failure that
lasts ``fail_after_s`` or survives the shutdown is reported: non-zero exit). Meanwhile rows
queue in memory up to ``max_pending_rows``; past that the lane itself waits for the disk
(back-pressure: the bus then holds the backlog, losslessly). ``persist.stats`` carries the
queue, the backlog and the commit latencies for the metrics plugin.

Restart: at start (``restore``: "auto" = with the live clock) it publishes the restored
state - ``restore.pos.<S>`` (Position), ``restore.order`` (OrderAccepted) followed by
``restore.report`` (its OrderUpdate) for each working order, ``restore.net.<id>.<S>``
(Position: strategy ``<id>``'s own fills in ``<S>``), ``restore.snap.<id>``
(StrategySnapshot) - and then ``restore.done`` (:class:`~.messages.Restored`). Plugins that
restore from them list ``after = ["persistence"]``. Every ``snapshot_interval_ms`` it asks
the strategies for a snapshot (``ControlCommand`` "snapshot" on ``ctl.snapshot``) and
records what they publish on ``snap.<strategy_id>``.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec.structs import astuple

from tickbus.kernel import PluginContext, ReplayClock, TickbusError, hookimpl
from tickbus.schemas import ControlCommand, Msg, Position, Shutdown

from . import restore as _restore
from .ledger import Ledger
from .messages import RESTORE_DONE_TOPIC, STATS_TOPIC, PersistenceStats, Restored
from .schema import DEFAULT_NAME, ORDER_COLUMNS, DatabaseLock, ensure_dir, open_database
from .writer import ORDER_RESTORED, Writer

PREFIXES = ("ord.", "exec.", "pos.", "risk.", "sig.", "snap.")
SNAPSHOT_TOPIC = "ctl.snapshot"


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.persistence]``."""

    path: str = ""
    """The database file; relative to the config file. Default: ``<state_dir>/tickbus.db``."""
    commit_interval_ms: float = 100.0
    """A row waits at most this long (kernel clock) for its commit."""
    batch_rows: int = 5000
    """...or until this many rows wait."""
    max_pending_rows: int = 500_000
    """Rows held in memory while the database fails or lags; past this the lane waits for
    the disk (back-pressure). A warning at a tenth of it."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite ``synchronous`` in WAL mode: NORMAL survives a crash of the process (SIGKILL)
    but an OS crash or power loss may lose the last commits; FULL survives those too, at
    an fsync per commit."""
    busy_timeout_ms: int = 2000
    """How long a commit waits for another process's lock before it counts as failed."""
    retry_max_s: float = 5.0
    """Longest wait between two attempts of a failed commit (exponential from 50 ms)."""
    fail_after_s: float = 30.0
    """A database failing this long is reported (the run goes on; exit status non-zero)."""
    snapshot_interval_ms: float = 60_000.0
    """Ask the strategies for a snapshot this often (kernel clock); 0: never ask."""
    performance_interval_ms: float = 10_000.0
    """Write ``performance_metrics`` rows this often (kernel clock; and at the end); 0: at
    the end only."""
    stats_interval_ms: float = 1000.0
    """Publish ``persist.stats`` this often (kernel clock); 0: never."""
    restore: Literal["auto", "on", "off"] = "auto"
    """Publish the state of the previous runs at start: "auto" with the live clock only (a
    backtest starts from nothing)."""
    check: Literal["quick", "off"] = "quick"
    """At start: "quick" runs SQLite's ``quick_check`` (refuses a corrupted file; O(size)),
    "off" reads only the header."""

    def validate(self, key: str) -> None:
        """Raise TickbusError naming the first setting out of range."""
        checks = [
            ("commit_interval_ms", 0 < self.commit_interval_ms <= 3_600_000),
            ("batch_rows", 1 <= self.batch_rows <= 10_000_000),
            ("max_pending_rows", self.max_pending_rows >= self.batch_rows),
            ("busy_timeout_ms", 0 <= self.busy_timeout_ms <= 600_000),
            ("retry_max_s", 0.05 <= self.retry_max_s <= 3600),
            ("fail_after_s", self.fail_after_s >= 0),
            ("snapshot_interval_ms", self.snapshot_interval_ms >= 0),
            ("performance_interval_ms", self.performance_interval_ms >= 0),
            ("stats_interval_ms", self.stats_interval_ms >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise TickbusError(f"{key}.{name}: out of range ({getattr(self, name)!r})")


def _version() -> str:
    try:
        return importlib.metadata.version("tickbus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _config_file(ctx: PluginContext) -> Path | None:
    """The config file this process runs, if it is one (not a config built in memory)."""
    p = ctx.config_path
    return p if p is not None and p.is_file() else None


class Persistence:
    """The plugin's component: the database, the writer, timers and counters."""

    def __init__(self, ctx: PluginContext, cfg: Config, path: Path) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.path = path
        self.log = ctx.log
        ensure_dir(path)
        self.lock = DatabaseLock(path)
        try:
            self.db = open_database(path, synchronous=cfg.synchronous,
                                    busy_timeout_ms=cfg.busy_timeout_ms, check=cfg.check)
        except BaseException:
            self.lock.release()
            raise
        self.conn = self.db.conn
        self.run_id = self._new_run()
        self.writer = Writer(self.conn, self.run_id, self.log)
        self.ledger = Ledger()
        self.handled = 0
        self.retries = 0
        self.failures = 0
        self.bad_input = 0
        self.exit_reason = ""
        self.restored: Restored | None = None
        self._handlers = dict(self.writer.handlers)
        self._handlers[Position] = self._position
        self._position_row = self.writer.handlers[Position]
        self._bad_kinds: set[str] = set()
        self._recent_ns: deque[int] = deque(maxlen=1024)
        self._timer: Any = None
        self._retry: Any = None
        self._soon = False
        self._eager = False
        self._failing_since: float | None = None
        self._attempt = 0
        self._reported = False
        self._warned = False
        self._last_error = ""
        self._asks = 0
        self._batch = cfg.batch_rows
        self._max_pending = cfg.max_pending_rows
        self._commit_s = cfg.commit_interval_ms / 1e3

    def _new_run(self) -> int:
        ctx = self.ctx
        cfile = _config_file(ctx)
        text = cfile.read_text(errors="replace") if cfile else None
        try:
            cur = self.conn.execute(
                "INSERT INTO runs (process, host, pid, version, clock, config_path, config_text,"
                " started_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ctx.process, socket.gethostname(), os.getpid(), _version(),
                 "replay" if isinstance(ctx.clock, ReplayClock) else "live",
                 str(cfile) if cfile else None, text, time.time_ns()),
            )  # fmt: skip
        except sqlite3.Error as err:
            self.conn.close()
            self.lock.release()
            raise TickbusError(f"database {self.path}: cannot write ({err})") from None
        assert cur.lastrowid is not None
        return cur.lastrowid

    # ------------------------------------------------------------------ messages

    def on_message(self, msg: Msg) -> None:
        """Every message under PREFIXES: rows, then a commit if enough are waiting."""
        self.handled += 1
        fn = self._handlers.get(type(msg))
        if fn is None:
            self._bad(msg)
            return
        fn(msg)
        w = self.writer
        if w.rows >= self._batch:
            self.commit()
            if w.rows >= self._max_pending:
                self._wait_for_disk()
            elif w.rows > self._max_pending // 10 and not self._warned:
                self._warned = True
                self.log.warning("%d rows wait for the database (%s); the lane waits for the"
                                 " disk at %d", w.rows, self._last_error or "slow",
                                 self._max_pending)  # fmt: skip
        elif self._eager:
            if not self._soon:
                self._soon = True
                self.ctx.loop.call_soon(self._commit_soon)
        elif self._timer is None:
            self._timer = self.ctx.call_later(self._commit_s, self._on_timer)

    def _position(self, p: Position) -> None:
        self._position_row(p)
        row = self.ledger.on_position(p)
        if row is not None:
            self.writer.derived("trades", row)

    def on_shutdown(self, msg: Shutdown) -> None:
        if type(msg) is Shutdown:
            self.exit_reason = msg.reason

    def _bad(self, msg: Any) -> None:
        self.bad_input += 1
        kind = type(msg).__name__
        if kind not in self._bad_kinds and len(self._bad_kinds) < 64:
            self._bad_kinds.add(kind)
            self.log.warning("skipped a %s: not a message persistence records (logged once per"
                             " type); sample %r", kind, msg)  # fmt: skip

    # ------------------------------------------------------------------ commits

    def _on_timer(self) -> None:
        self._timer = None
        self.commit()

    def _commit_soon(self) -> None:
        self._soon = False
        self.commit()

    def commit(self) -> bool:
        """Commit what waits, unless a failed commit's retry is already scheduled."""
        if self._retry is not None:
            return False
        return self._commit(schedule=True)

    def _commit(self, *, schedule: bool) -> bool:
        try:
            self.writer.flush()
        except sqlite3.Error as err:
            self._write_failed(err, schedule)
            return False
        lat = self.writer.latencies_ns
        if lat:
            self._recent_ns.extend(lat[-16:])
        if self._failing_since is not None:
            self.log.warning("database writes work again after %.1f s (%d failed attempts);"
                             " nothing was lost", time.monotonic() - self._failing_since,
                             self._attempt)  # fmt: skip
            self._failing_since = None
            self._attempt = 0
        if self._warned and self.writer.rows <= self._max_pending // 20:
            self._warned = False
        return True

    def _write_failed(self, err: sqlite3.Error, schedule: bool) -> None:
        self.failures += 1
        now = time.monotonic()
        self._last_error = f"{getattr(err, 'sqlite_errorname', '') or type(err).__name__}: {err}"
        if self._failing_since is None:
            self._failing_since = now
            self.log.error("database %s: commit failed (%s); %d rows kept, retrying",
                           self.path, self._last_error, self.writer.rows)  # fmt: skip
        if not self._reported and now - self._failing_since >= self.cfg.fail_after_s:
            self._reported = True
            self.ctx.report_failure(
                f"database {self.path}: writes failing for {now - self._failing_since:.0f} s"
                f" ({self._last_error}); {self.writer.rows} rows waiting"
            )
        self._attempt += 1
        if schedule:
            self._retry = self.ctx.loop.call_later(self._backoff(), self._retry_now)

    def _backoff(self) -> float:
        return float(min(self.cfg.retry_max_s, 0.05 * 2 ** min(self._attempt, 16)))

    def _retry_now(self) -> None:
        self._retry = None
        self.retries += 1
        self._commit(schedule=True)

    def _wait_for_disk(self) -> None:
        """Back-pressure: block this lane (never the others) until the rows are written."""
        self.log.warning("%d rows wait for the database (max_pending_rows); this lane now"
                         " waits for the disk", self.writer.rows)  # fmt: skip
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        while self.writer.rows >= self._max_pending:
            time.sleep(self._backoff())  # blocks this lane only: that is the point
            self.retries += 1
            self._commit(schedule=False)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        live = not isinstance(ctx.clock, ReplayClock)
        if cfg.restore == "on" or (cfg.restore == "auto" and live):
            self.publish_restored()
        if cfg.snapshot_interval_ms:
            ctx.call_later(cfg.snapshot_interval_ms / 1e3, self._ask_snapshots)
        if cfg.performance_interval_ms:
            ctx.call_later(cfg.performance_interval_ms / 1e3, self._performance_tick)
        if cfg.stats_interval_ms:
            ctx.call_later(cfg.stats_interval_ms / 1e3, self._stats_tick)

    def publish_restored(self) -> Restored:
        """Read the previous runs' state and publish it (see the module docstring)."""
        ctx = self.ctx
        st = _restore.load(self.conn, self.run_id)
        now = ctx.clock.now_ns()
        publish = ctx.publish
        done = Restored(self.run_id, st.from_run or 0, len(st.positions), len(st.orders),
                        len(st.snapshots), now)  # fmt: skip
        self.restored = done
        if st.from_run is not None:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            # the next restart folds only the fills after this base
            conn.executemany(
                "INSERT INTO restored_positions (run_id, symbol, qty, cost, realized_pnl, fees,"
                " mark_px, fills) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.run_id, p.symbol, p.qty, str(p.cost), str(p.realized_pnl), str(p.fees),
                  p.mark_px, p.fills) for p in st.positions],
            )  # fmt: skip
            n = len(ORDER_COLUMNS)
            conn.executemany(ORDER_RESTORED, [
                (self.run_id, self.writer.next_seq(), *astuple(a.order)[:n], u.status, u.filled_qty,
                 u.leaves_qty, u.avg_px, u.reason, a.ts_accepted_ns, u.ts_update_ns, u.filled_qty)
                for a, u in st.orders
            ])  # fmt: skip
            conn.execute("UPDATE runs SET restored_from = ? WHERE run_id = ?",
                         (st.from_run, self.run_id))  # fmt: skip
            conn.execute("COMMIT")
            self.log.info("restored from run %d: %d position(s), %d working order(s), %d strategy"
                          " snapshot(s)", st.from_run, len(st.positions), len(st.orders),
                          len(st.snapshots))  # fmt: skip
        for p in st.positions:
            self.ledger.seed(p, now)
            publish(f"restore.pos.{p.symbol}", p)
        for accepted, update in st.orders:
            publish("restore.order", accepted)
            publish("restore.report", update)
        for sid, pos in st.strategy_positions:
            publish(f"restore.net.{sid}.{pos.symbol}", pos)
        for snap in st.snapshots:
            publish(f"restore.snap.{snap.strategy_id}", snap)
        publish(RESTORE_DONE_TOPIC, done)
        return done

    def _ask_snapshots(self) -> None:
        ctx = self.ctx
        self._asks += 1
        ctx.publish(SNAPSHOT_TOPIC, ControlCommand(f"{ctx.name}-{self.run_id}-{self._asks}",
                                                   "snapshot", [], ctx.clock.now_ns()))  # fmt: skip
        ctx.call_later(self.cfg.snapshot_interval_ms / 1e3, self._ask_snapshots)

    def _performance(self) -> None:
        for row in self.ledger.performance(self.ctx.clock.now_ns()):
            self.writer.derived("performance_metrics", row)

    def _performance_tick(self) -> None:
        self._performance()
        self.ctx.call_later(self.cfg.performance_interval_ms / 1e3, self._performance_tick)

    def _stats_tick(self) -> None:
        self.ctx.publish(STATS_TOPIC, self.stats())
        self.ctx.call_later(self.cfg.stats_interval_ms / 1e3, self._stats_tick)

    def stats(self) -> PersistenceStats:
        w = self.writer
        lat = w.latencies_ns
        us = [n // 1000 for n in lat[-1024:]]
        lat.clear()
        return PersistenceStats(self.ctx.name, w.written, w.commits, w.rows, self.backlog(),
                                self.retries, self.failures, w.bad, self.db_bytes(), us,
                                self.ctx.clock.now_ns())  # fmt: skip

    def backlog(self) -> int:
        """Messages on our topics published by this process's lanes, not yet handled here
        (counters read without locks: a close estimate)."""
        published = 0
        for row in self.ctx.bus_stats().values():
            for topic, n in list(row.get("topics", {}).items()):
                if topic.startswith(PREFIXES):
                    published += n
        return max(0, published - self.handled)

    def db_bytes(self) -> int:
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return size

    def stop(self) -> None:
        """The engine stops: from now on every arriving message is committed at once."""
        self._eager = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.commit()

    def close(self) -> None:
        """After the drain: the last performance rows, the final commit, the run's end."""
        self._performance()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.conn.execute("PRAGMA busy_timeout = 250")  # the kernel's stop budget is short
        ok = False
        for attempt in range(3):
            if self._commit(schedule=False):
                ok = True
                break
            time.sleep(0.05 * (attempt + 1))
        if not ok:
            msg = (f"database {self.path}: {self.writer.rows} rows could not be written at exit"
                   f" ({self._last_error})")  # fmt: skip
            self.log.error("%s", msg)
            self.ctx.report_failure(msg)
        try:
            self.conn.execute("UPDATE runs SET stopped_ns = ?, exit_reason = ? WHERE run_id = ?",
                              (time.time_ns(), self.exit_reason or "stopped", self.run_id))
        except sqlite3.Error as err:
            self.log.error("database %s: cannot record the run's end (%s)", self.path, err)
        self.conn.close()
        self.lock.release()

    def status(self) -> str:
        w = self.writer
        recent = sorted(self._recent_ns)
        p99 = recent[int(0.99 * (len(recent) - 1))] / 1e6 if recent else 0.0
        line = (f"{w.written} rows in {w.commits} commits (p99 {p99:.1f} ms), {w.rows} pending,"
                f" backlog {self.backlog()}, db {self.db_bytes() / 1e6:.1f} MB")  # fmt: skip
        if self._failing_since is not None:
            line += (f"; FAILING for {time.monotonic() - self._failing_since:.0f} s"
                     f" ({self._last_error[:60]})")  # fmt: skip
        if w.bad or self.bad_input:
            line += f"; bad {w.bad + self.bad_input}"
        return line


# --------------------------------------------------------------------------- hooks


@hookimpl
def tickbus_config_type() -> type[Config]:
    return Config


@hookimpl
def tickbus_message_types() -> list[type[Msg]]:
    return [PersistenceStats, Restored]


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Persistence:
    cfg: Config = ctx.config
    cfg.validate(f"plugins.{ctx.name}")
    path = ctx.resolve_path(cfg.path) if cfg.path else ctx.state_dir / DEFAULT_NAME
    p = Persistence(ctx, cfg, path)
    for prefix in PREFIXES:
        ctx.subscribe(prefix, p.on_message)
    ctx.subscribe("sys.shutdown", p.on_shutdown)
    return p


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.component.start()


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    ctx.component.stop()


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    ctx.component.close()


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return str(ctx.component.status())
