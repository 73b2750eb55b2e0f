"""What persistence and metrics cost the hot lane's tick-to-trade.

    python -m tickbus.tools.bench.bench_overhead [--rounds 5] [--speed 25] [--capture FILE ...]
        [--variants ...] [--scrape-interval 1.0] [--stages] [--quick] [--json FILE] [--keep]

The live-path measurement of ``tickbus bench``'s hot lane (:mod:`.pipeline`: the exchange
simulator serves a real capture over a WebSocket at ``--speed`` x real time, the feed stamps
each frame's monotonic receive time, probes at the broker and in the strategy; same probes,
same time scaling of the strategy's clock) run on variants of ``configs/bench-observed.toml``,
each in fresh processes:

* ``bare``: the hot lane alone - every trading plugin in one lane, nothing else (the file
  without its two observers, which is ``configs/bench.toml``);
* ``persistence``: + the persistence plugin in a lane of its own, writing a real SQLite file
  in a temporary state directory (default settings: commit every 100 ms, WAL, NORMAL);
* ``persistence+metrics``: + persistence + the metrics plugin in a lane of its own with its
  real HTTP endpoint (default settings: it follows ``md.book`` too), scraped from this
  process every ``--scrape-interval`` seconds as Prometheus would, and once more when the
  input is worked off (that scrape is read: the endpoint must have seen every order);
* ``second-process``: both observers in a second process joined over ``ipc://``, so that no
  other Python thread shares the hot lane's process (and its GIL).

A round runs the variants one after the other; the order rotates from round to round (A B C
D, B C D A, ...) so that neither the machine's drift nor a variant's place in the round
favours one. Each figure is taken per round and the median over the rounds is reported; each
variant's **ratio to the bare pipeline** is taken within a round (same minutes, same load)
and reported as the median of the rounds' ratios with their range (min-max).

What each figure includes (monotonic clock, one host, HDR histograms of :mod:`.hdr`):

* **tick-to-trade** (every order accepted by risk that a tick caused; orders a strategy timer
  sent are apart): the paper broker's ``ord.accepted`` handler entered minus the order's
  ``ts_recv_ns`` (the feed's ``ws.recv()`` returned the frame). In between, all in the hot
  lane's thread: parse, book, features, the strategy's decision, its ``sig.`` publish, the
  order's ``ord.request`` publish, risk, the ``ord.accepted`` publish. When an observer
  subscribes to a topic, each of those publishes first encodes the message and sends it to
  the router (a message leaves its lane before its in-lane handlers run): that, and what
  the observers' threads take from the hot lane (CPU, the GIL), is what the variants add.
  Not included: the broker's own handling of the order and what it publishes after it.
* **tick-to-decision** (every book event the strategy evaluates): the strategy's
  ``evaluate()`` returned minus the vector's ``ts_recv_ns``; with metrics it includes the
  ``md.book`` encode and send, which come before the book's in-lane handlers.
* **what the hot lane pays per message it sends out** (:class:`SendProbe`, on in every
  run: two clock reads a send): per topic kind, messages per run, the encode and the
  ZeroMQ ``send`` call timed in the hot lane's thread, and their total per run.
* **sent by the hot lane per order** (lane counter); **rows** the persistence plugin
  committed (read from the database after the run); **scrapes** and their duration.
* ``--stages``: also each handler's own time (as ``tickbus bench``'s stages pass: every
  handler probed, so that run's latencies include the probes).

Targets (reported, never asserted): each variant's tick-to-trade within 10 % of the bare
pipeline's (issue "Effect of persistence and metrics on hot-lane tick-to-trade").

``--quick`` (CI): the first 40 s of the bundled sample at 40x, one round, a scrape every
0.25 s: every section of the JSON in seconds, figures meaningless.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tickbus.plugins.persistence.schema import DEFAULT_NAME

from .hdr import PERCENTILES, Histogram
from .pipeline import (
    CONFIGS,
    ORDER_PATH,
    QUICK_SECONDS,
    READY_TIMEOUT_S,
    Bench,
    BenchError,
    Child,
    UsageError,
    _capture,
    _counts,
    _fmt,
    _merge,
    _prepare,
    _sim,
    _t2t_hists,
    _wait_quiet,
    _write_json,
    describe_machine,
    engine_child,
    free_port,
    time_scaled,
)

CONFIG = "bench-observed.toml"
VARIANTS = ("bare", "persistence", "persistence+metrics", "second-process")
OBSERVERS = {"bare": (), "persistence": ("persistence",),
             "persistence+metrics": ("persistence", "metrics"),
             "second-process": ("persistence", "metrics")}  # fmt: skip
JOIN = {"pub": "bus-pub", "sub": "bus-sub", "tap": "tap-pub"}
"""A joining process's ``[bus]`` endpoints: the host's sockets in its runtime dir."""
HOT = "hot"
"""The hot lane of the config: what it sends to other lanes is what it pays for."""
SECOND_PROCESS = "second-process"
"""The variant whose observers run in a process of their own, joined over ``ipc://``."""
TITLES = {"bare": "bare pipeline", "persistence": "+ persistence",
          "persistence+metrics": "+ persistence + metrics",
          "second-process": "+ both, own process"}  # fmt: skip
