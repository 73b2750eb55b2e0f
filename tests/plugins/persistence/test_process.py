"""Real ``tickbus run`` processes: SIGTERM under load loses nothing; after SIGKILL the
database is consistent and a restart restores exactly what the committed fills say."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from persistence_support import IMBALANCE, NO_ENDPOINTS, everything, probe

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.plugins.broker.positions import PositionBook
from tickbus.schemas import Fill, OrderAccepted, OrderRejected, OrderUpdate, Position

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


class Killed(NamedTuple):
    """A ``tickbus run`` SIGKILLed mid-trade, and what its database says it left."""

    db: Path
    raw: dict[str, Any]
    books: dict[str, PositionBook]
    """Per symbol, the broker's accounting of every committed fill."""
    working: dict[str, tuple[int, int]]
    """Orders working at the kill (client id -> filled, leaves), from the reports."""
    nets: dict[tuple[str, str], int]
    """(strategy, symbol) -> its own net from its committed fills."""
    fleeting: set[str]
    """The working ones that never rest (market, IOC, FOK): they died with the process."""


WORKING = ("SELECT count(*) FROM orders WHERE status IN ('accepted', 'partially_filled')"
           " AND ts_accepted_ns IS NOT NULL")  # fmt: skip
NET = "SELECT coalesce(sum(CASE side WHEN 'buy' THEN qty ELSE -qty END), 0) FROM fills"


