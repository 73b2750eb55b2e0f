"""Backtests are honest: the live path over the exchange simulator gives the same orders and
fills as the backtest of the same capture.

``configs/sim-trade.toml`` (binance_feed -> book -> features -> imbalance -> risk -> paper
broker in one lane, persistence in another) runs on the first 30 s of the bundled real
BTCUSDT capture twice:

* **backtest**, configured as ``tickbus backtest`` configures it
  (:func:`tools.backtest.backtest_config`): replay_feed in the feed's place, the replay
  clock, as fast as possible;
* **live**: ``tickbus exchange-sim --speed 1 --wait``, a process of its own, serves the
  capture on 127.0.0.1 at its recorded pace from the moment the feed connects; the real
  binance_feed reads it over WebSocket and REST, on the live clock.

A trace plugin, first in the hot lane, keeps every message compared, in the order the lane
delivered it. Compared exactly, message by message and in order, up to the end of the data:

* the market: every ``md.book`` (levels, update ids, venue times) and ``md.trade``;
* the decisions: every feature vector and signal;
* the trading: every ``ord.request``, ``ord.accepted``, ``ord.rejected``, ``ord.cancel``,
  ``exec.report``, ``exec.fill``, and the position after each fill.

Every field, except what differs by design:

* the kernel clock's stamps (``KERNEL_STAMPS``: ``ts_created_ns``, ``ts_accepted_ns``,
  ``ts_rejected_ns``, ``ts_update_ns``, ``ts_fill_ns``, a signal's ``timestamp_ns``): wall
  time live, recorded time in the backtest;
* ``ts_recv_ns`` as a number (live the receive time, in the backtest the recorded one): it is
  compared as the market message received then (book update id, trade id; 0 for what a timer
  did), so every order must come from the same tick;
* the run stamp in client order ids (``<strategy>-<stamp>-<n>``, from the kernel clock at the
  first order), also where an id is quoted ("replaced by ..."): strategy and sequence number
  are compared;
* position marks (``pos.`` without a new fill): the broker marks on the kernel clock (at most
  every ``mark_interval_ms``), so which books mark differs;
* what follows the end of the data: the backtest stops there (its stop cancels what works),
  the live feed sees the simulator close the connection (an invalid book) and its timers go
  on firing on the wall clock.

Venue times (``ts_exchange_ns`` of books, trades and fills: which market event filled an
order) are compared.

One difference is inherent to live timing: a strategy timer (holding-period exit, stale
entry) fires live on the wall clock, in the backtest at its recorded time; when a market
message reaches the live lane later than its recorded time by more than the timer's distance
to it, the two swap places - latency, not a backtest error. (The closest timers here fire 7 ms
before a market message in the recording; live, on a loaded 2-core machine, that gap came
down to 0.9 ms in one of four runs.) The trace proves such a swap: every other action happens
inside the handling of the market message that caused it, so if the runs agree up to the
first trading message that differs and that message comes after another market message in
one run than in the other, a timer fired on the other side of a market message. A live book
that synced from a later snapshot (the feed asked for it after the recorded snapshot's time:
a slow start) is latency too. Such a live run is repeated (at most ``ATTEMPTS`` runs); any
other difference fails at once, and one that does not go away fails too.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from conftest import ROOT, tickbus_cmd, tickbus_env
from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.schemas import (
    BookTop,
    FeatureVector,
    FeedStatus,
    Fill,
    Msg,
    OrderRequest,
    Position,
    Shutdown,
    Signal,
    Trade,
)
from tickbus.tools.backtest import LOG_NAME, Recorder, backtest_config
from tickbus.tools.exchange_sim import ExchangeSim
from tickbus.tools.trim_capture import trim

CONFIG = ROOT / "configs" / "sim-trade.toml"
SECONDS = 30.0
ATTEMPTS = 3
"""Live runs at most: a run whose trading a latency race changed is repeated."""
TOPICS = ("md.book.", "md.trade.", "md.status.", "feat.", "sig.", "ord.", "exec.", "pos.",
          "sys.shutdown")  # fmt: skip
KERNEL_STAMPS = {
    "OrderRequest": ("ts_created_ns",),
    "OrderAccepted": ("ts_accepted_ns",),
    "OrderRejected": ("ts_rejected_ns",),
    "OrderCancel": ("ts_created_ns",),
    "OrderUpdate": ("ts_update_ns",),
    "Fill": ("ts_fill_ns",),
    "Position": ("ts_update_ns",),
    "Signal": ("timestamp_ns",),
}
"""Fields stamped from the kernel clock: wall time live, recorded time in a backtest."""
Trace = list[Msg]


class Tracer:
    """Test plugin, first in the hot lane: every message on ``TOPICS`` in delivery order."""

    def __init__(self) -> None:
        self.seen: Trace = []

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> Trace:
        for prefix in TOPICS:
            ctx.subscribe(prefix, self.seen.append)
        return self.seen


# ------------------------------------------------------------------------------ the runs


def traced(raw: dict[str, Any], rt: Path, work: Path) -> dict[str, Any]:
    """``raw`` (a copy) with its runtime and state dirs here and the trace plugin first."""
    raw = json.loads(json.dumps(raw))
    raw.setdefault("kernel", {}).update(runtime_dir=str(rt), state_dir=str(work))
    raw["plugins"] = {"trace": {"lane": raw["plugins"]["book"]["lane"]}, **raw["plugins"]}
    return raw


def run_backtest(raw: dict[str, Any], capture: Path, work: Path, rt: Path) -> Trace:
    """The backtest of ``raw``, configured as ``tickbus backtest`` configures it."""
    raw = traced(raw, rt, work)
    feed = raw["plugins"].pop("binance_feed")
    raw["plugins"]["replay_feed"] = {"lane": feed["lane"]}
    cfg, _ = backtest_config(parse_config(raw, str(CONFIG)), [str(capture)], work)
    plugins = dict(cfg.plugins)  # the trace before backtest_config's own recorder
    cfg = msgspec.structs.replace(cfg, plugins={"trace": plugins.pop("trace"), **plugins})
    tracer = Tracer()
    k = Kernel(cfg, extra_plugins={LOG_NAME: Recorder(work), "trace": tracer})
    assert k.run(handle_signals=False) == 0, k.failures
    assert k.contexts["replay_feed"].component.done
    return tracer.seen


def start_sim(capture: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    """``tickbus exchange-sim --speed 1 --wait`` on a free port: the process and the port."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            tickbus_cmd("exchange-sim", "--data", str(capture), "--port", "0", "--speed", "1",
                        "--wait"),
            stdout=subprocess.PIPE, stderr=err, text=True, env=tickbus_env(), cwd=ROOT,
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "exchange-sim: listening on ws://127.0.0.1:PORT ..."
    found = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
    if found is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"exchange-sim did not start: {line!r} {log.read_text()}")
    return proc, int(found.group(1))


