"""``tickbus bench``: the end-to-end benchmark - tick-to-trade on every order.

    tickbus bench [--quick] [--capture FILE ...] [--speed X] [--runs N] [--json FILE]
                  [--scenarios baseline,hot,isolated,remote]
    tickbus bench --soak SECONDS [--soak-speed X] [--json FILE]

The full trading pipeline - ``binance_feed -> book -> features -> imbalance strategy -> risk
-> paper_broker`` with the settings of ``configs/bench*.toml`` - runs on the **live path**:
the exchange simulator (``tools/exchange_sim.py``) serves a real Binance capture (default:
the 11-minute BTCUSDT spot capture in ``../shared/data`` when present, else the bundled
3-minute sample) over a WebSocket on 127.0.0.1 at ``--speed`` x real time, and the live feed
stamps every frame with ``ts_recv_ns`` = the monotonic clock the moment ``ws.recv()`` hands
it over (the live clock's ``mono_ns``). Scenarios, each in fresh processes:

* ``hot``: every plugin in one lane (``configs/bench.toml``): each publish is a call;
* ``isolated``: one plugin per lane (``configs/bench-isolated.toml``): every hop crosses the
  kernel's router (inproc ZeroMQ, msgpack);
* ``remote``: the strategy in a second process joined over ``ipc://``
  (``configs/bench-remote-host.toml`` + ``bench-remote-strategy.toml``);
* ``baseline``: the fair plain-Python pipeline of shared/DESIGN.md's performance budget in
  one process - the same WebSocket client library and REST snapshot, ``msgspec`` + exact
  integers + dict/bisect book (:mod:`.baseline_book`), the features, the same signal rule,
  the risk rule chain and the paper broker of the other benches written plainly
  (:mod:`.bench_features`, :mod:`.bench_strategy`, :mod:`.bench_risk`,
  :mod:`.bench_broker`), the imbalance strategy's order logic (:class:`BaselineTrader`),
  frame -> order in one chain of calls.

What each figure is (all latencies from monotonic-clock stamps on one host; percentiles
from preallocated HDR histograms, :mod:`.hdr`):

* **tick-to-trade** (every order accepted by risk): the paper broker's receipt of the
  ``OrderAccepted`` minus the order's ``ts_recv_ns`` - frame handed over by the WebSocket
  client -> parse -> book -> features -> strategy decision and order -> risk checks ->
  broker. Stamped by a probe at the entry of the broker's ``ord.accepted`` handler (the
  broker's own ring, which mixes the monotonic clock with a wall-clock offset taken once, is
  reported beside it). Not included: the kernel and the WebSocket library's work before
  ``recv()`` returns, and the broker's handling of the order. Orders sent from a strategy
  **timer** (exits at the end of a holding period) are reported apart: they carry the
  receive time of the last tick the strategy saw, so their "latency" is the time since.
* **tick-to-decision** (every book event the strategy evaluates): the strategy's
  ``evaluate()`` returning minus the vector's ``ts_recv_ns``.
* **stages**: each handler's own time per message (its wall time minus the handlers it
  called in the same lane - a publish in a lane is a call), by ``stage message``: ``parse
  frame`` (feed: frame bytes -> message published), ``book md.depth``, ``features md.book``,
  ``signal feat`` / ``signal md.book`` (the strategy decides on whichever of the book and its
  vector comes second), ``risk ord.request``, ``broker ord.accepted``... measured in a
  separate pass with every handler wrapped (the probes cost ~0.2-0.4 us per call, so that
  pass's own tick-to-trade is reported as *instrumented* and never as the figure).
* **throughput**: the capture's frames as fast as they can be published, from memory
  (parsed with the feed's parser and stamped on publication, live clock, as the feed would),
  first frame published -> the last message handled anywhere in the pipeline (the terminal
  handlers note their completion time outside the hot lane).
* **peak RSS**: the peak resident set (``VmHWM``) of each process of the live-path run.

Every figure is also given as a ratio to the baseline's (tickbus / baseline: < 1 is faster
or smaller for latencies and memory, > 1 is faster for throughput). Targets (reported,
never asserted): tick-to-trade p50 <= 15 us, p99 <= 50 us in the hot lane. ``--runs``
repeats everything, scenarios rotating, and reports the median of the per-run figures (the
machine is shared; load averages at start and end are in the output).

``--soak SECONDS``: the hot lane fed the capture from memory in a loop (each loop after the
first like a reconnect: feed down, snapshot, venue times moved on so the features' windows
keep sliding) for that long, RSS sampled every second; growth from the end of the first loop
(caches warm, bounded maps filled) to the end.

``--quick`` (CI): the first 40 s of the bundled sample at 40x, one run, the stages measured
in the latency pass (so its tick-to-trade includes the probes): every section of the JSON is
there in about half a minute - most of it starting the ~15 processes (each loads the
compiled kernels), not measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.config import RESERVED_PLUGIN_KEYS
from tickbus.schemas import (
    SCALE,
    BookTop,
    FeatureVector,
    FeedStatus,
    Fill,
    Msg,
    OrderAccepted,
    OrderCancel,
    OrderRequest,
    OrderUpdate,
    Trade,
)

from .hdr import Histogram

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SCENARIOS = ("baseline", "hot", "isolated", "remote")
TITLES = {
    "baseline": "plain-Python baseline",
    "hot": "hot lane",
    "isolated": "lane per plugin",
    "remote": "strategy over ipc",
}
CONFIG_FILES = {
    "hot": ["bench.toml"],
    "isolated": ["bench-isolated.toml"],
    "remote": ["bench-remote-host.toml", "bench-remote-strategy.toml"],
}
PASSES = ("latency", "stages", "throughput")
TARGETS_US = {"p50": 15.0, "p99": 50.0}
SYMBOL = "BTCUSDT"
QUICK_SECONDS = 40.0
READY_TIMEOUT_S = 300.0  # a cold numba cache compiles for minutes on a loaded machine
QUIET_S = 0.3  # no progress for this long after the input ended: the pipeline is done
FINAL = frozenset({"filled", "canceled", "expired", "rejected"})
ORDER_PATH = (  # the stages of the table, in the order a frame meets them (the JSON has all)
    "parse frame", "book md.depth", "features md.book", "features md.trade", "signal feat",
    "signal md.book", "risk md.book", "risk ord.request", "broker md.book", "broker md.trade",
    "broker ord.accepted",
)  # fmt: skip
TERMINAL_STAGES = frozenset({"features", "signal", "risk", "broker"})
_STAGE_OF_MODULE = (
    ("tickbus.plugins.binance", "feed"),
    ("tickbus.plugins.book", "book"),
    ("tickbus.plugins.features", "features"),
    ("tickbus.plugins.signals", "signal"),
    ("tickbus.kernel.strategy", "signal"),
    ("tickbus.plugins.risk", "risk"),
    ("tickbus.plugins.broker", "broker"),
)


_EPOCH_NS = 10**18
"""A ``ts_recv_ns`` above this is wall-clock time (after 2001), below it monotonic: the
feed stamps the monotonic clock (DESIGN.md); the probes read whichever it used."""


class BenchError(Exception):
    """The benchmark could not run (a child failed, a timeout): one line for the user."""


class UsageError(BenchError):
    """A bad argument (exit status 2)."""


# ============================================================================ the machine


def describe_machine() -> dict[str, Any]:
    """CPU, cores, Python and library versions, load average now."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("numpy", "numba", "pyzmq", "msgspec", "websockets", "pluggy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    import zmq

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "versions": versions,
        "libzmq": zmq.zmq_version(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }


# ============================================================================ probes


def _stage_of(handler: Any) -> str | None:
    module = getattr(handler, "__module__", "") or ""
    for prefix, stage in _STAGE_OF_MODULE:
        if module.startswith(prefix):
            return stage
    return None


def _kind_of(prefix: str) -> str:
    """``md.book.BTCUSDT`` -> ``md.book``, ``feat.BTCUSDT`` -> ``feat``, ``ord.request``."""
    parts = prefix.split(".")
    return ".".join(parts[:2]) if parts[0] in ("md", "ord", "exec") else parts[0]


