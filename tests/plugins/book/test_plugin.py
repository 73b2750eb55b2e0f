"""The book plugin in a real in-process kernel (replay clock), fed the shipped real capture:
hostile messages from another process, symbol rules and the cap on books, snapshot
re-requests, resync log lines and the status fragment."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq

from tickbus.kernel import ConfigError, PluginContext, hookimpl
from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book.sync import Action, BookSync
from tickbus.schemas import (
    BookTop,
    Codec,
    DepthDiff,
    DepthSnapshot,
    FeedStatus,
    SnapshotRequest,
)

NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}
DEPTH = 10
_BIG = 2**64 - 1  # the largest id a msgpack message from another process can carry


@cache
def sample_events() -> tuple[tuple[DepthDiff | DepthSnapshot, ...], int]:
    """The shipped capture's depth messages in arrival order, and the snapshot's index."""
    parser = FrameParser()
    out: list[DepthDiff | DepthSnapshot] = []
    snap_at = -1
    for rec in read_capture(SAMPLE):
        if rec.kind == "rest":
            snap_at = len(out)
            out.append(parser.parse_snapshot(rec.payload, rec.symbol, rec.ts_ns))
        elif rec.stream and "@depth" in rec.stream:
            out.append(parser.parse(rec.payload, rec.ts_ns))  # type: ignore[arg-type]
    assert snap_at == 3
    return tuple(out), snap_at


def expected_tops(events: Any) -> list[BookTop]:
    """What the plugin must publish for ``events``: a BookSync driven directly."""
    sync = BookSync("spot", "BTCUSDT")
    tops = []
    for m in events:
        act = sync.on_diff(m) if type(m) is DepthDiff else sync.on_snapshot(m)
        if act is Action.APPLIED or act is Action.SYNCED:
            tops.append(sync.book_top(DEPTH, m.ts_exchange_ns, m.ts_recv_ns))
    return tops


class out_collector:
    """Test plugin: every md.book and md.resync message, in order."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        ctx.subscribe("md.book.", seen.append)
        ctx.subscribe("md.resync.", seen.append)
        return seen


class Run:
    """A kernel with the book plugin (``settings``) and a collector, on the replay clock."""

    def __init__(self, start_kernel: Callable[..., Any], bus: bool = False, **settings: Any):
        self.k = start_kernel(
            {
                "kernel": {"clock": "replay"},
                **({} if bus else {"bus": NO_ENDPOINTS}),
                "plugins": {"book": {"depth": DEPTH, **settings}, "out": {}},
            },
            {"out": out_collector},
        )
        self.lane = self.k.lanes["main"]
        self.books = self.k.contexts["book"].component
        self.seen: list[Any] = self.k.contexts["out"].component

    def feed(self, msgs: Any, topic: str | None = None) -> None:
        """Publish ``msgs`` on md.depth.<symbol> from the lane, in order."""
        publish = self.lane.publish

        def run() -> None:
            for m in msgs:
                publish(topic or f"md.depth.{m.symbol}", m)

        self.lane.call(run)

    def clock(self, t_ns: int) -> None:
        self.lane.call(self.k.clock.advance, t_ns)

    def tops(self) -> list[BookTop]:
        return self.lane.call(lambda: [m for m in self.seen if type(m) is BookTop])

    def requests(self) -> list[SnapshotRequest]:
        return self.lane.call(lambda: [m for m in self.seen if type(m) is SnapshotRequest])

    def status(self) -> str:
        return self.lane.call(self.books.status)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _pack(levels: list[list[int]]) -> bytes:
    return np.array(levels, dtype="<i8").reshape(-1, 2).tobytes()


# ---------------------------------------------------------------- hostile input over the bus


