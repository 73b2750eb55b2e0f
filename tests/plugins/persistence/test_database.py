"""The database under bad input and failure: refused files stay untouched (one line each),
the schema matches the messages, a failed commit is retried and nothing is lost, a slow
disk holds the lane back instead of dropping, bad rows are skipped and counted."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from persistence_support import NO_ENDPOINTS

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel import TickbusError
from tickbus.kernel.app import Kernel
from tickbus.plugins.persistence.schema import (
    JOURNAL_COLUMNS,
    MIGRATIONS,
    ORDER_COLUMNS,
    SCHEMA_VERSION,
    migrate,
    open_database,
    table_columns,
)
from tickbus.schemas import (
    SCALE,
    Fill,
    OrderCancel,
    OrderRequest,
    OrderUpdate,
    Position,
    RiskState,
    Signal,
    StrategySnapshot,
)

T0 = 1_723_000_000_000_000_000


def fills(n: int, start: int = 0, qty: int = SCALE // 1000) -> list[tuple[str, Fill]]:
    return [("exec.fill", Fill(f"c{i}", "s", "BTCUSDT", "buy", i, 60_000 * SCALE, qty, 5,
                               "taker", T0, T0, T0 + i))
            for i in range(start, start + n)]  # fmt: skip


def rows(db: Path, table: str = "fills") -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def kernel(start_kernel: Callable[..., Kernel], db: Path, **cfg: Any) -> Kernel:
    return start_kernel({"bus": NO_ENDPOINTS,
                         "plugins": {"persistence": {"path": str(db), **cfg}}})  # fmt: skip


def publish(k: Kernel, msgs: list[tuple[str, Any]], wait: bool = True) -> None:
    """Publish on the persistence lane (from the test thread, through its loop)."""
    ctx = k.contexts["persistence"]

    def go() -> None:
        for topic, msg in msgs:
            ctx.publish(topic, msg)

    if wait:
        k.lanes[ctx.lane_name].call(go, timeout=30)
    else:
        ctx.loop.call_soon_threadsafe(go)


def on_lane(k: Kernel, fn: Callable[..., Any], *args: Any) -> Any:
    return k.lanes[k.contexts["persistence"].lane_name].call(fn, *args, timeout=30)


def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------- bad files


def refused(start_kernel: Callable[..., Kernel], db: Path) -> str:
    with pytest.raises(TickbusError) as err:
        kernel(start_kernel, db)
    text = str(err.value)
    assert "\n" not in text and str(db) in text
    return text


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_an_unwritable_path_is_one_line(start_kernel: Callable[..., Kernel], tmp_path: Path,
                                        rt: Path) -> None:  # fmt: skip
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert "cannot create directory" in refused(start_kernel, afile / "tickbus.db")
    assert afile.read_text() == "not a directory"
    refused(start_kernel, Path("/proc/tickbus-test/tickbus.db"))
    cfg = write_config(tmp_path / "bad.toml", f"""
