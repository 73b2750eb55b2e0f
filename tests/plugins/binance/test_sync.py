"""BookSync on real Binance streams and on faults derived from them.

No capture has a real sequence gap (SOURCES.md §6), so gaps, duplicates, swaps, stale
snapshots and edge alignments are made here from the real recorded events. A "derived
snapshot" is the book an independent dict reference reaches after applying the clean stream
up to some event, stamped with that event's ``u`` - exactly what Binance's REST endpoint
would have returned at that instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book.sync import Action, BadMessage, BookSync, Market, SyncState
from tickbus.schemas import BookTicker, DepthDiff, DepthSnapshot

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
HFT = SHARED / "hftbacktest" / "examples"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


# ---------------------------------------------------------------- real streams + reference


@dataclass(frozen=True)
class Stream:
    """One symbol's recorded depth stream: every diff in arrival order, the REST snapshot,
    how many diffs arrived before it, and the bookTickers by update id."""

    diffs: tuple[DepthDiff, ...]
    snapshot: DepthSnapshot
    before_snapshot: int
    tickers: dict[int, tuple[int, int, int, int]]


@cache
def load(*paths: Path) -> Stream:
    parser = FrameParser()
    diffs: list[DepthDiff] = []
    snap: DepthSnapshot | None = None
    before = -1
    tickers: dict[int, tuple[int, int, int, int]] = {}
    for rec in read_capture(*paths):
        if rec.kind == "rest":
            snap = parser.parse_snapshot(rec.payload, rec.symbol, rec.ts_ns)
            before = len(diffs)
            continue
        msg = parser.parse(rec.payload, rec.ts_ns)
        if type(msg) is DepthDiff:
            diffs.append(msg)
        elif type(msg) is BookTicker:
            tickers[msg.update_id] = (msg.bid_px, msg.bid_qty, msg.ask_px, msg.ask_qty)
    assert snap is not None and before >= 0
    return Stream(tuple(diffs), snap, before, tickers)


def sample() -> Stream:
    return load(SAMPLE)


def pairs(levels: bytes) -> list[list[int]]:
    return np.frombuffer(levels, "<i8").reshape(-1, 2).tolist()


class RefBook:
    """Independent reference: two dicts, built the obvious way."""

    def __init__(self, snap: DepthSnapshot) -> None:
        self.bids = {p: q for p, q in pairs(snap.bids) if q}
        self.asks = {p: q for p, q in pairs(snap.asks) if q}

    def apply(self, d: DepthDiff) -> None:
        for side, levels in ((self.bids, d.bids), (self.asks, d.asks)):
            for p, q in pairs(levels):
                if q:
                    side[p] = q
                else:
                    side.pop(p, None)

    def bid_levels(self) -> list[list[int]]:
        return [[p, self.bids[p]] for p in sorted(self.bids, reverse=True)]

    def ask_levels(self) -> list[list[int]]:
        return [[p, self.asks[p]] for p in sorted(self.asks)]

    def snapshot(self, symbol: str, last_update_id: int) -> DepthSnapshot:
        pack = lambda lv: np.array(lv, dtype="<i8").reshape(-1, 2).tobytes()  # noqa: E731
        return DepthSnapshot(
            symbol, last_update_id, pack(self.bid_levels()), pack(self.ask_levels()), 0, 0
        )


def clean_ref(s: Stream, upto: int, spot: bool = True) -> RefBook:
    """Reference book after the clean stream's diffs ``[0, upto]`` (those newer than L)."""
    ref = RefBook(s.snapshot)
    L = s.snapshot.last_update_id
    for d in s.diffs[: upto + 1]:
        if d.last_update_id > L or (not spot and d.last_update_id == L):
            ref.apply(d)
    return ref


def derived_snapshot(s: Stream, k: int) -> DepthSnapshot:
    """What REST would have returned right after event ``k``."""
    return clean_ref(s, k).snapshot(s.snapshot.symbol, s.diffs[k].last_update_id)


def assert_book_equals(sync: BookSync, ref: RefBook) -> None:
    assert sync.book.levels("bid").tolist() == ref.bid_levels()
    assert sync.book.levels("ask").tolist() == ref.ask_levels()


