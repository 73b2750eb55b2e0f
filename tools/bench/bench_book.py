"""Order-book benchmark on real Binance data: parse, diff apply, frame -> ``md.book``.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_book [--capture FILE ...] [--market spot|usdm]
                                     [--runs N] [--repeat R] [--top N] [--json FILE]

Default capture: ``shared/data/binance`` spot BTCUSDT 2024-08-08+09 (6,495 depth events,
up to 1,076 levels) when present, else the shipped 3-minute sample.

What is measured (every figure is a per-call ``perf_counter_ns`` sample, pooled over the
replays of one run; p50 and p99 per run, then the median over the runs, and the range of the
per-run p50s as a noise indicator; the timer's own cost is the first row):

* **diff apply** - one depth event applied to a live book (rebuilt from the real snapshot at
  the start of each replay), split into *small* (<= 20 levels, bids + asks) and *large*
  (>= 500 levels) events. Rows: ``OrderBook.apply_levels`` (packed ``Levels`` bytes, what the
  book plugin calls), ``OrderBook.apply_diff`` (pre-made ``(k, 2)`` views), the raw kernel
  forced level-wise and forced merge (why ``MERGE_MIN`` exists), and two plain-Python books
  fed the same exact int levels: ``dict`` (price -> qty) and ``sortedcontainers.SortedDict``.
* **parse** - one raw depth frame (bytes) to a ``DepthDiff``: ``FrameParser.parse`` (the
  one-pass depth kernel), its general msgspec + numba path, and msgspec decoding the levels
  as ``list[tuple[str, str]]`` + Python exact conversion; msgspec's typed decode alone (no
  numbers converted) for scale.
* **frame -> md.book** - the whole hot path of one depth frame: parse, ``BookSync.on_diff``,
  top-N, build the ``BookTop`` Struct. tickbus vs. the same pipeline on the dict book
  (msgspec lists, ``heapq`` top-N) and on ``SortedDict`` (ordered iteration top-N).

Other processes on the machine add noise to p99; alternatives run interleaved per frame
(per event, with a rotating order, for diff apply and parse; whole replays alternating for the
pipeline) so they see the same conditions.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from tickbus.plugins.binance import parse as bparse  # noqa: E402
from tickbus.plugins.binance.capture import SAMPLE, read_capture  # noqa: E402
from tickbus.plugins.binance.parse import FrameParser  # noqa: E402
from tickbus.plugins.book import orderbook as ob  # noqa: E402
from tickbus.plugins.book.orderbook import OrderBook  # noqa: E402
from tickbus.plugins.book.sync import Action, BookSync  # noqa: E402
from tickbus.schemas import BookTop, DepthDiff, DepthSnapshot  # noqa: E402

try:  # optional: the strongest pure-Python sorted-map baseline
    from sortedcontainers import SortedDict
except ImportError:  # pragma: no cover
    SortedDict = None

SHARED = ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples"
DEFAULT_SHARED = [SHARED / "spot" / "btcusdt_20240808.gz", SHARED / "spot" / "btcusdt_20240809.gz"]
SMALL = 20
LARGE = 500
_I8 = np.dtype("<i8")


# --------------------------------------------------------------------------- data


@dataclass
class Capture:
    """The snapshot and the depth frames that apply on top of it (``u > L``; the ones that
    arrived before the snapshot included), raw and parsed."""

    symbol: str
    snapshot: DepthSnapshot
    snapshot_body: bytes
    frames: list[bytes] = field(default_factory=list)  # raw WS frames (bytes)
    diffs: list[DepthDiff] = field(default_factory=list)  # parsed, same order


def load(paths: list[Path]) -> Capture:
    parser = FrameParser()
    cap: Capture | None = None
    pre: list[bytes] = []
    for rec in read_capture(*paths):
        if rec.kind == "rest":
            snap = parser.parse_snapshot(rec.payload, rec.symbol, rec.ts_ns)
            cap = Capture(snap.symbol, snap, rec.payload)
            for f in pre:  # buffered before the snapshot: keep those newer than it
                d = parser.parse(f, 0)
                assert isinstance(d, DepthDiff)
                if d.last_update_id > snap.last_update_id:
                    cap.frames.append(f)
                    cap.diffs.append(d)
        elif rec.stream and "@depth" in rec.stream:
            if cap is None:
                pre.append(rec.payload)
                continue
            d = parser.parse(rec.payload, rec.ts_ns)
            assert isinstance(d, DepthDiff)
            if d.last_update_id > cap.snapshot.last_update_id:
                cap.frames.append(rec.payload)
                cap.diffs.append(d)
    if cap is None:
        raise SystemExit("no REST snapshot in the capture")
    return cap


def nlevels(d: DepthDiff) -> int:
    return (len(d.bids) + len(d.asks)) // 16


# --------------------------------------------------------------------------- baselines


def _pairs(b: bytes) -> list[list[int]]:
    return np.frombuffer(b, _I8).reshape(-1, 2).tolist()


class DictBook:
    """Plain-Python book: two dicts price -> qty (exact ints); top-N by ``heapq``."""

    def __init__(self, snap_bids: list[list[int]], snap_asks: list[list[int]]) -> None:
        self.bids = {p: q for p, q in snap_bids}
        self.asks = {p: q for p, q in snap_asks}

    def apply(self, bids: list[list[int]], asks: list[list[int]]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for p, q in levels:
                if q:
                    side[p] = q
                else:
                    side.pop(p, None)

    def top(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        b = [(p, self.bids[p]) for p in heapq.nlargest(n, self.bids)]
        a = [(p, self.asks[p]) for p in heapq.nsmallest(n, self.asks)]
        return b, a


class SortedBook(DictBook):
    """``SortedDict`` per side (bids keyed by -price so both iterate best first)."""

    def __init__(self, snap_bids: list[list[int]], snap_asks: list[list[int]]) -> None:
        self.bids = SortedDict({-p: q for p, q in snap_bids})
        self.asks = SortedDict({p: q for p, q in snap_asks})

    def apply(self, bids: list[list[int]], asks: list[list[int]]) -> None:
        for p, q in bids:
            if q:
                self.bids[-p] = q
            else:
                self.bids.pop(-p, None)
        for p, q in asks:
            if q:
                self.asks[p] = q
            else:
                self.asks.pop(p, None)

    def top(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        b = [(-p, q) for p, q in islice(self.bids.items(), n)]
        a = list(islice(self.asks.items(), n))
        return b, a


class _ListEvent(msgspec.Struct):
    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    pu: int = -1


class _ListFrame(msgspec.Struct):
    stream: str
    data: _ListEvent


_list_decoder = msgspec.json.Decoder(_ListFrame)
_fx = bparse._fx  # the exact Python decimal -> int conversion used for scalar fields


def parse_lists(frame: bytes) -> tuple[_ListEvent, list[list[int]], list[list[int]]]:
    """Baseline parser: msgspec builds Python strings, Python converts them exactly."""
    ev = _list_decoder.decode(frame).data
    bids = [[_fx(p, "p"), _fx(q, "q")] for p, q in ev.b]
    asks = [[_fx(p, "p"), _fx(q, "q")] for p, q in ev.a]
    return ev, bids, asks


def pack(levels: list[tuple[int, int]]) -> bytes:
    return np.array(levels, dtype=_I8).tobytes() if levels else b""


# --------------------------------------------------------------------------- stats


@dataclass
class Series:
    """Latency samples (ns) of one row."""

    section: str
    name: str
    samples: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        a = np.array(self.samples, dtype=np.int64)
        if a.size == 0:
            return {"section": self.section, "name": self.name, "n": 0}
        return {
            "section": self.section,
            "name": self.name,
            "n": int(a.size),
            "p50_us": float(np.percentile(a, 50)) / 1000,
            "p99_us": float(np.percentile(a, 99)) / 1000,
            "mean_us": float(a.mean()) / 1000,
        }


def timed(series: Series, fn: Callable[..., object], *args: object) -> object:
    """Call ``fn(*args)`` once, append its duration (ns) to ``series``, return its result."""
    t0 = time.perf_counter_ns()
    out = fn(*args)
    series.samples.append(time.perf_counter_ns() - t0)
    return out


def _noop() -> None:
    return None


# --------------------------------------------------------------------------- benches


def bench_apply(cap: Capture, repeat: int) -> list[Series]:
    """Diff apply on a live book, per event, tickbus vs. alternatives, interleaved."""
    snap_b, snap_a = _pairs(cap.snapshot.bids), _pairs(cap.snapshot.asks)
    views = [
        (np.frombuffer(d.bids, _I8).reshape(-1, 2), np.frombuffer(d.asks, _I8).reshape(-1, 2))
        for d in cap.diffs
    ]
    lists = [(_pairs(d.bids), _pairs(d.asks)) for d in cap.diffs]
    sizes = [nlevels(d) for d in cap.diffs]
    names = ["OrderBook.apply_levels(bytes)", "OrderBook.apply_diff(ndarray)"]
    names += ["kernel level-wise only", "kernel merge only", "dict book (Python)"]
    if SortedDict is not None:
        names.append("SortedDict book (Python)")
    small = {n: Series("diff apply <=20 lv", n) for n in names}
    large = {n: Series("diff apply >=500 lv", n) for n in names}
    for _ in range(repeat):
        # the raw-kernel rows skip the capacity-growth wrapper: size those books up front
        b1, b2 = OrderBook(), OrderBook()
        b3, b4 = OrderBook(depth_hint=1 << 16), OrderBook(depth_hint=1 << 16)
        for b in (b1, b2, b3, b4):
            b.apply_snapshot(cap.snapshot.bids, cap.snapshot.asks)
        dict_book = DictBook(snap_b, snap_a)
        sorted_book = SortedBook(snap_b, snap_a) if SortedDict is not None else None
        for i, d in enumerate(cap.diffs):
            k = sizes[i]
            bucket = small if k <= SMALL else large if k >= LARGE else None
            if bucket is None:  # mid-size events: keep the books in step, untimed
                b1.apply_levels(d.bids, d.asks)
                b2.apply_diff(*views[i])
                ob._apply(b3._buf, *views[i], 1 << 40)
                ob._apply(b4._buf, *views[i], 1)
                dict_book.apply(*lists[i])
                if sorted_book is not None:
                    sorted_book.apply(*lists[i])
                continue
            bids, asks = d.bids, d.asks
            vb, va = views[i]
            lb, la = lists[i]
            buf3, buf4 = b3._buf, b4._buf
            calls: list[tuple[Any, ...]] = [
                (b1.apply_levels, bids, asks),
                (b2.apply_diff, vb, va),
                (ob._apply, buf3, vb, va, 1 << 40),
                (ob._apply, buf4, vb, va, 1),
                (dict_book.apply, lb, la),
            ]
            if sorted_book is not None:
                calls.append((sorted_book.apply, lb, la))
            # rotate who goes first: the first call of an event pays for pulling its levels
            # into the cache, which would otherwise always penalise the same row
            r = i % len(calls)
            for j in list(range(r, len(calls))) + list(range(r)):
                rc = timed(bucket[names[j]], *calls[j])
                if j in (2, 3) and rc not in (0, -1):
                    raise SystemExit("bench books need a larger depth_hint")
        # every book must agree, or the comparison is meaningless
        ref = sorted(dict_book.bids.items(), reverse=True)
        for b in (b1, b2, b3, b4):
            assert [tuple(x) for x in b.levels("bid").tolist()] == ref
    return [*small.values(), *large.values()]


def bench_parse(cap: Capture, repeat: int) -> list[Series]:
    parser = FrameParser()
    mine = Series("parse depth frame", "FrameParser.parse (one numba pass)")
    general = Series("parse depth frame", "FrameParser general path (msgspec Raw + numba)")
    base = Series("parse depth frame", "msgspec list[tuple[str,str]] + Python int")
    decode_only = Series("parse depth frame", "  (msgspec typed decode of the frame only)")
    rows = [mine, general, base, decode_only]
    for _ in range(repeat):
        for i, f in enumerate(cap.frames):
            calls = [
                (parser.parse, f, 0),
                (parser._parse_general, f, 0),
                (parse_lists, f),
                (bparse._frame_decoder.decode, f),
            ]
            r = i % 4
            for j in (r, (r + 1) % 4, (r + 2) % 4, (r + 3) % 4):
                timed(rows[j], *calls[j])
    return rows


def bench_pipeline(cap: Capture, repeat: int, top_n: int, market: str) -> list[Series]:
    """Frame bytes -> BookTop, whole hot path, per depth frame. Each variant replays the
    capture on its own (its own cache state, as in production), variants alternate."""
    rows = [Series("frame -> md.book", f"tickbus (parse+sync+apply+top{top_n}+BookTop)")]
    rows.append(Series("frame -> md.book", f"dict book + msgspec lists + heapq top{top_n}"))
    if SortedDict is not None:
        rows.append(Series("frame -> md.book", f"SortedDict book + msgspec lists, top{top_n}"))
    snap_b, snap_a = _pairs(cap.snapshot.bids), _pairs(cap.snapshot.asks)
    sym = cap.symbol
    last: dict[int, bytes] = {}

    def run_tickbus(row: Series) -> None:
        parser = FrameParser()
        sync = BookSync(market, sym)  # type: ignore[arg-type]
        assert sync.on_snapshot(parser.parse_snapshot(cap.snapshot_body, sym, 0)) is Action.SYNCED

        def one(f: bytes) -> BookTop | None:
            d = parser.parse(f, 1)
            if sync.on_diff(d) is Action.APPLIED:  # type: ignore[arg-type]
                return sync.book_top(top_n, d.ts_exchange_ns, d.ts_recv_ns)
            return None

        for f in cap.frames:
            top = timed(row, one, f)
        assert top is not None
        last[0] = top.bids + top.asks  # type: ignore[union-attr]

    def run_baseline(row: Series, book: DictBook, idx: int) -> None:
        def one(f: bytes) -> BookTop:
            ev, bids, asks = parse_lists(f)
            book.apply(bids, asks)
            tb, ta = book.top(top_n)
            bp, bq = tb[0] if tb else (0, 0)
            ap, aq = ta[0] if ta else (0, 0)
            return BookTop(
                ev.s, ev.u, True, bp, bq, ap, aq, pack(tb), pack(ta), ev.E * 1_000_000, 1
            )

        for f in cap.frames:
            top = timed(row, one, f)
        last[idx] = top.bids + top.asks  # type: ignore[attr-defined]

    for r in range(repeat):
        variants: list[Callable[[], None]] = [lambda: run_tickbus(rows[0])]
        variants.append(lambda: run_baseline(rows[1], DictBook(snap_b, snap_a), 1))
        if SortedDict is not None:
            variants.append(lambda: run_baseline(rows[2], SortedBook(snap_b, snap_a), 2))
        for v in variants if r % 2 == 0 else variants[::-1]:
            v()
        assert len(set(last.values())) == 1, "the pipelines disagree on the final top levels"
    return rows


def bench_timer() -> Series:
    s = Series("timer", "perf_counter_ns + a no-op call (floor of every row)")
    for _ in range(20_000):
        timed(s, _noop)
    return s


# --------------------------------------------------------------------------- main


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'section':20s} {'variant':48s} {'n':>7s} {'p50 us':>8s} {'p99 us':>8s} "
        f"{'mean':>8s} {'p50 range':>14s}"
    )
    last = None
    for r in rows:
        if r["section"] != last and last is not None:
            print()
        last = r["section"]
        if not r["n"]:
            print(f"{r['section']:20s} {r['name']:48s} {0:7d}")
            continue
        rng = f"{r['p50_min']:.2f}-{r['p50_max']:.2f}"
        print(
            f"{r['section']:20s} {r['name']:48s} {r['n']:7d} "
            f"{r['p50_us']:8.2f} {r['p99_us']:8.2f} {r['mean_us']:8.2f} {rng:>14s}"
        )


def combine(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row: the median over runs of p50/p99/mean, and the p50 range (noise indicator)."""
    out = []
    for rows in zip(*runs, strict=True):
        first = dict(rows[0])
        if first["n"]:
            for key in ("p50_us", "p99_us", "mean_us"):
                first[key] = float(np.median([r[key] for r in rows]))
            first["p50_min"] = min(r["p50_us"] for r in rows)
            first["p50_max"] = max(r["p50_us"] for r in rows)
            first["n"] = sum(r["n"] for r in rows)
        out.append(first)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (optionally also write JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, nargs="+", help="capture file(s), one stream")
    ap.add_argument("--market", default="spot", choices=["spot", "usdm", "coinm"])
    ap.add_argument("--repeat", type=int, default=2, help="replays of the capture per run")
    ap.add_argument("--runs", type=int, default=3, help="independent runs (median reported)")
    ap.add_argument("--top", type=int, default=20, help="levels per side in md.book")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    paths = args.capture or (DEFAULT_SHARED if DEFAULT_SHARED[0].exists() else [SAMPLE])

    t0 = time.perf_counter()
    ob.warmup()
    bparse.warmup()
    t_warm = time.perf_counter() - t0
    cap = load(paths)
    sizes = np.array([nlevels(d) for d in cap.diffs])
    print(f"# {platform.python_version()} numpy {np.__version__} on {platform.machine()}")
    print(f"# capture: {', '.join(p.name for p in paths)} ({cap.symbol}, {len(cap.diffs)} depth")
    print(
        f"#   events after the snapshot; levels/event median {np.median(sizes):.0f}, max "
        f"{sizes.max()}; <=20: {(sizes <= SMALL).sum()}, >=500: {(sizes >= LARGE).sum()})"
    )
    print(f"# warm-up (kernel cache load or compile): {t_warm:.2f} s")
    print(f"# {args.runs} runs x {args.repeat} replays; load average before: {_load()}")
    runs = []
    for _ in range(args.runs):
        gc.collect()
        series = [bench_timer()]
        series += bench_apply(cap, args.repeat)
        series += bench_parse(cap, args.repeat)
        series += bench_pipeline(cap, args.repeat, args.top, args.market)
        runs.append([s.row() for s in series])
    rows = combine(runs)
    print(f"# load average after: {_load()}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
