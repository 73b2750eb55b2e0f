"""``tickbus record`` against the exchange simulator: what it writes replays into a book."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import SimThread, tickbus_cmd, tickbus_env
from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book.sync import Action, BookSync


def record(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    url = f"127.0.0.1:{port}"
    return subprocess.Popen(
        tickbus_cmd("record", "--symbols", "BTCUSDT", "--ws-url", f"ws://{url}",
                    "--rest-url", f"http://{url}", "--out", str(tmp_path / "rec.gz"), *extra),
        env=tickbus_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def check_capture(path: Path) -> int:
    recs = list(read_capture(path))
    ws = [r.payload for r in recs if r.kind == "ws"]
    rest = [r for r in recs if r.kind == "rest"]
    assert len(ws) > 100
    assert [r.symbol for r in rest] == ["BTCUSDT"]
    # the frames are the simulator's, byte for byte and in order: a contiguous run of the sample
    sample = [r.payload for r in read_capture(SAMPLE) if r.kind == "ws"]
    first = sample.index(ws[0])
    assert sample[first : first + len(ws)] == ws
    # and the file is usable: its snapshot syncs a book that then chains to the end
    parser, sync = FrameParser(), BookSync("spot", "BTCUSDT")
    actions = []
    for r in recs:
        if r.kind == "rest":
            actions.append(sync.on_snapshot(parser.parse_snapshot(r.payload, r.symbol, r.ts_ns)))
        elif r.stream and "@depth" in r.stream:
            actions.append(sync.on_diff(parser.parse(r.payload, r.ts_ns)))
    assert Action.SYNCED in actions and sync.valid and sync.stats.gaps == 0
    return len(recs)


def test_record_for_a_duration(tmp_path: Path) -> None:
    sim = SimThread(speed=20)
    try:
        proc = record(tmp_path, sim.port, "--duration", "2")
        _, err = proc.communicate(timeout=30)
    finally:
        sim.close()
    assert proc.returncode == 0, err
    n = check_capture(tmp_path / "rec.gz")
    assert f"{n - 1} frames and 1 snapshots written" in err


def test_sigterm_leaves_a_complete_file(tmp_path: Path) -> None:
    sim = SimThread(speed=20)
    try:
        proc = record(tmp_path, sim.port)
        # the file is created just before the signal handlers: on a loaded machine the
        # interpreter takes seconds to get there (a SIGTERM before it kills the process)
        end = time.monotonic() + 60
        while not (tmp_path / "rec.gz").exists() and proc.poll() is None:
            assert time.monotonic() < end, "the recorder never opened its file"
            time.sleep(0.05)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        sim.close()
    assert proc.returncode == 0, err
    check_capture(tmp_path / "rec.gz")


def test_a_rejected_stream_ends_the_recording_with_the_servers_reason(tmp_path: Path) -> None:
    # the simulator has btcusdt@depth@100ms only: "1000ms" asks for btcusdt@depth, an HTTP 400
    sim = SimThread(speed=20)
    proc = record(tmp_path, sim.port, "--depth-interval", "1000ms")
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        sim.close()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    why = [line for line in err.splitlines() if "rejected the WebSocket handshake" in line]
    assert len(why) == 1 and "HTTP 400" in why[0] and "btcusdt@depth" in why[0], err


def test_a_bad_symbol_is_a_one_line_error(tmp_path: Path) -> None:
    out = subprocess.run(
        tickbus_cmd("record", "--symbols", "BTCUSDT", "BTC/USDT", "--ws-url", "ws://127.0.0.1:9",
                    "--out", str(tmp_path / "rec.gz"), "--duration", "5"),
        env=tickbus_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--symbols[1]" in out.stderr, out.stderr
    assert not (tmp_path / "rec.gz").exists()