def feed(sync: BookSync, diffs: list[DepthDiff] | tuple[DepthDiff, ...]) -> list[Action]:
    return [sync.on_diff(d) for d in diffs]


def oracle_hits(sync: BookSync, s: Stream, diffs: list[DepthDiff]) -> tuple[int, int]:
    """Feed ``diffs``; count (comparisons, mismatches) of best vs bookTicker with equal u."""
    hits = bad = 0
    for d in diffs:
        if sync.on_diff(d) is Action.APPLIED and d.last_update_id in s.tickers:
            hits += 1
            bad += sync.book.best() != s.tickers[d.last_update_id]
    return hits, bad


def as_futures(s: Stream) -> Stream:
    """The same real events with futures' ``pu`` (= previous event's ``u``) filled in."""
    out = []
    prev = -1
    for d in s.diffs:
        out.append(msgspec.structs.replace(d, prev_update_id=prev))
        prev = d.last_update_id
    return Stream(tuple(out), s.snapshot, s.before_snapshot, s.tickers)


# ---------------------------------------------------------------- clean stream


def test_clean_stream_buffers_aligns_and_applies() -> None:
    s = sample()
    sync = BookSync("spot", "BTCUSDT")
    assert sync.need_snapshot and not sync.valid and sync.last_update_id == -1
    pre = s.diffs[: s.before_snapshot]
    assert feed(sync, pre) == [Action.BUFFERED] * len(pre)
    assert sync.buffered == len(pre) == 3
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED
    # two buffered events are older than L (u <= L) and dropped; the third straddles L+1
    assert (sync.stats.stale, sync.stats.applied) == (2, 1)
    assert sync.valid and sync.state is SyncState.LIVE and not sync.need_snapshot
    rest = s.diffs[s.before_snapshot :]
    assert set(feed(sync, rest)) == {Action.APPLIED}
    assert sync.last_update_id == s.diffs[-1].last_update_id
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))
    assert (sync.stats.gaps, sync.stats.syncs, sync.stats.resyncs) == (0, 1, 0)


def test_snapshot_before_any_diff_then_straddle() -> None:
    s = sample()
    sync = BookSync("spot")
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED  # nothing buffered: accepted
    acts = feed(sync, s.diffs[:4])
    assert acts == [Action.STALE, Action.STALE, Action.APPLIED, Action.APPLIED]
    assert_book_equals(sync, clean_ref(s, 3))


def test_first_event_after_snapshot_not_straddling_is_gap() -> None:
    s = sample()
    sync = BookSync("spot")
    sync.on_snapshot(s.snapshot)
    # events 2 and 3 lost: event 4 starts after L + 1
    assert s.diffs[4].first_update_id > s.snapshot.last_update_id + 1
    assert sync.on_diff(s.diffs[4]) is Action.GAP
    assert sync.need_snapshot and not sync.valid and len(sync.book) == 0
    assert sync.stats.gaps == 1 and sync.buffered == 1


# ---------------------------------------------------------------- derived faults


def _synced(s: Stream, market: Market = "spot") -> tuple[BookSync, int]:
    """A BookSync through the snapshot; returns it and the index of the next diff."""
    sync = BookSync(market, s.snapshot.symbol)
    feed(sync, s.diffs[: s.before_snapshot])
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED
    return sync, s.before_snapshot


def test_dropped_event_is_gap_then_resync_with_later_snapshot() -> None:
    s = sample()
    sync, i = _synced(s)
    g = 600
    assert set(feed(sync, s.diffs[i:g])) == {Action.APPLIED}
    # event g is lost; g + 1 cannot chain
    assert sync.on_diff(s.diffs[g + 1]) is Action.GAP
    assert sync.need_snapshot and not sync.valid
    assert len(sync.book) == 0 and sync.last_update_id == -1
    k = g + 40
    assert feed(sync, s.diffs[g + 2 : k + 10]) == [Action.BUFFERED] * (k + 8 - g)
    # a fresh snapshot taken after event k: buffered events <= k are dropped, k+1.. applied
    assert sync.on_snapshot(derived_snapshot(s, k)) is Action.SYNCED
    assert sync.valid and sync.last_update_id == s.diffs[k + 9].last_update_id
    assert_book_equals(sync, clean_ref(s, k + 9))
    hits, bad = oracle_hits(sync, s, list(s.diffs[k + 10 :]))
    assert hits > 100 and bad == 0
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))
    st = sync.stats
    assert (st.gaps, st.syncs, st.resyncs) == (1, 2, 1)


