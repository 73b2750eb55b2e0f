"""binance_feed under adversity, over real sockets: hours of outage, a bug of ours in the middle
of a connection, frames of symbols nobody configured, symbols the venue does not list, a server
that rejects the handshake for good - and its status line."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimThread, book_collector, tickbus_cmd, tickbus_env, write_config
from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.binance.feed import backoff_delay


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class trade_symbols:
    """Test plugin: the symbols of every md.trade message it sees."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> set[str]:
        seen: set[str] = set()
        ctx.subscribe("md.trade.", lambda m: seen.add(m.symbol))
        return seen


@pytest.fixture
def sims() -> Iterator[Callable[..., SimThread]]:
    made: list[SimThread] = []

    def make(data: list[Path] | None = None, **kw: Any) -> SimThread:
        sim = SimThread(data, **kw)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


def feed_kernel(start_kernel, ws: int, rest: int | None = None, **feed: Any) -> Kernel:
    """book + binance_feed (+ collectors) in one lane, against 127.0.0.1 ports."""
    return start_kernel(
        {
            "lanes": {"hot": {}},
            "plugins": {
                "book": {"depth": 5},
                "binance_feed": {
                    "symbols": ["BTCUSDT"],
                    "ws_url": f"ws://127.0.0.1:{ws}",
                    "rest_url": f"http://127.0.0.1:{rest or ws}",
                    "backoff_initial_s": 0.05,
                    "backoff_max_s": 0.2,
                    "rest_timeout_s": 1.0,
                    **feed,
                },
                "collector": {},
                "trades": {},
            },
        },
        extra={"collector": book_collector, "trades": trade_symbols},
    )