def run_live(raw: dict[str, Any], capture: Path, work: Path, rt: Path) -> Trace:
    """The live path on ``raw``: the simulator at the recorded pace, the live clock."""
    raw = traced(raw, rt, work)
    sim, port = start_sim(capture, work / "exchange-sim.log")
    tracer = Tracer()
    try:
        url = f"127.0.0.1:{port}"
        raw["plugins"]["binance_feed"] |= {"ws_url": f"ws://{url}", "rest_url": f"http://{url}"}
        k = Kernel(parse_config(raw, str(CONFIG)), extra_plugins={"trace": tracer})
        k.start()
        try:
            assert sim.wait(SECONDS + 60) == 0, "exchange-sim failed"
            end = time.monotonic() + 10
            while not any(isinstance(m, FeedStatus) and not m.connected for m in tracer.seen):
                assert time.monotonic() < end, "the feed never saw the end of the data"
                time.sleep(0.05)
        finally:
            k.stop()
        assert not k.failures, k.failures
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    return tracer.seen


# ------------------------------------------------------------------------------ comparing


@dataclass
class View:
    """One run as comparable values, up to the end of the data."""

    market: list[Any] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    trading: list[Any] = field(default_factory=list)
    placed: list[Any] = field(default_factory=list)
    """For each trading entry, the market message it came after."""
    messages: list[Msg] = field(default_factory=list)
    """The trading messages themselves."""