def test_gap_without_resync_never_reports_valid() -> None:
    """After a gap nothing is applied until a snapshot comes, however long the stream."""
    s = sample()
    sync, i = _synced(s)
    feed(sync, s.diffs[i:100])
    acts = feed(sync, s.diffs[101:])
    assert acts[0] is Action.GAP and set(acts[1:]) == {Action.BUFFERED}
    assert not sync.valid and sync.book.best() == (0, 0, 0, 0)


def test_duplicate_event_is_stale_and_harmless() -> None:
    s = sample()
    sync, i = _synced(s)
    stream = list(s.diffs[i:])
    stream.insert(300, stream[299])  # re-delivered right after itself
    stream.insert(900, stream[500])  # and a very late re-delivery
    acts = feed(sync, stream)
    assert acts.count(Action.STALE) == 2 and acts[300] is Action.STALE
    assert acts.count(Action.APPLIED) == len(stream) - 2
    assert sync.stats.gaps == 0 and sync.valid
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))


def test_swapped_events_gap_and_recover() -> None:
    s = sample()
    sync, i = _synced(s)
    g = 400
    feed(sync, s.diffs[i:g])
    assert sync.on_diff(s.diffs[g + 1]) is Action.GAP  # arrives before its predecessor
    assert sync.on_diff(s.diffs[g]) is Action.BUFFERED
    feed(sync, s.diffs[g + 2 : g + 30])
    assert sync.on_snapshot(derived_snapshot(s, g + 5)) is Action.SYNCED
    feed(sync, s.diffs[g + 30 :])
    assert sync.valid and sync.stats.gaps == 1
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))


def test_stale_snapshot_is_rejected_and_buffer_kept() -> None:
    s = sample()
    sync = BookSync("spot", "BTCUSDT")
    feed(sync, s.diffs[10:60])  # joined late: the first buffered event starts after L + 1
    assert s.diffs[10].first_update_id > s.snapshot.last_update_id + 1
    assert sync.on_snapshot(s.snapshot) is Action.SNAPSHOT_TOO_OLD
    assert sync.need_snapshot and sync.buffered == 50 and sync.stats.too_old == 1
    assert sync.on_snapshot(derived_snapshot(s, 30)) is Action.SYNCED
    assert sync.stats.stale == 21  # events 10..30 are inside the new snapshot
    feed(sync, s.diffs[60:])
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))


def test_hole_inside_the_buffer_is_a_gap() -> None:
    s = sample()
    sync = BookSync("spot")
    buffered = list(s.diffs[100:140])
    del buffered[20]  # events 100..139 without 120
    feed(sync, buffered)
    assert sync.on_snapshot(derived_snapshot(s, 105)) is Action.GAP
    assert sync.need_snapshot and sync.stats.gaps == 1
    assert sync.buffered == 19  # 121..139 wait for the next snapshot
    assert sync.on_snapshot(derived_snapshot(s, 125)) is Action.SYNCED
    assert sync.last_update_id == s.diffs[139].last_update_id
    assert_book_equals(sync, clean_ref(s, 139))


def test_spot_edge_U_equals_L_plus_1_derived() -> None:
    """Snapshot L == u of event k: k is dropped (u <= L), k+1 starts exactly at L + 1."""
    s = sample()
    k = 700
    sync = BookSync("spot")
    assert feed(sync, s.diffs[k - 2 : k + 1]) == [Action.BUFFERED] * 3
    snap = derived_snapshot(s, k)
    assert s.diffs[k + 1].first_update_id == snap.last_update_id + 1
    assert sync.on_snapshot(snap) is Action.SYNCED
    assert sync.stats.stale == 3 and sync.stats.applied == 0
    assert sync.on_diff(s.diffs[k + 1]) is Action.APPLIED
    assert_book_equals(sync, clean_ref(s, k + 1))


