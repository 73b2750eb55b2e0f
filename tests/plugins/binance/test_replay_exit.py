"""replay_feed tells the truth: real ``tickbus run`` processes on real (broken) files exit
non-zero with one line naming the file and the config key; relative paths follow the config
file; a running replay reports its progress (status line, and a bar on a terminal only)."""

from __future__ import annotations

import gzip
import os
import pty
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel import PluginContext, hookimpl
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.binance.replay import Replay, ReplayConfig

ROOT = Path(__file__).resolve().parents[3]
KEY = "plugins.replay_feed.files"


def config(tmp_path: Path, files: list[str] | None, **extra: Any) -> Path:
    lines = [f'[kernel]\nruntime_dir = "{tmp_path}"\nclock = "replay"\n[lanes.hot]',
             '[plugins.book]\nlane = "hot"', '[plugins.replay_feed]\nlane = "hot"']  # fmt: skip
    if files is not None:
        lines.append("files = [" + ", ".join(f'"{f}"' for f in files) + "]")
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return write_config(tmp_path / "replay.toml", "\n".join(lines) + "\n")


def run(cfg: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tickbus_cmd("run", str(cfg)),
        env=tickbus_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(out: subprocess.CompletedProcess[str], *words: str) -> list[str]:
    """stderr lines that contain every one of ``words``."""
    return [line for line in out.stderr.splitlines() if all(w in line for w in words)]


def sample_lines() -> list[bytes]:
    return gzip.open(SAMPLE).read().splitlines(keepends=True)


# ---------------------------------------------------------------- the file is no good


@pytest.mark.parametrize(
    "name, content",
    [
        ("missing.gz", None),
        ("notes.txt", b"this is not a capture\n"),
        ("empty.gz", gzip.compress(b"")),
        ("garbage.gz", b"\x1f\x8b" + os.urandom(2000)),  # gzip magic, then no gzip
    ],
)
def test_a_file_that_is_no_capture_stops_the_start(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = run(config(tmp_path, [str(path)]))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = error_lines(out, KEY, str(path))
    assert len(lines) == 1 and lines[0].startswith("tickbus: error: "), out.stderr


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_file_that_breaks_on_the_way_fails_the_run(tmp_path: Path, damage: str) -> None:
    raw = SAMPLE.read_bytes()
    path = tmp_path / f"{damage}.gz"
    if damage == "truncated":  # a copy cut short: gzip's end-of-stream marker is missing
        path.write_bytes(raw[: len(raw) * 2 // 3])
    else:  # a few flipped bytes in the middle of the compressed data
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes(b ^ 0x5A for b in raw[mid : mid + 64]) + raw[mid + 64 :])
    out = run(config(tmp_path, [str(path)]))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert error_lines(out, KEY, str(path)), out.stderr


def test_corrupt_lines_are_skipped_and_fail_the_run(tmp_path: Path) -> None:
    lines = sample_lines()
    for i in (1000, 2000, 3000):
        lines[i] = lines[i][: len(lines[i]) // 2] + b"\n"  # a line cut in half
    lines[4000] = b"17231612x4" + lines[4000][10:]  # a timestamp that is not a number
    path = tmp_path / "corrupt.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    out = run(config(tmp_path, [str(path)]))
    assert out.returncode == 1, out.stderr
    assert error_lines(out, "4 corrupt line(s) or bad frame(s) skipped", path.name), out.stderr


def test_kinds_tickbus_does_not_use_are_ignored_not_failures(tmp_path: Path) -> None:
    # real captures hold klines, mark prices, exchangeInfo bodies: well-formed, just not ours
    lines = sample_lines()
    ts = lines[500].split(b" ", 1)[0]
    kline = (b' {"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1723075200000,'
             b'"s":"BTCUSDT","k":{"t":1723075140000}}}\n')  # fmt: skip
    lines[500:500] = [ts + kline.replace(b'"kline"', b'"kline%d"' % i) for i in range(100)]
    path = tmp_path / "klines.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    out = run(config(tmp_path, [str(path)]))
    assert out.returncode == 0, out.stderr
    assert error_lines(out, "replay finished: 18507 frames published, 0 skipped, 100 ignored")
    assert 1 <= len(error_lines(out, "(ignored)")) <= 64  # made-up kinds cannot flood the log


def test_relative_files_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cap.gz").write_bytes(SAMPLE.read_bytes())
    out = run(config(tmp_path, ["data/cap.gz"]), cwd=ROOT)  # not the config's directory
    assert out.returncode == 0, out.stderr
    assert error_lines(out, "replay finished: 18507 frames published")


# ---------------------------------------------------------------- a bug in the middle


class BreaksAfter:
    """The real parser, until its ``n``-th frame: then a bug (an OverflowError)."""

    def __init__(self, parser: Any, n: int) -> None:
        self.parser, self.n, self.calls = parser, n, 0

    def parse(self, frame: bytes, ts: int) -> Any:
        self.calls += 1
        if self.calls > self.n:
            raise OverflowError("injected")
        return self.parser.parse(frame, ts)

    def parse_snapshot(self, *args: Any) -> Any:
        return self.parser.parse_snapshot(*args)


class broken_replay:
    """The real replay_feed whose parser breaks after 5,000 frames."""

    @staticmethod
    @hookimpl
    def tickbus_config_type() -> type[ReplayConfig]:
        return ReplayConfig

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> Replay:
        rep = Replay(ctx, ctx.config)
        rep.parser = BreaksAfter(rep.parser, 5000)  # type: ignore[assignment]
        return rep

    @staticmethod
    @hookimpl
    def tickbus_start(ctx: PluginContext) -> None:
        ctx.spawn(ctx.component.run(), name="replay")


def test_an_error_in_the_replay_ends_the_run_failed(start_kernel) -> None:
    k = start_kernel(
        {"kernel": {"clock": "replay"}, "plugins": {"broken": {"exit_at_end": False}}},
        extra={"broken": broken_replay},
    )
    rep = k.contexts["broken"].component
    end = time.monotonic() + 30
    while not k.failures:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert rep.done and 5000 <= rep.frames <= 5001  # 5,000 frames (+ the snapshot)
    assert k.shutdown_reason.startswith("broken: replay failed after")
    assert "OverflowError: injected" in k.shutdown_reason


# ---------------------------------------------------------------- progress


def test_status_fragment(start_kernel) -> None:
    k = start_kernel(
        {"kernel": {"clock": "replay"}, "plugins": {"replay_feed": {"exit_at_end": False}}}
    )
    rep = k.contexts["replay_feed"].component
    end = time.monotonic() + 30
    while not rep.done:
        assert time.monotonic() < end
        time.sleep(0.02)
    text = k.lanes["main"].call(k.manager.status, k.contexts["replay_feed"])
    assert text.startswith("done, 100% of btcusdt_spot_20240808_sample.gz, 18,507 frames, "), text
    speed = float(text.split(", ")[-1].split("x")[0])
    assert speed > 10, text  # 3 recorded minutes as fast as possible


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    cfg = config(tmp_path, None)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        tickbus_cmd("run", str(cfg)), env=tickbus_env(), cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "replay btcusdt_spot_20240808_sample.gz: 100%|" in text, text
    assert "18,507 frames" in text
    assert text.count("\r") < 40  # a few refreshes, not one per frame
    # the same run on pipes: no bar
    piped = run(cfg)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "%|" not in piped.stderr