def kill_mid_trade(tmp_path: Path, rt: Path) -> Killed:
    """The imbalance strategy trades the bundled sample (10x real time) through risk and the
    paper broker, persistence in its own lane; SIGKILL once a position is open and an order
    works. The kill races the trading: when the order finished in between (its report
    committed after the check), the run is done again on a fresh database."""
    for attempt in range(4):
        db = tmp_path / f"kill{attempt}.db"
        raw = tomllib.loads(IMBALANCE.read_text())
        raw["kernel"].update(runtime_dir=str(rt), state_dir=str(tmp_path / "state"))
        raw["lanes"]["persist"] = {}
        raw["plugins"]["replay_feed"]["speed"] = 10.0
        # entries rest until filled and positions are held for a while: most of the time
        # a position is open while an order works
        raw["plugins"]["imbalance"].update(stale_strength=0.0, min_holding_ms=30_000,
                                           max_holding_ms=60_000)  # fmt: skip
        raw["plugins"]["risk"] = {"lane": "hot"}
        raw["plugins"]["paper_broker"] = {"lane": "hot"}
        raw["plugins"]["persistence"] = {"lane": "persist", "path": str(db), "restore": "on",
                                         "snapshot_interval_ms": 1000.0}  # fmt: skip
        cfg = tmp_path / "kill.toml"
        cfg.write_text(_toml(raw))
        proc = subprocess.Popen(tickbus_cmd("run", str(cfg)), env=tickbus_env(),
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(lambda db=db: count(db, WORKING) > 0 and count(db, NET) != 0, 120, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)

        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT stopped_ns FROM runs").fetchall() == [(None,)]  # killed
        books: dict[str, PositionBook] = {}
        nets: dict[tuple[str, str], int] = {}
        for sid, sym, side, px, qty, fee in conn.execute(
            "SELECT strategy_id, symbol, side, px, qty, fee FROM fills ORDER BY fill_id"
        ):
            books.setdefault(sym, PositionBook(sym)).fill(side == "buy", px, qty, int(fee))
            nets[sid, sym] = nets.get((sid, sym), 0) + (qty if side == "buy" else -qty)
        # working orders from the reports' table (not the orders table restore reads)
        expect, fleeting = {}, set()
        for cid, qty, filled, kind, tif in conn.execute(
            "SELECT o.client_order_id, o.qty, (SELECT coalesce(sum(qty), 0) FROM fills f WHERE"
            " f.client_order_id = o.client_order_id), o.order_type, o.tif FROM orders o"
            " WHERE ts_accepted_ns IS NOT"
            " NULL AND NOT EXISTS (SELECT 1 FROM order_updates u WHERE u.client_order_id ="
            " o.client_order_id AND u.status IN ('filled', 'canceled', 'expired', 'rejected'))"
        ):
            if filled < qty:
                expect[cid] = (filled, qty - filled)
                if kind == "market" or tif not in ("GTC", "GTD"):
                    fleeting.add(cid)
        conn.close()
        if expect and any(b.qty for b in books.values()):
            return Killed(db, raw, books, expect, nets, fleeting)
    raise AssertionError("no order was working at any of the kills")


def test_sigkill_mid_run_then_restart_restores_the_committed_state(
    tmp_path: Path, rt: Path, start_kernel: Callable[..., Kernel]
) -> None:
    """The database opens cleanly, and a restart restores: per symbol the broker's exact
    accounting of the committed fills; the orders accepted whose committed reports do not
    finish them, with their committed fills."""
    killed = kill_mid_trade(tmp_path, rt)
    raw2 = {
        "kernel": {"clock": "replay", "state_dir": str(tmp_path / "state")},
        "bus": dict(NO_ENDPOINTS),
        "plugins": {"persistence": {"path": str(killed.db), "restore": "on"}, "probe": {}},
    }
    k = start_kernel(raw2, {"probe": probe})
    seen = list(k.contexts["probe"].component)
    k.stop()
    positions = {p.symbol: p for p in seen if type(p) is Position}
    assert positions.keys() == killed.books.keys()
    for sym, book in killed.books.items():
        p = positions[sym]
        assert (p.qty, p.cost, p.realized_pnl, p.fees, p.fills) == (
            book.qty, book.cost, book.realized, book.fees, book.fills)
        assert p.qty != 0
    restored = {u.client_order_id: (u.filled_qty, u.leaves_qty) for u in seen
                if type(u) is OrderUpdate}  # fmt: skip
    assert restored == killed.working
    assert len([m for m in seen if type(m) is OrderAccepted]) == len(killed.working)


def test_sigkill_then_restart_trading_goes_on_from_the_restored_state(
    tmp_path: Path, rt: Path
) -> None:
    """The whole pipeline restarted on the killed run's database (risk, broker and the
    strategy list ``after = ["persistence"]``, persistence in its own lane): before the first
    market message the strategy holds its committed net and its working orders, the broker
    and risk the account's position and the orders; then the replay trades on - the restored
    orders are the broker's (their reports come back, no id is refused) and the account at
    the end is every committed fill of the first run plus every fill of the second."""
    killed = kill_mid_trade(tmp_path, rt)
    raw = killed.raw
    for name in ("risk", "paper_broker", "imbalance"):
        raw["plugins"][name]["after"] = ["persistence"]
    raw["plugins"]["probe"] = {"lane": "hot", "after": ["risk", "paper_broker", "imbalance"]}
    raw["plugins"]["out"] = {"lane": "hot"}
    raw["plugins"]["replay_feed"].update(speed=0.0, after=["probe"])
    raw["plugins"]["persistence"]["snapshot_interval_ms"] = 0.0
    at_start: dict[str, Any] = {}
    kernel: list[Kernel] = []

    class inspect:
        """Reads the restarted plugins' state at its start: after theirs, before any data."""

        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            c = kernel[0].contexts
            strategy, broker = c["imbalance"].component, c["paper_broker"].component
            at_start["net"] = dict(strategy._net)
            at_start["orders"] = {cid: (o.filled_qty, o.leaves_qty)
                                  for cid, o in strategy.orders.items()}  # fmt: skip
            at_start["broker_orders"] = {cid for _, cid in broker.working}
            at_start["broker_qty"] = {s: m.pos.qty for s, m in broker.markets.items() if m.pos}
            at_start["risk_qty"] = {s: p.qty for s, p in c["risk"].component.positions.items()}

    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as run_dir:
        raw["kernel"]["runtime_dir"] = run_dir
        raw["bus"] = dict(NO_ENDPOINTS)
        k = Kernel(parse_config(raw, str(IMBALANCE)),
                   extra_plugins={"probe": inspect, "out": everything})  # fmt: skip
        kernel.append(k)
        assert k.run(handle_signals=False) == 0, k.failures
    published = list(k.contexts["out"].component)

    resting = set(killed.working) - killed.fleeting
    mine = {cid for cid in resting if cid.startswith("imbalance-")}
    assert at_start["net"] == {"BTCUSDT": killed.nets.get(("imbalance", "BTCUSDT"), 0)}
    assert at_start["net"]["BTCUSDT"] != 0
    assert at_start["orders"] == {cid: killed.working[cid] for cid in mine}
    assert at_start["broker_orders"] == resting
    qty = {s: b.qty for s, b in killed.books.items()}
    assert at_start["broker_qty"] == qty and at_start["risk_qty"] == qty

    # trading went on: the restored orders are the broker's, nothing is refused as unknown
    reports = [m for m in published if isinstance(m, OrderUpdate)]
    assert {u.client_order_id for u in reports} >= set(killed.working)
    assert not [u for u in reports if u.client_order_id in killed.working
                and u.status == "rejected"]  # fmt: skip
    # a market order working at the kill died with the process: reported expired at once
    assert {u.client_order_id for u in reports if u.status == "expired"
            and u.reason.startswith("restored")} == killed.fleeting  # fmt: skip
    rejected = [m for m in published if isinstance(m, OrderRejected)]
    assert not [r for r in rejected if r.rule == "duplicate_id"]
    fills = [m for m in published if isinstance(m, Fill)]
    assert fills, "the restarted run did not trade"
    book = killed.books["BTCUSDT"]
    for f in fills:
        book.fill(f.side == "buy", f.px, f.qty, f.fee)
    [last] = [m for m in published if isinstance(m, Position)][-1:]
    assert (last.qty, last.cost, last.realized_pnl, last.fees) == (
        book.qty, book.cost, book.realized, book.fees)


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
