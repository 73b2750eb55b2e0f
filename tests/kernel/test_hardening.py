"""The kernel contains what plugins and the outside throw at it (issue 6): an unencodable
message, a SystemExit in a handler, a dying task, SIGTERM during a long start-up, a flood of
forged topics. Each case also checks the exit status tells the truth."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import zmq

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.kernel.lane import MAX_ROUTES
from tickbus.schemas import SCALE, Codec, Trade
from tickbus_testplugins import faulty


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_an_unencodable_message_is_counted_not_raised_into_the_publisher(start_kernel) -> None:
    """Before: Lane.publish encoded after in-lane delivery and the OverflowError reached the
    publisher (which killed the feed's task for good)."""
    k = start_kernel(
        {
            "lanes": {"hot": {}, "other": {}},
            "plugins": {
                "faulty": {"lane": "hot", "huge_on_start": "md.trade.BTCUSDT"},
                "same": {"plugin": "tb_recorder", "lane": "hot", "prefix": "md.trade."},
                "far": {"plugin": "tb_recorder", "lane": "other", "prefix": "md.trade."},
            },
        },
        {"faulty": faulty},
    )
    hot = k.lanes["hot"]
    assert hot.stats.encode_errors == 1
    assert k.contexts["same"].component["ids"] == [1], "in-lane delivery still happens"
    assert hot.alive and not k.failures
    # the publisher goes on: a normal message still crosses lanes
    hot.call(hot.publish, "md.trade.BTCUSDT", Trade("BTCUSDT", 2, SCALE, 1, False, 0, 0))
    wait_for(lambda: k.contexts["far"].component["ids"] == [2])


def test_system_exit_in_a_handler_is_contained_and_fails_the_run(rt: Path, tmp_path) -> None:
    """Before: SystemExit killed the lane silently and Kernel.stop() raised from the drain,
    skipping every plugin's flush hook."""
    from tickbus_testplugins import producer, recorder

    flushed = tmp_path / "flushed"
    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0},
        "lanes": {"hot": {}, "sink": {}},
        "plugins": {
            "tb_producer": {"lane": "hot", "count": 100},
            "faulty": {"lane": "sink", "exit_on": "md.trade.", "flushed_file": str(flushed)},
            "tb_recorder": {"lane": "sink", "prefix": "md.trade."},
        },
    }
    k = Kernel(
        parse_config(raw, "t.toml"),
        extra_plugins={"tb_producer": producer, "tb_recorder": recorder, "faulty": faulty},
    )
    t0 = time.monotonic()
    rc = k.run(handle_signals=False)  # returns once the handler asked the process to stop
    assert rc == 1
    assert time.monotonic() - t0 < 10
    assert any("SystemExit" in f for f in k.failures), k.failures
    assert flushed.read_text() == "flushed", "the flush hooks must still run"
    assert len(k.contexts["tb_recorder"].component["ids"]) == 100, "the lane kept going"


def test_a_task_that_dies_stops_the_process_non_zero(rt: Path) -> None:
    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0},
        "plugins": {"faulty": {"task_dies_after_s": 0.2}},
    }
    k = Kernel(parse_config(raw, "t.toml"), extra_plugins={"faulty": faulty})
    t0 = time.monotonic()
    assert k.run(handle_signals=False) == 1
    assert time.monotonic() - t0 < 5, "a half-alive process must not linger"
    assert any("reader" in f and "RuntimeError" in f for f in k.failures), k.failures


def test_a_handler_error_makes_the_exit_status_non_zero(rt: Path) -> None:
    from tickbus_testplugins import producer

    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0},
        "plugins": {
            "tb_producer": {"count": 10, "shutdown_when_done": True},
            "faulty": {"raise_on": "md.trade."},
        },
    }
    plugins = {"tb_producer": producer, "faulty": faulty}
    k = Kernel(parse_config(raw, "t.toml"), extra_plugins=plugins)
    assert k.run(handle_signals=False) == 1
    assert k.lanes["main"].stats.handler_errors == 10
    assert any("handler" in f for f in k.failures)


def test_a_clean_run_exits_zero(rt: Path) -> None:
    from tickbus_testplugins import producer

    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0},
        "plugins": {"tb_producer": {"count": 10, "shutdown_when_done": True}},
    }
    k = Kernel(parse_config(raw, "t.toml"), extra_plugins={"tb_producer": producer})
    assert k.run(handle_signals=False) == 0, k.failures


def test_the_status_line_has_rates_lanes_and_plugin_fragments(rt: Path, caplog) -> None:
    from tickbus_testplugins import producer

    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0.2},
        "plugins": {
            "tb_producer": {"count": 0, "chunk": 50, "period_ms": 5},
            "faulty": {},
        },
    }
    plugins = {"tb_producer": producer, "faulty": faulty}
    k = Kernel(parse_config(raw, "t.toml"), extra_plugins=plugins)
    caplog.set_level(logging.INFO, logger="tickbus.kernel")
    import threading

    threading.Timer(1.0, k.request_shutdown, ("test over",)).start()
    assert k.run(handle_signals=False) == 0, k.failures
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("status:")]
    assert len(lines) >= 2, lines
    last = lines[-1]
    assert "md.trade.BTCUSDT" in last and "lane main lag" in last, last
    assert "faulty: faulty, as designed" in last, last