class Probes:
    """The measuring side of a benchmark process: handler wrappers and their histograms.

    ``stages``: every handler wrapped to record its own time (wall time minus the wrapped
    handlers it called on the same thread) per ``stage message``; ``touch``: the terminal
    stages note when they last finished a message (throughput outside the hot lane);
    ``t2t``: the broker's ``ord.accepted`` handler notes (order id, now - ts_recv_ns) at
    entry; ``t2d``: ``evaluate`` notes now - the vector's ts_recv_ns when it returns."""

    def __init__(self, *, stages: bool, touch: bool, t2t: bool, t2d: bool) -> None:
        self.stages = stages
        self.touch = touch
        self.t2t_on = t2t
        self.t2d_on = t2d
        self.hists: dict[str, Histogram] = {}
        self.t2t: list[tuple[str, int]] = []
        self.t2d = Histogram()
        self.t2d_raw: list[int] = []
        self.timer_orders: list[str] = []
        self.last = [0]  # monotonic_ns when a terminal handler last finished
        self.touches = [0]
        self._tls = threading.local()

    def _acc(self) -> list[int]:
        """This thread's running total of time spent in wrapped handlers it called."""
        acc: list[int] | None = getattr(self._tls, "acc", None)
        if acc is None:
            acc = self._tls.acc = [0]
        return acc

    def timed(self, fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        """``fn`` recording its own time per call into ``hists[key]``."""
        hist = self.hists.get(key)
        if hist is None:
            hist = self.hists[key] = Histogram()
        return self.self_timed(fn, hist.record)

    def self_timed(self, fn: Callable[..., Any], sink: Callable[[int], None]) -> Callable[..., Any]:
        """``fn`` handing ``sink`` its own time per call (ns): its wall time minus that of the
        wrapped calls it made on this thread, wrappers included."""
        acc = self._acc()  # wrappers are made on the thread that will call them
        pc = time.perf_counter_ns

        def timed(*args: Any) -> Any:
            t0 = pc()
            outer = acc[0]
            acc[0] = 0
            try:
                return fn(*args)
            finally:
                t1 = pc()
                sink(t1 - t0 - acc[0])
                # the caller is billed for none of this wrapper but the call into it
                acc[0] = outer + (pc() - t0)

        return timed

    def touched(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        last, touches = self.last, self.touches
        now = time.monotonic_ns

        def touched(msg: Any) -> None:
            fn(msg)
            last[0] = now()
            touches[0] += 1

        return touched

    def t2t_probe(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        note = self.t2t.append
        mono, wall = time.monotonic_ns, time.time_ns

        def t2t(msg: Any) -> None:
            t = mono()  # first: the broker has the order now
            if type(msg) is OrderAccepted:
                o = msg.order
                ts = o.ts_recv_ns
                note((o.client_order_id, (wall() if ts > _EPOCH_NS else t) - ts))
            fn(msg)

        return t2t

    def t2d_probe(self, evaluate: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """``evaluate`` noting the time since its vector's tick (folded into the histogram
        at the end: this probe is on the way to every order, so it only appends)."""
        note = self.t2d_raw.append
        mono, wall = time.monotonic_ns, time.time_ns

        def timed_evaluate(strategy: Any, fv: FeatureVector) -> Any:
            d = evaluate(strategy, fv)
            ts = fv.ts_recv_ns
            note((wall() if ts > _EPOCH_NS else mono()) - ts)
            return d

        return timed_evaluate

    def wrap(self, prefix: str, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """What the patched ``Lane.subscribe`` registers instead of ``handler``."""
        stage = _stage_of(handler)
        if stage is None:
            return handler
        fn = handler
        if self.stages:
            fn = self.timed(fn, f"{stage} {_kind_of(prefix)}")
        if self.touch and stage in TERMINAL_STAGES:
            fn = self.touched(fn)
        if self.t2t_on and stage == "broker" and prefix == "ord.accepted":
            fn = self.t2t_probe(fn)  # outermost: stamped before anything else runs
        return fn

    def install(self, plugins: set[str]) -> None:
        """Patch the classes of this process before the kernel starts (no kernel change:
        the wrappers are registered in place of the plugins' handlers); ``plugins``: the
        plugins the process runs (the others are not imported)."""
        from tickbus.kernel.lane import Lane

        probes = self
        subscribe = Lane.subscribe

        def patched_subscribe(lane: Lane, prefix: str, handler: Callable[[Any], None]) -> None:
            subscribe(lane, prefix, probes.wrap(prefix, handler))

        Lane.subscribe = patched_subscribe  # type: ignore[method-assign]

        if self.stages and "binance_feed" in plugins:
            from tickbus.plugins.binance.feed import Feed

            on_frame = Feed.on_frame

            def timed_on_frame(feed: Feed, frame: bytes, ts_ns: int) -> None:
                # the lane thread is known only at the first call: wrap then, per thread
                fn = getattr(probes._tls, "on_frame", None)
                if fn is None:
                    fn = probes._tls.on_frame = probes.timed(on_frame, "parse frame")
                fn(feed, frame, ts_ns)

            Feed.on_frame = timed_on_frame  # type: ignore[method-assign]

        if "imbalance_strategy" in plugins:
            self._install_strategy()

    def _install_strategy(self) -> None:
        from tickbus.kernel.strategy import Strategy
        from tickbus.plugins.signals.imbalance import ImbalanceStrategy

        if self.t2d_on:
            ImbalanceStrategy.evaluate = self.t2d_probe(  # type: ignore[method-assign]
                ImbalanceStrategy.evaluate
            )

        fire = Strategy._fire
        timer_orders = self.timer_orders

        def noted_fire(strategy: Strategy, name: str, payload: Any) -> None:
            # orders a timer sends carry the last tick's receive time: note their ids
            publish = strategy._publish

            def spy(topic: str, msg: Msg) -> None:
                if topic == "ord.request" and type(msg) is OrderRequest:
                    timer_orders.append(msg.client_order_id)
                publish(topic, msg)

            strategy._publish = spy
            try:
                fire(strategy, name, payload)
            finally:
                if strategy._publish is spy:
                    strategy._publish = publish

        Strategy._fire = noted_fire  # type: ignore[method-assign]

    def result(self) -> dict[str, Any]:
        if self.t2d_raw:
            self.t2d.record_array(np.asarray(self.t2d_raw, np.int64))
            self.t2d_raw.clear()
        return {
            "t2t": self.t2t,
            "timer_orders": self.timer_orders,
            "t2d": self.t2d.to_dict(),
            "stages": {k: h.to_dict() for k, h in self.hists.items()},
            "last_ns": self.last[0],
        }


def probe_costs(n: int = 200_000) -> dict[str, float]:
    """What a probe adds per call (ns, best of 5): the stage wrapper, the tick-to-trade
    stamp, the tick-to-decision wrapper (on the way to every order), the touch; measured
    on a no-op handler in this process."""
    probes = Probes(stages=True, touch=True, t2t=True, t2d=True)

    def noop(msg: Any) -> None:
        pass

    def evaluate(strategy: Any, fv: Any) -> None:
        pass

    t2d = probes.t2d_probe(evaluate)
    req = OrderRequest("c", "s", SYMBOL, "buy", "limit", "GTC", 1, 1, 0, False, "", 1, 1)
    msg = OrderAccepted(req, 1)
    variants: dict[str, Callable[[Any], None]] = {
        "bare": noop,
        "stage_wrapper": probes.timed(noop, "x"),
        "tick_to_trade": probes.t2t_probe(noop),
        "touch": probes.touched(noop),
        "bare_evaluate": lambda m: evaluate(None, req),
        "tick_to_decision": lambda m: t2d(None, req),
    }
    best: dict[str, float] = {}
    for name, fn in variants.items():
        times = []
        for _ in range(5):
            probes.t2t.clear()
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn(msg)
            times.append((time.perf_counter_ns() - t0) / n)
        best[name] = min(times)
    return {k: round(v - best["bare_evaluate" if k == "tick_to_decision" else "bare"], 1)
            for k, v in best.items() if not k.startswith("bare")}  # fmt: skip


# ============================================================================ memory source


class SourceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.bench_source]``: the capture from memory, stamped on publication."""

    files: list[str]
    speed: float = 0.0
    """x real time; 0: as fast as possible."""
    loops: int = 1
    """Times through the capture (0: until ``duration_s``)."""
    duration_s: float = 0.0
    go: str = ""
    """Start publishing when this file exists (the other processes are up)."""
    batch: int = 512
    """Frames between yields to the loop at full speed."""


class MemorySource:
    """What ``binance_feed`` does per frame (the feed's parser, ``ts_recv_ns`` = now,
    publish), with the frames read beforehand instead of a socket."""

    def __init__(self, ctx: PluginContext, cfg: SourceConfig) -> None:
        from tickbus.plugins.binance.capture import read_frames
        from tickbus.plugins.binance.parse import FrameParser, warmup

        warmup(ctx.log)
        self.ctx = ctx
        self.cfg = cfg
        self.frames = list(read_frames(*(ctx.resolve_path(f) for f in cfg.files)))
        self.symbols = sorted({s for _, k, s, _ in self.frames if k == "rest" and s})
        self.parser = FrameParser()
        self.sent = 0
        self.bad = 0
        self.loops = 0
        self.t_first = 0
        self.t_last = 0
        self.done = False
        self.resyncs = 0

    async def run(self) -> None:
        from tickbus.plugins.binance.parse import FrameError, topic_of

        cfg = self.cfg
        while cfg.go and not os.path.exists(cfg.go):
            await asyncio.sleep(0.01)
        publish = self.ctx.publish
        parse, snapshot = self.parser.parse, self.parser.parse_snapshot
        frames = self.frames
        span = frames[-1][0] - frames[0][0] + 1_000_000_000
        topics: dict[tuple[type, str], str] = {}
        now = self.ctx.clock.mono_ns  # what the live feed stamps ts_recv_ns with
        wall = self.ctx.clock.now_ns
        replace = msgspec.structs.replace
        end = time.monotonic() + cfg.duration_s if cfg.duration_s else math.inf
        self.t_first = now()
        while True:
            shift = self.loops * span  # venue time moves on: the features' windows slide
            if self.loops:  # like a reconnect: the books resync from the capture's snapshot
                for s in self.symbols:
                    publish(f"md.status.{s}", FeedStatus(s, False, "bench loop", wall()))
                    publish(f"md.status.{s}", FeedStatus(s, True, "bench loop", wall()))
            t0_rec, t0 = frames[0][0], time.monotonic()
            for i, (ts, kind, symbol, payload) in enumerate(frames):
                if cfg.speed:
                    delay = t0 + (ts - t0_rec) / 1e9 / cfg.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i % cfg.batch == 0:
                    await asyncio.sleep(0)
                try:
                    if kind == "ws":
                        msg: Any = parse(payload, now())
                    elif kind == "rest":
                        msg = snapshot(payload, symbol, now())
                    else:
                        self.bad += 1
                        continue
                except FrameError:
                    self.bad += 1
                    continue
                if shift:
                    msg = replace(msg, ts_exchange_ns=msg.ts_exchange_ns + shift)
                key = (type(msg), msg.symbol)
                topic = topics.get(key)
                if topic is None:  # a snapshot goes where the live feed puts it
                    topic = topics[key] = (f"md.depth.{msg.symbol}" if kind == "rest"
                                           else topic_of(msg))  # fmt: skip
                publish(topic, msg)
                self.sent += 1
            self.t_last = now()
            self.loops += 1
            if (cfg.loops and self.loops >= cfg.loops) or time.monotonic() >= end:
                break
        self.done = True


class _SourcePlugin:
    @staticmethod
    @hookimpl
    def tickbus_config_type() -> type[SourceConfig]:
        return SourceConfig

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> MemorySource:
        src = MemorySource(ctx, ctx.config)
        ctx.subscribe("md.resync.", lambda msg: setattr(src, "resyncs", src.resyncs + 1))
        return src

    @staticmethod
    @hookimpl
    def tickbus_start(ctx: PluginContext) -> None:
        ctx.spawn(ctx.component.run(), name="bench-source")


class _Control:
    """Started after every other plugin of the process: the process is ready."""

    def __init__(self) -> None:
        self.ready = threading.Event()

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> None:
        return None

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        self.ready.set()


# ============================================================================ engine child


def _rss_kb() -> int:
    """Resident set size now (KB)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kb() -> int:
    """Peak RSS of this process (KB): VmHWM, which starts afresh at exec (ru_maxrss keeps
    the parent's peak across fork + exec)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_bytes(msgspec.json.encode(data))
    os.replace(tmp, path)


_WORK_TOPICS = ("md.", "feat.", "sig.", "ord.", "exec.")
"""Topics that only input makes: the count stops when the input has been worked off (risk
state and heartbeats go on by timer)."""


def _progress(bus_stats: dict[str, dict[str, Any]], probes: Probes) -> int:
    """Work done so far: messages of the input's topics published, vectors evaluated,
    orders received by the broker, terminal handler calls."""
    n = len(probes.t2d_raw) + len(probes.t2t) + probes.touches[0]
    for lane in bus_stats.values():
        n += sum(c for t, c in lane["topics"].items() if t.startswith(_WORK_TOPICS))
    return n


def _status_loop(
    path: str, stop: threading.Event, get: Callable[[], dict[str, Any]],
    rss: list[list[float]], rss_every_s: float,
) -> None:  # fmt: skip
    """Write the process's status for the parent every 50 ms; sample RSS when asked."""
    t0 = time.monotonic()
    next_rss = t0
    while not stop.wait(0.05):
        try:
            st = get()
            if rss_every_s and time.monotonic() >= next_rss:
                next_rss += rss_every_s
                rss.append([round(time.monotonic() - t0, 2), _rss_kb(), st.get("loops", 0)])
            _write_json(path, st)
        except Exception as err:  # the measured process must not die of its status file
            _write_json(path, {"error": f"{type(err).__name__}: {err}"})


def engine_child(spec: dict[str, Any]) -> int:
    """One tickbus process of a scenario: probes installed, the kernel run until SIGTERM
    (or the source's end, for a soak), everything measured written to ``spec["out"]``."""
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config

    probes = Probes(
        stages=spec["stages"], touch=spec["touch"], t2t=spec["t2t"], t2d=spec["t2d"]
    )
    probes.install({t.get("plugin", n) for n, t in spec["raw"]["plugins"].items()})
    control = _Control()
    cfg = parse_config(spec["raw"], spec["config_path"])
    kernel = Kernel(cfg, extra_plugins={"bench_control": control, "bench_source": _SourcePlugin})

    def component(plugin: str) -> Any:
        for ctx in kernel.contexts.values():
            if ctx.plugin == plugin:
                return ctx.component
        return None

    def status() -> dict[str, Any]:
        src = component("bench_source")
        st: dict[str, Any] = {
            "ready": control.ready.is_set(),
            "progress": _progress(kernel.bus_stats(), probes) if control.ready.is_set() else 0,
            "last_ns": probes.last[0],
        }
        if src is not None:
            st |= {"source_done": src.done, "loops": src.loops, "sent": src.sent}
        return st

    stop = threading.Event()
    rss: list[list[float]] = []
    thread = threading.Thread(
        target=_status_loop, args=(spec["status"], stop, status, rss, spec.get("rss_every_s", 0)),
        daemon=True,
    )  # fmt: skip
    thread.start()
    rc = kernel.run(handle_signals=True)
    stop.set()
    thread.join(2.0)

    out: dict[str, Any] = {"role": "engine", "rc": rc, **probes.result()}
    topics: dict[str, int] = {}
    for lane in kernel.bus_stats().values():
        for t, c in lane["topics"].items():
            topics[t] = topics.get(t, 0) + c
    out["topics"] = topics
    out["lanes"] = {n: {k: v for k, v in s.items() if k != "topics"}
                    for n, s in kernel.bus_stats().items()}  # fmt: skip
    broker = component("paper_broker")
    if broker is not None:
        ring = Histogram()
        ring.record_array(broker.tick_to_trade_ns())
        out["broker"] = dict(broker.stats)
        out["broker_ring"] = ring.to_dict()
    strategy = component("imbalance_strategy")
    if strategy is not None:
        out["strategy"] = {**strategy.stats, **strategy.counts}
    feed = component("binance_feed")
    if feed is not None:
        out["feed"] = dict(feed.stats)
    src = component("bench_source")
    if src is not None:
        out["source"] = {
            "sent": src.sent, "bad": src.bad, "loops": src.loops, "t_first": src.t_first,
            "t_last": src.t_last, "done": src.done,
        }  # fmt: skip
    out["peak_rss_kb"] = _peak_rss_kb()
    out["rss_series"] = rss
    _write_json(spec["out"], out)
    return rc


# ============================================================================ baseline


def _bench_modules() -> Any:
    """The baseline's parts (imported in the baseline process only)."""
    from types import SimpleNamespace

    from . import baseline_book, bench_broker, bench_features, bench_risk, bench_strategy

    return SimpleNamespace(
        book=baseline_book, broker=bench_broker, features=bench_features, risk=bench_risk,
        strategy=bench_strategy,
    )  # fmt: skip


def _settings(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """A plugin table of a config without the kernel's reserved keys."""
    table = raw["plugins"][name]
    return {k: v for k, v in table.items() if k not in RESERVED_PLUGIN_KEYS}


class BaselineTrader:
    """The imbalance strategy as a careful engineer writes it in plain Python: the same rule
    (:func:`.bench_strategy.rule`), the same order logic as ``SignalTrader`` (one working
    intent, size capped by position + working orders, entry at the touch, requote when the
    touch moves, cancel when the signal decayed, exit by a crossing limit order when the
    holding period is over or the signal flips, never on a stale or invalid book) - its
    timers as checks on each book event, ``time.monotonic_ns`` as the clock (the feed's
    ``ts_recv_ns`` clock)."""

    def __init__(self, cfg: Any, submit: Callable[[OrderRequest], None],
                 cancel: Callable[[OrderCancel], None],
                 t2d: Callable[[int], None]) -> None:  # fmt: skip
        rule = _bench_modules().strategy.rule
        self.rule = rule
        self.k = (cfg.imbalance_threshold, cfg.momentum_scale, cfg.volatility_scale,
                  cfg.volatility_floor, cfg.min_confidence)  # fmt: skip
        self.symbol = cfg.symbols[0]
        self.hold = (cfg.holding_scale_ms, cfg.min_holding_ms, cfg.max_holding_ms)
        self.lot = round(cfg.lot_size * SCALE)
        self.limit = round(cfg.max_position_size * SCALE)
        self.size = self._floor(round(cfg.order_size_fraction * cfg.max_position_size * SCALE))
        self.max_age = int(cfg.max_book_age_ms * 1e6)
        half_lives = -math.log2(cfg.stale_strength) if cfg.stale_strength else 0.0
        self.stale_ns = int(half_lives * cfg.signal_decay_ms * 1e6)
        self.submit_ = submit
        self.cancel_ = cancel
        self.t2d = t2d
        self.book: BookTop | None = None
        self.pending: FeatureVector | None = None
        self.pos = 0
        self.orders: dict[str, list[Any]] = {}  # cid -> [request, leaves]
        self.intent = ""
        self.sig_t = 0
        self.hold_ns = 0
        self.exit_at = 0
        self.seq = 0
        self.stats = {"orders": 0, "cancels": 0, "fills": 0, "rejects": 0, "signals": 0}

    def _floor(self, qty: int) -> int:
        if qty <= 0:
            return 0
        return qty - qty % self.lot if self.lot else qty

    # ------------------------------------------------------------------ market events

    def on_features(self, fv: FeatureVector) -> None:
        b = self.book
        if b is None or b.last_update_id < fv.book_update_id:
            self.pending = fv  # its book comes next
            return
        self.decide(fv)

    def on_book(self, b: BookTop) -> None:
        self.book = b
        fv = self.pending
        if fv is not None and (not b.valid or b.last_update_id >= fv.book_update_id):
            self.pending = None
            self.decide(fv)
        if not b.valid:
            o = self.orders.get(self.intent)
            if o is not None and not o[0].reduce_only:
                self.cancel(self.intent)
            return
        if self.problem(b):
            return
        now = time.monotonic_ns()
        if self.pos and self.exit_at and now >= self.exit_at:
            self.exit(b, b.ts_recv_ns)
            return
        o = self.orders.get(self.intent)
        if o is not None:
            if not o[0].reduce_only and self.stale_ns and now - self.sig_t >= self.stale_ns:
                self.cancel(self.intent)
            else:
                self.requote(b, b.ts_recv_ns)

    def problem(self, b: BookTop) -> bool:
        if not b.valid or b.bid_px <= 0 or b.ask_px <= 0:
            return True
        return self.max_age > 0 and time.monotonic_ns() - b.ts_recv_ns > self.max_age

    def decide(self, fv: FeatureVector) -> None:
        d = self.rule(fv, self.k)
        self.t2d(time.monotonic_ns() - fv.ts_recv_ns)
        if d is None:
            return
        self.stats["signals"] += 1
        direction, _, _, _, why = d
        b = self.book
        if why or b is None or self.problem(b):
            return
        scale, lo, hi = self.hold  # the strategy's holding period, from its settings
        hold_ms = int(min(max(scale / max(abs(fv.imbalance), 0.01), lo), hi))
        self.act(direction, hold_ms, b, fv.ts_recv_ns)

    # ------------------------------------------------------------------ orders

    def act(self, direction: int, hold_ms: int, b: BookTop, cause: int) -> None:
        pos = self.pos
        if pos and (pos > 0) != (direction > 0):
            self.exit(b, cause)
            return
        now = time.monotonic_ns()
        self.sig_t = now
        self.hold_ns = hold_ms * 1_000_000
        if pos:
            self.exit_at = max(self.exit_at, now + self.hold_ns)
        side = "buy" if direction > 0 else "sell"
        o = self.orders.get(self.intent)
        if o is not None:
            if o[0].reduce_only:
                return
            if o[0].side == side:
                self.requote(b, cause)
                return
            self.cancel(self.intent)
        qty = self.entry_qty(side)
        if qty > 0:
            self.send(side, qty, b.bid_px if side == "buy" else b.ask_px, False, cause)

    def entry_qty(self, side: str) -> int:
        exposure = self.pos if side == "buy" else -self.pos
        for req, leaves in self.orders.values():
            if req.side == side and not req.reduce_only:
                exposure += leaves
        return self._floor(min(self.size, self.limit - exposure))

    def exit(self, b: BookTop, cause: int) -> None:
        pos = self.pos
        side = "sell" if pos > 0 else "buy"
        px = b.bid_px if side == "sell" else b.ask_px  # crossing: takes the other side
        o = self.orders.get(self.intent)
        if o is not None:
            if o[0].reduce_only and o[0].side == side and o[0].px == px:
                return
            self.cancel(self.intent)
        self.send(side, abs(pos), px, True, cause)

    def requote(self, b: BookTop, cause: int) -> None:
        o = self.orders.get(self.intent)
        if o is None:
            return
        req, leaves = o
        if req.reduce_only:
            px = b.bid_px if req.side == "sell" else b.ask_px
        else:
            px = b.bid_px if req.side == "buy" else b.ask_px
        if px != req.px and leaves > 0:
            self.cancel(self.intent)
            self.send(req.side, leaves, px, req.reduce_only, cause)

    def send(self, side: Any, qty: int, px: int, reduce_only: bool, cause: int) -> None:
        self.seq += 1
        cid = f"baseline-{self.seq}"
        req = OrderRequest(cid, "baseline", self.symbol, side, "limit", "GTC", qty, px, 0,
                           reduce_only, "", cause, time.monotonic_ns())  # fmt: skip
        self.orders[cid] = [req, qty]
        self.intent = cid
        self.stats["orders"] += 1
        self.submit_(req)
        if cid not in self.orders:  # filled, or rejected, inside the call
            self.intent = ""

    def cancel(self, cid: str) -> None:
        if cid in self.orders:
            self.stats["cancels"] += 1
            self.cancel_(OrderCancel(cid, "baseline", self.symbol, time.monotonic_ns()))
        if self.intent == cid:
            self.intent = ""

    # ------------------------------------------------------------------ execution reports

    def on_update(self, u: OrderUpdate) -> OrderRequest | None:
        """Returns the request of an order that has finished."""
        o = self.orders.get(u.client_order_id)
        if o is None:
            return None
        o[1] = u.leaves_qty
        if u.status not in FINAL:
            return None
        del self.orders[u.client_order_id]
        if self.intent == u.client_order_id:
            self.intent = ""
        if u.status == "rejected":
            self.stats["rejects"] += 1
        req: OrderRequest = o[0]
        return req

    def on_fill(self, f: Fill) -> None:
        self.stats["fills"] += 1
        entry = (self.pos >= 0) == (f.side == "buy")
        self.pos += f.qty if f.side == "buy" else -f.qty
        if not self.pos:
            self.exit_at = 0
        elif entry:
            self.exit_at = max(self.exit_at, time.monotonic_ns() + self.hold_ns)


class BaselineChain:
    """Frame -> order in one chain of calls (see the module docstring); ``probes.stages``
    wraps each stage's functions exactly as the engine's handlers are wrapped."""

    def __init__(self, raw: dict[str, Any], probes: Probes) -> None:
        from tickbus.plugins.features.plugin import FeaturesConfig
        from tickbus.plugins.risk.filters import load
        from tickbus.plugins.risk.plugin import Config as RiskConfig
        from tickbus.plugins.risk.plugin import _limits
        from tickbus.plugins.signals.imbalance import ImbalanceConfig
        from tickbus.schemas import OrderRejected

        m = _bench_modules()
        self.probes = probes
        book_cfg = _settings(raw, "book")
        self.feed = m.book.BaselineFeed(book_cfg.get("market", "spot"), book_cfg.get("depth", 20))
        risk_cfg = msgspec.convert(_settings(raw, "risk"), RiskConfig)
        filters = load(risk_cfg.market, None, {}, "plugins.risk")
        self.risk = m.risk.BaselineRisk(_limits(risk_cfg, "plugins.risk"), filters)
        self.clock = m.broker.Clock()
        broker_cfg: Any = msgspec.convert(_settings(raw, "paper_broker"), _broker_config())
        self.broker = _pipeline_broker(m.broker.BaselineBroker)(broker_cfg, self.on_exec,
                                                                 self.clock)  # fmt: skip
        self.f_signal: Callable[[FeatureVector], None] = lambda fv: None  # set below
        self.features = m.features.BaselineFeatures(
            lambda topic, fv: self.f_signal(fv),
            msgspec.convert(_settings(raw, "features"), FeaturesConfig),
        )
        trader_cfg = msgspec.convert(_settings(raw, "imbalance"), ImbalanceConfig)
        self.trader = BaselineTrader(trader_cfg, self.submit, self.cancel, probes.t2d_raw.append)
        self._rejected = OrderRejected
        self.frames = 0
        self.orders_accepted = 0
        self.orders_rejected = 0
        t = self._timed
        self.f_frame = t(self.feed.on_frame, "parse frame")
        self.f_rest = t(self.feed.on_rest, "parse rest")
        self.f_feat_book = t(self.features.on_book, "features md.book")
        self.f_feat_trade = t(self.features.on_trade, "features md.trade")
        self.f_signal = t(self.trader.on_features, "signal feat")
        self.f_trader_book = t(self.trader.on_book, "signal md.book")
        self.f_risk_book = t(self.risk.on_book, "risk md.book")
        self.f_check = t(self.risk.check, "risk ord.request")
        self.f_broker_book = t(self.broker.on_book, "broker md.book")
        self.f_broker_trade = t(self.broker.on_trade, "broker md.trade")
        accept = t(self.broker.on_accepted, "broker ord.accepted")
        self.f_accept = probes.t2t_probe(accept) if probes.t2t_on else accept
        self.f_cancel = t(self.broker.on_cancel, "broker ord.cancel")
        if probes.stages:
            self._time_book(m.book.BaselineSync)

    def _timed(self, fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        return self.probes.timed(fn, key) if self.probes.stages else fn

    def _time_book(self, sync_cls: type) -> None:
        """The book's share of a depth frame: sync + apply + top-N, one sample per frame
        (the parse stage's own time excludes it, as the engine's parse excludes the book's
        handler)."""
        probes = self.probes
        book = [0]

        def add(ns: int) -> None:
            book[0] += ns

        for name in ("on_diff", "on_snapshot", "top"):
            setattr(sync_cls, name, probes.self_timed(getattr(sync_cls, name), add))
        rec = probes.hists.setdefault("book md.depth", Histogram()).record

        def then_book(parse: Callable[..., Any]) -> Callable[..., Any]:
            def parse_then_book(*args: Any) -> Any:
                book[0] = 0
                out = parse(*args)
                if book[0]:
                    rec(book[0])
                return out

            return parse_then_book

        self.f_frame, self.f_rest = then_book(self.f_frame), then_book(self.f_rest)

    # ------------------------------------------------------------------ the chain

    def on_frame(self, frame: bytes, ts: int) -> None:
        self.frames += 1
        self.clock.ns = ts
        self.dispatch(self.f_frame(frame, ts))

    def on_rest(self, body: bytes, symbol: str, ts: int) -> None:
        self.clock.ns = ts
        self.dispatch(self.f_rest(body, symbol, ts))

    def dispatch(self, out: Any) -> None:
        t = type(out)
        if t is BookTop:  # the engine's md.book subscribers, in the hot lane's order
            self.f_feat_book(out)
            self.f_trader_book(out)
            self.f_risk_book(out)
            self.f_broker_book(out)
        elif t is Trade:
            self.f_feat_trade(out)
            self.f_broker_trade(out)

    def submit(self, req: OrderRequest) -> None:
        why = self.f_check(req, time.monotonic_ns())
        if why:
            self.orders_rejected += 1
            self.on_exec("exec.report", OrderUpdate(
                req.client_order_id, req.strategy_id, req.symbol, req.side, req.order_type,
                "rejected", req.px, req.qty, 0, 0, 0, why, req.ts_recv_ns, time.monotonic_ns(),
            ))  # fmt: skip
            return
        self.orders_accepted += 1
        self.f_accept(OrderAccepted(req, time.monotonic_ns()))

    def cancel(self, msg: OrderCancel) -> None:
        self.f_cancel(msg)

    def on_exec(self, topic: str, msg: Any) -> None:
        if topic == "exec.report":
            done = self.trader.on_update(msg)
            if done is not None:
                self.risk.finish(done, False)  # positions follow the fills, below
        elif topic == "exec.fill":
            self.trader.on_fill(msg)
            self.risk.pos[msg.symbol] = self.risk.pos.get(msg.symbol, 0) + (
                msg.qty if msg.side == "buy" else -msg.qty
            )


def _broker_config() -> type:
    from tickbus.plugins.broker.engine import BrokerConfig

    return BrokerConfig


def _pipeline_broker(base: type) -> type:
    """The bench's baseline broker, refusing an order while it has no valid book (as the
    paper broker does) instead of raising."""

    class PipelineBroker(base):  # type: ignore[misc, valid-type]
        def on_accepted(self, msg: OrderAccepted) -> None:
            if self.book is None or not self.book.valid:
                req = msg.order
                self.publish("exec.report", OrderUpdate(
                    req.client_order_id, req.strategy_id, req.symbol, req.side, req.order_type,
                    "rejected", req.px, req.qty, 0, 0, 0, "no book", req.ts_recv_ns,
                    self.clock.ns))  # fmt: skip
                return
            super().on_accepted(msg)

    return PipelineBroker


def baseline_child(spec: dict[str, Any]) -> int:
    """The baseline pipeline in its own process: over the simulator's WebSocket (latency
    passes) or from memory as fast as it goes (throughput)."""
    probes = Probes(stages=spec["stages"], touch=False, t2t=True, t2d=True)
    chain = BaselineChain(spec["raw"], probes)
    src = spec["source"]
    out: dict[str, Any] = {"role": "baseline"}
    _write_json(spec["status"], {"ready": True, "progress": 0})
    if src["kind"] == "memory":
        from tickbus.plugins.binance.capture import read_frames

        frames = list(read_frames(*src["files"]))
        while src.get("go") and not os.path.exists(src["go"]):
            time.sleep(0.01)
        now = time.monotonic_ns
        on_frame, on_rest = chain.on_frame, chain.on_rest
        t_first = now()
        for _, kind, symbol, payload in frames:
            if kind == "ws":
                on_frame(payload, now())
            elif kind == "rest" and symbol:
                on_rest(payload, symbol, now())
        out["source"] = {"sent": len(frames), "t_first": t_first, "t_last": now()}
    else:
        out["feed"] = asyncio.run(_baseline_live(chain, src["port"], src["timeout_s"]))
    out |= probes.result()
    out["strategy"] = chain.trader.stats
    out["counts"] = {
        "frames": chain.frames, "accepted": chain.orders_accepted,
        "rejected": chain.orders_rejected, "bad": chain.feed.bad,
    }  # fmt: skip
    out["peak_rss_kb"] = _peak_rss_kb()
    out["rc"] = 0
    _write_json(spec["out"], out)
    return 0


async def _baseline_live(chain: BaselineChain, port: int, timeout_s: float) -> dict[str, Any]:
    """Connect (retrying until the simulator is up), fetch the snapshot as the feed does,
    hand every frame to the chain stamped as ``recv`` returns it, until the server closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from tickbus.plugins.binance.feed import http_get, stream_url

    url = stream_url(f"ws://127.0.0.1:{port}", [SYMBOL], "100ms", True, True)
    rest = f"http://127.0.0.1:{port}/api/v3/depth?symbol={SYMBOL}&limit=1000"
    deadline = time.monotonic() + timeout_s
    stats = {"frames": 0, "snapshots": 0}
    while True:
        try:
            ws = await connect(url, compression=None, max_queue=None, max_size=16 << 20,
                               ping_interval=None, proxy=None)  # fmt: skip
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"baseline: no simulator at {url}") from None
            await asyncio.sleep(0.05)

    async def snapshot() -> None:
        status, _, body = await asyncio.to_thread(http_get, rest, 10.0)
        if status == 200:
            stats["snapshots"] += 1
            chain.on_rest(body, SYMBOL, time.monotonic_ns())

    task = asyncio.get_running_loop().create_task(snapshot())
    on_frame = chain.on_frame
    now = time.monotonic_ns
    try:
        while True:
            frame = await ws.recv(decode=False)
            on_frame(frame, now())
            stats["frames"] += 1
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
        await task
    return stats


# ============================================================================ the parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One benchmark process (``--child SPEC``), its status and result files."""

    module = "tickbus.tools.bench.pipeline"
    """The module run with ``--child``."""

    def __init__(self, name: str, spec: dict[str, Any], work: Path) -> None:
        self.name = name
        self.work = work
        spec = {**spec, "status": str(work / f"{name}.status"), "out": str(work / f"{name}.out")}
        self.spec = spec
        path = work / f"{name}.spec"
        path.write_bytes(msgspec.json.encode(spec))
        self.log = work / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--child", str(path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

    def status(self) -> dict[str, Any]:
        try:
            st: dict[str, Any] = msgspec.json.decode(Path(self.spec["status"]).read_bytes())
        except (OSError, msgspec.DecodeError):
            return {}
        if "error" in st:
            raise self.failed(f"status: {st['error']}")
        return st

    def failed(self, why: str) -> BenchError:
        try:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            tail = []
        return BenchError(f"{self.name}: {why}" + "".join(f"\n    {t}" for t in tail))

    def check_alive(self) -> None:
        """Raise if the process ended before it was asked to."""
        if self.proc.poll() is not None:
            raise self.failed(f"ended early, exit status {self.proc.returncode}")

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.status().get("ready"):
            self.check_alive()
            if time.monotonic() > end:
                raise self.failed(f"not ready within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise self.failed(f"did not stop within {timeout:.0f} s") from None
        return self.result()

    def result(self) -> dict[str, Any]:
        try:
            res: dict[str, Any] = msgspec.json.decode(Path(self.spec["out"]).read_bytes())
        except (OSError, msgspec.DecodeError):
            raise self.failed(f"no result (exit status {self.proc.returncode})") from None
        if res.get("rc"):
            raise self.failed(f"exit status {res['rc']}")
        return res

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _load_toml(name: str) -> dict[str, Any]:
    with open(CONFIGS / name, "rb") as fh:
        return tomllib.load(fh)


def time_scaled(raw: dict[str, Any], pace: float) -> dict[str, Any]:
    """``raw`` (a copy) with the plugins' wall-clock time constants divided by ``pace``: the
    data comes ``pace`` x faster than it was recorded, so the strategy holds, decays and
    marks over the same stretch of market as it would in real time (at 25x a 1 s holding
    period would otherwise span 25 s of data)."""
    raw = json.loads(json.dumps(raw))  # deep copy
    defaults = {  # the plugins' defaults, for settings a config leaves out
        "imbalance_strategy": {"signal_decay_ms": 500.0, "holding_scale_ms": 1000.0,
                               "min_holding_ms": 100, "max_holding_ms": 10_000},
        "paper_broker": {"mark_interval_ms": 1000.0},
        "risk": {"state_interval_s": 1.0},
    }  # fmt: skip
    for name, table in raw.get("plugins", {}).items():
        for key, default in defaults.get(table.get("plugin", name), {}).items():
            value = table.get(key, default) / pace
            table[key] = max(1, round(value)) if isinstance(default, int) else value
    return raw


def _prepare(raw: dict[str, Any], rt: Path, source: dict[str, Any]) -> dict[str, Any]:
    """A bench config made runnable here: own runtime/state dirs, the feed pointed at the
    simulator or replaced by the memory source, and the control plugin started last."""
    raw = json.loads(json.dumps(raw))  # deep copy
    kernel = raw.setdefault("kernel", {})
    kernel |= {"runtime_dir": str(rt), "state_dir": str(rt / "state"), "log_level": "warning",
               "status_interval_s": 0.0}  # fmt: skip
    plugins = raw.setdefault("plugins", {})
    lanes = list(raw.get("lanes", {})) or ["main"]
    feed = plugins.get("binance_feed")
    if feed is not None:
        if source["kind"] == "sim":
            feed["ws_url"] = f"ws://127.0.0.1:{source['port']}"
            feed["rest_url"] = f"http://127.0.0.1:{source['port']}"
        else:
            del plugins["binance_feed"]
            plugins["bench_source"] = {
                "lane": feed.get("lane", lanes[0]), "files": source["files"],
                "speed": source.get("speed", 0.0), "loops": source.get("loops", 1),
                "duration_s": source.get("duration_s", 0.0), "go": source.get("go", ""),
            }  # fmt: skip
    plugins["bench_control"] = {"lane": lanes[0], "after": sorted(plugins)}
    return raw


def _sim(files: list[Path], port: int, speed: float, work: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tickbus.tools.exchange_sim", "--port", str(port),
            "--speed", str(speed), "--ping-interval", "0"]  # fmt: skip
    for f in files:
        args += ["--data", str(f)]
    log = open(work / "sim.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    return proc


def _wait_quiet(children: list[Child], timeout: float) -> None:
    """Until no child made progress for QUIET_S (the pipeline has handled its input)."""
    end = time.monotonic() + timeout
    last: dict[str, Any] = {}
    since = time.monotonic()
    while True:
        now = time.monotonic()
        st = {c.name: c.status().get("progress") for c in children}
        for c in children:
            c.check_alive()
        if st != last:
            last, since = st, now
        elif now - since >= QUIET_S:
            return
        if now > end:
            raise BenchError(f"the pipeline did not settle within {timeout:.0f} s")
        time.sleep(0.05)


class Bench:
    """Runs the passes and keeps their results."""

    def __init__(self, files: list[Path], speed: float, work: Path, duration_s: float,
                 quick: bool = False) -> None:  # fmt: skip
        self.quick = quick
        """Stages measured in the latency pass (one pass less; its tick-to-trade then
        includes the probes)."""
        self.files = files
        self.speed = speed
        self.work = work
        self.duration_s = duration_s  # of the capture

    def _spec(self, role: str, raw: dict[str, Any], config: str, kind: str,
              source: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        return {"role": role, "raw": raw, "config_path": str(CONFIGS / config),
                "stages": kind == "stages" or (self.quick and kind == "latency"),
                "touch": kind == "throughput", "t2t": True,
                "t2d": True, "source": source}  # fmt: skip

    def run_pass(self, scenario: str, kind: str, tag: str) -> dict[str, Any]:
        work = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=self.work))
        port = free_port()
        go = str(work / "go")
        if kind == "throughput":
            source: dict[str, Any] = {"kind": "memory", "files": [str(f) for f in self.files],
                                      "go": go}  # fmt: skip
        else:
            source = {"kind": "sim", "port": port, "timeout_s": READY_TIMEOUT_S}
        children: list[Child] = []
        rts: list[Path] = []
        sim: subprocess.Popen[bytes] | None = None
        try:
            if scenario == "baseline":
                raw = time_scaled(_load_toml("bench.toml"), self.speed)
                spec = self._spec("baseline", raw, "bench.toml", kind, source)
                children.append(Child("baseline", spec, work))
            else:
                for _ in CONFIG_FILES[scenario]:  # ipc paths must stay short: /tmp
                    rts.append(Path(tempfile.mkdtemp(prefix="tb", dir="/tmp")))
                host_rt = rts[0]
                for i, name in enumerate(CONFIG_FILES[scenario]):
                    rt = rts[i]
                    raw = _prepare(time_scaled(_load_toml(name), self.speed), rt, source)
                    if i:  # the strategy process joins the host's bus
                        raw["bus"] |= {k: f"ipc://{host_rt}/{v}" for k, v in (
                            ("join_pub", "bus-pub"), ("join_sub", "bus-sub"),
                            ("join_tap", "tap-pub"))}  # fmt: skip
                    child = Child(Path(name).stem, self._spec("engine", raw, name, kind, source),
                                  work)  # fmt: skip
                    children.append(child)
                    child.wait_ready(READY_TIMEOUT_S)  # the host listens before others join
            for c in children:
                c.wait_ready(READY_TIMEOUT_S)
            time.sleep(0.3)  # subscriptions of a joining process reach the host's router
            if kind == "throughput":
                Path(go).touch()
            else:
                sim = _sim(self.files, port, self.speed, work)
            if scenario == "baseline":
                c = children[0]
                budget = self.duration_s / self.speed + 120.0
                try:
                    c.proc.wait(budget)
                except subprocess.TimeoutExpired:
                    raise c.failed(f"did not finish within {budget:.0f} s") from None
                results = [c.result()]
            else:
                if sim is not None:
                    self._wait_sim(sim, children, work)
                else:
                    self._wait_source(children[0])
                _wait_quiet(children, 120.0)
                results = [c.stop() for c in reversed(children)][::-1]
        finally:
            for c in children:
                c.kill()
            if sim is not None and sim.poll() is None:
                sim.terminate()
                sim.wait(10)
            for rt in rts:
                shutil.rmtree(rt, ignore_errors=True)
        merged = _merge(results)
        merged["scenario"], merged["pass"] = scenario, kind
        return merged

    def _wait_sim(self, sim: subprocess.Popen[bytes], children: list[Child], work: Path) -> None:
        budget = self.duration_s / self.speed + 120.0
        end = time.monotonic() + budget
        while sim.poll() is None:
            for c in children:
                c.check_alive()
            if time.monotonic() > end:
                raise BenchError(f"the exchange simulator did not finish within {budget:.0f} s")
            time.sleep(0.1)
        if sim.returncode:
            log = (work / "sim.log").read_text(errors="replace").strip().splitlines()[-10:]
            raise BenchError("exchange-sim failed:" + "".join(f"\n    {t}" for t in log))

    @staticmethod
    def _wait_source(host: Child, timeout: float = 600.0) -> None:
        end = time.monotonic() + timeout
        while not host.status().get("source_done"):
            host.check_alive()
            if time.monotonic() > end:
                raise host.failed(f"the memory source did not finish within {timeout:.0f} s")
            time.sleep(0.05)


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of a scenario's processes as one (histograms added, counts summed)."""
    out: dict[str, Any] = {"t2t": [], "timer_orders": [], "stages": {}, "topics": {},
                           "peak_rss_kb": {}, "last_ns": 0}  # fmt: skip
    t2d = Histogram()
    for i, r in enumerate(results):
        out["t2t"] += r.get("t2t", [])
        out["timer_orders"] += r.get("timer_orders", [])
        t2d.merge(Histogram.from_dict(r["t2d"]))
        for k, h in r.get("stages", {}).items():
            prev = out["stages"].get(k)
            hist = Histogram.from_dict(h)
            if prev is not None:
                hist.merge(Histogram.from_dict(prev))
            out["stages"][k] = hist.to_dict()
        for t, c in r.get("topics", {}).items():
            out["topics"][t] = out["topics"].get(t, 0) + c
        out["peak_rss_kb"]["strategy" if i else "engine"] = r.get("peak_rss_kb", 0)
        out["last_ns"] = max(out["last_ns"], r.get("last_ns", 0))
        for key in ("broker", "broker_ring", "strategy", "feed", "source", "counts"):
            if key in r:
                out[key] = r[key]
        if r.get("rss_series"):
            out["rss_series"] = r["rss_series"]
    out["t2d"] = t2d.to_dict()
    return out


# ============================================================================ figures


def _t2t_hists(r: dict[str, Any]) -> tuple[Histogram, Histogram]:
    """(tick-caused orders, timer orders) of one pass."""
    timer = set(r["timer_orders"])
    tick, late = Histogram(), Histogram()
    for cid, ns in r["t2t"]:
        (late if cid in timer else tick).record(ns)
    return tick, late


def _frames(r: dict[str, Any]) -> int:
    if "counts" in r:
        return int(r["counts"]["frames"])
    if "feed" in r:
        return int(r["feed"].get("frames", 0))
    return 0


def _throughput(r: dict[str, Any]) -> float:
    src = r["source"]
    end = max(src["t_last"], r.get("last_ns", 0))
    return src["sent"] / max(1e-9, (end - src["t_first"]) / 1e9)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def _per_run_median(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of each figure of per-run summaries; ``n`` summed."""
    out: dict[str, Any] = {"n": sum(s.get("n", 0) for s in summaries)}
    for key in ("mean", "p50", "p90", "p99", "p99_9", "max"):
        vals = [s[key] for s in summaries if key in s]
        if vals:
            out[key] = round(_median(vals), 3)
    return out


def summarize(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one scenario over its runs (see the module docstring)."""
    by = {k: [p for p in passes if p["pass"] == k] for k in PASSES}
    lat = by["latency"]
    out: dict[str, Any] = {"runs": len(lat)}
    t2t_runs, late_runs, t2d_runs, ring_runs = [], [], [], []
    pooled = {"t2t": Histogram(), "timer": Histogram(), "t2d": Histogram()}
    for r in lat:
        tick, late = _t2t_hists(r)
        t2d = Histogram.from_dict(r["t2d"])
        t2t_runs.append(tick.summary())
        late_runs.append(late.summary())
        t2d_runs.append(t2d.summary())
        pooled["t2t"].merge(tick)
        pooled["timer"].merge(late)
        pooled["t2d"].merge(t2d)
        if "broker_ring" in r:
            ring_runs.append(Histogram.from_dict(r["broker_ring"]).summary())
    out["tick_to_trade_us"] = _per_run_median(t2t_runs) | {"pooled": pooled["t2t"].summary()}
    out["tick_to_trade_timer_orders_us"] = _per_run_median(late_runs)
    out["tick_to_decision_us"] = _per_run_median(t2d_runs) | {
        "pooled": pooled["t2d"].summary()}
    if ring_runs:
        out["broker_ring_us"] = _per_run_median(ring_runs)
    stages: dict[str, list[dict[str, Any]]] = {}
    instrumented = []
    for r in by["stages"] or [r for r in lat if r["stages"]]:  # quick: the latency pass
        for k, h in r["stages"].items():
            stages.setdefault(k, []).append(Histogram.from_dict(h).summary())
        instrumented.append(_t2t_hists(r)[0].summary())
    out["stages_us"] = {k: _per_run_median(v) for k, v in sorted(stages.items())}
    out["tick_to_trade_instrumented_us"] = _per_run_median(instrumented)
    tp = [_throughput(r) for r in by["throughput"]]
    out["throughput_fps"] = round(_median(tp)) if tp else 0
    b2b_t2t = [_t2t_hists(r)[0].summary() for r in by["throughput"]]
    b2b_t2d = [Histogram.from_dict(r["t2d"]).summary() for r in by["throughput"]]
    out["tick_to_trade_back_to_back_us"] = _per_run_median(b2b_t2t)
    out["tick_to_decision_back_to_back_us"] = _per_run_median(b2b_t2d)
    out["per_run"] = [
        {"tick_to_trade_p50_us": a.get("p50"), "tick_to_trade_p99_us": a.get("p99"),
         "tick_to_decision_p50_us": b.get("p50"), "throughput_fps": round(c)}
        for a, b, c in zip(t2t_runs, t2d_runs, tp, strict=False)
    ]  # fmt: skip
    rss: dict[str, list[float]] = {}
    for r in lat:
        for proc, kb in r["peak_rss_kb"].items():
            rss.setdefault(proc, []).append(kb / 1024)
    out["peak_rss_mb"] = {p: round(_median(v), 1) for p, v in rss.items()}
    out["peak_rss_mb"]["total"] = round(sum(out["peak_rss_mb"].values()), 1)
    out["counts"] = _counts(lat[-1]) if lat else {}
    return out


def _counts(r: dict[str, Any]) -> dict[str, int]:
    """What one latency pass saw and did."""
    topics = r.get("topics", {})

    def topic(prefix: str) -> int:
        return sum(c for t, c in topics.items() if t.startswith(prefix))

    if "counts" in r:  # the baseline
        c = r["counts"]
        s = r["strategy"]
        return {"frames": c["frames"], "book_events": Histogram.from_dict(r["t2d"]).count,
                "orders": s["orders"], "accepted": c["accepted"], "rejected": c["rejected"],
                "fills": s["fills"], "cancels": s["cancels"], "timer_orders": 0}  # fmt: skip
    return {
        "frames": topic("md.depth.") + topic("md.trade.") + topic("md.ticker."),
        "book_events": topic("md.book."), "feature_vectors": topic("feat."),
        "orders": topic("ord.request"), "accepted": topic("ord.accepted"),
        "rejected": topic("ord.rejected"), "fills": topic("exec.fill"),
        "cancels": topic("ord.cancel"), "timer_orders": len(r["timer_orders"]),
    }  # fmt: skip


def ratios(sc: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """tickbus / baseline for every figure both have."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, float | None] = {}
    for fig in ("tick_to_trade_us", "tick_to_decision_us", "tick_to_trade_back_to_back_us",
                "tick_to_decision_back_to_back_us"):
        for p in ("p50", "p90", "p99", "p99_9", "max"):
            out[f"{fig[:-3]}_{p}"] = ratio(sc[fig].get(p), base[fig].get(p))
    for k, v in sc["stages_us"].items():
        if k in base["stages_us"]:
            out[f"stage {k} p50"] = ratio(v.get("p50"), base["stages_us"][k].get("p50"))
    out["throughput"] = ratio(sc["throughput_fps"], base["throughput_fps"])
    out["peak_rss"] = ratio(sc["peak_rss_mb"]["total"], base["peak_rss_mb"]["total"])
    return out


# ============================================================================ soak


def soak(files: list[Path], seconds: float, speed: float, work: Path) -> dict[str, Any]:
    """The hot lane fed the capture in a loop for ``seconds``; RSS every second."""
    rt = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    go = str(work / "soak-go")
    source = {"kind": "memory", "files": [str(f) for f in files], "speed": speed, "loops": 0,
              "duration_s": seconds, "go": go}  # fmt: skip
    raw = _prepare(time_scaled(_load_toml("bench.toml"), speed or 1.0), rt, source)
    spec = {"role": "engine", "raw": raw, "config_path": str(CONFIGS / "bench.toml"),
            "stages": False, "touch": False, "t2t": False, "t2d": False, "source": source,
            "rss_every_s": 1.0}  # fmt: skip
    child = Child("soak", spec, work)
    try:
        child.wait_ready(READY_TIMEOUT_S)
        Path(go).touch()
        Bench._wait_source(child, seconds + 600.0)
        r = child.stop()
    finally:
        child.kill()
        shutil.rmtree(rt, ignore_errors=True)
    series = r["rss_series"]
    first_loop_end = next((t for t, _, loops in series if loops >= 1), None)
    start = next(((t, kb) for t, kb, loops in series if loops >= 1), series[0][:2])
    end = series[-1][:2]
    growth = (end[1] - start[1]) / start[1] * 100 if start[1] else 0.0
    minutes = max(1e-9, (end[0] - start[0]) / 60)
    return {
        "seconds": seconds, "speed": speed, "loops": r["source"]["loops"],
        "frames": r["source"]["sent"], "orders": r["topics"].get("ord.request", 0),
        "book_events": sum(c for t, c in r["topics"].items() if t.startswith("md.book.")),
        "fills": r["topics"].get("exec.fill", 0),
        "first_loop_end_s": first_loop_end, "rss_start_mb": round(start[1] / 1024, 1),
        "rss_end_mb": round(end[1] / 1024, 1),
        "rss_max_mb": round(max(kb for _, kb, _ in series) / 1024, 1),
        "rss_growth_pct": round(growth, 2),
        "rss_slope_mb_per_min": round((end[1] - start[1]) / 1024 / minutes, 3),
        "target_growth_pct": 5.0, "series": series,
    }  # fmt: skip


# ============================================================================ output


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def print_report(report: dict[str, Any], out: Any = sys.stdout) -> None:
    """The table: one column per scenario, ratios to the baseline in parentheses."""
    m = report["machine"]
    cap = report["capture"]
    print(f"tickbus bench - {report['started']} ({'quick' if report['quick'] else 'full'})",
          file=out)  # fmt: skip
    print(f"machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}; " + ", ".join(
        f"{k} {v}" for k, v in m["versions"].items()) + f", libzmq {m['libzmq']}", file=out)
    print(f"load average: {m['load_avg_start']} at start, {m['load_avg_end']} at the end "
          "(the machine is shared: figures drift; ratios less)", file=out)  # fmt: skip
    print(f"capture: {', '.join(cap['files'])}: {cap['frames']:,} frames over "
          f"{cap['seconds']:.0f} s, served at {report['settings']['speed']:g}x real time; "
          f"{report['settings']['runs']} run(s), medians of the per-run figures", file=out)
    if report["settings"].get("stages_in_latency_pass"):
        print("quick: stages measured in the latency pass, so its tick-to-trade includes the "
              "probes' cost", file=out)  # fmt: skip
    scs = [s for s in SCENARIOS if s in report["scenarios"]]
    res = report["scenarios"]
    rows: list[tuple[str, list[str]]] = []

    def cell(sc: str, value: Any, ratio_key: str | None, digits: int = 1) -> str:
        text = _fmt(value, digits)
        r = res[sc].get("ratio_to_baseline", {}).get(ratio_key) if ratio_key else None
        return f"{text} ({r:.2f}x)" if r is not None else text

    for fig, label in (("tick_to_trade_us", "tick-to-trade us"),
                       ("tick_to_decision_us", "tick-to-decision us")):  # fmt: skip
        for p in ("p50", "p90", "p99", "p99_9", "max"):
            rows.append((f"{label} {p.replace('_', '.')}",
                         [cell(s, res[s][fig].get(p), f"{fig[:-3]}_{p}") for s in scs]))
        rows.append((f"{label} samples", [_fmt(res[s][fig].get("n")) for s in scs]))
    for fig, label in (("tick_to_trade_back_to_back_us", "back to back: tick-to-trade"),
                       ("tick_to_decision_back_to_back_us", "back to back: tick-to-decision")):
        for p in ("p50", "p99"):
            rows.append((f"{label} {p} us",
                         [cell(s, res[s][fig].get(p), f"{fig[:-3]}_{p}") for s in scs]))
    rows.append(("timer orders (apart) p50 us",
                 [_fmt(res[s]["tick_to_trade_timer_orders_us"].get("p50")) for s in scs]))
    rows.append(("orders / accepted / fills", [
        "{orders} / {accepted} / {fills}".format(**res[s]["counts"]) for s in scs]))
    keys = [k for k in ORDER_PATH if any(k in res[s]["stages_us"] for s in scs)]
    for k in keys:
        rows.append((f"stage {k} p50 (p99) us", [
            (cell(s, res[s]["stages_us"][k].get("p50"), f"stage {k} p50", 2)
             + f" ({_fmt(res[s]['stages_us'][k].get('p99'), 1)})")
            if k in res[s]["stages_us"] else "-" for s in scs]))  # fmt: skip
    rows.append(("t2t with every handler probed p50",
                 [_fmt(res[s]["tick_to_trade_instrumented_us"].get("p50")) for s in scs]))
    rows.append(("throughput frames/s", [cell(s, res[s]["throughput_fps"], "throughput", 0)
                                         for s in scs]))  # fmt: skip
    rows.append(("peak RSS MB (all processes)",
                 [cell(s, res[s]["peak_rss_mb"]["total"], "peak_rss") for s in scs]))
    head = ["", *[TITLES[s] for s in scs]]
    widths = [max(len(head[0]), *(len(r[0]) for r in rows))]
    for i in range(len(scs)):
        widths.append(max(len(head[i + 1]), *(len(r[1][i]) for r in rows)))
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), file=out)
    for label, cells in rows:
        print("  ".join([label.ljust(widths[0]), *(c.rjust(w) for c, w in
                                                   zip(cells, widths[1:], strict=True))]),
              file=out)  # fmt: skip
    t = report["targets"]
    print(f"targets (hot lane, reported, not asserted): tick-to-trade p50 <= {t['p50_us']:g} "
          f"us: {t['p50_met']}; p99 <= {t['p99_us']:g} us: {t['p99_met']}", file=out)
    print(f"probe cost per call (ns): {report['probe_cost_ns']}", file=out)


# ============================================================================ CLI


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``p``."""
    p.add_argument("--quick", action="store_true",
                   help=f"CI mode: the first {QUICK_SECONDS:g} s of the bundled sample, 1 run")
    p.add_argument("--capture", action="append", metavar="FILE",
                   help="capture file(s) (default: the 11-min BTCUSDT capture in ../shared/data "
                        "when present, else the bundled sample)")  # fmt: skip
    p.add_argument("--speed", type=float, default=None,
                   help="live-path pace, x real time (default 25; quick 40)")
    p.add_argument("--runs", type=int, default=None, help="repeat everything (default 3; quick 1)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (baseline always runs)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--soak", type=float, metavar="SECONDS", default=0.0,
                   help="instead: memory over a long run, the capture in a loop")
    p.add_argument("--soak-speed", type=float, default=0.0,
                   help="soak pace, x real time (default 0: as fast as possible)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, specs)")
    p.add_argument("--child", help=argparse.SUPPRESS)


def _capture(args: argparse.Namespace, work: Path) -> list[Path]:
    from tickbus.plugins.binance.capture import SAMPLE

    from .compare import default_capture

    if args.capture:
        files = [Path(f).resolve() for f in args.capture]
        for f in files:
            if not f.is_file():
                raise UsageError(f"--capture {f}: no such file")
        return files
    if args.quick:
        from tickbus.tools.trim_capture import trim

        dst = work / "quick.gz"
        trim(SAMPLE, dst, QUICK_SECONDS)
        return [dst]
    return default_capture()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or, with ``--child``, one of its processes); exit status."""
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        return engine_child(spec) if spec["role"] == "engine" else baseline_child(spec)
    try:
        return _run(args)
    except BenchError as err:
        print(f"tickbus bench: {err}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


def _run(args: argparse.Namespace) -> int:
    from tickbus.plugins.binance.capture import read_frames

    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SCENARIOS]
    if bad:
        raise UsageError(f"--scenarios: unknown {', '.join(bad)} (known: {', '.join(SCENARIOS)})")
    scenarios = ["baseline", *[s for s in SCENARIOS[1:] if s in wanted]]
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    speed = args.speed if args.speed is not None else (40.0 if args.quick else 25.0)
    if runs < 1 or speed <= 0 or args.soak < 0 or args.soak_speed < 0:
        raise UsageError("--runs and --speed must be > 0, --soak and --soak-speed >= 0")
    machine = describe_machine()
    work = Path(tempfile.mkdtemp(prefix="tickbus-bench-"))
    try:
        files = _capture(args, work)
        frames = list(read_frames(*files))
        seconds = (frames[-1][0] - frames[0][0]) / 1e9 if frames else 0.0
        report: dict[str, Any] = {
            "tool": "tickbus bench", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "quick": bool(args.quick), "command": " ".join(sys.argv), "machine": machine,
            "capture": {"files": [f.name for f in files], "frames": len(frames),
                        "seconds": round(seconds, 1)},
            "settings": {"speed": speed, "runs": runs, "scenarios": scenarios},
            "definitions": _definitions(),
        }  # fmt: skip
        del frames
        if args.soak:
            print(f"soak: {args.soak:g} s, capture in a loop at "
                  f"{args.soak_speed or 'full'}{'x' if args.soak_speed else ''} speed ...",
                  file=sys.stderr)  # fmt: skip
            report["soak"] = soak(files, args.soak, args.soak_speed, work)
            machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
            _print_soak(report)
        else:
            report["probe_cost_ns"] = probe_costs()
            bench = Bench(files, speed, work, seconds, quick=args.quick)
            kinds = ("latency", "throughput") if args.quick else PASSES
            report["settings"]["stages_in_latency_pass"] = bool(args.quick)
            passes: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
            for run_i in range(runs):
                order = scenarios[run_i % len(scenarios):] + scenarios[:run_i % len(scenarios)]
                for kind in kinds:
                    for sc in order:
                        print(f"run {run_i + 1}/{runs}: {kind} pass, {TITLES[sc]} ...",
                              file=sys.stderr)  # fmt: skip
                        passes[sc].append(bench.run_pass(sc, kind, f"{run_i}-{sc}-{kind}"))
            machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
            res = {sc: summarize(p) for sc, p in passes.items()}
            for sc in scenarios[1:]:
                res[sc]["ratio_to_baseline"] = ratios(res[sc], res["baseline"])
            for sc in scenarios:
                res[sc]["description"] = TITLES[sc]
            report["scenarios"] = res
            hot = res.get("hot", {}).get("tick_to_trade_us", {})
            report["targets"] = {
                "p50_us": TARGETS_US["p50"], "p99_us": TARGETS_US["p99"],
                "p50_met": hot.get("p50", math.inf) <= TARGETS_US["p50"] if hot else None,
                "p99_met": hot.get("p99", math.inf) <= TARGETS_US["p99"] if hot else None,
            }  # fmt: skip
            print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _print_soak(report: dict[str, Any]) -> None:
    s = report["soak"]
    print(f"soak: {s['seconds']:g} s, {s['loops']} loops of {', '.join(report['capture']['files'])}"
          f" ({s['frames']:,} frames, {s['orders']:,} orders, {s['fills']:,} fills)")
    print(f"RSS {s['rss_start_mb']} MB after the first loop ({s['first_loop_end_s']} s) -> "
          f"{s['rss_end_mb']} MB at the end (max {s['rss_max_mb']} MB): "
          f"{s['rss_growth_pct']:+.2f} % ({s['rss_slope_mb_per_min']:+.3f} MB/min); "
          f"target <= {s['target_growth_pct']:g} % over 10 minutes")
    print(f"load average: {report['machine']['load_avg_start']} at start, "
          f"{report['machine']['load_avg_end']} at the end")


def _definitions() -> dict[str, str]:
    return {
        "tick_to_trade": "paper broker's receipt of OrderAccepted (monotonic clock at its "
        "ord.accepted handler's entry) - the order's ts_recv_ns (monotonic clock when the "
        "feed's ws.recv() returned "
        "the frame that caused it); orders accepted by risk; timer-sent orders apart",
        "tick_to_decision": "strategy evaluate() returned - the feature vector's ts_recv_ns, "
        "every book event the strategy evaluates",
        "stages": "each handler's own time per message (wall - wrapped handlers it called), "
        "in a separate fully probed pass",
        "throughput": "capture frames published from memory (feed parser, stamped on "
        "publication, live clock) / (last message handled anywhere - first frame published)",
        "peak_rss": "peak resident set (VmHWM) of each process of the live-path pass, summed",
        "ratio_to_baseline": "tickbus figure / baseline figure",
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m tickbus.tools.bench.pipeline``."""
    parser = argparse.ArgumentParser(prog="tickbus bench", description=__doc__.splitlines()[0])
    build_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