def test_buffer_overflow_evicts_oldest() -> None:
    s = sample()
    sync = BookSync("spot", max_buffer=5)
    feed(sync, s.diffs[:20])
    assert sync.buffered == 5 and sync.stats.overflow == 15
    # the snapshot needed the evicted events: it is too old for what is left
    assert sync.on_snapshot(s.snapshot) is Action.SNAPSHOT_TOO_OLD
    assert sync.on_snapshot(derived_snapshot(s, 16)) is Action.SYNCED
    assert_book_equals(sync, clean_ref(s, 19))


def test_crossing_diff_invalidates_the_book() -> None:
    s = sample()
    sync, i = _synced(s)
    feed(sync, s.diffs[i:200])
    nxt = s.diffs[200]
    _, _, ask_px, _ = sync.book.best()
    # the real next event plus one bid at the best ask: a book that cannot exist
    bad = msgspec.structs.replace(
        nxt, bids=nxt.bids + np.array([[ask_px, 1]], dtype="<i8").tobytes()
    )
    assert sync.on_diff(bad) is Action.CROSSED
    assert sync.need_snapshot and not sync.valid and sync.stats.crossed == 1


def test_crossed_snapshot_is_refused() -> None:
    s = sample()
    snap = s.snapshot
    ask = pairs(snap.asks)[0][0]
    crossed = msgspec.structs.replace(
        snap, bids=np.array([[ask, 1]], dtype="<i8").tobytes() + snap.bids
    )
    sync = BookSync("spot")
    assert sync.on_snapshot(crossed) is Action.CROSSED
    assert sync.need_snapshot


def test_snapshot_ignored_when_live_reset_and_symbol_check() -> None:
    s = sample()
    sync, i = _synced(s)
    feed(sync, s.diffs[i:50])
    before = sync.book.levels("bid").tolist()
    assert sync.on_snapshot(s.snapshot) is Action.IGNORED
    assert sync.book.levels("bid").tolist() == before and sync.stats.ignored == 1
    with pytest.raises(ValueError, match="ETHUSDT"):
        sync.on_diff(msgspec.structs.replace(s.diffs[50], symbol="ETHUSDT"))
    with pytest.raises(ValueError, match="ETHUSDT"):
        sync.on_snapshot(msgspec.structs.replace(s.snapshot, symbol="ETHUSDT"))
    sync.reset()
    assert sync.need_snapshot and len(sync.book) == 0 and sync.buffered == 0
    with pytest.raises(ValueError, match="market"):
        BookSync("margin")  # type: ignore[arg-type]


# ---------------------------------------------------------------- impossible messages
#
# A DepthDiff/DepthSnapshot can arrive over the bus from another process, so BookSync checks
# what it would turn into state. Before: a diff with u = 99999999999999999999999 chaining on
# the book became its id, every real event after it was dropped as "stale", and the book
# still said it was valid.

_HUGE = 99_999_999_999_999_999_999_999  # the reviewer's id (a JSON frame through msgspec)
_BIG = 2**64 - 1  # the largest id a msgpack message from another process can carry


def _pack(levels: list[list[int]]) -> bytes:
    return np.array(levels, dtype="<i8").reshape(-1, 2).tobytes()


FORGED: dict[str, tuple[str, dict[str, object]]] = {
    # name: (BadMessage.kind, fields replaced in a real diff)
    "u-huge": ("ids", {"last_update_id": _HUGE}),
    "u-2**63": ("ids", {"last_update_id": 2**63}),
    "u-msgpack-max": ("ids", {"last_update_id": _BIG}),
    "U-negative": ("ids", {"first_update_id": -1}),
    "pu-huge": ("ids", {"prev_update_id": _BIG}),
    "pu-below-none": ("ids", {"prev_update_id": -2}),
    "levels-17-bytes": ("levels", {"bids": _pack([[100, 1]]) + b"\x00"}),
    "price-zero": ("levels", {"asks": _pack([[0, 1]])}),
    "price-negative": ("levels", {"bids": _pack([[-5, 1]])}),
    "qty-negative": ("levels", {"bids": _pack([[6_000_000_000_000, -1]])}),
}


def _forge(d: DepthDiff, name: str) -> DepthDiff:
    return msgspec.structs.replace(d, **FORGED[name][1])


def _refused(sync: BookSync, msg: DepthDiff | DepthSnapshot, kind: str) -> None:
    with pytest.raises(BadMessage) as info:
        sync.on_diff(msg) if type(msg) is DepthDiff else sync.on_snapshot(msg)
    assert info.value.kind == kind