FIGURES = (("tick_to_trade", "tick-to-trade"), ("tick_to_decision", "tick-to-decision"))
TARGET_RATIO = 1.10
ENDPOINT_SAMPLES = ("tickbus_orders_total", "tickbus_tick_to_trade_seconds_count",
                    "tickbus_latency_skipped_total", "tickbus_metrics_scrapes_total")  # fmt: skip
"""What the final scrape is read for: the endpoint saw the run (orders), its own latency
figures (observed, or skipped as pairs of different clocks), the scrapes it served."""
DB_TABLES = ("orders", "order_updates", "fills", "positions", "signals", "risk_states")


# ============================================================================ the variants


def load_config() -> dict[str, Any]:
    with open(CONFIGS / CONFIG, "rb") as fh:
        return tomllib.load(fh)


def variant_processes(base: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """The configs of ``variant``'s processes, the hot lane's first: ``base`` (a copy)
    without the observers the variant leaves out; for :data:`SECOND_PROCESS`, the hot lane
    alone and the observers in a second process (which joins the first one's bus)."""
    everyone = set(OBSERVERS[VARIANTS[-1]])
    if variant != SECOND_PROCESS:
        return [_select(base, lambda n: n not in everyone - set(OBSERVERS[variant]))]
    joined = _select(base, lambda n: n in everyone)
    joined["kernel"] = {**joined.get("kernel", {}), "name": "bench-observers"}
    return [_select(base, lambda n: n not in everyone), joined]


def _select(raw: dict[str, Any], keep: Callable[[str], bool]) -> dict[str, Any]:
    """``raw`` (a copy) with the plugins ``keep`` names and the lanes they use."""
    raw = json.loads(json.dumps(raw))  # deep copy
    raw["plugins"] = {n: t for n, t in raw.get("plugins", {}).items() if keep(n)}
    used = {t.get("lane") for t in raw["plugins"].values()}
    raw["lanes"] = {k: v for k, v in raw.get("lanes", {}).items() if k in used}
    return raw


# ============================================================================ the scraper


class Scraper:
    """Prometheus's part, in this process: GET the endpoint every ``interval_s`` from a
    thread of its own; each scrape's duration and size kept, failures counted."""

    def __init__(self, url: str, interval_s: float) -> None:
        self.url = url
        self.interval_s = interval_s
        self.ms: list[float] = []
        self.bytes = 0
        self.errors: list[str] = []
        self.last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.scrape()
            due += self.interval_s

    def scrape(self) -> str:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                body = resp.read()
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            self.errors.append(f"{type(err).__name__}: {err}")
            return ""
        self.ms.append((time.perf_counter() - t0) * 1e3)
        self.bytes += len(body)
        self.last = body.decode(errors="replace")
        return self.last

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15.0)

    def result(self) -> dict[str, Any]:
        """The scrapes, and what the last one said (ENDPOINT_SAMPLES, summed over labels)."""
        seen = dict.fromkeys(ENDPOINT_SAMPLES, 0.0)
        for fam in text_string_to_metric_families(self.last):
            for s in fam.samples:
                if s.name in seen:
                    seen[s.name] += s.value
        ms = sorted(self.ms)
        return {
            "scrapes": len(ms), "errors": len(self.errors), "first_error": self.errors[:1],
            "ms_p50": round(ms[len(ms) // 2], 2) if ms else None,
            "ms_max": round(ms[-1], 2) if ms else None,
            "bytes_per_scrape": self.bytes // len(ms) if ms else 0,
            "endpoint": {k.removeprefix("tickbus_"): int(v) for k, v in seen.items()},
        }  # fmt: skip


# ============================================================================ the hot lane's sends


class SendProbe:
    """What each message the hot lane sends out costs it: the encode and the ZeroMQ send,
    timed per topic kind (``md.book``, ``sig``, ``ord.accepted``...). Installed in the engine
    process before the kernel starts (no kernel change: the codec and the socket class are
    wrapped); calls from other threads pass through untimed."""

    def __init__(self, thread: str) -> None:
        self.thread = thread
        self.hists: dict[str, dict[str, Histogram]] = {}

    def _hist(self, data: bytes, what: str) -> Histogram:
        end = data.find(b"\0")
        parts = data[: end if end > 0 else 40].decode(errors="replace").split(".")
        kind = ".".join(parts[:2]) if parts[0] in ("md", "ord", "exec") else parts[0]
        h = self.hists.setdefault(kind, {}).get(what)
        if h is None:
            h = self.hists[kind][what] = Histogram()
        return h

    def install(self) -> None:
        import zmq

        from tickbus.schemas import Codec

        probe, lane, pc = self, self.thread, time.perf_counter_ns
        send, init = zmq.Socket.send, Codec.__init__
        pending: list[int] = [0]  # the last encode's time, filed under the frame's topic

        def timed_send(sock: Any, data: Any, *args: Any, **kw: Any) -> Any:
            if threading.current_thread().name != lane or not isinstance(data, bytes):
                return send(sock, data, *args, **kw)
            t0 = pc()
            try:
                return send(sock, data, *args, **kw)
            finally:
                probe._hist(data, "send").record(pc() - t0)
                if pending[0]:
                    probe._hist(data, "encode").record(pending[0])
                    pending[0] = 0

        def timed_init(codec: Any, *args: Any, **kw: Any) -> None:
            init(codec, *args, **kw)
            if threading.current_thread().name != lane:
                return
            encode = codec.encode

            def timed_encode(msg: Any) -> bytes:
                t0 = pc()
                data: bytes = encode(msg)
                pending[0] = pc() - t0
                return data

            codec.encode = timed_encode

        zmq.Socket.send = timed_send  # type: ignore[method-assign]
        Codec.__init__ = timed_init  # type: ignore[method-assign]

    def result(self) -> dict[str, dict[str, Any]]:
        return {k: {w: h.to_dict() for w, h in v.items()} for k, v in self.hists.items()}


def child_main(spec_path: str) -> int:
    """An engine process of this bench: :func:`.pipeline.engine_child` with the hot lane's
    sends timed (written beside its result)."""
    spec = json.loads(Path(spec_path).read_text())
    probe = SendProbe(f"lane-{HOT}")
    probe.install()
    rc = engine_child(spec)
    _write_json(spec["out"] + ".sends", probe.result())
    return rc


class ProbedChild(Child):
    """:class:`.pipeline.Child` started through :func:`child_main`."""

    module = "tickbus.tools.bench.bench_overhead"

    def sends(self) -> dict[str, dict[str, Any]]:
        try:
            out: dict[str, dict[str, Any]] = json.loads(
                Path(self.spec["out"] + ".sends").read_text()
            )
        except (OSError, ValueError):
            raise self.failed("no send timings") from None
        return out


# ============================================================================ one run


def db_rows(path: Path) -> dict[str, int]:
    """Rows the persistence plugin committed, per table (read-only, after the run)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in DB_TABLES}  # fmt: skip
    finally:
        conn.close()


def run_variant(bench: Bench, base: dict[str, Any], variant: str, tag: str, scrape_s: float,
                stages: bool = False) -> dict[str, Any]:  # fmt: skip
    """One live-path run of ``variant``: its figures, what its hot lane sent, its rows and
    scrapes; with ``stages``, every handler's own time too (the probes then add to the
    latencies)."""
    work = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=bench.work))
    port = free_port()
    source = {"kind": "sim", "port": port, "timeout_s": READY_TIMEOUT_S}
    raws, rts = [], []
    for i, raw in enumerate(variant_processes(base, variant)):
        rts.append(Path(tempfile.mkdtemp(prefix="tb", dir="/tmp")))  # ipc paths stay short
        raw = _prepare(time_scaled(raw, bench.speed), rts[i], source)
        if i:  # joins the hot lane's bus
            raw["bus"] = {f"join_{k}": f"ipc://{rts[0]}/{v}" for k, v in JOIN.items()}
        raws.append(raw)
    observers = raws[-1]["plugins"]
    url = ""
    if "metrics" in observers:
        mport = free_port()
        observers["metrics"] |= {"address": "127.0.0.1", "port": mport}
        url = f"http://127.0.0.1:{mport}/metrics"
    children: list[ProbedChild] = []
    sim = None
    scraper = Scraper(url, scrape_s) if url else None
    load = os.getloadavg()[0]
    try:
        for i, raw in enumerate(raws):
            spec = {"role": "engine", "raw": raw, "config_path": str(CONFIGS / CONFIG),
                    "stages": stages, "touch": False, "t2t": True, "t2d": True,
                    "source": source}  # fmt: skip
            children.append(ProbedChild(f"{variant}-{i}", spec, work))
            children[-1].wait_ready(READY_TIMEOUT_S)  # the host listens before others join
        if len(children) > 1:
            time.sleep(0.3)  # a joining process's subscriptions reach the host's router
        if scraper is not None:
            scraper.start()
        sim = _sim(bench.files, port, bench.speed, work)
        bench._wait_sim(sim, children, work)
        _wait_quiet(children, 120.0)
        if scraper is not None:
            scraper.stop()
            scraper.scrape()  # everything the run did is in the registry now
        results = [c.stop() for c in reversed(children)][::-1]
        sends = children[0].sends()
        rows = db_rows(rts[-1] / "state" / DEFAULT_NAME) if "persistence" in observers else None
    finally:
        if scraper is not None:
            scraper.stop()
        for c in children:
            c.kill()
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(10)
        for rt in rts:
            shutil.rmtree(rt, ignore_errors=True)
    merged = _merge(results)
    tick, timer = _t2t_hists(merged)
    lanes = {n: s for r in results for n, s in r["lanes"].items()}
    return {
        "variant": variant, "load_avg_1m": round(load, 2),
        "tick_to_trade": tick.to_dict(), "tick_to_decision": merged["t2d"],
        "timer_orders": timer.count, "counts": _counts(merged),
        "sent": {lane: s["sent"] for lane, s in lanes.items()},
        "handler_errors": sum(s["handler_errors"] for s in lanes.values()),
        "db_rows": rows, "scrape": scraper.result() if scraper is not None else None,
        "peak_rss_mb": round(sum(r["peak_rss_kb"] for r in results) / 1024, 1),
        "stages": merged["stages"], "sends": sends,
    }  # fmt: skip


# ============================================================================ figures


def _spread(xs: list[float]) -> dict[str, Any]:
    xs = sorted(xs)
    n = len(xs)
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return {"median": round(med, 3), "min": round(xs[0], 3), "max": round(xs[-1], 3),
            "rounds": [round(x, 3) for x in xs]}  # fmt: skip


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: each figure's percentiles, median over the rounds (and pooled over them,
    for the tails); the ratio to the bare pipeline taken round by round, then its median and
    range. ``rounds``: per round, variant -> :func:`run_variant`'s result."""
    out: dict[str, Any] = {}
    for v in VARIANTS:
        runs = [rd[v] for rd in rounds if v in rd]
        if not runs:
            continue
        res: dict[str, Any] = {"title": TITLES[v], "rounds": len(runs)}
        for fig, _ in FIGURES:
            hists = [Histogram.from_dict(r[fig]) for r in runs]
            per_round = [h.summary() for h in hists]
            pooled = Histogram()
            for h in hists:
                pooled.merge(h)
            res[fig] = {"n": sum(s["n"] for s in per_round), "pooled": pooled.summary()}
            for key, _ in PERCENTILES:
                vals = [s[key] for s in per_round if key in s]
                if vals:
                    res[fig][key] = _spread(vals)["median"]
            res[fig]["per_round"] = per_round
            if v != "bare":
                res[fig]["ratio_to_bare"] = _ratios(rounds, v, fig)
        orders = [max(1, r["counts"]["orders"]) for r in runs]
        res["sent_per_order"] = _spread(
            [r["sent"][HOT] / n for r, n in zip(runs, orders, strict=True)]
        )["median"]
        res["sent_by_lane"] = runs[-1]["sent"]
        res["counts"] = runs[-1]["counts"]
        res["timer_orders"] = runs[-1]["timer_orders"]
        res["db_rows"] = runs[-1]["db_rows"]
        res["scrape"] = runs[-1]["scrape"]
        res["handler_errors"] = sum(r["handler_errors"] for r in runs)
        res["peak_rss_mb"] = _spread([r["peak_rss_mb"] for r in runs])["median"]
        res["stages_us"] = _stages(rounds, v)
        res["sends_us"] = _sends(runs)
        out[v] = res
    return out


def _stages(rounds: list[dict[str, dict[str, Any]]], v: str) -> dict[str, Any]:
    """Each stage's own time: p50 and p99 (median over the rounds), p50 over the bare
    pipeline's of the same round."""
    out: dict[str, Any] = {}
    keys = sorted({k for rd in rounds if v in rd for k in rd[v].get("stages", {})})
    for k in keys:
        per_round = [Histogram.from_dict(rd[v]["stages"][k]).summary()
                     for rd in rounds if k in rd.get(v, {}).get("stages", {})]  # fmt: skip
        st: dict[str, Any] = {"n": sum(s["n"] for s in per_round)}
        if not st["n"]:
            continue
        for key in ("p50", "p99"):
            st[key] = _spread([s[key] for s in per_round if key in s])["median"]
        ratios = []
        for rd in rounds:
            a = rd.get(v, {}).get("stages", {}).get(k)
            b = rd.get("bare", {}).get("stages", {}).get(k)
            if v != "bare" and a and b:
                pa = Histogram.from_dict(a).summary().get("p50")
                pb = Histogram.from_dict(b).summary().get("p50")
                if pa is not None and pb:
                    ratios.append(pa / pb)
        if ratios:
            st["ratio_to_bare_p50"] = _spread(ratios)
        out[k] = st
    return out


def _sends(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per topic kind the hot lane sent out: messages per run, encode and send p50 and p99,
    and the hot lane's total time in them per run (median over the rounds)."""
    out: dict[str, Any] = {}
    for kind in sorted({k for r in runs for k in r.get("sends", {})}):
        per = [r["sends"].get(kind, {}) for r in runs]
        row: dict[str, Any] = {}
        for what in ("encode", "send"):
            hists = [Histogram.from_dict(p[what]) for p in per if what in p]
            sums = [h.summary() for h in hists if h.count]
            if not sums:
                continue
            row[f"{what}_p50"] = _spread([x["p50"] for x in sums])["median"]
            row[f"{what}_p99"] = _spread([x["p99"] for x in sums])["median"]
            if what == "send":
                row["per_run"] = _spread([h.count for h in hists])["median"]
                row["ms_per_run"] = _spread([h.total / 1e6 for h in hists])["median"]
        out[kind] = row
    return out


def _ratios(rounds: list[dict[str, dict[str, Any]]], v: str, fig: str) -> dict[str, Any]:
    """``v``'s percentiles over the bare pipeline's of the same round: median and range."""
    out: dict[str, Any] = {}
    for key, _ in PERCENTILES:
        xs = []
        for rd in rounds:
            if v in rd and "bare" in rd:
                a = Histogram.from_dict(rd[v][fig]).summary().get(key)
                b = Histogram.from_dict(rd["bare"][fig]).summary().get(key)
                if a is not None and b:
                    xs.append(a / b)
        if xs:
            out[key] = _spread(xs)
    return out


# ============================================================================ output


def print_report(report: dict[str, Any], out: Any = sys.stdout) -> None:
    m, s, res = report["machine"], report["settings"], report["variants"]
    vs = [v for v in VARIANTS if v in res]
    print(f"bench_overhead - {report['started']}{' (quick)' if report['quick'] else ''}",
          file=out)  # fmt: skip
    print(
        f"machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}; load average "
        f"{m['load_avg_start']} at start, {m['load_avg_end']} at the end",
        file=out,
    )
    cap = report["capture"]
    print(f"capture: {', '.join(cap['files'])}: {cap['frames']:,} frames over "
          f"{cap['seconds']:.0f} s at {s['speed']:g}x; {s['rounds']} round(s), order rotated "
          f"({'; '.join(' '.join(r) for r in s['orders'][:3])}...); scrape every "
          f"{s['scrape_interval_s']:g} s", file=out)  # fmt: skip
    print(
        "figures: median over the rounds of each round's percentile; (ratio to the bare "
        "pipeline of the same round: median over the rounds [min-max])",
        file=out,
    )
    if s["stages"]:
        print(
            "--stages: every handler probed, so the latencies include the probes' cost; "
            "stage = the handler's own time, its in-lane publishes included",
            file=out,
        )
    rows: list[tuple[str, list[str]]] = []
    for fig, label in FIGURES:
        for key, _ in PERCENTILES:
            cells = []
            for v in vs:
                text = _fmt(res[v][fig].get(key))
                r = res[v][fig].get("ratio_to_bare", {}).get(key)
                if r is not None:
                    text += f" ({r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}])"
                cells.append(text)
            rows.append((f"{label} {key.replace('_', '.')} us", cells))
        rows.append(
            (
                f"{label} p99.9 us, rounds pooled",
                [_fmt(res[v][fig]["pooled"].get("p99_9")) for v in vs],
            )
        )
        rows.append((f"{label} samples (all rounds)", [_fmt(res[v][fig]["n"]) for v in vs]))
    rows.append(
        (
            "orders / accepted / fills (last round)",
            ["{orders} / {accepted} / {fills}".format(**res[v]["counts"]) for v in vs],
        )
    )
    rows.append(("sent by the hot lane per order", [_fmt(res[v]["sent_per_order"], 2)
                                                    for v in vs]))  # fmt: skip
    rows.append(
        (
            "rows committed (last round)",
            [_fmt(sum(res[v]["db_rows"].values())) if res[v]["db_rows"] else "-" for v in vs],
        )
    )
    rows.append(("scrapes / p50 ms / orders on the endpoint", [
        f"{sc['scrapes']} / {sc['ms_p50']} / {sc['endpoint']['orders_total']}" if sc else "-"
        for sc in (res[v]["scrape"] for v in vs)]))  # fmt: skip
    rows.append(("peak RSS MB", [_fmt(res[v]["peak_rss_mb"]) for v in vs]))
    for k in [k for k in ORDER_PATH if any(k in res[v]["stages_us"] for v in vs)]:
        cells = []
        for v in vs:
            st = res[v]["stages_us"].get(k)
            text = f"{_fmt(st['p50'], 2)} ({_fmt(st['p99'])})" if st else "-"
            r = st.get("ratio_to_bare_p50") if st else None
            if r is not None:
                text += f" {r['median']:.2f}x"
            cells.append(text)
        rows.append((f"stage {k} p50 (p99) us", cells))
    _table(["", *[TITLES[v] for v in vs]], rows, out)
    _print_sends(res, [v for v in vs if res[v]["sends_us"]], out)
    for v in vs[1:]:
        r = res[v]["tick_to_trade"].get("ratio_to_bare", {})
        met = {k: r[k]["median"] <= TARGET_RATIO for k in ("p50", "p99") if k in r}
        print(
            f"target (reported, not asserted): {TITLES[v]} tick-to-trade within "
            f"{(TARGET_RATIO - 1) * 100:.0f} % of bare: "
            + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in met.items()),
            file=out,
        )


def _table(head: list[str], rows: list[tuple[str, list[str]]], out: Any) -> None:
    """Labels left, cells right-aligned under their heads."""
    widths = [max(len(head[0]), *(len(r[0]) for r in rows))]
    for i in range(len(head) - 1):
        widths.append(max(len(head[i + 1]), *(len(r[1][i]) for r in rows)))
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), file=out)
    for label, cells in rows:
        print("  ".join([label.ljust(widths[0]), *(c.rjust(w) for c, w in
                                                   zip(cells, widths[1:], strict=True))]),
              file=out)  # fmt: skip


