"""replay_feed -> book on the shipped sample: the same result in one lane or many, paced
playback drives the kernel clock, bad frames are skipped without touching the book."""

from __future__ import annotations

import gzip
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import book_collector, tickbus_cmd, tickbus_env, write_config
from tickbus.plugins.binance.capture import SAMPLE, CaptureError, read_capture
from tickbus.schemas import BookTop

ROOT = Path(__file__).resolve().parents[3]


def replay(start_kernel, lanes: dict[str, str], **replay_cfg: Any) -> tuple[list[BookTop], Any]:
    k = start_kernel(
        {
            "kernel": {"clock": "replay"},
            "lanes": {name: {} for name in dict.fromkeys(lanes.values())},
            "plugins": {
                "book": {"lane": lanes["book"], "depth": 10},
                "replay_feed": {"lane": lanes["replay_feed"], "exit_at_end": False, **replay_cfg},
                "collector": {"lane": lanes["collector"]},
            },
        },
        extra={"collector": book_collector},
    )
    rep = k.contexts["replay_feed"].component
    end = time.monotonic() + 60
    while not rep.done:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert k.stop()
    return k.contexts["collector"].component, k


def test_one_lane_and_one_lane_per_plugin_give_the_same_books(start_kernel) -> None:
    one, k1 = replay(start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"})
    many, k2 = replay(start_kernel, {"book": "b", "replay_feed": "f", "collector": "c"})
    assert len(one) > 1700 and one == many
    assert all(b.valid for b in one)
    # only md.depth crosses lanes (1,795 diffs + the snapshot): nobody outside the feed's
    # lane wants the 16,711 trades and tickers, so they are never encoded
    assert k2.lanes["f"].stats.sent == 1796 and k1.lanes["hot"].stats.sent == 0
    sync = k1.contexts["book"].component.syncs["BTCUSDT"]
    assert sync.stats.gaps == 0 and sync.last_update_id == 50093317200 == one[-1].last_update_id


def test_paced_replay_drives_the_clock(start_kernel) -> None:
    t0 = time.monotonic()
    books, k = replay(
        start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"}, speed=120
    )
    took = time.monotonic() - t0
    assert 1.3 < took < 10, f"180 s of data at 120x took {took:.2f} s"
    last = max(r.ts_ns for r in read_capture(SAMPLE))
    assert k.clock.now_ns() == last, "the kernel clock must end at the last recorded time"
    assert books[-1].ts_recv_ns <= last


def test_bad_frames_in_a_capture_are_skipped(start_kernel, tmp_path: Path) -> None:
    lines = gzip.open(SAMPLE).read().splitlines(keepends=True)
    bad = []
    for i, line in enumerate(lines[:4000]):
        if b'"depthUpdate"' in line and i > 100 and len(bad) < 3:
            ts = line.split(b" ", 1)[0]
            bad.append(
                ts + b' {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,'
                b'"s":"BTCUSDT","U":5,"u":6,"b":[["1.0","-2"]],"a":[]}}\n'
            )
            lines.insert(i, bad[-1])
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    books, k = replay(
        start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"}, files=[str(path)]
    )
    clean, _ = replay(start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"})
    assert k.contexts["replay_feed"].component.bad == 3
    assert books == clean, "a bad frame changed the books"


def test_unreadable_capture_lines_are_skipped(start_kernel, tmp_path: Path, caplog) -> None:
    """read_capture stops at a corrupt line; the replay counts it as a bad frame and goes on."""
    lines = gzip.open(SAMPLE).read().splitlines(keepends=True)
    trades = [i for i, line in enumerate(lines) if b"@trade" in line[:60]]
    tickers = [i for i, line in enumerate(lines) if b"@bookTicker" in line[:60]]
    cut, ts_bad, not_utf8, no_json = trades[10], tickers[20], tickers[30], tickers[40]
    lines[cut] = lines[cut][: len(lines[cut]) // 2] + b"\n"  # the JSON cut in half
    lines[ts_bad] = b"17231612x4" + lines[ts_bad][10:]  # a timestamp that is not a number
    lines[not_utf8] = lines[not_utf8].replace(b'"s":"BTCUSDT"', b'"s":"BTC\xffUSDT"')
    lines[no_json] = lines[no_json].split(b" ", 1)[0] + b" {oops}\n"
    path = tmp_path / "corrupt.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    with pytest.raises(CaptureError):
        list(read_capture(path))
    books, k = replay(
        start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"}, files=[str(path)]
    )
    clean, k_clean = replay(start_kernel, {"book": "hot", "replay_feed": "hot", "collector": "hot"})
    rep, rep_clean = k.contexts["replay_feed"].component, k_clean.contexts["replay_feed"].component
    assert rep.bad == 4 and rep.frames == rep_clean.frames - 4
    assert books == clean, "a corrupt line changed the books"
    assert "unreadable capture line" in caplog.text


def test_symbols_filter(start_kernel) -> None:
    hot = {"book": "hot", "replay_feed": "hot", "collector": "hot"}
    books, k = replay(start_kernel, hot, symbols=["ethusdt"])
    assert books == [] and k.contexts["replay_feed"].component.frames == 0
    books, k = replay(start_kernel, hot, symbols=["btcusdt"])
    assert len(books) > 1700 and k.contexts["replay_feed"].component.frames == 18507


def test_backtest_config_runs_to_the_end(tmp_path: Path) -> None:
    cfg = (ROOT / "configs" / "backtest.toml").read_text()
    path = write_config(
        tmp_path / "b.toml",
        f"{cfg}\n".replace(
            "[kernel]", f'[kernel]\nruntime_dir = "{tmp_path}"\nstate_dir = "{tmp_path}/state"', 1
        ),
    )
    out = subprocess.run(
        tickbus_cmd("run", str(path)),
        env=tickbus_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "replay finished: 18507 frames published, 0 skipped" in out.stderr
    assert "BTCUSDT: update id 50093317200, valid True" in out.stderr


def test_every_shipped_config_is_valid() -> None:
    from tickbus.kernel.config import load_config
    from tickbus.kernel.plugins import PluginManager

    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg = load_config(path)
        pm = PluginManager()
        pm.load(cfg)
        for name, entry in cfg.plugins.items():
            if entry.enabled:
                pm.validate_settings(cfg, name)
