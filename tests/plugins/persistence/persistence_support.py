"""Helpers for the persistence tests: the replay config with the whole trading chain, a
recorder of everything persistence should see, and the database read back as messages."""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.plugins.persistence.schema import JOURNAL_COLUMNS, ORDER_COLUMNS
from tickbus.schemas import (
    Fill,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    RiskState,
    Signal,
    StrategySnapshot,
)

ROOT = Path(__file__).resolve().parents[3]
IMBALANCE = ROOT / "configs" / "imbalance.toml"
NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}
PREFIXES = ("ord.", "exec.", "pos.", "risk.", "sig.", "snap.")


class everything:
    """Test plugin: every message persistence subscribes to, in the order seen. Subscribed
    before the other plugins of its lane it sees the publish order; after them, the order
    other lanes get (a message leaves its lane once its in-lane handlers - and what they
    published - are done)."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        for prefix in PREFIXES:
            ctx.subscribe(prefix, seen.append)
        return seen


class Feeder:
    """Test plugin object: publishes the given (topic, message) pairs from its start hook."""

    def __init__(self, msgs: list[tuple[str, Any]]) -> None:
        self.msgs = msgs

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        for topic, msg in self.msgs:
            ctx.publish(topic, msg)


class probe:
    """Test plugin: every ``restore.*`` message it gets, but the strategies' own positions
    (``restore.net.*``, which :class:`net_probe` collects)."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        for topic in ("restore.pos.", "restore.order", "restore.report", "restore.snap.",
                      "restore.done"):  # fmt: skip
            ctx.subscribe(topic, seen.append)
        return seen


class net_probe:
    """Test plugin: the Position of every ``restore.net.<strategy id>.<S>``."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        ctx.subscribe("restore.net.", seen.append)
        return seen


def trading_config(rt: Path, db: Path, *, persist_lane: str = "persist",
                   **persistence: Any) -> dict[str, Any]:  # fmt: skip
    """configs/imbalance.toml (replay of the bundled sample, features, the calibrated
    imbalance strategy) + risk + paper broker in the hot lane, persistence in its own lane,
    recorders of everything in the hot lane: ``published`` (publish order) and ``on_bus``
    (the order the persistence lane gets)."""
    raw = tomllib.loads(IMBALANCE.read_text())
    raw["plugins"] = {"published": {"plugin": "everything", "lane": "hot"}, **raw["plugins"]}
    raw["kernel"]["runtime_dir"] = str(rt)
    raw["kernel"]["state_dir"] = str(rt / "state")
    raw["bus"] = dict(NO_ENDPOINTS)
    raw["lanes"][persist_lane] = {}
    raw["plugins"]["risk"] = {"lane": "hot", "max_orders_per_second": 50.0}
    raw["plugins"]["paper_broker"] = {"lane": "hot", "mark_interval_ms": 1000.0}
    raw["plugins"]["persistence"] = {"lane": persist_lane, "path": str(db), **persistence}
    raw["plugins"]["on_bus"] = {"plugin": "everything", "lane": "hot"}
    return raw


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


_MONEY = {Fill: (7,), Position: (2, 3, 4, 5), RiskState: (4,)}
_BOOLS = {RiskState: (1,)}


def as_messages(db: Path, table: str, cls: type, where: str = "") -> list[Any]:
    """The rows of a journal table rebuilt as the messages they came from (seq order)."""
    cols = JOURNAL_COLUMNS[table]
    out = []
    for row in query(db, f"SELECT {', '.join(cols)} FROM {table} {where} ORDER BY run_id, seq"):
        values = list(row)
        for i in _MONEY.get(cls, ()):
            values[i] = int(values[i])
        for i in _BOOLS.get(cls, ()):
            values[i] = bool(values[i])
        out.append(cls(*values))
    return out


def requests(db: Path, where: str = "") -> list[OrderRequest]:
    out = []
    for row in query(db, f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders {where}"
                         " ORDER BY run_id, seq"):  # fmt: skip
        values = list(row)
        values[9] = bool(values[9])
        out.append(OrderRequest(*values))
    return out


def rejections(db: Path) -> list[OrderRejected]:
    out = []
    for row in query(db, f"SELECT {', '.join(JOURNAL_COLUMNS['rejections'])} FROM rejections"
                         " ORDER BY run_id, seq"):  # fmt: skip
        values = list(row)
        values[9] = bool(values[9])
        out.append(OrderRejected(OrderRequest(*values[:13]), *values[13:]))
    return out


TABLE_OF: dict[type, str] = {
    OrderUpdate: "order_updates", OrderCancel: "cancels", Fill: "fills", Position: "positions",
    Signal: "signals", RiskState: "risk_states", StrategySnapshot: "strategy_snapshots",
}  # fmt: skip


def builtins(msgs: list[Any]) -> list[Any]:
    return [msgspec.to_builtins(m) for m in msgs]