def until_end(trace: Trace) -> list[Msg]:
    """The messages up to the end of the data: the live feed's disconnect after it, or the
    backtest's stop (``sys.shutdown``)."""
    msgs: list[Msg] = []
    data = False
    for m in trace:
        if isinstance(m, Shutdown) or (isinstance(m, FeedStatus) and not m.connected and data):
            break
        data = data or isinstance(m, BookTop | Trade)
        msgs.append(m)
    return msgs


def view(trace: Trace) -> View:
    """The comparable values of a run (see the module docstring for what is left out)."""
    msgs = until_end(trace)
    causes: dict[int, tuple[str, int]] = {}
    stamps: dict[str, str] = {}
    for m in msgs:
        if isinstance(m, BookTop):
            causes.setdefault(m.ts_recv_ns, ("book", m.last_update_id))
        elif isinstance(m, Trade):
            causes.setdefault(m.ts_recv_ns, ("trade", m.trade_id))
        elif isinstance(m, OrderRequest):
            sid = m.strategy_id
            stamps.setdefault(sid, m.client_order_id[len(sid) + 1 :].split("-")[0])
    runs = [(f"{sid}-{stamp}-", f"{sid}-<run>-") for sid, stamp in stamps.items()]

    def value(msg: Msg) -> tuple[Any, ...]:
        name = type(msg).__name__
        out: list[Any] = [name]
        for f in msgspec.structs.fields(type(msg)):
            if f.name in KERNEL_STAMPS.get(name, ()):
                continue
            v = getattr(msg, f.name)
            if isinstance(v, Msg):
                v = value(v)
            elif f.name == "ts_recv_ns":
                if isinstance(msg, BookTop | Trade):
                    continue  # the market message itself: its content is its identity
                v = causes.get(v, ("no market message received at", v)) if v else 0
            elif isinstance(v, str):
                for old, new in runs:
                    v = v.replace(old, new)
            out.append((f.name, v))
        return tuple(out)

    out = View()
    last: Any = ("start",)
    fills: dict[str, int] = {}
    for m in msgs:
        if isinstance(m, BookTop | Trade):
            out.market.append(value(m))
            last = out.market[-1][:3]
        elif isinstance(m, FeatureVector | Signal):
            out.decisions.append(value(m))
        elif isinstance(m, Position) and m.fills == fills.get(m.symbol, 0):
            continue  # a mark, on the kernel clock
        elif not isinstance(m, FeedStatus):  # connection events show as invalid books
            if isinstance(m, Position):
                fills[m.symbol] = m.fills
            out.trading.append(value(m))
            out.placed.append(last)
            out.messages.append(m)
    return out


def first_difference(a: list[Any], b: list[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))  # fmt: skip


def describe(kind: str, a: list[Any], b: list[Any], i: int) -> str:
    def at(x: list[Any]) -> str:
        text = repr(x[i]) if i < len(x) else "(none)"
        return text if len(text) < 600 else text[:600] + "..."

    return (f"{kind}: {len(a)} messages in the backtest, {len(b)} live; #{i} differs:\n"
            f"  backtest {at(a)}\n  live     {at(b)}")  # fmt: skip


def first_book(v: View) -> Any:
    """The update id of the first valid book: where the book synced from its snapshot."""
    return next((m[2] for m in v.market if m[0] == "BookTop" and m[3] == ("valid", True)), None)