def wait_for(cond: Callable[[], bool], k: Kernel, what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert not k.failures, f"the run failed while waiting for {what}: {k.failures}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- backoff


def test_backoff_delay_caps_the_exponent() -> None:
    for attempt in (1023, 1024, 1025, 10**6):
        assert 15.0 <= backoff_delay(attempt, 0.5, 30.0) <= 30.0
    assert 0.25 <= backoff_delay(0, 0.5, 30.0) <= 0.5


class FakeSleep:
    """Stands in for asyncio.sleep in the feed's reconnect loop: time passes on paper."""

    def __init__(self) -> None:
        self.slept = 0.0
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.slept += delay
        await asyncio.sleep(0)  # the lane's loop still turns (heartbeats)


def test_a_seven_hour_outage_keeps_reconnecting(start_kernel) -> None:
    # nothing listens: every attempt is a real, refused connection; the backoff used to
    # overflow after ~1,024 of them (a 6-7 h outage) and end the feed for good
    dead = free_port()
    k = feed_kernel(start_kernel, dead, backoff_initial_s=0.01, backoff_max_s=30.0)
    feed = k.contexts["binance_feed"].component
    fake = FakeSleep()
    feed._sleep = fake
    wait_for(lambda: fake.slept > 7 * 3600, k, "7 h of reconnects", timeout=60)
    assert len(fake.delays) > 1100
    assert max(fake.delays) <= 30.0 and min(fake.delays[-100:]) >= 15.0
    assert k.contexts["binance_feed"].tasks >= 1 and feed.stats["connects"] == 0


# ---------------------------------------------------------------- unexpected errors


class BrokenParser:
    """The real parser, with one injected bug: parse() raises at its ``at``-th call."""

    def __init__(self, parser: Any, at: int) -> None:
        self.parser, self.at, self.calls = parser, at, 0

    def parse(self, frame: bytes, ts_ns: int) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise ZeroDivisionError("injected bug")
        return self.parser.parse(frame, ts_ns)

    def parse_snapshot(self, *args: Any) -> Any:
        return self.parser.parse_snapshot(*args)


def test_a_bug_in_a_connection_costs_a_reconnect_not_the_feed(start_kernel, sims, caplog) -> None:
    sim = sims(speed=5)
    k = feed_kernel(start_kernel, sim.port)
    feed = k.contexts["binance_feed"].component
    books = k.contexts["collector"].component
    feed.parser = BrokenParser(feed.parser, at=50)
    wait_for(lambda: feed.stats["errors"] == 1 and feed.stats["connects"] >= 2, k, "a reconnect")
    n = len(books)
    wait_for(lambda: any(b.valid for b in books[n:]), k, "a valid book after the reconnect")
    tracebacks = [r for r in caplog.records if r.exc_info and "unexpected error" in r.getMessage()]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[0] is ZeroDivisionError
    assert not k.failures


# ---------------------------------------------------------------- symbols


def test_frames_of_unconfigured_symbols_are_dropped(
    start_kernel, sims, tmp_path: Path, caplog
) -> None:
    # a server (or a man in the middle) sends trades of 500 symbols we never asked for: they
    # must not become topics, books or state; nor may 200 made-up event types grow the log
    lines = gzip.open(SAMPLE).read().splitlines(keepends=True)
    forged = 0
    for i, line in enumerate(lines):
        if b'"stream":"btcusdt@trade"' in line[:60] and forged < 700:
            if forged < 500:
                lines[i] = line.replace(b'"s":"BTCUSDT"', b'"s":"X%dUSDT"' % forged)
            else:
                lines[i] = line.replace(b'"e":"trade"', b'"e":"made_up_%d"' % forged)
            forged += 1
    path = tmp_path / "forged.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    sim = sims([path], speed=0)
    k = feed_kernel(start_kernel, sim.port)
    feed = k.contexts["binance_feed"].component
    wait_for(lambda: sim.finished and sum(feed.stats[n] for n in ("frames", "dropped",
             "bad_frames")) >= 18506, k, "the end of the capture")  # fmt: skip
    assert k.contexts["trades"].component == {"BTCUSDT"}
    assert feed.stats["dropped"] == 500 and feed.stats["bad_frames"] == 200
    logged = [r for r in caplog.records if "skipped a bad frame" in r.getMessage()]
    assert 2 <= len(logged) <= 64
    assert {sym for _, sym in feed._topics} == {"BTCUSDT"}
    assert "500 dropped" in k.lanes["hot"].call(k.manager.status, k.contexts["binance_feed"])


@pytest.mark.parametrize("bad", ["BTC-USDT", "BTCUSDT.X", "", "A" * 21, "BTC\x00"])
def test_symbols_are_validated_at_setup(start_kernel, bad: str) -> None:
    with pytest.raises(TickbusError, match=r"plugins\.binance_feed\.symbols\[1\]"):
        feed_kernel(start_kernel, free_port(), symbols=["BTCUSDT", bad])


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_symbols_the_venue_does_not_list_refuse_the_start(start_kernel, sims, market) -> None:
    sim = sims(speed=1)  # its exchangeInfo lists BTCUSDT only
    with pytest.raises(TickbusError, match=r"plugins\.binance_feed\.symbols") as err:
        feed_kernel(start_kernel, sim.port, market=market, symbols=["BTCUSDT", "ETHUSDT", "X1"])
    assert str(err.value).endswith("does not list ETHUSDT, X1")


def test_an_unreachable_exchange_info_warns_and_goes_on(start_kernel, sims, caplog) -> None:
    sim = sims(speed=1)
    caplog.set_level(logging.WARNING)
    k = feed_kernel(start_kernel, sim.port, rest=free_port())
    feed = k.contexts["binance_feed"].component
    wait_for(lambda: feed.stats["frames"] > 10, k, "frames")
    assert any("could not check the symbols" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- handshake rejected


def run_feed_process(tmp_path: Path, port: int, **feed: str) -> subprocess.CompletedProcess[str]:
    extra = "".join(f"{k} = {v}\n" for k, v in feed.items())
    cfg = write_config(
        tmp_path / "feed.toml",
        f'[kernel]\nruntime_dir = "{tmp_path}"\n[lanes.hot]\n[plugins.book]\nlane = "hot"\n'
        f'[plugins.binance_feed]\nlane = "hot"\nsymbols = ["BTCUSDT"]\n'
        f'ws_url = "ws://127.0.0.1:{port}"\nrest_url = "http://127.0.0.1:{port}"\n'
        f"backoff_initial_s = 0.05\n{extra}",
    )
    return subprocess.run(
        tickbus_cmd("run", str(cfg)),
        env=tickbus_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_rejected_handshake_stops_the_process_with_the_servers_reason(
    sims, tmp_path: Path
) -> None:
    # the simulator has btcusdt@depth@100ms only; "1000ms" asks for btcusdt@depth: an HTTP 400
    # whose body names the stream. Retrying it for ever as if transient helps nobody.
    sim = sims(speed=1)
    out = run_feed_process(tmp_path, sim.port, depth_interval='"1000ms"')
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    why = [line for line in out.stderr.splitlines() if "rejected the WebSocket handshake" in line]
    assert why and all("HTTP 400" in line and "btcusdt@depth" in line for line in why), out.stderr


# ---------------------------------------------------------------- status


def test_status_line_fragment(start_kernel, sims) -> None:
    sim = sims(speed=1)
    k = feed_kernel(start_kernel, sim.port)
    feed = k.contexts["binance_feed"].component
    ctx = k.contexts["binance_feed"]
    k.lanes["hot"].call(k.manager.status, ctx)  # starts the frames/s window
    wait_for(lambda: feed.stats["frames"] > 20, k, "frames")
    text = k.lanes["hot"].call(k.manager.status, ctx)
    assert text.startswith("connected, ") and " 0 bad, 0 dropped, 0 reconnects" in text, text
    rate = int(text.split(", ")[1].split()[0])
    assert rate > 0
