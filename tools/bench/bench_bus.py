"""Bus benchmark: throughput, one-hop latency, tap overhead, process start/stop.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_bus [--quick] [--runs R] [--json FILE]

Everything goes through the real kernel: ``Kernel`` + lanes + router started in this
process with the bench's own plugins (defined below, passed as ``extra_plugins``), a second
process joining the bus for the cross-process figures (this module with ``--role
subscriber``), the real sniffer for the tap, and the real ``python -m tickbus.kernel.cli run`` for
start-to-READY and SIGTERM-to-exit.

What is measured
----------------
* Throughput (msg/s): N pre-built ``schemas.Trade`` messages (7 fields, topic
  ``md.trade.BTCUSDT``; building them is not timed) published by a producer plugin in
  chunks of 1000 (``await asyncio.sleep(0)`` between chunks), counted by a trivial handler;
  time from the first publish to the N-th delivery. Median, min and max over R runs, after
  one untimed warm-up burst. Both ends read CLOCK_MONOTONIC (``perf_counter_ns``), which is
  the same clock in every process of the host.
* One-hop latency (us): the publisher stamps ``perf_counter_ns()`` into ``ts_recv_ns`` as it
  builds the message just before ``publish``; the handler takes now - stamp. So the in-lane
  figure includes building one Trade (see the "direct call" floor row). Cross-lane and
  cross-process messages are paced (``time.sleep(pace)`` after each publish, which also
  releases the GIL) so the hop is measured, not a queue. Samples are pooled over the runs.
* Tap overhead: in-lane throughput and latency of one kernel with nobody on the tap, with
  ``tickbus sniff --json`` (subscribed to everything, output to /dev/null) in a second
  process, and with a bare zmq SUB there instead (receives, decodes nothing); the order of
  the three is rotated from run to run to cancel drift.
* Process: ``python -m tickbus.kernel.cli run CONFIG`` with a real ``NOTIFY_SOCKET``; READY=1
  arrival - spawn, and exit - SIGTERM (after 0.3 s of running), for a 2-lane config without
  plugins and for the test plugins (found through their in-tree egg-info on PYTHONPATH).
  Interpreter start, ``import kernel.app`` and the CLI's own imports for scale.

Every child process is killed on exit, Ctrl-C or SIGTERM; children also die with the bench
if it is SIGKILLed (parent watch, sniffer ``--timeout``, PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.kernel.lane import Lane
from tickbus.schemas import SCALE, Trade

ROOT = Path(__file__).resolve().parents[2]  # the repository: test plugins, subprocess cwd

TOPIC = "md.trade.BTCUSDT"  # throughput messages
LAT_TOPIC = "md.trade.ETHUSDT"  # latency messages (their own handler)
PING_TOPIC = "bench.ping"  # cross-process: host -> subscriber
ACK_TOPIC = "bench.ack"  # cross-process: subscriber -> host
CHUNK = 1000
PX = 67_000 * SCALE
QTY = SCALE // 100
clock = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes

TARGETS = {"in-lane": 1_000_000, "cross-lane (inproc)": 150_000, "cross-process (ipc)": 400_000}
READY_TARGET_MS = 2000.0
EXIT_TARGET_MS = 1000.0

_children: list[subprocess.Popen[Any]] = []


# ============================================================================ plugins


class SourceComp:
    """Producer side, driven by the bench on the lane thread (``lane.call``)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.publish = ctx.publish
        self.t0 = 0
        self.done = threading.Event()

    def burst(self, topic: str, msgs: list[Any]) -> None:
        """Publish ``msgs`` in chunks, from a task on the lane; ``t0`` = first publish."""
        self.done.clear()
        self.ctx.spawn(self._burst(topic, msgs), name="bench-burst")

    async def _burst(self, topic: str, msgs: list[Any]) -> None:
        publish = self.publish
        n = len(msgs)
        self.t0 = clock()
        for i in range(0, n, CHUNK):
            for m in msgs[i : i + CHUNK]:
                publish(topic, m)
            await asyncio.sleep(0)
        self.done.set()

    def stamped(self, topic: str, n: int, pace_s: float) -> None:
        """Publish ``n`` Trades stamped with ``perf_counter_ns()`` just before publish;
        with ``pace_s`` > 0 sleep that long after each (releasing the GIL)."""
        self.done.clear()
        self.ctx.spawn(self._stamped(topic, n, pace_s), name="bench-stamped")

    async def _stamped(self, topic: str, n: int, pace_s: float) -> None:
        publish = self.publish
        sleep = time.sleep
        per_yield = 50 if pace_s else CHUNK
        self.t0 = clock()
        for i in range(n):
            publish(topic, Trade("ETHUSDT", i, PX, QTY, False, 0, clock()))
            if pace_s:
                sleep(pace_s)
            if i % per_yield == 0:
                await asyncio.sleep(0)
        self.done.set()