def compare(bt: View, live: View) -> tuple[list[str], str]:
    """(real differences, the latency race that changed the run or "")."""
    synced = first_book(bt), first_book(live)
    if synced[0] != synced[1]:
        return [], (
            f"the live book synced at {synced[1]}, the backtest's at {synced[0]}: the"
            " feed asked for its snapshot after the recorded one's time (a slow start)"
        )
    problems = []
    for kind in ("market", "decisions"):
        a, b = getattr(bt, kind), getattr(live, kind)
        if a != b:
            problems.append(describe(kind, a, b, first_difference(a, b)))
    if bt.trading == live.trading:
        return problems, ""
    end = ("end of the data",)
    a = list(zip(bt.trading, bt.placed, strict=True))
    b = list(zip(live.trading, live.placed, strict=True))
    i = first_difference(a, b)
    placed = (a[i][1] if i < len(a) else end, b[i][1] if i < len(b) else end)
    if placed[0] == placed[1]:
        problems.append(describe("trading", bt.trading, live.trading, i))
        return problems, ""
    race = (f"trading #{i} after {placed[0]} in the backtest, after {placed[1]} live: a timer"
            f" fired on the other side of a market message\n"
            + describe("trading", bt.trading, live.trading, i))  # fmt: skip
    return problems, race


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SECONDS of the bundled capture (its REST snapshot included)."""
    path = tmp_path_factory.mktemp("capture") / "btcusdt_30s.gz"
    trim(SAMPLE, path, SECONDS)
    return path


@dataclass
class Compared:
    backtest: View
    live: View
    problems: list[str]
    races: list[str]
    """The live runs a latency race changed, before the one compared."""


@pytest.fixture(scope="module")
def compared(capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """The backtest, and live runs until one is not changed by a latency race."""
    raw = tomllib.loads(CONFIG.read_text())
    work = tmp_path_factory.mktemp("runs")

    def run(name: str, how: Any) -> View:
        (work / name).mkdir()
        with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:  # short ipc paths
            return view(how(raw, capture, work / name, Path(rt)))

    bt = run("backtest", run_backtest)
    races: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        live = run(f"live-{attempt}", run_live)
        problems, race = compare(bt, live)
        if problems or not race:
            return Compared(bt, live, problems, races)
        races.append(race)
    problems = [f"every one of {ATTEMPTS} live runs was changed by a latency race:", *races]
    return Compared(bt, live, problems, races)


# ------------------------------------------------------------------------------ the tests


def test_live_path_gives_the_backtests_orders_and_fills(compared: Compared) -> None:
    assert not compared.problems, "\n".join(compared.problems)
    bt = compared.backtest
    for race in compared.races:  # a repeated run says why, in the test's output
        print(f"live run repeated: {race}")
    # what was compared is a real run of the strategy: entries, timer exits, requotes,
    # maker and taker fills
    orders = [m for m in bt.messages if isinstance(m, OrderRequest)]
    fills = [m for m in bt.messages if isinstance(m, Fill)]
    assert len(bt.market) > 800 and len(bt.decisions) > 400
    assert len(orders) >= 15 and len(fills) >= 30
    assert {f.liquidity for f in fills} == {"maker", "taker"}
    assert any(o.ts_recv_ns == 0 for o in orders), "no order from a timer"
    assert any(o.replaces for o in orders), "no requote"


def dearer(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """A trading message's value with its price 1e-8 higher."""
    name, *fields = value
    return (name, *((k, v + 1) if k == "px" else (k, v) for k, v in fields))