def test_forged_depth_messages_from_another_process_never_become_state(
    start_kernel: Callable[..., Any], rt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Forged snapshots/diffs published into the bus from outside the process (ZeroMQ,
    msgpack: ids up to 2**64-1): counted, logged once per kind, skipped; the books equal a
    clean run's. Before: a snapshot with L = 2**64-1 made the book 'valid' at that id and
    every real event after it was dropped as stale; forged symbols made books."""
    caplog.set_level(logging.WARNING)
    run = Run(start_kernel, bus=True)
    events, si = sample_events()
    codec = Codec()
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.connect(f"ipc://{rt}/bus-pub")
    time.sleep(0.3)  # slow joiner: let the book's subscription reach this publisher

    def forge(*msgs: DepthDiff | DepthSnapshot) -> None:
        before = run.lane.stats.received
        for m in msgs:
            pub.send(b"md.depth.BTCUSDT\0ext!" + codec.encode(m))  # whatever the symbol
        wait_for(lambda: run.lane.stats.received >= before + len(msgs))

    snap = events[si]
    assert isinstance(snap, DepthSnapshot)
    run.feed(events[:si])  # buffered: the book waits for its snapshot
    r = msgspec.structs.replace
    forge(
        r(snap, last_update_id=_BIG),  # would drop the buffer and sync at 2**64-1
        r(snap, bids=snap.bids[:-1]),  # levels not a multiple of 16 bytes
        r(events[0], asks=_pack([[0, 5]])),  # a price of 0, buffered for later
    )
    g = si + 300
    run.feed(events[si:g])
    last = events[g - 1]
    assert isinstance(last, DepthDiff)
    forge(
        r(events[g], first_update_id=last.last_update_id + 1, last_update_id=_BIG),  # chains
        r(events[g], bids=_pack([[-1, 1]])),
        r(events[g], prev_update_id=_BIG),
        r(events[g], symbol="BTC\0USDT"),
        r(events[g], symbol="btcusdt"),
        r(events[g], symbol="X" * 21),
    )
    run.feed(events[g:])
    tops = run.tops()
    assert tops == expected_tops(events)
    assert all(t.valid for t in tops) and tops[-1].last_update_id == events[-1].last_update_id
    assert set(run.books.syncs) == {"BTCUSDT"}
    assert (run.books.bad, run.books.dropped) == (6, 3)
    assert run.lane.stats.handler_errors == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "tickbus.book"]
    assert sum("skipped a bad DepthSnapshot (ids" in w for w in warnings) == 1
    assert sum("(ids:" in w for w in warnings) == 1  # once per kind, not per message
    assert sum("(levels:" in w for w in warnings) == 1
    assert sum("not a valid symbol" in w for w in warnings) == 1
    assert "BTCUSDT valid @" in run.status() and "bad 6" in run.status()
    pub.close(0)
    zctx.term()


def test_messages_of_another_type_on_md_depth_are_dropped(
    start_kernel: Callable[..., Any],
) -> None:
    run = Run(start_kernel)
    events, si = sample_events()
    status = FeedStatus("BTCUSDT", True, "", 0)
    run.feed([*events[: si + 5], status], topic="md.depth.BTCUSDT")
    run.feed(events[si + 5 :])
    assert run.tops() == expected_tops(events)
    assert run.books.dropped == 1 and run.lane.stats.handler_errors == 0


# ---------------------------------------------------------------- symbols


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"symbols": ["BTCUSDT", "BTC/USDT"]}, "plugins.book.symbols[1]"),
        ({"symbols": ["BTC USDT"]}, "plugins.book.symbols[0]"),
        ({"symbols": [""]}, "plugins.book.symbols[0]"),
        ({"symbols": ["A" * 21]}, "plugins.book.symbols[0]"),
        ({"symbols": ["BTCUSDT\0"]}, "plugins.book.symbols[0]"),
        ({"max_symbols": 0}, "plugins.book.max_symbols"),
        ({"depth": 0}, "plugins.book.depth"),
        ({"max_buffer": 0}, "plugins.book.max_buffer"),
        ({"snapshot_timeout_s": 0}, "plugins.book.snapshot_timeout_s"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(
    start_kernel: Callable[..., Any], settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Run(start_kernel, **settings)
    assert info.value.key == key and info.value.problem != "unknown key"


def test_only_configured_symbols_get_a_book(
    start_kernel: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run = Run(start_kernel, symbols=["btcusdt"])  # any case in the config
    events, _ = sample_events()
    others = [msgspec.structs.replace(events[5], symbol=s) for s in ("ETHUSDT", "BTC.USDT")]
    run.feed(others * 3)
    run.feed(events)
    assert set(run.books.syncs) == {"BTCUSDT"} and run.books.dropped == 6
    assert run.tops() == expected_tops(events)
    dropped = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == 2  # once per reason: not configured, not a symbol


@pytest.mark.parametrize(("cap", "symbols"), [(3, 10), (None, 100)])
def test_books_are_capped_when_no_symbols_are_configured(
    start_kernel: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    cap: int | None,
    symbols: int,
) -> None:
    """Before: a book for every symbol ever seen - input grew memory without bound."""
    caplog.set_level(logging.WARNING)
    run = Run(start_kernel, **({} if cap is None else {"max_symbols": cap}))
    events, _ = sample_events()
    names = [f"S{i}USDT" for i in range(symbols)]
    run.feed([msgspec.structs.replace(events[5], symbol=s) for s in names for _ in range(2)])
    limit = cap or 64  # the default
    assert list(run.books.syncs) == names[:limit]
    assert run.books.dropped == 2 * (symbols - limit)
    assert sum("max_symbols" in r.getMessage() for r in caplog.records) == 1
    assert f"+{limit - 2} books" in run.status() and "dropped" in run.status()


# ---------------------------------------------------------------- snapshots and resyncs


def test_snapshot_is_requested_again_when_none_arrives_in_time(
    start_kernel: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one lost request (a 4xx answer, a dropped message) left the book waiting
    forever. Time is the kernel clock (here the replay clock), checked as events arrive."""
    caplog.set_level(logging.INFO)
    run = Run(start_kernel, snapshot_timeout_s=5)
    events, si = sample_events()
    diffs = [m for m in events if type(m) is DepthDiff]
    t0 = events[0].ts_recv_ns
    run.clock(t0)
    run.feed(diffs[:3])
    assert [q.reason for q in run.requests()] == ["start"]
    run.clock(t0 + 4_999_000_000)
    run.feed(diffs[3:10])
    assert len(run.requests()) == 1  # not yet
    run.clock(t0 + 5_000_000_000)
    run.feed(diffs[10:12])
    run.clock(t0 + 7_000_000_000)
    run.feed(diffs[12:14])
    assert [q.reason for q in run.requests()] == ["start", "timeout"]
    assert run.requests()[-1].ts_ns == t0 + 5_000_000_000
    run.clock(t0 + 10_000_000_000)
    run.feed(diffs[14:20])
    assert [q.reason for q in run.requests()] == ["start", "timeout", "timeout"]
    assert "no snapshot 5.0 s after the request; requesting another" in caplog.text
    run.clock(t0 + 10_250_000_000)
    run.feed([events[si]])  # the answer, at last: the buffered diffs after it are applied
    top = run.tops()[-1]
    assert top.valid and top.last_update_id == diffs[19].last_update_id
    assert f"BTCUSDT synced at update {top.last_update_id} after 10250 ms" in caplog.text
    run.feed(diffs[20:30])
    assert len(run.requests()) == 3  # synced: no more requests


def _snapshot_after(events: Any, k: int) -> DepthSnapshot:
    """What the REST endpoint would have returned right after ``events[k]`` (a book rebuilt
    from the clean stream by a separate BookSync)."""
    ref = BookSync("spot", "BTCUSDT")
    for m in events[: k + 1]:
        ref.on_diff(m) if type(m) is DepthDiff else ref.on_snapshot(m)
    assert ref.valid
    bids, asks = ref.book.levels("bid").tobytes(), ref.book.levels("ask").tobytes()
    return DepthSnapshot("BTCUSDT", ref.last_update_id, bids, asks, 0, events[k].ts_recv_ns)


def test_resync_logs_the_update_and_how_long_it_took(
    start_kernel: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run = Run(start_kernel)
    events, si = sample_events()
    t0 = events[si].ts_recv_ns
    run.clock(t0)
    g = si + 200
    run.feed(events[:g])
    assert "BTCUSDT synced at update" in caplog.text and "resynced" not in caplog.text
    run.clock(t0 + 1_000_000_000)
    run.feed(events[g + 1 : g + 2])  # events[g] lost: a gap
    assert [q.reason for q in run.requests()] == ["start", "gap"]
    k = g + 40
    run.feed(events[g + 2 : k + 10])  # buffered
    run.clock(t0 + 1_250_000_000)
    run.feed([_snapshot_after(events, k)])
    top = run.tops()[-1]
    assert top.valid and top.last_update_id == events[k + 9].last_update_id
    assert f"BTCUSDT resynced at update {top.last_update_id} after 250 ms" in caplog.text
    # a disconnect invalidates too; the time counts from it
    run.feed(events[k + 10 : k + 20])
    run.clock(t0 + 2_000_000_000)
    run.lane.call(run.lane.publish, "md.status.BTCUSDT", FeedStatus("BTCUSDT", False, "x", 0))
    run.feed(events[k + 20 : k + 60])
    run.clock(t0 + 2_100_000_000)
    run.feed([_snapshot_after(events, k + 40)])
    assert run.tops()[-1].valid
    assert f"resynced at update {events[k + 59].last_update_id} after 100 ms" in caplog.text
    assert "resyncs 2" in run.status()


def test_status_fragment(
    start_kernel: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    run = Run(start_kernel)
    assert run.status() == "no book yet"
    events, si = sample_events()
    run.feed(events[: si + 100])
    last = events[si + 99]
    run.clock(last.ts_exchange_ns + 1_234_000_000)
    assert run.status() == f"BTCUSDT valid @{last.last_update_id} lag 1234 ms resyncs 0 bad 0"
    run.feed([msgspec.structs.replace(events[si + 100], bids=b"\0")])  # bad: counted
    ts = last.ts_exchange_ns
    run.feed([msgspec.structs.replace(events[si + 101], symbol="ETHUSDT", ts_exchange_ns=ts)])
    assert run.status() == (
        "ETHUSDT INVALID @-1 lag 1234 ms resyncs 0 bad 0, "
        f"BTCUSDT valid @{last.last_update_id} lag 1234 ms resyncs 0 bad 1"
    )  # the invalid books first: they are what an operator must see
    caplog.set_level(logging.INFO)
    run.k.log_status()  # the kernel's periodic status line carries it
    assert "book: ETHUSDT INVALID @-1 lag 1234 ms" in caplog.text
