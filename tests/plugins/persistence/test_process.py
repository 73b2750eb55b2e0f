"""Real ``tickbus run`` processes: SIGTERM under load loses nothing; after SIGKILL the
database is consistent and a restart restores exactly what the committed fills say."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from persistence_support import IMBALANCE, NO_ENDPOINTS, probe

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel.app import Kernel
from tickbus.plugins.broker.positions import PositionBook
from tickbus.schemas import OrderAccepted, OrderUpdate, Position

pytest.importorskip("tickbus.plugins.broker.plugin", reason="the paper broker (issue 8)")


def count(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def wait_for(cond: Callable[[], bool], timeout: float, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"tickbus exited early ({proc.returncode}): {proc.stderr.read()}")
        try:
            if cond():
                return
        except sqlite3.Error:
            pass  # not created yet
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"not reached within {timeout} s: {proc.stderr.read()[-2000:]}")


def test_sigterm_under_load_commits_every_fill_published(
    plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    """A producer publishes fills as fast as its lane can into the persistence lane; SIGTERM
    mid-stream: every fill it published is a row (count and ids), the exit is clean."""
    db, out = tmp_path / "load.db", tmp_path / "sent.json"
    cfg = write_config(tmp_path / "load.toml", f"""
[kernel]
runtime_dir = "{rt}"
state_dir = "{tmp_path / 'state'}"
[lanes.hot]
[lanes.persist]
[plugins.persistence]
lane = "persist"
path = "{db}"
[plugins.tb_producer]
lane = "hot"
topic = "exec.fill"
kind = "fill"
count = 0
chunk = 200
out = "{out}"
""")
    proc = subprocess.Popen(tickbus_cmd("run", str(cfg)), env=tickbus_env(plugin_site),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: count(db, "SELECT count(*) FROM fills") > 20_000, 60, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    sent = json.loads(out.read_text())["sent"]
    assert sent > 20_000
    rows, ids, top = (count(db, f"SELECT {q} FROM fills") for q in
                      ("count(*)", "count(DISTINCT fill_id)", "max(fill_id)"))  # fmt: skip
    assert (rows, ids, top) == (sent, sent, sent - 1)
    assert count(db, "SELECT exit_reason FROM runs") == "SIGTERM"
    assert count(db, "SELECT config_text FROM runs") == cfg.read_text()
    assert count(db, "SELECT config_path FROM runs") == str(cfg.resolve())


def test_sigkill_mid_run_then_restart_restores_the_committed_state(
    tmp_path: Path, rt: Path, start_kernel: Callable[..., Kernel]
) -> None:
    """The imbalance strategy trades the bundled sample (10x real time) through risk and the
    paper broker; SIGKILL once a position is open and an order works. The database opens
    cleanly, and a restart restores: per symbol the broker's exact accounting of the
    committed fills; the orders accepted whose committed reports do not finish them, with
    their committed fills."""
    db = tmp_path / "kill.db"
    raw = tomllib.loads(IMBALANCE.read_text())
    raw["kernel"].update(runtime_dir=str(rt), state_dir=str(tmp_path / "state"))
    raw["lanes"]["persist"] = {}
    raw["plugins"]["replay_feed"]["speed"] = 10.0
    # entries rest until filled and positions are held for a while: most of the time a
    # position is open while an order works
    raw["plugins"]["imbalance"].update(stale_strength=0.0, min_holding_ms=30_000,
                                       max_holding_ms=60_000)  # fmt: skip
    raw["plugins"]["risk"] = {"lane": "hot"}
    raw["plugins"]["paper_broker"] = {"lane": "hot"}
    raw["plugins"]["persistence"] = {"lane": "persist", "path": str(db), "restore": "on"}
    cfg = tmp_path / "kill.toml"
    cfg.write_text(_toml(raw))
    proc = subprocess.Popen(tickbus_cmd("run", str(cfg)), env=tickbus_env(),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    working = ("SELECT count(*) FROM orders WHERE status IN ('accepted', 'partially_filled')"
               " AND ts_accepted_ns IS NOT NULL")  # fmt: skip
    net = "SELECT coalesce(sum(CASE side WHEN 'buy' THEN qty ELSE -qty END), 0) FROM fills"
    wait_for(lambda: count(db, working) > 0 and count(db, net) != 0, 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT stopped_ns FROM runs").fetchall() == [(None,)]  # killed
    books: dict[str, PositionBook] = {}
    for sym, side, px, qty, fee in conn.execute(
        "SELECT symbol, side, px, qty, fee FROM fills ORDER BY fill_id"
    ):
        books.setdefault(sym, PositionBook(sym)).fill(side == "buy", px, qty, int(fee))
    # working orders from the reports' table (not the orders table restore reads)
    expect = {}
    for cid, qty, filled in conn.execute(
        "SELECT o.client_order_id, o.qty, (SELECT coalesce(sum(qty), 0) FROM fills f WHERE"
        " f.client_order_id = o.client_order_id) FROM orders o WHERE ts_accepted_ns IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM order_updates u WHERE u.client_order_id ="
        " o.client_order_id AND u.status IN ('filled', 'canceled', 'expired', 'rejected'))"
    ):
        if filled < qty:
            expect[cid] = (filled, qty - filled)
    conn.close()
    assert expect, "no order was working when the process was killed"

    raw2 = {
        "kernel": {"clock": "replay", "state_dir": str(tmp_path / "state")},
        "bus": dict(NO_ENDPOINTS),
        "plugins": {"persistence": {"path": str(db), "restore": "on"}, "probe": {}},
    }
    k = start_kernel(raw2, {"probe": probe})
    seen = list(k.contexts["probe"].component)
    k.stop()
    positions = {p.symbol: p for p in seen if type(p) is Position}
    assert positions.keys() == books.keys()
    for sym, book in books.items():
        p = positions[sym]
        assert (p.qty, p.cost, p.realized_pnl, p.fees, p.fills) == (
            book.qty, book.cost, book.realized, book.fees, book.fills)
        assert p.qty != 0
    restored = {u.client_order_id: (u.filled_qty, u.leaves_qty) for u in seen
                if type(u) is OrderUpdate}  # fmt: skip
    assert restored == expect
    assert len([m for m in seen if type(m) is OrderAccepted]) == len(expect)


def _toml(raw: dict[str, Any]) -> str:
    """A config dict as TOML: top-level tables of scalars, lists and one level of tables."""

    def value(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else json.dumps(v)

    lines = []
    for name, table in raw.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for key, sub in table.items():
            if isinstance(sub, dict):
                lines.append(f"[{name}.{key}]")
                lines += [f"{k} = {value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"