@pytest.mark.parametrize("name", [*FORGED, "u-below-U"])
def test_impossible_diff_on_a_live_book_changes_nothing(name: str) -> None:
    """Forged versions of the next real event (chaining, so the hot path sees them) are
    refused; the book, its id and validity are untouched and the real stream goes on."""
    s = sample()
    sync, i = _synced(s)
    g = 400
    feed(sync, s.diffs[i:g])
    before = (sync.book.levels("bid").tolist(), sync.book.levels("ask").tolist())
    d = s.diffs[g]
    if name == "u-below-U":
        forged, kind = msgspec.structs.replace(d, last_update_id=d.first_update_id - 1), "ids"
    else:
        forged, kind = _forge(d, name), FORGED[name][0]
    _refused(sync, forged, kind)
    assert sync.valid and sync.last_update_id == s.diffs[g - 1].last_update_id
    assert (sync.book.levels("bid").tolist(), sync.book.levels("ask").tolist()) == before
    assert set(feed(sync, s.diffs[g:])) == {Action.APPLIED}
    assert sync.valid and sync.last_update_id == s.diffs[-1].last_update_id
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))
    assert sync.stats.gaps == 0


@pytest.mark.parametrize("name", list(FORGED))
def test_impossible_diff_is_never_buffered(name: str) -> None:
    """While waiting for the snapshot nothing is applied yet, so a forged diff would sit in
    the buffer and be applied unchecked later: it is refused before it is buffered."""
    s = sample()
    sync = BookSync("spot", "BTCUSDT")
    pre = list(s.diffs[: s.before_snapshot])
    feed(sync, pre[:2])
    _refused(sync, _forge(pre[2], name), FORGED[name][0])
    assert sync.buffered == 2
    feed(sync, pre[2:])
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED
    assert set(feed(sync, s.diffs[s.before_snapshot :])) == {Action.APPLIED}
    assert_book_equals(sync, clean_ref(s, len(s.diffs) - 1))


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"last_update_id": _HUGE}, "ids"),
        ({"last_update_id": 2**63}, "ids"),
        ({"last_update_id": _BIG}, "ids"),
        ({"last_update_id": -1}, "ids"),
        ({"bids": b"\x01" * 15}, "levels"),
        ({"asks": _pack([[0, 1]])}, "levels"),
        ({"bids": _pack([[1, -1]])}, "levels"),
    ],
    ids=["L-huge", "L-2**63", "L-msgpack-max", "L-negative", "levels-15-bytes", "price-zero",
         "qty-negative"],
)  # fmt: skip
def test_impossible_snapshot_changes_nothing(fields: dict[str, object], kind: str) -> None:
    """Before: a snapshot with a huge lastUpdateId dropped every buffered diff as contained,
    was accepted, and the book stayed valid with an id no real event could follow."""
    s = sample()
    sync = BookSync("spot", "BTCUSDT")
    feed(sync, s.diffs[: s.before_snapshot])
    _refused(sync, msgspec.structs.replace(s.snapshot, **fields), kind)
    assert sync.need_snapshot and sync.buffered == s.before_snapshot
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED
    assert set(feed(sync, s.diffs[s.before_snapshot :])) == {Action.APPLIED}
    assert sync.valid and sync.last_update_id == s.diffs[-1].last_update_id
    assert sync.stats.syncs == 1
    # a live book ignores snapshots, but an impossible one is still reported
    _refused(sync, msgspec.structs.replace(s.snapshot, **fields), kind)
    assert sync.stats.ignored == 0


def test_impossible_pu_on_a_live_futures_book() -> None:
    s = as_futures(sample())
    k = 500
    sync = BookSync("usdm")
    feed(sync, s.diffs[k - 3 : k + 1])
    assert sync.on_snapshot(derived_snapshot(s, k)) is Action.SYNCED
    feed(sync, s.diffs[k + 1 : 800])
    d = s.diffs[800]
    for forged in (
        msgspec.structs.replace(d, last_update_id=_BIG),  # pu chains: the hot path
        msgspec.structs.replace(d, prev_update_id=_HUGE),
        msgspec.structs.replace(d, prev_update_id=-7),
    ):
        _refused(sync, forged, "ids")
    assert set(feed(sync, s.diffs[800:])) == {Action.APPLIED}
    assert sync.valid and sync.stats.gaps == 0


