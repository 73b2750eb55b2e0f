"""The benchmarks' plain-Python baseline (tools/bench/baseline_book.py) gives tickbus's output.

A ratio against a baseline means something only if the baseline computes the same thing: the
same ``BookTop`` (top levels, best bid/ask, update id, valid) after every depth event, the
same ``Trade``/``BookTicker``, the same sync outcome on gaps, duplicates and resyncs. Real
frames only (the bundled sample; the shared USD-M capture when present); the awkward cases
are derived from them. No timings here: speed is measured by the benchmarks, not asserted.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from tickbus.plugins.binance.capture import SAMPLE, read_frames
from tickbus.plugins.binance.parse import FrameError, parse_fixed
from tickbus.tools.bench.baseline_book import BaselineBook, Fixed, iter_capture_lines
from tickbus.tools.bench.compare import Frame, Mismatch, TickbusFeedBook, verify

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binance"
# its first event after the snapshot has u == lastUpdateId: kept on futures (dropped on spot)
USDM = SHARED / "hftbacktest" / "examples" / "usdm" / "ethusdt_20240808.gz"


@pytest.fixture(scope="module")
def sample() -> list[Frame]:
    return list(read_frames(SAMPLE))


def _depth_positions(frames: list[Frame]) -> list[int]:
    return [i for i, f in enumerate(frames) if f[1] == "ws" and b"depthUpdate" in f[3][:120]]


MID = 200  # the derived cases change the stream at this depth event...


@pytest.fixture(scope="module")
def head(sample: list[Frame]) -> list[Frame]:
    """...of the sample's first 300 depth events (and the frames between them)."""
    return sample[: _depth_positions(sample)[300]]


def test_same_output_on_every_frame_of_the_sample(sample: list[Frame]) -> None:
    counts = verify(sample, "spot", 20, "BTCUSDT")
    assert counts["frames"] == len(sample)
    assert counts["book_tops"] > 1700  # every applied depth event compared
    assert counts["trades"] > 3000 and counts["tickers"] > 13000
    assert counts["gaps"] == 0


