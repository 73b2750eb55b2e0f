"""The real WebSocket path: exchange-sim on 127.0.0.1 -> binance_feed -> book, with faults.

The reference is the replay of the same capture through replay_feed -> book (the clean
stream): every ``md.book`` message the live path marks valid must equal the replay's message
for the same update id - field by field, top-N levels included - and the live path must end
with the book the clean stream ends with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimThread, book_collector
from tickbus.schemas import BookTop


def content(b: BookTop) -> tuple[Any, ...]:
    """The book itself: not the local receive time (live and replay differ), nor the venue
    time (a book synced from a spot REST snapshot has none; checked separately)."""
    return (b.symbol, b.last_update_id, b.valid, b.bid_px, b.bid_qty, b.ask_px, b.ask_qty,
            b.bids, b.asks)  # fmt: skip


def replay_books(files: list[Path] | None = None, market: str = "spot") -> list[BookTop]:
    """md.book of the clean stream (replay through replay_feed -> book, as fast as possible)."""
    import shutil
    import tempfile

    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config

    rt = tempfile.mkdtemp(prefix="tb", dir="/tmp")
    replay_cfg: dict[str, Any] = {"speed": 0, "exit_at_end": False}
    if files:
        replay_cfg["files"] = [str(f) for f in files]
    cfg = parse_config(
        {
            "kernel": {"runtime_dir": rt, "clock": "replay"},
            "plugins": {
                "book": {"depth": 5, "market": market},
                "replay_feed": replay_cfg,
                "collector": {},
            },
        }
    )
    k = Kernel(cfg, extra_plugins={"collector": book_collector})
    k.start()
    replay = k.contexts["replay_feed"].component
    end = time.monotonic() + 120
    while not replay.done:
        assert time.monotonic() < end
        time.sleep(0.05)
    k.stop()
    shutil.rmtree(rt, ignore_errors=True)
    assert replay.bad == 0
    return k.contexts["collector"].component


@pytest.fixture(scope="module")
def replayed() -> list[BookTop]:
    """md.book of the shipped sample's clean stream."""
    books = replay_books()
    assert len(books) > 1700
    return books


@pytest.fixture
def live(start_kernel) -> Iterator[Callable[..., tuple[list[BookTop], Any, SimThread]]]:
    sims: list[SimThread] = []

    def run(
        *faults: str,
        rest_hang_s: float = 30.0,
        retry_after_s: int = 0,
        speed: float = 0,
        data: list[Path] | None = None,
        market: str = "spot",
        wait_end: bool = True,
        **feed: Any,
    ) -> tuple[list[BookTop], Any, SimThread]:
        sim = SimThread(
            data, speed=speed, faults=faults, rest_hang_s=rest_hang_s, retry_after_s=retry_after_s
        )
        sims.append(sim)
        url = f"127.0.0.1:{sim.port}"
        k = start_kernel(
            {
                "lanes": {"hot": {}},
                "plugins": {
                    "book": {"depth": 5, "market": market},
                    "binance_feed": {
                        "symbols": ["BTCUSDT"],
                        "market": market,
                        "ws_url": f"ws://{url}",
                        "rest_url": f"http://{url}",
                        "backoff_initial_s": 0.05,
                        "backoff_max_s": 0.2,
                        "rest_timeout_s": 1.0,
                        **feed,
                    },
                    "collector": {},
                },
            },
            extra={"collector": book_collector},
        )
        end = time.monotonic() + 120
        while wait_end and not sim.finished:
            assert time.monotonic() < end, "the simulator never reached the end of the capture"
            time.sleep(0.05)
        # let the last frames and the end-of-data close arrive: until nothing new came for
        # half a second (a fixed pause was too short on a loaded machine)
        books = k.contexts["collector"].component
        seen, quiet_since = -1, time.monotonic()
        give_up = quiet_since + (10 if wait_end else 0.3)  # a stream still running: a pause
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
            if len(books) != seen:
                seen, quiet_since = len(books), time.monotonic()
            time.sleep(0.05)
        return books, k, sim

    yield run
    for sim in sims:
        sim.close()


def check_against_replay(books: list[BookTop], replayed: list[BookTop]) -> list[BookTop]:
    """Every valid live book equals the clean stream's at the same update id."""
    reference = {b.last_update_id: content(b) for b in replayed if b.valid}
    valid = [b for b in books if b.valid]
    assert valid, "the live book never became valid"
    wrong = [b.last_update_id for b in valid if reference.get(b.last_update_id) != content(b)]
    assert not wrong, (
        f"{len(wrong)} valid md.book messages differ from the clean stream: {wrong[:5]}"
    )
    times = {b.last_update_id: b.ts_exchange_ns for b in replayed if b.valid}
    # the first valid book of each run comes from a snapshot and carries its venue time
    # (0 on spot, the body's E on futures); every other one carries its diff's E
    synced = {
        b.last_update_id
        for prev, b in zip([None, *books], books, strict=False)
        if b.valid and not (prev and prev.valid)
    }
    assert all(
        times[b.last_update_id] == b.ts_exchange_ns for b in valid if b.last_update_id not in synced
    )
    last_ref = max(reference)
    assert valid[-1].last_update_id == last_ref, "the live book did not reach the end of the stream"
    return valid