# ---------------------------------------------------------------- futures rules (pu)


def test_futures_rules_on_derived_pu_stream() -> None:
    """Real events with pu filled in: u == L is kept, pu chains, a lost event is a gap."""
    s = as_futures(sample())
    k = 500
    sync = BookSync("usdm")
    feed(sync, s.diffs[k - 3 : k + 1])
    snap = derived_snapshot(s, k)  # L == u of event k
    assert sync.on_snapshot(snap) is Action.SYNCED
    # futures drop only u < L: event k (u == L) is the first applied, k+1 chains on pu == L
    assert (sync.stats.stale, sync.stats.applied) == (3, 1)
    assert sync.on_diff(s.diffs[k + 1]) is Action.APPLIED
    assert sync.on_diff(s.diffs[k + 1]) is Action.STALE  # duplicate
    assert sync.on_diff(s.diffs[k + 3]) is Action.GAP  # k + 2 lost: pu != previous u
    assert sync.need_snapshot
    spot = BookSync("spot")
    feed(spot, s.diffs[k - 3 : k + 1])
    spot.on_snapshot(snap)
    assert spot.stats.stale == 4  # the spot rule drops u == L


@needs_shared
def test_futures_real_u_equals_L_edge() -> None:
    """USD-M ETHUSDT 2024-08-08: the first event to apply has u == lastUpdateId exactly."""
    s = load(HFT / "usdm" / "ethusdt_20240808.gz")
    L = s.snapshot.last_update_id
    edge = next(i for i, d in enumerate(s.diffs) if d.last_update_id >= L)
    assert s.diffs[edge].last_update_id == L and s.diffs[edge + 1].prev_update_id == L
    sync = BookSync("usdm", "ETHUSDT")
    assert feed(sync, s.diffs[: s.before_snapshot]) == [Action.BUFFERED] * s.before_snapshot
    assert sync.on_snapshot(s.snapshot) is Action.SYNCED
    assert sync.stats.stale == edge and sync.stats.applied == s.before_snapshot - edge
    hits, bad = oracle_hits(sync, s, list(s.diffs[s.before_snapshot :]))
    assert hits >= 551 and bad == 0 and sync.stats.gaps == 0
    # under spot rules the u == L event would be dropped and the next one (U > L + 1,
    # futures ids are shared across symbols) could never be the first: snapshot refused
    wrong = BookSync("spot")
    feed(wrong, s.diffs[: s.before_snapshot])
    assert wrong.on_snapshot(s.snapshot) is Action.SNAPSHOT_TOO_OLD


@needs_shared
def test_spot_real_U_equals_L_plus_1_edge() -> None:
    """Spot ETHUSDT 2024-08-08: the first applied event starts exactly at U == L + 1."""
    s = load(HFT / "spot" / "ethusdt_20240808.gz")
    L = s.snapshot.last_update_id
    first = next(d for d in s.diffs if d.last_update_id > L)
    assert first.first_update_id == L + 1
    sync, i = _synced(s)
    assert sync.stats.stale == 2
    hits, bad = oracle_hits(sync, s, list(s.diffs[i:]))
    assert hits > 300 and bad == 0 and sync.stats.gaps == 0


@needs_shared
def test_futures_real_dropped_event_gap_and_resync() -> None:
    s = load(HFT / "usdm" / "btcusdt_20240808.gz")
    sync, i = _synced(s, "usdm")
    g = 3000
    feed(sync, s.diffs[i:g])
    assert sync.on_diff(s.diffs[g + 1]) is Action.GAP
    feed(sync, s.diffs[g + 2 : g + 50])
    k = g + 20
    snap = clean_ref(s, k, spot=False).snapshot("BTCUSDT", s.diffs[k].last_update_id)
    assert sync.on_snapshot(snap) is Action.SYNCED
    hits, bad = oracle_hits(sync, s, list(s.diffs[g + 50 :]))
    assert hits > 100 and bad == 0
    assert sync.book.levels("bid").tolist() == clean_ref(s, len(s.diffs) - 1, False).bid_levels()