class Source:
    """Bench producer plugin: produces nothing by itself; the bench drives its component."""

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> SourceComp:
        return SourceComp(ctx)


class Counter:
    """Trivial handlers (closures: the cheapest callables): ``on_msg`` counts, ``on_lat``
    records now - ``ts_recv_ns``. Arm them on the lane thread (``lane.call``)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.lat_done = threading.Event()
        self.t_last = 0
        self.samples: list[int] = []
        n = 0
        target = -1
        lat_target = -1
        done, lat_done, samples, me = self.done, self.lat_done, self.samples, self
        append = samples.append

        def on_msg(msg: Any) -> None:
            nonlocal n
            n += 1
            if n == target:
                me.t_last = clock()
                done.set()

        def on_lat(msg: Any) -> None:
            append(clock() - msg.ts_recv_ns)
            if len(samples) == lat_target:
                lat_done.set()

        def arm(count: int) -> None:
            nonlocal n, target
            n = 0
            target = count
            done.clear()

        def arm_latency(count: int) -> None:
            nonlocal lat_target
            samples.clear()
            lat_target = count
            lat_done.clear()

        self.on_msg = on_msg
        self.on_lat = on_lat
        self.arm = arm
        self.arm_latency = arm_latency


class Sink:
    """Bench consumer plugin: counts ``md.trade.BTC*``, samples latency of ``md.trade.ETH*``."""

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> Counter:
        c = Counter()
        ctx.subscribe("md.trade.BTC", c.on_msg)
        ctx.subscribe("md.trade.ETH", c.on_lat)
        return c


class AckSink:
    """Host side of the cross-process bench: collects the subscriber's acks."""

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> dict[str, Any]:
        state: dict[str, Any] = {"acks": {}, "cond": threading.Condition()}

        def on_ack(msg: Any) -> None:
            with state["cond"]:
                state["acks"][msg.trade_id] = msg
                state["cond"].notify_all()

        ctx.subscribe(ACK_TOPIC, on_ack)
        return state


class RemoteSink:
    """The subscriber process's plugin: counts batches of ``n`` messages, records first/last
    receive times, samples latency, answers pings; writes it all to ``out`` at shutdown."""

    def __init__(self, n: int, out: str) -> None:
        self.n = n
        self.out = out
        self.batches: list[tuple[int, int, int]] = []
        self.lat: list[int] = []

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> None:
        publish = ctx.publish
        batch = self.n
        batches = self.batches
        lat_append = self.lat.append
        lat = self.lat
        count = 0
        first = 0

        def on_trade(msg: Any) -> None:
            nonlocal count, first
            if count == 0:
                first = clock()
            count += 1
            if count == batch:
                last = clock()
                batches.append((first, last, count))
                count = 0
                publish(ACK_TOPIC, Trade("ACK", len(batches), 0, batch, False, first, last))

        def on_lat(msg: Any) -> None:
            lat_append(clock() - msg.ts_recv_ns)

        def on_ping(msg: Any) -> None:
            publish(ACK_TOPIC, Trade("ACK", msg.trade_id, 0, len(lat), False, 0, clock()))

        ctx.subscribe("md.trade.BTC", on_trade)
        ctx.subscribe("md.trade.ETH", on_lat)
        ctx.subscribe(PING_TOPIC, on_ping)

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        parent = os.getppid()

        def watch() -> None:  # never outlive the bench, even if it is SIGKILLed
            while True:
                time.sleep(0.5)
                if os.getppid() != parent:
                    ctx.request_shutdown("the bench process is gone")
                    return

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    @hookimpl
    def tickbus_shutdown(self, ctx: PluginContext) -> None:
        with open(self.out, "w") as f:
            json.dump({"batches": self.batches, "lat": self.lat, "pid": os.getpid()}, f)


