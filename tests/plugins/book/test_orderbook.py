"""OrderBook: exact integer book, checked against a dict reference on real and random data."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book.orderbook import MERGE_MIN, BookError, OrderBook
from tickbus.schemas import DepthDiff, DepthSnapshot

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def arr(levels: list[tuple[int, int]] | list[list[int]]) -> np.ndarray:
    return np.array(levels, dtype=np.int64).reshape(-1, 2)


def view(b: bytes) -> np.ndarray:
    return np.frombuffer(b, "<i8").reshape(-1, 2)


class Ref:
    """Dict reference book."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def apply(self, bids: np.ndarray, asks: np.ndarray) -> None:
        for side, lv in ((self.bids, bids), (self.asks, asks)):
            for p, q in lv.tolist():
                if q:
                    side[p] = q
                else:
                    side.pop(p, None)

    def levels(self, side: str) -> list[list[int]]:
        d = self.bids if side == "bid" else self.asks
        return [[p, d[p]] for p in sorted(d, reverse=side == "bid")]


def assert_same(book: OrderBook, ref: Ref) -> None:
    assert book.levels("bid").tolist() == ref.levels("bid")
    assert book.levels("ask").tolist() == ref.levels("ask")
    bb, ba = ref.levels("bid")[:1], ref.levels("ask")[:1]
    assert book.best() == (*(bb[0] if bb else (0, 0)), *(ba[0] if ba else (0, 0)))
    assert book.depth == (len(ref.bids), len(ref.asks))


@cache
def sample_stream() -> tuple[DepthSnapshot, tuple[DepthDiff, ...]]:
    """The shipped real capture: its snapshot and the diffs that follow it (u > L)."""
    parser = FrameParser()
    snap = None
    diffs = []
    for rec in read_capture(SAMPLE):
        if rec.kind == "rest":
            snap = parser.parse_snapshot(rec.payload, rec.symbol, 0)
        elif rec.stream and "@depth" in rec.stream:
            diffs.append(parser.parse(rec.payload, 0))
    assert snap is not None
    return snap, tuple(d for d in diffs if d.last_update_id > snap.last_update_id)


# ---------------------------------------------------------------- real data


def test_real_stream_matches_dict_reference() -> None:
    snap, diffs = sample_stream()
    book, ref = OrderBook(depth_hint=256), Ref()  # small hint: growth happens on the way
    book.apply_snapshot(view(snap.bids), view(snap.asks))
    ref.apply(view(snap.bids), view(snap.asks))
    assert_same(book, ref)
    for i, d in enumerate(diffs):
        book.apply_levels(d.bids, d.asks)
        ref.apply(view(d.bids), view(d.asks))
        if i % 97 == 0:
            assert_same(book, ref)
        assert not book.crossed()
    assert_same(book, ref)
    assert book.capacity >= max(book.depth)