def test_a_baseline_that_differs_is_caught(
    sample: list[Frame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify() is the gate of the benchmarks: a baseline one level short must not pass."""
    real_top = BaselineBook.top
    monkeypatch.setattr(BaselineBook, "top", lambda self, n: real_top(self, n - 1))
    with pytest.raises(Mismatch):
        verify(sample, "spot", 20, "BTCUSDT")


@pytest.mark.parametrize("bad", ["-1.00000000", "1e5", "NaN", "1.000000001", "", "1.2.3", "٣.0"])
def test_a_bad_number_is_a_bad_frame_for_both(head: list[Frame], bad: str) -> None:
    """A depth frame with a number tickbus refuses: both skip it as bad, then see the gap."""
    i = _depth_positions(head)[MID]
    ts, kind, sym, payload = head[i]
    tampered = payload.replace(b'"0.00000000"]', f'"{bad}"]'.encode(), 1)
    assert tampered != payload
    with pytest.raises(FrameError):
        parse_fixed(bad)
    counts = verify([*head[:i], (ts, kind, sym, tampered), *head[i + 1 :]], "spot", 20, "X")
    assert counts["gaps"] == 1  # the next event does not chain: the bad one never applied


MUTATIONS = ["drop", "repeat", "duplicate", "swap", "stale-snapshot", "resync", "crossed"]
MUTATIONS += ["crossed-snapshot"]


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_same_sync_outcomes_on_derived_streams(head: list[Frame], mutation: str) -> None:
    """Gaps, stale re-deliveries (at once: ``u`` equal to the book's id; later: below it),
    reordering, a snapshot too old, a resync from a fresh snapshot with buffered events, a
    bid above the best ask: the baseline follows tickbus event by event."""
    depth = _depth_positions(head)
    k = depth[MID]
    frames = list(head)
    if mutation == "drop":
        del frames[k]
    elif mutation == "repeat":
        frames.insert(k + 1, head[k])
    elif mutation == "duplicate":
        frames.insert(depth[MID + 3], head[k])
    elif mutation == "swap":
        j = depth[MID + 1]
        frames[k], frames[j] = frames[j], frames[k]
    elif mutation == "stale-snapshot":  # the capture's own snapshot again, after a gap
        rest = next(f for f in head if f[1] == "rest")
        del frames[k]
        frames.insert(depth[MID + 2] - 1, rest)
    elif mutation == "crossed":  # the event's first bid moved far above the best ask
        ts, kind, sym, payload = head[k]
        start = payload.index(b'"b":[["') + 7
        end = payload.index(b'"]', start)
        crossing = payload[:start] + b'99999.00000000","1.00000000' + payload[end:]
        frames[k] = (ts, kind, sym, crossing)
    elif mutation == "crossed-snapshot":  # a gap, then a crossed snapshot containing it all
        k1 = depth[MID + 1]
        body = _snapshot_after(head, k1, cross=True)
        frames = [*head[:k], *head[k + 1 : k1 + 1], (head[k1][0], "rest", None, body)]
        frames += head[k1 + 1 :]
    else:  # resync: a gap, then a snapshot of the real book two events later
        k1, k3 = depth[MID + 1], depth[MID + 3]
        body = _snapshot_after(head, k1)  # lastUpdateId = u of the event at k1
        frames = [*head[:k], *head[k + 1 : k3 + 1], (head[k3][0], "rest", None, body)]
        frames += head[k3 + 1 :]
    counts = verify(frames, "spot", 20, "BTCUSDT")
    gaps = {"drop": 1, "swap": 1, "stale-snapshot": 1, "resync": 1, "crossed-snapshot": 1}
    assert counts["gaps"] == gaps.get(mutation, 0)
    assert counts["crossed"] == mutation.startswith("crossed")
    if mutation in ("repeat", "duplicate"):
        assert counts["stale"] == verify(head, "spot", 20, "BTCUSDT")["stale"] + 1
    if mutation == "stale-snapshot":
        assert counts["too_old"] == 1
    if mutation == "resync":
        assert counts["syncs"] == 2
        # no BookTop for the 4 events from the dropped one to the snapshot, one for the
        # snapshot (SYNCED), then one per event again to the end
        assert counts["book_tops"] == verify(head, "spot", 20, "BTCUSDT")["book_tops"] - 4 + 1


def _snapshot_after(frames: list[Frame], last: int, cross: bool = False) -> bytes:
    """A REST depth body of the book tickbus holds after ``frames[last]`` (real levels;
    ``cross``: plus a bid far above the best ask)."""
    tb = TickbusFeedBook("spot", 20)
    for ts, kind, sym, payload in frames[: last + 1]:
        if kind == "rest":
            tb.on_rest(payload, sym or "BTCUSDT", ts)
        elif kind == "ws":
            tb.on_frame(payload, ts)
    sync = tb.syncs["BTCUSDT"]

    def side(name: str) -> str:
        return ",".join(
            f'["{p // 10**8}.{p % 10**8:08d}","{q // 10**8}.{q % 10**8:08d}"]'
            for p, q in sync.book.levels(name).tolist()
        )

    uid = sync.last_update_id
    bids = ('["99999.00000000","1.00000000"],' if cross else "") + side("bid")
    return f'{{"lastUpdateId":{uid},"bids":[{bids}],"asks":[{side("ask")}]}}'.encode()


@pytest.mark.skipif(not USDM.exists(), reason=f"{USDM} not present")
def test_same_output_on_a_usdm_capture() -> None:
    """Futures: chain on ``pu``, keep ``u == L``, prices with 2 decimals, quantities with 3."""
    frames = list(islice(read_frames(USDM), 15_000))
    counts = verify(frames, "usdm", 20, "ETHUSDT")
    assert counts["book_tops"] > 500 and counts["gaps"] == 0


def test_capture_lines_are_the_replay_readers_frames(sample: list[Frame]) -> None:
    """The baseline's .gz reader yields what tickbus's reader yields (symbols aside)."""
    mine = [(ts, kind, payload) for ts, kind, _, payload in iter_capture_lines(SAMPLE)]
    assert mine == [(ts, kind, payload) for ts, kind, _, payload in sample]


@pytest.mark.parametrize(
    ("price", "qty", "values"),
    [
        ("61737.63000000", "0.00100000", ["61737.63000000", "0.5", "7", "1.100000000", ".5"]),
        ("61234.50", "0.001", ["61234.50", "61234.5", "0.001", "12", "0.0010", "3.14159265"]),
    ],
)
def test_numbers_are_exact_in_and_out_of_the_symbols_format(
    price: str, qty: str, values: list[str]
) -> None:
    """Fixed decimals per symbol take the fast path; any other spelling is still exact."""
    fx = Fixed(price, qty)
    pairs = [(v, v) for v in values]
    want = [(parse_fixed(v), parse_fixed(v)) for v in values]
    assert fx.pairs(pairs) == want
    assert fx.pairs(pairs, keys_negated=True) == [(-p, q) for p, q in want]
    assert [fx.one(v, True) for v in values] == [p for p, _ in want]