def _print_sends(res: dict[str, Any], vs: list[str], out: Any) -> None:
    """What the hot lane's sends cost it, per topic kind: messages per run, encode p50,
    ZeroMQ send p50 (p99) in us, time per run in ms."""
    if not vs:
        return
    kinds = sorted({k for v in vs for k in res[v]["sends_us"]},
                   key=lambda k: -max(res[v]["sends_us"].get(k, {}).get("ms_per_run", 0)
                                      for v in vs))  # fmt: skip
    print("what the hot lane pays per message it sends out: messages per run, encode p50 / "
          "send p50 (p99) us, total ms per run", file=out)  # fmt: skip
    rows = []
    for k in kinds:
        cells = []
        for v in vs:
            r = res[v]["sends_us"].get(k)
            cells.append(f"{r['per_run']:,.0f}: {r.get('encode_p50', 0):.1f} / {r['send_p50']:.1f}"
                         f" ({r['send_p99']:,.0f}), {r['ms_per_run']:,.1f} ms"
                         if r and "send_p50" in r else "-")  # fmt: skip
        rows.append((f"  {k}", cells))
    _table(["", *[TITLES[v] for v in vs]], rows, out)


# ============================================================================ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tickbus.tools.bench.bench_overhead",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--rounds", type=int, default=None, help="rounds of the three (default 5; "
                   "quick 1)")  # fmt: skip
    p.add_argument(
        "--speed",
        type=float,
        default=None,
        help="live-path pace, x real time (default 25; quick 40)",
    )
    p.add_argument(
        "--capture",
        action="append",
        metavar="FILE",
        help="capture file(s) (default: as tickbus bench)",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between scrapes of the metrics endpoint (default 1; quick 0.25)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (bare always runs)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"CI: the first {QUICK_SECONDS:g} s of the bundled sample, one round",
    )
    p.add_argument(
        "--stages",
        action="store_true",
        help="also each handler's own time (probes on every handler: the latencies then "
        "include their cost)",
    )
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    try:
        return _run(args)
    except BenchError as err:
        print(f"bench_overhead: {err}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


def _run(args: argparse.Namespace) -> int:
    from tickbus.plugins.binance.capture import read_frames

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in wanted if v not in VARIANTS]
    if bad:
        raise UsageError(f"--variants: unknown {', '.join(bad)} (known: {', '.join(VARIANTS)})")
    variants = ["bare", *[v for v in VARIANTS[1:] if v in wanted]]
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    speed = args.speed if args.speed is not None else (40.0 if args.quick else 25.0)
    scrape_s = args.scrape_interval if args.scrape_interval is not None else (
        0.25 if args.quick else 1.0)  # fmt: skip
    if rounds < 1 or not speed > 0 or not scrape_s > 0:
        raise UsageError("--rounds, --speed and --scrape-interval must be > 0")
    base = load_config()
    machine = describe_machine()
    work = Path(tempfile.mkdtemp(prefix="tickbus-overhead-"))
    try:
        files = _capture(args, work)
        frames = list(read_frames(*files))
        seconds = (frames[-1][0] - frames[0][0]) / 1e9 if frames else 0.0
        report: dict[str, Any] = {
            "tool": "bench_overhead", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "quick": bool(args.quick), "command": " ".join(sys.argv), "machine": machine,
            "capture": {"files": [f.name for f in files], "frames": len(frames),
                        "seconds": round(seconds, 1)},
            "settings": {"speed": speed, "rounds": rounds, "scrape_interval_s": scrape_s,
                         "variants": variants, "config": f"configs/{CONFIG}", "orders": [],
                         "stages": bool(args.stages)},
        }  # fmt: skip
        del frames
        bench = Bench(files, speed, work, seconds)
        results: list[dict[str, dict[str, Any]]] = []
        for i in range(rounds):
            order = variants[i % len(variants) :] + variants[: i % len(variants)]
            report["settings"]["orders"].append(order)
            rd: dict[str, dict[str, Any]] = {}
            for v in order:
                print(f"round {i + 1}/{rounds}: {TITLES[v]} ...", file=sys.stderr)
                rd[v] = run_variant(bench, base, v, f"{i}-{v}", scrape_s, args.stages)
            results.append(rd)
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["variants"] = summarize(results)
        report["load_avg_1m_per_run"] = [{v: r["load_avg_1m"] for v, r in rd.items()}
                                         for rd in results]  # fmt: skip
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