def test_merge_and_levelwise_paths_agree_on_real_diffs() -> None:
    snap, diffs = sample_stream()
    a, b = OrderBook(), OrderBook()
    a.apply_snapshot(snap.bids, snap.asks)
    b.apply_snapshot(snap.bids, snap.asks)
    big = 0
    for d in diffs:
        a._run(view(d.bids), view(d.asks), merge_min=1)  # always merge
        b._run(view(d.bids), view(d.asks), merge_min=1 << 40)  # never merge
        big += (len(d.bids) // 16 >= MERGE_MIN) + (len(d.asks) // 16 >= MERGE_MIN)
    assert big > 20  # both paths really ran on real data
    assert a.levels("bid").tolist() == b.levels("bid").tolist()
    assert a.levels("ask").tolist() == b.levels("ask").tolist()


def test_bulk_diff_of_1000_plus_levels() -> None:
    """Consecutive real diffs concatenated into one bulk diff (a repeated price keeps its
    last quantity) must give exactly the book of applying them one by one."""
    snap, diffs = sample_stream()
    one, bulk = OrderBook(), OrderBook()
    one.apply_snapshot(snap.bids, snap.asks)
    bulk.apply_snapshot(snap.bids, snap.asks)
    end = 200
    while (
        sum(len(d.bids) for d in diffs[200:end]) < 16_000
        or sum(len(d.asks) for d in diffs[200:end]) < 16_000
    ):
        end += 1
    chunk = diffs[200:end]
    for d in chunk:
        one.apply_levels(d.bids, d.asks)
    bids = np.concatenate([view(d.bids) for d in chunk])
    asks = np.concatenate([view(d.asks) for d in chunk])
    assert len(bids) >= 1000 and len(asks) >= 1000
    assert len(np.unique(bids[:, 0])) < len(bids)  # repeated prices really occur
    bulk.apply_diff(bids, asks)
    assert bulk.levels("bid").tolist() == one.levels("bid").tolist()
    assert bulk.levels("ask").tolist() == one.levels("ask").tolist()


@needs_shared
def test_largest_real_event_1076_levels() -> None:
    """Spot BTCUSDT's biggest event (1,076 levels) on the live book vs the dict reference."""
    parser = FrameParser()
    files = [SHARED / "hftbacktest/examples/spot" / f"btcusdt_2024080{d}.gz" for d in (8, 9)]
    book, ref = OrderBook(), Ref()
    L = -1
    biggest = 0
    for rec in read_capture(*files):
        if rec.kind == "rest":
            s = parser.parse_snapshot(rec.payload, rec.symbol, 0)
            L = s.last_update_id
            book.apply_snapshot(s.bids, s.asks)
            ref.apply(view(s.bids), view(s.asks))
        elif L >= 0 and rec.stream and "@depth" in rec.stream:
            d = parser.parse(rec.payload, 0)
            if d.last_update_id <= L:
                continue
            n = (len(d.bids) + len(d.asks)) // 16
            book.apply_levels(d.bids, d.asks)
            ref.apply(view(d.bids), view(d.asks))
            if n > biggest:
                biggest = n
                assert_same(book, ref)
    assert biggest == 1076
    assert_same(book, ref)


# ---------------------------------------------------------------- random vs reference


@pytest.mark.parametrize("kmax", [8, 40, 300, 1500])
def test_random_diffs_match_reference(kmax: int) -> None:
    """Unsorted, repeated, deleted-absent levels; small (level-wise) and bulk (merge) sizes."""
    rng = np.random.default_rng(kmax)
    book, ref = OrderBook(depth_hint=16), Ref()
    for _ in range(200):
        sides = []
        for _side in range(2):
            k = int(rng.integers(0, kmax + 1))
            px = rng.integers(1, 3000, size=k) * 1_000_000
            qty = rng.integers(0, 4, size=k) * 10_000  # ~1/4 deletes, many of absent levels
            sides.append(np.stack([px, qty], axis=1).astype(np.int64))
        if rng.random() < 0.5:  # half the time in Binance order (bids desc, asks asc)
            sides[0] = sides[0][np.argsort(-sides[0][:, 0], kind="stable")]
            sides[1] = sides[1][np.argsort(sides[1][:, 0], kind="stable")]
        book.apply_diff(sides[0], sides[1])
        ref.apply(sides[0], sides[1])
        assert book.levels("bid").tolist() == ref.levels("bid")
        assert book.levels("ask").tolist() == ref.levels("ask")
    assert_same(book, ref)


# ---------------------------------------------------------------- units


def test_snapshot_replaces_sorts_skips_zero_and_keeps_last_duplicate() -> None:
    book = OrderBook()
    book.apply_diff(arr([[50, 1]]), arr([[60, 1]]))
    book.apply_snapshot(arr([[10, 1], [30, 3], [20, 0], [30, 4]]), arr([[40, 1], [35, 2]]))
    assert book.levels("bid").tolist() == [[30, 4], [10, 1]]
    assert book.levels("ask").tolist() == [[35, 2], [40, 1]]
    assert book.best() == (30, 4, 35, 2)


def test_delete_absent_level_is_noop_and_delete_present_works() -> None:
    book = OrderBook()
    book.apply_snapshot(arr([[100, 5], [99, 6]]), arr([[101, 7]]))
    book.apply_diff(arr([[98, 0], [100, 0]]), arr([[150, 0]]))
    assert book.levels("bid").tolist() == [[99, 6]]
    assert book.levels("ask").tolist() == [[101, 7]]


def test_exact_extremes_roundtrip_through_top() -> None:
    """1 unit (0.00000001), 99999.99999999 and the int64 maximum stay exact end to end."""
    big = 2**63 - 1
    book = OrderBook()
    book.apply_snapshot(arr([[1, 1], [9_999_999_999_999, 2]]), arr([[big, big], [10**13, 3]]))
    assert book.best() == (9_999_999_999_999, 2, 10**13, 3)
    bids, asks = book.top(5)
    assert view(bids).tolist() == [[9_999_999_999_999, 2], [1, 1]]
    assert view(asks).tolist() == [[10**13, 3], [big, big]]


def test_top_format_best_first_padding_and_sizes() -> None:
    book = OrderBook()
    book.apply_snapshot(arr([[i, i] for i in range(1, 31)]), arr([[100, 1], [101, 2]]))
    bids, asks = book.top(20)
    assert len(bids) == 20 * 16 and len(asks) == 2 * 16
    assert view(bids)[:, 0].tolist() == list(range(30, 10, -1))
    assert view(asks).tolist() == [[100, 1], [101, 2]]
    pb, pa = book.top(4, pad=True)
    assert view(pa).tolist() == [[100, 1], [101, 2], [0, 0], [0, 0]]
    assert view(pb).tolist() == [[30, 30], [29, 29], [28, 28], [27, 27]]
    assert book.top(0) == (b"", b"")
    book.clear()
    assert book.top(3) == (b"", b"") and book.best() == (0, 0, 0, 0) and len(book) == 0
    with pytest.raises(ValueError):
        book.top(-1)


def test_crossed_detection() -> None:
    book = OrderBook()
    book.apply_snapshot(arr([[100, 1]]), arr([[101, 1]]))
    assert not book.crossed()
    book.apply_diff(arr([[101, 2]]), arr([]))  # locked: bid == ask
    assert book.crossed()
    book.apply_diff(arr([[101, 0]]), arr([[101, 0]]))  # one side empty: not crossed
    assert book.best() == (100, 1, 0, 0) and not book.crossed()
    book.apply_diff(arr([]), arr([[99, 3]]))  # ask below bid
    assert book.crossed()


def test_capacity_grows_without_losing_levels() -> None:
    book = OrderBook(depth_hint=16)
    assert book.capacity < 5000
    levels = arr([[p, p] for p in range(1, 5001)])
    book.apply_snapshot(levels[:10], levels[-10:] + [[10_000, 0]])
    book.apply_diff(levels, arr([]))  # 5,000 levels into a 16-level book
    assert book.capacity >= 5000 and book.depth == (5000, 10)
    assert book.levels("bid").tolist() == levels[::-1].tolist()
    assert book.best()[:2] == (5000, 5000)
    for p in range(5001, 5100):  # growth through the level-wise path too
        book.apply_diff(arr([[p, 1]]), arr([]))
    assert book.depth[0] == 5099 and book.best()[:2] == (5099, 1)


def test_block_split_unlink_and_compaction_level_by_level() -> None:
    """Insert 3,000 levels one small diff at a time (block splits), then delete 97% of them in
    random order (blocks emptied and unlinked, sparse blocks compacted) - always vs dict."""
    rng = np.random.default_rng(7)
    book, ref = OrderBook(depth_hint=16), Ref()
    prices = rng.permutation(np.arange(1, 3001, dtype=np.int64)) * 1000
    for chunk in np.array_split(prices, 300):
        lv = np.stack([chunk, chunk // 1000], axis=1)
        book.apply_diff(lv, lv + np.array([[10**7, 0]]))
        ref.apply(lv, lv + np.array([[10**7, 0]]))
    assert_same(book, ref)
    for i, chunk in enumerate(np.array_split(rng.permutation(prices)[:2910], 291)):
        gone = np.stack([chunk, np.zeros_like(chunk)], axis=1)
        book.apply_diff(gone, gone[::-1] + np.array([[10**7, 0]]))
        ref.apply(gone, gone[::-1] + np.array([[10**7, 0]]))
        if i % 29 == 0:
            assert_same(book, ref)
    assert_same(book, ref)
    assert book.depth == (90, 90)
    assert view(book.top(100)[0]).tolist() == ref.levels("bid")


@pytest.mark.parametrize(
    ("bids", "asks", "match"),
    [
        (arr([[100, 1], [99, -1]]), arr([]), "qty=-1"),
        (arr([[0, 1]]), arr([]), "price=0"),
        (arr([]), arr([[101, 1], [-5, 1]]), "ask level"),
        (np.array([[1.5, 2.0]]), arr([]), "int64"),
        (arr([[1, 2]]).reshape(-1), arr([]), "shape"),
        (b"\x00" * 15, b"", "multiple of 16"),
    ],
)
def test_bad_updates_raise_and_leave_book_untouched(
    bids: np.ndarray, asks: np.ndarray, match: str
) -> None:
    book = OrderBook()
    book.apply_snapshot(arr([[100, 5], [98, 1]]), arr([[101, 7]]))
    before = (book.levels("bid").tolist(), book.levels("ask").tolist(), book.best())
    with pytest.raises(BookError, match=match):
        book.apply_diff(bids, asks)
    assert (book.levels("bid").tolist(), book.levels("ask").tolist(), book.best()) == before
    with pytest.raises(BookError):
        book.apply_snapshot(bids, asks)
    assert (book.levels("bid").tolist(), book.levels("ask").tolist(), book.best()) == before


def test_levels_bytes_and_buffer_types_agree() -> None:
    a, b, c = OrderBook(), OrderBook(), OrderBook()
    bids, asks = arr([[10, 1], [9, 2]]), arr([[11, 3]])
    a.apply_diff(bids, asks)
    b.apply_levels(bids.tobytes(), asks.tobytes())
    c.apply_levels(bytearray(bids.tobytes()), memoryview(asks.tobytes()))  # type: ignore[arg-type]
    assert a.top(5) == b.top(5) == c.top(5)
    with pytest.raises(ValueError):
        a.levels("mid")
