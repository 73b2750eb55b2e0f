"""Persistence benchmark: rows written per second and commit latency, against plain sqlite3.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_persistence [--quick] [--runs R] [--cycles N]
                                                    [--batch B] [--json FILE]

The traffic is a trading session's mix, pre-built (building it is not timed): per order
cycle a Signal, the OrderRequest, risk's OrderAccepted, the broker's "accepted" report, a
Fill, the "filled" report and the Position - 7 messages, 9 rows (statements: the order's
row is inserted, then moved by risk's verdict and each report, which is also a row of its
own; every other message is one row), and a ``trades`` row every second cycle (the
position goes back to flat). Each run writes into a fresh database made by the plugin's
own schema code (WAL, ``synchronous = NORMAL``, every index), in a temp dir on the same
disk.

* **plain sqlite3 (baseline)**: the very rows and statements the plugin would execute
  (taken from its writer beforehand), written with one ``executemany`` per statement and
  one transaction per batch of ``--batch`` rows - the best plain alternative, no message
  to convert, no plugin around it.
* **plugin, in its lane**: the persistence plugin in a real kernel; the messages are handed
  to its handler on its own lane thread, one by one (message -> rows -> commit every
  ``--batch`` rows): the plugin's whole cost without the bus.
* **plugin, across lanes**: a producer plugin publishes the messages from another lane
  (chunks of 1000), the persistence plugin in its own lane receives, decodes and writes
  them: time from the first publish until every row is committed.

Rows/s is the median over R runs; commit latency (BEGIN ... COMMIT of one batch) p50/p99
over every commit of every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.plugins.persistence.ledger import Ledger
from tickbus.plugins.persistence.schema import open_database
from tickbus.plugins.persistence.writer import Writer
from tickbus.schemas import (
    NOTIONAL_SCALE,
    SCALE,
    Fill,
    Msg,
    OrderAccepted,
    OrderRequest,
    OrderUpdate,
    Position,
    Side,
    Signal,
)

TARGET_ROWS_S = 100_000
T0 = 1_723_000_000_000_000_000
NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}


def session(cycles: int) -> list[tuple[str, Msg]]:
    """``cycles`` order cycles of 7 messages (see the module docstring)."""
    out: list[tuple[str, Msg]] = []
    px, qty = 60_000 * SCALE, SCALE // 1000
    pos = 0
    for i in range(cycles):
        t = T0 + i * 1_000_000
        side: Side = "buy" if i % 2 == 0 else "sell"
        cid = f"bench-x-{i}"
        o = OrderRequest(cid, "bench", "BTCUSDT", side, "limit", "GTC", qty, px + i, 0, False,
                         "", t, t + 5_000)
        pos += qty if side == "buy" else -qty
        out += [
            ("sig.BTCUSDT", Signal("BTCUSDT", "bench", 1, 0.8, 0.9, 1000, "", t, t)),
            ("ord.request", o),
            ("ord.accepted", OrderAccepted(o, t + 7_000)),
            ("exec.report", OrderUpdate(cid, "bench", "BTCUSDT", side, "limit", "accepted",
                                        o.px, qty, 0, qty, 0, "", t, t + 9_000)),
            ("exec.fill", Fill(cid, "bench", "BTCUSDT", side, i + 1, o.px, qty,
                               60 * NOTIONAL_SCALE // 1000, "maker", t, t, t + 20_000)),
            ("exec.report", OrderUpdate(cid, "bench", "BTCUSDT", side, "limit", "filled",
                                        o.px, qty, qty, 0, o.px, "", t, t + 20_000)),
            # money stays within 64 bits: msgpack cannot carry more across lanes
            ("pos.BTCUSDT", Position("BTCUSDT", pos, pos * px, (i % 1000) * 10**14, 0,
                                     (i % 1000) * 10**13, px, i + 1, t, t + 20_000)),
        ]  # fmt: skip
    return out


def pct(values: list[int], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1e6 if s else float("nan")


# ============================================================================ baseline


def batches(msgs: list[tuple[str, Msg]], batch: int) -> list[list[tuple[str, list[Any]]]]:
    """The plugin writer's statements and rows for ``msgs``, cut where it would commit."""
    import sqlite3

    w = Writer(sqlite3.connect(":memory:"), 1)
    ledger = Ledger()
    out = []
    for _, m in msgs:
        w.handlers[type(m)](m)
        if type(m) is Position:
            trade = ledger.on_position(m)
            if trade is not None:
                w.derived("trades", trade)
        if w.rows >= batch:
            out.append([(sql, list(rows)) for sql, rows in w.pending.items() if rows])
            w._clear()
    if w.rows:
        out.append([(sql, list(rows)) for sql, rows in w.pending.items() if rows])
    return out


def baseline(path: Path, work: list[list[tuple[str, list[Any]]]]) -> tuple[float, list[int]]:
    """Plain executemany of pre-built rows, one transaction per batch: (seconds, commits)."""
    conn = open_database(path).conn
    conn.execute("INSERT INTO runs (process, host, pid, version, clock, started_ns)"
                 " VALUES ('bench', 'h', 1, 'x', 'live', 0)")  # fmt: skip
    lat = []
    t0 = time.perf_counter_ns()
    for stmts in work:
        c0 = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        for sql, rows in stmts:
            conn.executemany(sql, rows)
        conn.execute("COMMIT")
        lat.append(time.perf_counter_ns() - c0)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    conn.close()
    return elapsed, lat