# ============================================================================ helpers


def pct(sorted_xs: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_xs:
        return float("nan")
    return float(sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))])


def lat_summary(samples_ns: list[int]) -> dict[str, Any]:
    s = sorted(samples_ns)
    out: dict[str, Any] = {"samples": len(s)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)):
        out[name] = pct(s, q) / 1000
    out["max"] = (s[-1] / 1000) if s else float("nan")
    return out


def thr_summary(rates: list[float], target: int | None = None) -> dict[str, Any]:
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "runs": [round(r) for r in rates],
        "target": target,
    }


def make_trades(n: int) -> list[Trade]:
    now = time.time_ns()
    return [Trade("BTCUSDT", i, PX + i, QTY, i % 2 == 0, now, now) for i in range(n)]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    if sys.platform == "linux" and threading.active_count() == 1:
        # Die with the bench (even on SIGKILL): PR_SET_PDEATHSIG in the child before exec.
        # Only with no other thread, which could hold a lock across the fork.
        import ctypes

        prctl, sig = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)
        kw.setdefault("preexec_fn", lambda: prctl(1, sig))
    proc = subprocess.Popen(cmd, cwd=str(ROOT), **kw)
    _children.append(proc)
    return proc


def reap(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Stop one child (signal, then SIGKILL) and forget it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def kill_children() -> None:
    for proc in list(_children):
        reap(proc, signal.SIGTERM, 2.0)


@contextlib.contextmanager
def running_kernel(rt: Path, raw: dict[str, Any], plugins: dict[str, object]) -> Iterator[Kernel]:
    raw = {**raw, "kernel": {"runtime_dir": str(rt), **raw.get("kernel", {})}}
    k = Kernel(parse_config(raw, "bench.toml"), extra_plugins=plugins)
    k.start()
    try:
        yield k
    finally:
        k.stop()


def wait_event(ev: threading.Event, timeout: float, what: str) -> None:
    if not ev.wait(timeout):
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def interest(lane: Lane) -> dict[bytes, int]:
    """The lane's view of who wants what (read on the lane thread)."""
    return lane.call(lambda: dict(lane._interest))


def wait_interest(
    lane: Lane, cond: Callable[[dict[bytes, int]], bool], what: str, tap: bool = False
) -> None:
    end = time.monotonic() + 15
    while not cond(lane.call(lambda: dict(lane._tap_interest)) if tap else interest(lane)):
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def note(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# ============================================================================ in-process


def burst_once(src_lane: Lane, src: SourceComp, sink_lane: Lane, sink: Counter, msgs: list[Any]):
    """One throughput run: msg/s from the first publish to the last delivery."""
    sink_lane.call(sink.arm, len(msgs))
    src_lane.call(src.burst, TOPIC, msgs)
    wait_event(sink.done, 120, "the subscriber to receive every message")
    wait_event(src.done, 30, "the producer to finish")
    return len(msgs) / ((sink.t_last - src.t0) / 1e9)


def latency_once(
    src_lane: Lane, src: SourceComp, sink_lane: Lane, sink: Counter, n: int, pace_s: float
) -> tuple[list[int], float]:
    """One latency run: n stamped messages; returns the samples (ns) and the achieved rate."""
    sink_lane.call(sink.arm_latency, n)
    src_lane.call(src.stamped, LAT_TOPIC, n, pace_s)
    wait_event(sink.lat_done, 60 + n * (pace_s * 3 + 1e-4), "latency samples")
    wait_event(src.done, 30, "the producer to finish")
    rate = n / ((clock() - src.t0) / 1e9)
    return list(sink.samples), rate


def direct_floor(n: int) -> list[int]:
    """The timing floor: stamp + build a Trade + call the handler directly (no bus)."""
    c = Counter()
    c.arm_latency(n)
    h = c.on_lat
    for i in range(n):
        h(Trade("ETHUSDT", i, PX, QTY, False, 0, clock()))
    return list(c.samples)


def bench_in_lane(rt: Path, msgs: list[Any], runs: int, lat_n: int) -> dict[str, Any]:
    plugins = {"bench_src": Source(), "bench_sink": Sink()}
    raw = {"lanes": {"main": {}}, "plugins": {"bench_src": {}, "bench_sink": {}}}
    with running_kernel(rt, raw, plugins) as k:
        lane = k.lanes["main"]
        src, sink = k.contexts["bench_src"].component, k.contexts["bench_sink"].component
        burst_once(lane, src, lane, sink, msgs[: len(msgs) // 10])  # warm-up
        rates = []
        lats: list[int] = []
        for _ in range(runs):
            rates.append(burst_once(lane, src, lane, sink, msgs))
            lats += latency_once(lane, src, lane, sink, lat_n, 0.0)[0]
        sent = lane.stats.sent
    return {"rates": rates, "lat": lats, "sent": sent}


def bench_cross_lane(rt: Path, msgs: list[Any], runs: int, lat_n: int, pace: float):
    plugins = {"bench_src": Source(), "bench_sink": Sink()}
    raw = {
        "lanes": {"hot": {}, "cold": {}},
        "plugins": {"bench_src": {"lane": "hot"}, "bench_sink": {"lane": "cold"}},
    }
    with running_kernel(rt, raw, plugins) as k:
        hot, cold = k.lanes["hot"], k.lanes["cold"]
        src, sink = k.contexts["bench_src"].component, k.contexts["bench_sink"].component
        burst_once(hot, src, cold, sink, msgs[: len(msgs) // 10])
        rates, lats, paced = [], [], []
        for _ in range(runs):
            rates.append(burst_once(hot, src, cold, sink, msgs))
            samples, rate = latency_once(hot, src, cold, sink, lat_n, pace)
            lats += samples
            paced.append(rate)
    return {"rates": rates, "lat": lats, "paced_rate": statistics.median(paced)}


BARE_SUB = """
import os, sys, zmq
parent = os.getppid()
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 100_000)
sock.connect(sys.argv[1])
sock.subscribe(b"")
recv = sock.recv
while os.getppid() == parent:  # never outlive the bench
    if sock.poll(500):
        for _ in range(100_000):
            try:
                recv(zmq.NOBLOCK)
            except zmq.Again:
                break
"""

TAP_VARIANTS = {
    "untapped": "nobody on the tap",
    "sniff": 'tickbus sniff --json, "" (2nd proc)',
    "bare": 'bare zmq SUB, "" (2nd proc)',
}


def start_tapper(rt: Path, variant: str) -> subprocess.Popen[Any]:
    tap = f"ipc://{rt}/tap"
    if variant == "sniff":
        # --timeout: an orphaned sniffer ends once the tap is silent (heartbeats every 1 s
        # keep it alive while the bench's kernel runs)
        cmd = [sys.executable, "-m", "tickbus.kernel.cli", "sniff", "--endpoint", tap, "--json"]
        cmd += ["--timeout", "5"]
    else:
        cmd = [sys.executable, "-c", BARE_SUB, tap]
    return spawn(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench_tap(rt: Path, msgs: list[Any], runs: int, lat_n: int) -> dict[str, Any]:
    """In-lane throughput and latency of one kernel, untapped and tapped, the order of the
    variants rotated from run to run."""
    plugins = {"bench_src": Source(), "bench_sink": Sink()}
    raw = {"lanes": {"hot": {}}, "plugins": {"bench_src": {}, "bench_sink": {}}}
    res: dict[str, dict[str, list[Any]]] = {
        v: {"rates": [], "lat": [], "sent": []} for v in TAP_VARIANTS
    }
    variants = list(TAP_VARIANTS)
    with running_kernel(rt, raw, plugins) as k:
        lane = k.lanes["hot"]
        src, sink = k.contexts["bench_src"].component, k.contexts["bench_sink"].component
        burst_once(lane, src, lane, sink, msgs[: len(msgs) // 10])
        for r in range(runs):
            for v in variants[r % 3 :] + variants[: r % 3]:
                tapper = None
                if v != "untapped":
                    tapper = start_tapper(rt, v)
                    wait_interest(
                        lane, lambda i: i.get(b"", 0) > 0, "the tap's subscription", tap=True
                    )
                try:
                    sent0 = lane.stats.sent + lane.stats.tapped
                    res[v]["rates"].append(burst_once(lane, src, lane, sink, msgs))
                    res[v]["lat"] += latency_once(lane, src, lane, sink, lat_n, 0.0)[0]
                    res[v]["sent"].append(lane.stats.sent + lane.stats.tapped - sent0)
                finally:
                    if tapper is not None:
                        reap(tapper)
                if tapper is not None:
                    wait_interest(
                        lane, lambda i: b"" not in i, "the tap's unsubscription", tap=True
                    )
    return res


# ============================================================================ cross-process


def subscriber_main(args: argparse.Namespace) -> int:
    """``--role subscriber``: a kernel joining the bench's bus, with RemoteSink."""
    rt = Path(args.rt)
    raw = {
        "kernel": {"name": "benchsub", "runtime_dir": str(rt / "r")},
        "bus": {"join_pub": f"ipc://{rt}/bus-pub", "join_sub": f"ipc://{rt}/bus-sub"},
        "plugins": {"bench_remote": {}},
    }
    plugin = RemoteSink(args.n, args.out)
    return Kernel(parse_config(raw, "bench-sub.toml"), extra_plugins={"bench_remote": plugin}).run()


def bench_cross_process(
    rt: Path, msgs: list[Any], runs: int, lat_n: int, pace: float
) -> dict[str, Any]:
    out = rt / "sub.json"
    plugins = {"bench_src": Source(), "bench_ack": AckSink()}
    raw = {"lanes": {"hot": {}}, "plugins": {"bench_src": {}, "bench_ack": {}}}
    n = len(msgs)
    with running_kernel(rt, raw, plugins) as k:
        lane = k.lanes["hot"]
        src, acks = k.contexts["bench_src"].component, k.contexts["bench_ack"].component
        cmd = [sys.executable, "-m", "tickbus.tools.bench.bench_bus", "--role", "subscriber"]
        cmd += ["--rt", str(rt), "--n", str(n), "--out", str(out)]
        sub = spawn(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # slow joiner: wait until the subscriptions reached the producer lane, then
            # until a ping makes the round trip (the ack path is subscribed too)
            want = (b"md.trade.BTC", b"md.trade.ETH", PING_TOPIC.encode())
            wait_interest(lane, lambda i: all(i.get(p, 0) > 0 for p in want), "the subscriber")
            seq = 0
            end = time.monotonic() + 15
            while True:
                seq -= 1
                pong = ping(lane, src, acks, seq, 0.1)
                if pong is not None:
                    break
                if time.monotonic() > end or sub.poll() is not None:
                    raise RuntimeError("the subscriber process did not answer")
            rates = []
            for r in range(1, runs + 2):  # run 1 is the warm-up
                with acks["cond"]:
                    acks["acks"].pop(r, None)
                lane.call(src.burst, TOPIC, msgs)
                ack = wait_ack(acks, r, 120)
                if r > 1:
                    rates.append(n / ((ack.ts_recv_ns - src.t0) / 1e9))
            # latency, paced; a final ping (same path, in order) says every sample is in
            lane.call(src.stamped, LAT_TOPIC, lat_n, pace)
            wait_event(src.done, 60 + lat_n * pace * 3, "the paced producer")
            paced_rate = lat_n / ((clock() - src.t0) / 1e9)
            seq -= 1
            if ping(lane, src, acks, seq, 30) is None:
                raise RuntimeError("the subscriber did not answer after the latency run")
        finally:
            reap(sub, signal.SIGTERM, 10)
        if sub.returncode != 0:
            err = sub.stderr.read().decode() if sub.stderr else ""
            raise RuntimeError(f"subscriber exited with {sub.returncode}: {err[-2000:]}")
    got = json.loads(out.read_text())
    return {"rates": rates, "lat": got["lat"], "paced_rate": paced_rate, "batches": got["batches"]}


def ping(lane: Lane, src: SourceComp, acks: dict[str, Any], seq: int, timeout: float):
    lane.call(src.publish, PING_TOPIC, Trade("PING", seq, 0, 0, False, 0, clock()))
    try:
        return wait_ack(acks, seq, timeout)
    except TimeoutError:
        return None


def wait_ack(acks: dict[str, Any], key: int, timeout: float) -> Any:
    with acks["cond"]:
        if not acks["cond"].wait_for(lambda: key in acks["acks"], timeout):
            raise TimeoutError(f"no ack {key} within {timeout:g} s")
        return acks["acks"][key]


# ============================================================================ processes


def time_cmd(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL)
        if i:  # the first run warms the page cache and __pycache__
            out.append((time.perf_counter() - t0) * 1000)
    return out


def ready_and_exit(rt: Path, config: str, env: dict[str, str], runs: int) -> dict[str, Any]:
    """``tickbus run CONFIG`` with a real NOTIFY_SOCKET: READY and exit times."""
    cfg = rt / "run.toml"
    cfg.write_text(config)
    addr = str(rt / "notify.sock")
    Path(addr).unlink(missing_ok=True)
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(addr)
    ready, stop = [], []
    try:
        for i in range(runs + 1):
            log = open(rt / "run.log", "wb")  # noqa: SIM115 - closed below
            t0 = time.perf_counter()
            proc = spawn(
                [sys.executable, "-m", "tickbus.kernel.cli", "run", str(cfg)],
                env={**env, "NOTIFY_SOCKET": addr},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                sd.settimeout(30)
                while True:
                    try:
                        got = sd.recv(4096).decode()
                    except TimeoutError:
                        raise RuntimeError("no READY=1 within 30 s") from None
                    if "READY=1" in got:
                        break
                t_ready = time.perf_counter()
                time.sleep(0.3)  # let it run (the test plugins produce meanwhile)
                t1 = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(30)
                t_exit = time.perf_counter()
            finally:
                reap(proc, signal.SIGKILL)
                log.close()
            if rc != 0:
                text = (rt / "run.log").read_text(errors="replace")
                raise RuntimeError(f"tickbus run exited with {rc}: {text[-2000:]}")
            sd.settimeout(0)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sd.recv(4096)  # drop STOPPING=1 etc.
            if i:  # the first run warms the caches
                ready.append((t_ready - t0) * 1000)
                stop.append((t_exit - t1) * 1000)
    finally:
        sd.close()
        Path(addr).unlink(missing_ok=True)
    return {"ready_ms": ready, "exit_ms": stop}


NO_PLUGIN_CONFIG = """
[kernel]
runtime_dir = "{rt}/s"
[lanes.hot]
[lanes.cold]
"""

TESTPLUGIN_CONFIG = """
[kernel]
runtime_dir = "{rt}/s"
[lanes.hot]
[lanes.cold]
[plugins.tb_producer]
lane = "hot"
count = 0
chunk = 200
period_ms = 1
[plugins.tb_recorder]
lane = "cold"
prefix = "md.trade"
"""


def bench_process(rt: Path, runs: int) -> dict[str, Any]:
    env = child_env()
    res: dict[str, Any] = {
        "python -c pass": time_cmd([sys.executable, "-c", "pass"], runs, env),
        "python -c 'import kernel.app'": time_cmd(
            [sys.executable, "-c", "import kernel.app"], runs, env
        ),
        # what `tickbus run` imports before it starts: the CLI builds every sub-command's
        # parser, importing each tool module (and whatever those import)
        "python -c 'import kernel.cli; build_parser()'": time_cmd(
            [sys.executable, "-c", "import kernel.cli as c; c.build_parser()"], runs, env
        ),
    }
    res["2 lanes, no plugins"] = ready_and_exit(rt, NO_PLUGIN_CONFIG.format(rt=rt), env, runs)
    site = ROOT / "tests" / "plugin_pkg" / "src"
    if (site / "tickbus_testplugins.egg-info" / "entry_points.txt").exists():
        # the test plugins are not installed, but their in-tree egg-info declares the entry
        # points: with their src on PYTHONPATH the real discovery finds them
        env2 = {**env, "PYTHONPATH": os.pathsep.join([str(site), env["PYTHONPATH"]])}
        res["tb_producer(hot)->tb_recorder(cold)"] = ready_and_exit(
            rt, TESTPLUGIN_CONFIG.format(rt=rt), env2, runs
        )
    return res


# ============================================================================ report


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "libzmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
        "msgspec": msgspec.__version__,
        "loadavg_start": os.getloadavg(),
    }


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "tickbus bus benchmark",
        f"command : {report['command']}",
        f"machine : nproc {m['nproc']} (affinity {m['affinity']}), {m['python']},"
        f" libzmq {m['libzmq']}, pyzmq {m['pyzmq']}, msgspec {m['msgspec']}",
        f"          {m['platform']}; loadavg start {m['loadavg_start'][0]:.2f}"
        f" end {m['loadavg_end'][0]:.2f}",
        f"N       : {report['n']:,} messages per run = schemas.Trade (7 fields, 53 bytes"
        f" msgpack), pre-built, topic {TOPIC}",
        f"R       : {report['runs']} runs (+1 warm-up); latency samples pooled over the runs;"
        f" wall time {report['wall_s']:.0f} s",
        "",
        f"{'1. THROUGHPUT (msg/s)':<31}{'median':>11} {'min':>11} {'max':>11} {'target':>11}",
    ]
    for name, t in report["throughput"].items():
        tgt = t["target"]
        mark = "" if tgt is None else ("  ok" if t["median"] >= tgt else "  BELOW")
        lines.append(
            f"   {name:<28}{fmt_rate(t['median']):>11} {fmt_rate(t['min']):>11}"
            f" {fmt_rate(t['max']):>11} {fmt_rate(tgt) if tgt else '-':>11}{mark}"
        )
    lines += [
        "",
        "2. ONE-HOP LATENCY (us)                 samples     p50     p90     p99   p99.9      max",
    ]
    for name, s in report["latency_us"].items():
        lines.append(
            f"   {name:<36}{s['samples']:>8,}{s['p50']:>8.1f}{s['p90']:>8.1f}{s['p99']:>8.1f}"
            f"{s['p99.9']:>8.1f}{s['max']:>9.1f}"
        )
    for name, v in report.get("latency_notes", {}).items():
        lines.append(f"   ({name}: {v})")
    tap = report["tap"]
    lines += [
        "",
        f"3. TAP OVERHEAD (in-lane, hot lane){'msg/s':>16}{'':>22}{'vs':>7}{'lat (us)':>13}"
        f"{'encoded':>10}",
        f"{'':<39}{'median':>11}{'min':>11}{'max':>11}{'untap':>7}{'p50':>7}{'p99':>6}"
        f"{'per run':>10}",
    ]
    for t in tap.values():
        lines.append(
            f"   {t['label']:<36}{fmt_rate(t['median']):>11}{fmt_rate(t['min']):>11}"
            f"{fmt_rate(t['max']):>11}{t['ratio_to_untapped']:>7.2f}{t['lat']['p50']:>7.2f}"
            f"{t['lat']['p99']:>6.2f}{t['encoded_per_run']:>10,}"
        )
    lines.append(
        "   (vs untap = median of the per-run ratios; order of the variants rotated run to run;\n"
        "    encoded per run = messages the hot lane encoded and sent: N + latency samples)"
    )
    lines += [
        "",
        f"4. PROCESS (ms): tickbus run CONFIG{'median':>40}{'max':>8}{'target':>8}",
    ]
    for name, p in report["process_ms"].items():
        if "ready" in p:
            for metric, key, target in (
                ("start -> READY=1", "ready", READY_TARGET_MS),
                ("SIGTERM -> exit", "exit", EXIT_TARGET_MS),
            ):
                lines.append(
                    f"   {name:<38}{metric:<19}{p[key]['median']:>7.0f}{p[key]['max']:>8.0f}"
                    f"{target:>8.0f}"
                )
                name = ""
        else:
            lines.append(f"   {name:<57}{p['median']:>7.0f}{p['max']:>8.0f}{'-':>8}")
    return "\n".join(lines)


def med_max(xs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(xs), "max": max(xs), "runs": [round(x, 1) for x in xs]}


def main_bench(args: argparse.Namespace) -> int:
    n = args.n or (20_000 if args.quick else 200_000)
    runs = args.runs
    lat_n = args.lat_samples or (5_000 if args.quick else 20_000)
    pace = args.pace_us / 1e6
    report: dict[str, Any] = {
        "command": " ".join(["python -m tickbus.tools.bench.bench_bus", *sys.argv[1:]]),
        "machine": machine(),
        "n": n,
        "runs": runs,
        "message": "schemas.Trade",
        "lat_samples_per_run": lat_n,
        "pace_us": args.pace_us,
    }
    t_start = time.monotonic()
    msgs = make_trades(n)
    rt = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    try:
        thr: dict[str, Any] = {}
        lat: dict[str, Any] = {}
        notes: dict[str, str] = {}
        note(f"runtime dir {rt}; in-lane ...")
        floor = direct_floor(lat_n)
        il = bench_in_lane(rt, msgs, runs, lat_n)
        thr["in-lane"] = thr_summary(il["rates"], TARGETS["in-lane"])
        if il["sent"]:
            notes["warning"] = f"in-lane: {il['sent']} messages were encoded with nobody tapping"
        note("cross-lane ...")
        cl = bench_cross_lane(rt, msgs, runs, lat_n, pace)
        thr["cross-lane (inproc)"] = thr_summary(cl["rates"], TARGETS["cross-lane (inproc)"])
        note("cross-process ...")
        cp = bench_cross_process(rt, msgs, runs, lat_n, pace)
        thr["cross-process (ipc)"] = thr_summary(cp["rates"], TARGETS["cross-process (ipc)"])
        lat["direct call, no bus (timing floor)"] = lat_summary(floor)
        lat["in-lane"] = lat_summary(il["lat"])
        lat["cross-lane (inproc), paced"] = lat_summary(cl["lat"])
        lat["cross-process (ipc), paced, 1 run"] = lat_summary(cp["lat"])
        notes["pacing"] = (
            f"sleep {args.pace_us:g} us after each publish: achieved {cl['paced_rate']:,.0f}"
            f" msg/s cross-lane, {cp['paced_rate']:,.0f} msg/s cross-process"
        )
        report["latency_notes"] = notes
        report["throughput"] = thr
        report["latency_us"] = lat
        note("tap overhead ...")
        tp = bench_tap(rt, msgs, runs, lat_n)
        tap: dict[str, Any] = {}
        base = tp["untapped"]["rates"]
        for key, label in TAP_VARIANTS.items():
            t = tp[key]
            pairs = [a / b for a, b in zip(t["rates"], base, strict=True)]
            tap[key] = {
                "label": label,
                **thr_summary(t["rates"]),
                "lat": lat_summary(t["lat"]),
                "encoded_per_run": int(statistics.median(t["sent"])),
                "ratio_to_untapped": statistics.median(pairs),
                "pair_ratios": pairs,
            }
        report["tap"] = tap
        msgs.clear()  # a smaller process forks faster for the children below
        note("process start/stop ...")
        proc = bench_process(rt, runs)
        pm: dict[str, Any] = {}
        for name, v in proc.items():
            if isinstance(v, dict):
                pm[name] = {"ready": med_max(v["ready_ms"]), "exit": med_max(v["exit_ms"])}
            else:
                pm[name] = med_max(v)
        report["process_ms"] = pm
    finally:
        kill_children()
        shutil.rmtree(rt, ignore_errors=True)
    report["wall_s"] = time.monotonic() - t_start
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(render(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_bus", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="N = 20,000 and 5,000 latency samples")
    p.add_argument("--runs", type=int, default=5, metavar="R", help="runs per figure (5)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--n", type=int, default=0, help="messages per throughput run (200,000)")
    p.add_argument(
        "--lat-samples", type=int, default=0, metavar="S", help="latency samples per run (20,000)"
    )
    p.add_argument(
        "--pace-us", type=float, default=50.0, help="sleep after each paced publish (50)"
    )
    role = ["bench", "subscriber"]
    p.add_argument("--role", choices=role, default="bench", help=argparse.SUPPRESS)
    p.add_argument("--rt", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "subscriber":
        return subscriber_main(args)
    if args.runs < 1:
        raise SystemExit("--runs must be >= 1")

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds: kernels stop, children are killed

    signal.signal(signal.SIGTERM, on_term)
    try:
        return main_bench(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        kill_children()


if __name__ == "__main__":
    raise SystemExit(main())