[kernel]
runtime_dir = "{rt}"
[plugins.persistence]
path = "{afile}/x.db"
""")
    out = subprocess.run(tickbus_cmd("run", str(cfg)), env=tickbus_env(), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("tickbus: error: ") and f"{afile}/x.db" in last


def test_a_newer_schema_is_refused_untouched(start_kernel: Callable[..., Kernel],
                                            tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("CREATE TABLE future (x)")
    conn.commit()
    conn.close()
    before = snapshot(db)
    assert "newer" in refused(start_kernel, db)
    assert snapshot(db) == before
    assert not Path(f"{db}-wal").exists()


@pytest.mark.parametrize("damage", ["garbage", "torn"])
def test_a_corrupted_file_is_refused_untouched(start_kernel: Callable[..., Kernel],
                                              tmp_path: Path, damage: str) -> None:  # fmt: skip
    db = tmp_path / "bad.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    else:  # a real tickbus database with a page in the middle overwritten
        k = kernel(start_kernel, db)
        publish(k, fills(5000))
        k.stop()
        data = bytearray(db.read_bytes())
        assert len(data) > 40 * 4096
        data[20 * 4096: 22 * 4096] = os.urandom(2 * 4096)
        db.write_bytes(bytes(data))
    before = snapshot(db)
    refused(start_kernel, db)
    assert snapshot(db) == before


def test_a_foreign_database_is_refused(start_kernel: Callable[..., Kernel],
                                       tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (name)")
    conn.commit()
    conn.close()
    before = snapshot(db)
    assert "not a tickbus database" in refused(start_kernel, db)
    assert snapshot(db) == before


def test_a_database_in_use_by_another_run_is_refused(start_kernel: Callable[..., Kernel],
                                                     tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "busy.db"
    k = kernel(start_kernel, db)
    assert f"pid {os.getpid()}" in refused(start_kernel, db)
    k.stop()
    kernel(start_kernel, db).stop()  # free again once the first run ended


# --------------------------------------------------------------------------- schema


MESSAGE_TABLES = {"order_updates": OrderUpdate, "cancels": OrderCancel, "fills": Fill,
                  "positions": Position, "signals": Signal, "risk_states": RiskState,
                  "strategy_snapshots": StrategySnapshot}  # fmt: skip


def test_tables_hold_every_field_of_their_message(tmp_path: Path) -> None:
    """A field appended to a message must come with a migration adding its column."""
    db = open_database(tmp_path / "s.db")
    conn = db.conn
    for table, cls in MESSAGE_TABLES.items():
        fields = tuple(f.name for f in msgspec.structs.fields(cls))
        assert JOURNAL_COLUMNS[table] == fields
        assert table_columns(conn, table) == ["run_id", "seq", *fields]
    assert ORDER_COLUMNS == tuple(f.name for f in msgspec.structs.fields(OrderRequest))
    for table, cols in JOURNAL_COLUMNS.items():
        assert table_columns(conn, table) == ["run_id", "seq", *cols]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"fills_order", "fills_run", "positions_symbol", "strategy_snapshots_strategy",
            "orders_working", "trades_symbol", "performance_metrics_symbol"} <= names
    for view in db.view_names():  # every view runs
        conn.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
    conn.close()


def test_migrations_bring_an_older_database_up_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, path) == (0, SCHEMA_VERSION)
    conn.execute("INSERT INTO cancels VALUES (1, 1, 'c', 's', 'BTCUSDT', 5)")
    v2 = "ALTER TABLE cancels ADD COLUMN note TEXT NOT NULL DEFAULT '';"
    assert migrate(conn, path, (*MIGRATIONS, v2)) == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert conn.execute("SELECT * FROM cancels").fetchall() == [(1, 1, "c", "s", "BTCUSDT", 5, "")]
    broken = "CREATE TABLE fine (x); CREATE TABLE fills (y);"  # the second one fails
    with pytest.raises(sqlite3.Error):
        migrate(conn, path, (*MIGRATIONS, v2, broken))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "fine" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


# --------------------------------------------------------------------------- failures


def test_what_reached_the_lane_is_committed_at_shutdown(start_kernel: Callable[..., Kernel],
                                                       tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "s.db"
    k = kernel(start_kernel, db, commit_interval_ms=3_600_000.0, batch_rows=1_000_000,
               max_pending_rows=1_000_000)  # fmt: skip
    publish(k, fills(3000))
    assert rows(db) == 0  # nothing due yet
    k.stop()
    assert rows(db) == 3000


def test_a_full_disk_is_retried_and_loses_nothing(start_kernel: Callable[..., Kernel],
                                                  tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "full.db"
    k = kernel(start_kernel, db, retry_max_s=0.1, fail_after_s=0.0)
    p = k.contexts["persistence"].component
    publish(k, fills(10))
    until(lambda: rows(db) == 10)
    pages = on_lane(k, lambda: p.conn.execute("PRAGMA page_count").fetchone()[0])
    on_lane(k, lambda: p.conn.execute(f"PRAGMA max_page_count = {pages}"))
    publish(k, fills(20_000, 10))
    until(lambda: p.failures >= 3)
    assert rows(db) == 10 and "FAILING" in on_lane(k, p.status)
    assert any("writes failing" in f for f in k.failures)  # reported: exit non-zero
    on_lane(k, lambda: p.conn.execute("PRAGMA max_page_count = 1073741823"))
    until(lambda: rows(db) == 20_010)
    assert "FAILING" not in on_lane(k, p.status)
    k.stop()
    assert rows(db) == 20_010


def test_a_locked_database_is_retried(start_kernel: Callable[..., Kernel],
                                      tmp_path: Path) -> None:  # fmt: skip
    db = tmp_path / "locked.db"
    k = kernel(start_kernel, db, busy_timeout_ms=20, retry_max_s=0.1)
    p = k.contexts["persistence"].component
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    publish(k, fills(100))
    until(lambda: p.failures >= 2)
    other.execute("ROLLBACK")
    other.close()
    until(lambda: rows(db) == 100)
    assert p.retries >= 2 and not k.failures  # recovered before fail_after_s
    k.stop()


def test_a_slow_disk_holds_the_lane_back_and_drops_nothing(
    start_kernel: Callable[..., Kernel], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_pending_rows the lane waits for the disk (back-pressure): the publishing
    call returns only once the database took the rows."""
    db = tmp_path / "slow.db"
    k = kernel(start_kernel, db, busy_timeout_ms=10, retry_max_s=0.05, batch_rows=100,
               max_pending_rows=300)  # fmt: skip
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(1.0)
        released.set()
        other.execute("ROLLBACK")

    threading.Thread(target=release).start()
    with caplog.at_level(logging.WARNING, logger="tickbus.persistence"):
        t0 = time.monotonic()
        publish(k, fills(2000))  # returns when the lane is free again
        waited = time.monotonic() - t0
    assert released.is_set() and waited >= 0.9
    assert any("waits for the disk" in r.getMessage() for r in caplog.records)
    k.stop()
    other.close()
    assert rows(db) == 2000


def test_a_row_the_database_cannot_hold_is_skipped_and_counted(
    start_kernel: Callable[..., Kernel], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "bad.db"
    k = kernel(start_kernel, db)
    p = k.contexts["persistence"].component
    huge = Fill("c", "s", "BTCUSDT", "buy", 1, 2**70, 1, 0, "taker", T0, T0, T0)  # > 64 bits
    with caplog.at_level(logging.WARNING, logger="tickbus.persistence"):
        publish(k, [*fills(5), ("exec.fill", huge), ("exec.fill", huge), *fills(5, 5)])
        publish(k, [("exec.fill", OrderCancel("c", "s", "X", 1)),  # a known type: its table
                    ("exec.fill", "not a message")])  # fmt: skip
        k.stop()
    assert rows(db) == 10 and rows(db, "cancels") == 1
    assert p.writer.bad == 2 and p.bad_input == 1
    warned = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 1 and "fills" in warned[0]


def test_status_line(start_kernel: Callable[..., Kernel], tmp_path: Path) -> None:
    k = kernel(start_kernel, tmp_path / "st.db")
    p = k.contexts["persistence"].component
    publish(k, fills(7))
    until(lambda: p.writer.written == 7)
    line = on_lane(k, k.manager.status, k.contexts["persistence"])
    assert line.startswith("7 rows in 1 commits") and "pending 0" not in line
    assert "0 pending, backlog 0" in line
    k.stop()