def test_the_comparison_fails_on_a_dropped_order_or_another_price(compared: Compared) -> None:
    """The comparison is not trivially true: small changes to the live run are caught, and
    told apart from a latency race."""
    bt, live = compared.backtest, compared.live
    assert compare(bt, bt) == ([], "")

    def changed(i: int, new: Any = None) -> View:
        v = View(live.market, live.decisions, list(live.trading), list(live.placed))
        if new is None:
            del v.trading[i], v.placed[i]
        else:
            v.trading[i] = new
        return v

    i = next(i for i, m in enumerate(live.messages) if isinstance(m, OrderRequest))
    problems, race = compare(bt, changed(i))  # the live path lost an order
    assert problems and not race
    j = next(i for i, m in enumerate(live.messages) if isinstance(m, Fill))
    problems, race = compare(bt, changed(j, dearer(live.trading[j])))  # 1e-8 more
    assert problems and f"#{j} differs" in problems[0] and not race
    # a timer's order priced on the next book: the timer fired one market message later
    # than in the backtest - latency, as its place in the market shows
    t = next(i for i, m in enumerate(live.messages)
             if isinstance(m, OrderRequest) and m.ts_recv_ns == 0)  # fmt: skip
    later = changed(t, dearer(live.trading[t]))
    market = [m[:3] for m in live.market]
    later.placed[t] = market[market.index(live.placed[t]) + 1]
    problems, race = compare(bt, later)
    assert not problems and f"trading #{t} after" in race
    # ...and is a real difference when it sits where it did in the backtest
    problems, race = compare(bt, changed(t, dearer(live.trading[t])))
    assert problems and not race
    # the market and the decisions are compared too
    assert live.market[0][0] == "Trade"
    v = View(live.market[1:], live.decisions, live.trading, live.placed)
    assert compare(bt, v)[0][0].startswith("market")
    v = View(live.market, live.decisions[:-1], live.trading, live.placed)
    assert compare(bt, v)[0][0].startswith("decisions")
    # a live book that synced later than the backtest's: its snapshot came late
    first = next(i for i, m in enumerate(live.market) if m[0] == "BookTop")
    v = View(live.market[:first] + live.market[first + 1 :], [], [], [])
    problems, race = compare(bt, v)
    assert not problems and race.startswith("the live book synced at")


def test_a_waiting_simulator_plays_the_capture_from_the_first_connection(
    capture: Path,
) -> None:
    """``--wait``: a client that connects late still gets the capture from its first frame
    at the recorded pace, and a snapshot asked before the recorded one's time is answered
    then, with the recorded body (the recording has no earlier book)."""
    records = list(read_capture(capture))
    first = next(r for r in records if r.kind == "ws")
    snap = next(r for r in records if r.kind == "rest")
    due_s = (snap.ts_ns - first.ts_ns) / 1e9  # 0.27 s into the capture

    def get(port: int) -> tuple[float, bytes]:
        url = f"http://127.0.0.1:{port}/api/v3/depth?symbol=BTCUSDT&limit=5000"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - localhost
            return time.monotonic(), r.read()

    async def go() -> None:
        sim = ExchangeSim([capture], speed=1.0, wait=True)
        port = await sim.start()
        try:
            await asyncio.sleep(0.5)  # nobody connected yet: the replay has not begun
            assert sim.replay_time_ns() == first.ts_ns
            async with connect(f"ws://127.0.0.1:{port}/stream?streams={first.stream}",
                               max_queue=None) as ws:  # fmt: skip
                connected = time.monotonic()
                asked = asyncio.create_task(asyncio.to_thread(get, port))
                assert await asyncio.wait_for(ws.recv(), 5) == first.payload.decode()
                answered, body = await asyncio.wait_for(asked, 10)
            assert body == snap.payload
            assert answered - connected >= due_s - 0.01
        finally:
            await sim.stop()

    asyncio.run(go())


def test_sim_trade_is_the_backtest_config_on_the_live_feed() -> None:
    """configs/sim-trade.toml is configs/backtest.toml with the live feed for the replay:
    ``tickbus backtest configs/backtest.toml --set price_mode=cross --set
    exit_price_mode=touch`` is the backtest of a ``tickbus run configs/sim-trade.toml``."""
    live = tomllib.loads(CONFIG.read_text())
    bt = tomllib.loads((ROOT / "configs" / "backtest.toml").read_text())
    assert live["lanes"] == bt["lanes"]
    feed = live["plugins"].pop("binance_feed")
    assert feed["lane"] == bt["plugins"].pop("replay_feed")["lane"]
    assert list(live["plugins"]) == list(bt["plugins"])  # the order matters in a lane
    assert live["plugins"]["persistence"].pop("restore") == "off"  # start flat, as a backtest
    bt["plugins"]["imbalance"] |= {"price_mode": "cross", "exit_price_mode": "touch"}
    assert live["plugins"] == bt["plugins"]