def test_clean_stream_is_the_replay_sequence(live, replayed) -> None:
    books, k, _ = live()
    valid = check_against_replay(books, replayed)
    # same sequence: from the first live book on, the replay's messages one for one
    ref = [content(b) for b in replayed if b.valid]
    start = next(i for i, c in enumerate(ref) if c[1] == valid[0].last_update_id)
    assert [content(b) for b in valid] == ref[start:]
    sync = k.contexts["book"].component.syncs["BTCUSDT"]
    assert sync.stats.gaps == 0


@pytest.mark.parametrize(
    "fault",
    ["drop:300", "dup:300", "swap:300", "malformed:500", "close:4000", "rest:429:2", "rest:500:2",
     "rest:403:2", "ws:503:2", "ws:429:1"],
)  # fmt: skip
def test_faults_never_yield_a_wrong_valid_book(live, replayed, fault: str) -> None:
    books, k, sim = live(fault)
    valid = check_against_replay(books, replayed)
    sync = k.contexts["book"].component.syncs["BTCUSDT"]
    feed = k.contexts["binance_feed"].component
    if fault.startswith("drop"):
        assert sync.stats.gaps >= 1 and sync.stats.resyncs >= 1
        assert any(not b.valid for b in books[books.index(valid[0]) :]), "gap not published"
    elif fault.startswith(("dup", "swap")):
        assert sync.stats.stale >= 1 or sync.stats.gaps >= 1
    elif fault.startswith("malformed"):
        assert feed.stats["bad_frames"] >= 1
    elif fault.startswith("close"):
        assert feed.stats["connects"] >= 3 and sync.stats.resyncs >= 1
    elif fault.startswith("ws"):  # a 5xx or 429 handshake answer is transient: retried
        assert feed.stats["rejected"] == int(fault.split(":")[2])
    else:
        assert feed.stats["rest_errors"] == 2
        assert sim.sim.rest_requests >= 3


def test_snapshot_failures_are_logged_with_status_and_body(live, replayed, caplog) -> None:
    # a 4xx answer (here a proxy's 403) used to end the retries: the book stayed unsynced
    books, k, _ = live("rest:403:3")
    check_against_replay(books, replayed)
    failures = [r.getMessage() for r in caplog.records if "snapshot failed" in r.getMessage()]
    assert len(failures) == 3
    assert all("HTTP 403" in m and "exchange-sim fault" in m for m in failures), failures


def test_retry_after_is_honoured_up_to_its_cap(live, replayed) -> None:
    # an hour-long Retry-After (a proxy, an IP ban) is cut to retry_after_max_s
    books, k, sim = live("rest:429:1", retry_after_s=3600, retry_after_max_s=0.3)
    check_against_replay(books, replayed)
    assert k.contexts["binance_feed"].component.stats["rest_errors"] == 1


def test_rest_timeout_is_retried(live, replayed) -> None:
    # paced (30x real time: 6 s) so the stream outlasts the hung request
    books, k, _ = live("rest:timeout:1", rest_hang_s=2.0, speed=30, rest_timeout_s=0.5)
    check_against_replay(books, replayed)
    assert k.contexts["binance_feed"].component.stats["rest_errors"] >= 1


def test_stale_feed_watchdog_reconnects(live) -> None:
    # at 1/50 of real time the recorded gaps between frames exceed stale_after_s now and then
    _, k, _ = live(speed=0.02, wait_end=False, stale_after_s=0.3)
    feed = k.contexts["binance_feed"].component
    end = time.monotonic() + 20
    while feed.stats["stale"] < 1:
        assert time.monotonic() < end, f"no stale reconnect: {feed.stats}"
        time.sleep(0.05)
    while feed.stats["connects"] < 2:
        assert time.monotonic() < end, f"no reconnect after the stale timeout: {feed.stats}"
        time.sleep(0.05)


def test_connection_is_renewed_before_the_24h_limit(live) -> None:
    # max_connection_s stands in for Binance's 24 hours
    _, k, _ = live(speed=1, wait_end=False, max_connection_s=0.5)
    feed = k.contexts["binance_feed"].component
    end = time.monotonic() + 20
    while feed.stats["connects"] < 3:
        assert time.monotonic() < end, f"connection not renewed: {feed.stats}"
        time.sleep(0.05)
    assert feed.stats["renewals"] >= 2 and feed.stats["stale"] == 0


USDM = Path(__file__).resolve().parents[4] / "shared/data/binance/hftbacktest/examples/usdm"


@pytest.mark.skipif(not USDM.exists(), reason="../shared/data not present")
def test_usdm_live_path_matches_its_replay(live) -> None:
    files = [USDM / "ethusdt_20240808.gz"]  # its first applied event has u == lastUpdateId
    reference = replay_books(files, market="usdm")
    books, k, _ = live(
        speed=0, data=files, market="usdm", symbols=["ETHUSDT"], depth_interval="0ms"
    )
    check_against_replay(books, reference)