# ============================================================================ plugin


class Producer:
    """Publishes the session from another lane when asked; ``t0``: first publish."""

    def __init__(self, msgs: list[tuple[str, Msg]]) -> None:
        self.msgs = msgs
        self.t0 = 0
        self.ctx: PluginContext | None = None

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> None:
        self.ctx = ctx

    def go(self) -> None:
        assert self.ctx is not None
        self.ctx.spawn(self._run(), name="bench-producer")

    async def _run(self) -> None:
        assert self.ctx is not None
        publish = self.ctx.publish
        self.t0 = time.perf_counter_ns()
        for i in range(0, len(self.msgs), 1000):
            for topic, m in self.msgs[i:i + 1000]:
                publish(topic, m)
            await asyncio.sleep(0)


def kernel(path: Path, batch: int, rt: Path, producer: Producer | None) -> Kernel:
    raw: dict[str, Any] = {
        "kernel": {"runtime_dir": str(rt)},
        "bus": NO_ENDPOINTS,
        "lanes": {"prod": {}, "persist": {}},
        "plugins": {"persistence": {"lane": "persist", "path": str(path), "batch_rows": batch,
                                    "max_pending_rows": max(batch, 500_000),
                                    "stats_interval_ms": 0.0, "restore": "off"}},
    }  # fmt: skip
    extra: dict[str, object] = {}
    if producer is not None:
        raw["plugins"]["producer"] = {"lane": "prod"}
        extra["producer"] = producer
    k = Kernel(parse_config(raw, "bench.toml"), extra_plugins=extra)
    k.start()
    return k


def in_lane(path: Path, msgs: list[tuple[str, Msg]], batch: int,
            rt: Path) -> tuple[float, int, list[int]]:  # fmt: skip
    """(seconds, rows, commit latencies): messages handed to the handler on its lane."""
    k = kernel(path, batch, rt, None)
    try:
        p = k.contexts["persistence"].component

        def work() -> float:
            t0 = time.perf_counter_ns()
            handle = p.on_message
            for _, m in msgs:
                handle(m)
            p.commit()
            return (time.perf_counter_ns() - t0) / 1e9

        elapsed = k.lanes["persist"].call(work, timeout=3600)
        return elapsed, p.writer.written, list(p.writer.latencies_ns)
    finally:
        k.stop()


def cross_lane(path: Path, msgs: list[tuple[str, Msg]], batch: int, rows: int,
               rt: Path) -> tuple[float, list[int]]:  # fmt: skip
    """(seconds, commit latencies): published from another lane, until all rows are in."""
    prod = Producer(msgs)
    k = kernel(path, batch, rt, prod)
    try:
        p = k.contexts["persistence"].component
        k.lanes["prod"].call(prod.go)
        while p.writer.written < rows:
            time.sleep(0.0005)
        return (time.perf_counter_ns() - prod.t0) / 1e9, list(p.writer.latencies_ns)
    finally:
        k.stop()


# ============================================================================ main


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench_persistence", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cycles and runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=40_000, help="order cycles (~9.5 rows each)")
    ap.add_argument("--batch", type=int, default=5000, help="rows per commit")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.cycles, args.runs = 8_000, 1
    msgs = session(args.cycles)
    work = batches(msgs, args.batch)
    rows = sum(len(r) for b in work for _, r in b)
    print(f"{len(msgs):,} messages, {rows:,} rows, {len(work)} commits of ~{args.batch} rows;"
          f" {args.runs} run(s)")  # fmt: skip
    results: dict[str, dict[str, list[Any]]] = {
        k: {"rate": [], "lat": []} for k in ("baseline", "in-lane", "cross-lane")}
    with tempfile.TemporaryDirectory(prefix="tbbench", dir="/tmp") as tmp:
        d = Path(tmp)
        for run in range(args.runs):
            for name in ("baseline", "in-lane", "cross-lane"):  # same order every run
                path = d / f"{name}-{run}.db"
                if name == "baseline":
                    elapsed, lat = baseline(path, work)
                elif name == "in-lane":
                    elapsed, written, lat = in_lane(path, msgs, args.batch, d / f"rt{run}a")
                    assert written == rows, (written, rows)
                else:
                    elapsed, lat = cross_lane(path, msgs, args.batch, rows, d / f"rt{run}b")
                results[name]["rate"].append(rows / elapsed)
                results[name]["lat"] += lat
    base = statistics.median(results["baseline"]["rate"])
    print(f"\n{'path':<34}{'rows/s':>12}{'vs plain':>10}{'commit p50':>12}{'p99 (ms)':>10}")
    out = {}
    for name, label in (("baseline", "plain sqlite3 executemany"),
                        ("in-lane", "plugin, in its lane"),
                        ("cross-lane", "plugin, across lanes (bus)")):  # fmt: skip
        r = results[name]
        rate = statistics.median(r["rate"])
        p50, p99 = pct(r["lat"], 50), pct(r["lat"], 99)
        out[name] = {"rows_per_s": rate, "commit_p50_ms": p50, "commit_p99_ms": p99,
                     "commits": len(r["lat"])}  # fmt: skip
        print(f"{label:<34}{rate:>12,.0f}{rate / base:>9.2f}x{p50:>12.2f}{p99:>10.2f}")
    print(f"\ntarget: >= {TARGET_ROWS_S:,} rows/s through the plugin")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "batch": args.batch, **out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