def test_forged_topics_from_outside_do_not_grow_the_route_table(rt: Path, start_kernel) -> None:
    """Before: every distinct topic from outside was compiled and cached forever
    (20,000 forged topics: +134 MB)."""
    k = start_kernel({"plugins": {"tb_recorder": {"prefix": "md.trade."}}})
    lane = k.lanes["main"]
    zctx = zmq.Context.instance()
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)  # the test's publisher must not drop
    pub.connect(f"ipc://{rt}/bus-pub")
    time.sleep(0.3)  # slow joiner
    codec = Codec()
    body = codec.encode(Trade("BTCUSDT", 7, SCALE, 1, False, 0, 0))
    n = MAX_ROUTES + 2_000
    for i in range(n):
        pub.send(f"md.trade.X{i}".encode() + b"\0" + b"ext!" + body)
    pub.send(b"md.trade.\x01\x02\0ext!" + body)  # not printable: a bad frame
    rec = k.contexts["tb_recorder"].component
    wait_for(lambda: len(rec["ids"]) == n, 20)
    assert len(lane._in_routes) <= MAX_ROUTES
    assert lane.stats.uncached_topics >= 2_000
    wait_for(lambda: lane.stats.bad_frames == 1)
    pub.close(linger=0)


def test_sigterm_during_a_long_setup_exits_within_a_second(plugin_site: Path, tmp_path: Path,
                                                           rt: Path) -> None:  # fmt: skip
    """A cold numba compile blocks set-up for ~25 s; SIGTERM then used to wait it out."""
    cfg = write_config(
        tmp_path / "slow.toml",
        f'[kernel]\nruntime_dir = "{rt}"\n[plugins.slow]\nplugin = "tb_faulty"\nsetup_s = 30\n',
    )
    proc = subprocess.Popen(
        tickbus_cmd("run", str(cfg)), env=tickbus_env(plugin_site),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.0)  # well into set-up
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    assert took < 1.5, f"took {took:.2f} s; stderr: {err[-2000:]}"
    assert proc.returncode == 0, err[-2000:]
    assert "start-up" in err


def test_bus_stats_show_every_lane_to_a_plugin(start_kernel) -> None:
    """What metrics and status read: per-lane counters and per-topic publish counts."""
    k = start_kernel(
        {
            "lanes": {"hot": {}, "other": {}},
            "plugins": {
                "tb_producer": {"lane": "hot", "count": 25},
                "tb_recorder": {"lane": "other", "prefix": "md.trade."},
            },
        }
    )
    rec = k.contexts["tb_recorder"].component
    wait_for(lambda: len(rec["ids"]) == 25)
    stats = k.contexts["tb_recorder"].bus_stats()
    assert set(stats) == {"hot", "other"}
    assert stats["hot"]["topics"]["md.trade.BTCUSDT"] == 25 and stats["hot"]["sent"] == 25
    assert stats["other"]["received"] >= 25 and stats["other"]["alive"]


def test_a_stop_asked_during_start_still_stops_drains_and_flushes(rt: Path, tmp_path) -> None:
    """A replay whose data ended before the rest had started made run() skip stop, drain
    and every flush hook (an empty database, exit 0)."""
    flushed = tmp_path / "flushed"
    raw = {
        "kernel": {"runtime_dir": str(rt), "status_interval_s": 0},
        "plugins": {
            "first": {"plugin": "faulty", "flushed_file": str(flushed)},
            "quick": {"plugin": "faulty", "stop_at_start": True},
            "never": {"plugin": "faulty", "flushed_file": str(tmp_path / "never")},
        },
    }
    k = Kernel(parse_config(raw, "t.toml"), extra_plugins={"faulty": faulty})
    assert k.run(handle_signals=False) == 0, k.failures
    assert flushed.read_text() == "flushed", "a plugin that started is flushed"
    assert not (tmp_path / "never").exists(), "a plugin that never started is not"


def test_a_real_sized_position_crosses_lanes_exactly(start_kernel) -> None:
    """Money beyond 64 bits (a 2 BTC cost basis in 1e-16 units) goes as a decimal string
    and arrives as the exact int: before, every Position above ~922 USDT stayed in its lane
    (persistence in its own lane never saw it; a restart could not restore it)."""
    from tickbus.schemas import Position

    k = start_kernel(
        {
            "lanes": {"hot": {}, "other": {}},
            "plugins": {"far": {"plugin": "tb_recorder", "lane": "other", "prefix": "pos."}},
        }
    )
    big = 67_000 * SCALE * 2 * SCALE
    pos = Position("BTCUSDT", 2 * SCALE, big, -big, 12345, big // 1000, 67_000 * SCALE, 3, 1, 2)
    hot = k.lanes["hot"]
    hot.call(hot.publish, "pos.BTCUSDT", pos)
    far = k.contexts["far"].component
    wait_for(lambda: far["objs"])
    assert far["objs"] == [pos] and type(far["objs"][0].cost) is int
    assert hot.stats.encode_errors == 0
