"""Order-book benchmark on real Binance data: tickbus vs. a fair plain-Python baseline.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_book [--quick] [--capture FILE ...] [--market spot|usdm]
                                             [--runs N] [--repeat R] [--top N] [--json FILE]

Default capture: ``shared/data/binance`` spot BTCUSDT 2024-08-08+09 (6,495 depth events,
up to 1,076 levels) when present, else the shipped 3-minute sample.

The baseline (``tools/bench/baseline_book.py``) is what a careful engineer writes without
numba: msgspec typed Structs, exact ints by ``int(s.replace(".", ""))`` with the symbol's
fixed decimals checked, a sorted key list per side kept with ``bisect`` plus a dict
key -> qty, top-N sliced from the end of the list, the same Binance sync rules, the same
``BookTop`` out. Before anything is timed, both run over every frame of the capture and must
give equal output (every ``BookTop``, ``Trade``, ``BookTicker``) - the run stops otherwise.

What is measured (per-call ``perf_counter_ns`` samples; per run p50/p90/p99, then the median
over the runs and the range of the per-run p50s as a noise indicator; ``tickbus/baseline``
rows divide tickbus's figure by the baseline's: < 1 means tickbus takes less time). Each
implementation replays the capture's events on its own, with its own cache state as in
production, and the replays alternate (A B, then B A, ...) so both see the same machine
conditions. (Interleaving per frame was tried: the other implementation's data then evicts
the book from the cache, which doubled tickbus's p50 on USD-M ETHUSDT and not the baseline's.)

* **frame -> BookTop**: raw depth frame bytes in, the ``BookTop`` (top N per side packed,
  best bid/ask, update id, valid) out: parse, sync checks, apply, top-N, build the message.
  No bus. Each replay starts from a book synced from the real snapshot; the BookTops of
  both must be equal on every frame.
* **diff apply**: one already-parsed depth event applied to a live book: tickbus
  ``OrderBook.apply_levels`` (packed ``Levels`` bytes, what the book plugin calls) vs. the
  baseline's ``BaselineBook.apply`` (lists of exact int pairs). Two more tickbus rows (raw
  kernel forced level-wise / forced merge) show why ``MERGE_MIN`` exists.
* **parse**: one depth frame to exact integer levels: ``FrameParser.parse`` (-> ``DepthDiff``)
  vs. the baseline's msgspec decode + exact int conversion; msgspec's typed decode alone and
  tickbus's general (msgspec + numba) path for scale.

Every row is split by the event's level count (all, <= 20, 21-499, >= 500; bids + asks).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tickbus.plugins.binance import parse as bparse
from tickbus.plugins.binance.capture import read_frames
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book import orderbook as ob
from tickbus.plugins.book.orderbook import OrderBook
from tickbus.schemas import DepthDiff, DepthSnapshot

from .baseline_book import BaselineBook, BaselineFeed, DepthEvent, Fixed, decode_depth, decode_rest
from .compare import Frame, Market, TickbusFeedBook, default_capture, verify

SMALL = 20
LARGE = 500
_I8 = np.dtype("<i8")
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("all", 0, 1 << 62),
    ("<=20 lv", 0, SMALL),
    ("21-499 lv", SMALL + 1, LARGE - 1),
)
BUCKETS += ((">=500 lv", LARGE, 1 << 62),)


# --------------------------------------------------------------------------- data


@dataclass
class Capture:
    """Every frame of the capture, and the snapshot plus the depth frames that apply on top
    of it (``u > L``; those that arrived before the snapshot included), raw and parsed."""

    symbol: str
    all_frames: list[Frame]
    snapshot: DepthSnapshot
    snapshot_body: bytes
    frames: list[bytes] = field(default_factory=list)  # raw depth frames (bytes)
    diffs: list[DepthDiff] = field(default_factory=list)  # tickbus-parsed, same order
    events: list[DepthEvent] = field(default_factory=list)  # baseline-decoded, same order


def load(paths: list[Path]) -> Capture:
    parser = FrameParser()
    frames = list(read_frames(*paths))
    rest = [f for f in frames if f[1] == "rest"]
    if not rest:
        raise SystemExit("no REST snapshot in the capture")
    _, _, symbol, body = rest[0]
    snap = parser.parse_snapshot(body, symbol, 0)
    cap = Capture(snap.symbol, frames, snap, body)
    for _, kind, _, payload in frames:
        if kind == "ws" and payload.find(b"depthUpdate", 0, 160) >= 0:
            d = parser.parse(payload, 0)
            assert isinstance(d, DepthDiff)
            if d.symbol == cap.symbol and d.last_update_id > snap.last_update_id:
                cap.frames.append(payload)
                cap.diffs.append(d)
                cap.events.append(decode_depth(payload).data)
    return cap


def _view(levels: bytes) -> np.ndarray:
    """``Levels`` bytes as the ``(k, 2)`` int64 array they are."""
    return np.frombuffer(levels, _I8).reshape(-1, 2)


def nlevels(d: DepthDiff) -> int:
    return (len(d.bids) + len(d.asks)) // 16


# --------------------------------------------------------------------------- stats


@dataclass
class Series:
    """Latency samples (ns) of one row; ``role``: tickbus, baseline or info; ``sizes``: the
    level count of the event of each sample (for the per-size rows), when tracked."""

    section: str
    name: str
    role: str = "info"
    samples: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        a = np.array(self.samples, dtype=np.int64)
        out: dict[str, Any] = {"section": self.section, "name": self.name, "role": self.role}
        out["n"] = int(a.size)
        if a.size:
            for q in (50, 90, 99):
                out[f"p{q}_us"] = float(np.percentile(a, q)) / 1000
            out["mean_us"] = float(a.mean()) / 1000
        return out

    def by_size(self) -> list[Series]:
        """One Series per size bucket (all, <=20, 21-499, >=500 levels)."""
        out = []
        for bucket, lo, hi in BUCKETS:
            s = Series(f"{self.section} {bucket}", self.name, self.role)
            pairs = zip(self.samples, self.sizes, strict=True)
            s.samples = [t for t, k in pairs if lo <= k <= hi]
            out.append(s)
        return out


def timed(series: Series, fn: Callable[..., object], *args: object) -> object:
    """Call ``fn(*args)`` once, append its duration (ns) to ``series``, return its result."""
    t0 = time.perf_counter_ns()
    out = fn(*args)
    series.samples.append(time.perf_counter_ns() - t0)
    return out


def _noop() -> None:
    return None


def _by_size(rows: list[Series]) -> list[Series]:
    """The rows split by size, grouped by bucket (so each bucket is one section)."""
    split = [r.by_size() for r in rows]
    return [s for bucket in zip(*split, strict=True) for s in bucket]


# --------------------------------------------------------------------------- benches


def _order(n: int, turn: int) -> list[int]:
    """Indexes 0..n-1 rotated by ``turn``: who goes first changes every replay."""
    return [(i + turn) % n for i in range(n)]


def bench_pipeline(
    cap: Capture, repeat: int, top_n: int, market: Market, turn: int
) -> list[Series]:
    """Frame bytes -> BookTop per depth frame; tickbus and baseline replay alternately."""
    rows = [
        Series("frame->BookTop", f"tickbus: FrameParser + BookSync + top{top_n} + BookTop"),
        Series("frame->BookTop", f"baseline: msgspec, exact int, bisect/dict, top{top_n}, BookTop"),
    ]
    rows[0].role, rows[1].role = "tickbus", "baseline"
    makers: list[type[TickbusFeedBook] | type[BaselineFeed]] = [TickbusFeedBook, BaselineFeed]
    sizes = [nlevels(d) for d in cap.diffs]
    for r in range(repeat):
        outs: dict[int, list[object]] = {}
        for j in _order(2, turn + r):
            feed = makers[j](market, top_n)
            assert feed.on_rest(cap.snapshot_body, cap.symbol, 0) is not None
            on_frame, row = feed.on_frame, rows[j]
            outs[j] = [timed(row, on_frame, f, 1) for f in cap.frames]
            row.sizes += sizes
        if outs[0] != outs[1]:
            raise SystemExit("frame->BookTop: tickbus and baseline BookTops differ")
    return _by_size(rows)


def bench_apply(cap: Capture, repeat: int, turn: int) -> list[Series]:
    """Diff apply on a live book, per event: tickbus vs. baseline (+ kernel rows), each
    replaying all events on its own, in rotating order."""
    rows = [
        Series("diff apply", "tickbus: OrderBook.apply_levels(Levels bytes)", "tickbus"),
        Series("diff apply", "baseline: BaselineBook.apply(exact int pairs)", "baseline"),
        Series("diff apply", "  tickbus kernel forced level-wise"),
        Series("diff apply", "  tickbus kernel forced merge"),
    ]
    snap = decode_rest(cap.snapshot_body)
    fx = Fixed(*snap.bids[0])
    base_snap = (fx.pairs(snap.bids), fx.pairs(snap.asks, True))
    base_levels = [(fx.pairs(ev.b), fx.pairs(ev.a, True)) for ev in cap.events]
    packed = [(d.bids, d.asks) for d in cap.diffs]
    views = [(_view(d.bids), _view(d.asks)) for d in cap.diffs]
    sizes = [nlevels(d) for d in cap.diffs]

    def tickbus_book(hint: int = 4096) -> OrderBook:
        book = OrderBook(depth_hint=hint)
        book.apply_snapshot(_view(cap.snapshot.bids), _view(cap.snapshot.asks))
        return book

    def run(j: int) -> list[tuple[int, int]]:
        """Replay every event on a fresh book with variant ``j``; its final bids."""
        row = rows[j]
        if j == 1:
            base = BaselineBook()
            base.snapshot(*base_snap)
            for bids, asks in base_levels:
                timed(row, base.apply, bids, asks)
            return [(k, base.bq[k]) for k in reversed(base.bk)]
        if j == 0:
            book = tickbus_book()
            for pb, pa in packed:
                timed(row, book.apply_levels, pb, pa)
        else:  # the raw kernel skips the capacity-growth wrapper: a book big enough
            book = tickbus_book(1 << 16)
            buf, merge_min = book._buf, 1 << 40 if j == 2 else 1
            for vb, va in views:
                if timed(row, ob._apply, buf, vb, va, merge_min) not in (0, -1):
                    raise SystemExit("bench books need a larger depth_hint")
        return [(p, q) for p, q in book.levels("bid").tolist()]

    for r in range(repeat):
        ends = [run(j) for j in _order(len(rows), turn + r)]
        for row in rows:
            row.sizes += sizes
        if any(e != ends[0] for e in ends):  # or the comparison is meaningless
            raise SystemExit("diff apply: the books disagree at the end of the replay")
    return _by_size(rows)


def bench_parse(cap: Capture, repeat: int, turn: int) -> list[Series]:
    parser = FrameParser()
    rows = [
        Series("parse depth frame", "tickbus: FrameParser.parse (one numba pass)", "tickbus"),
        Series("parse depth frame", "baseline: msgspec decode + exact int pairs", "baseline"),
        Series("parse depth frame", "  baseline msgspec typed decode only (strings)"),
        Series("parse depth frame", "  tickbus general path (msgspec Raw + numba)"),
    ]
    fx = Fixed(*decode_rest(cap.snapshot_body).bids[0])

    def base_parse(f: bytes) -> object:
        ev = decode_depth(f).data
        return fx.pairs(ev.b), fx.pairs(ev.a, True)

    fns: list[Callable[..., object]] = [parser.parse, base_parse, decode_depth]
    fns.append(parser._parse_general)
    for r in range(repeat):
        for j in _order(len(rows), turn + r):
            fn, row = fns[j], rows[j]
            if j in (0, 3):
                for f in cap.frames:
                    timed(row, fn, f, 0)
            else:
                for f in cap.frames:
                    timed(row, fn, f)
    return rows


def bench_timer() -> Series:
    s = Series("timer", "perf_counter_ns + a no-op call (floor of every row)")
    for _ in range(20_000):
        timed(s, _noop)
    return s


# --------------------------------------------------------------------------- output

_FIGS = ("p50_us", "p90_us", "p99_us", "mean_us")
LEGEND = (
    "frame->BookTop: raw depth frame bytes in, BookTop out (parse, sync checks, apply, top N"
    " packed, best bid/ask,",
    "  the message built); no bus; each replays the capture alone, replays alternate A B, B A",
    "diff apply: an already-parsed event applied to a live book (tickbus: Levels bytes;"
    " baseline: exact int",
    "  pairs); no parse, no top N",
    "parse depth frame: frame bytes to exact integer levels (tickbus: a DepthDiff; baseline:"
    " lists of int pairs)",
    "tickbus/baseline: tickbus's figure divided by the baseline's (< 1: tickbus takes less time)",
)


def combine(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row: the median over runs of each figure, and the p50 range (noise indicator)."""
    out = []
    for rows in zip(*runs, strict=True):
        first = dict(rows[0])
        first["n"] = sum(r["n"] for r in rows)
        if all(r["n"] for r in rows):
            for key in _FIGS:
                first[key] = float(np.median([r[key] for r in rows]))
            first["p50_min"] = min(r["p50_us"] for r in rows)
            first["p50_max"] = max(r["p50_us"] for r in rows)
        out.append(first)
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus, after each section that has both, a ``tickbus/baseline`` row."""
    out: list[dict[str, Any]] = []
    by_section: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    for section, group in by_section.items():
        out += group
        tb = next((r for r in group if r["role"] == "tickbus"), None)
        base = next((r for r in group if r["role"] == "baseline"), None)
        if tb and base and "p50_us" in tb and "p50_us" in base:
            ratio = {k: tb[k] / base[k] for k in _FIGS}
            out.append({"section": section, "name": "= tickbus/baseline", "role": "ratio", **ratio})
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'section':24s} {'variant':58s} {'n':>7s} {'p50':>8s} {'p90':>8s} {'p99':>8s} "
        f"{'mean':>8s} {'p50 range':>12s}"
    )
    last = None
    for r in rows:
        if r["section"] != last and last is not None:
            print()
        last = r["section"]
        if r["role"] == "ratio":
            cells = "".join(f"{r[k]:8.2f}x" for k in _FIGS)
            print(f"{r['section']:24s} {r['name']:58s} {'':>7s} {cells}")
            continue
        if "p50_us" not in r:
            print(f"{r['section']:24s} {r['name']:58s} {r['n']:7d}")
            continue
        rng = f"{r['p50_min']:.2f}-{r['p50_max']:.2f}"
        cells = "".join(f"{r[k]:8.2f} " for k in _FIGS)
        print(f"{r['section']:24s} {r['name']:58s} {r['n']:7d} {cells}{rng:>12s}")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (optionally also write JSON)."""
    ap = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_book", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--capture", type=Path, nargs="+", help="capture file(s), one stream")
    ap.add_argument("--market", default="spot", choices=["spot", "usdm", "coinm"])
    ap.add_argument("--repeat", type=int, default=2, help="replays of the capture per run")
    ap.add_argument("--runs", type=int, default=5, help="independent runs (median reported)")
    ap.add_argument("--top", type=int, default=20, help="levels per side in BookTop")
    ap.add_argument("--quick", action="store_true", help="3 runs x 1 replay (< 1 minute)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.repeat = 3, 1
    paths = args.capture or default_capture()
    missing = [str(f) for f in paths if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"no such capture file: {', '.join(missing)}")
    cmd = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"# command: python -m tickbus.tools.bench.bench_book {cmd}".rstrip())

    t0 = time.perf_counter()
    ob.warmup()
    bparse.warmup()
    t_warm = time.perf_counter() - t0
    cap = load(paths)
    sizes = np.array([nlevels(d) for d in cap.diffs])
    print(f"# CPython {platform.python_version()} numpy {np.__version__} on {platform.machine()}")
    print(f"# capture: {', '.join(p.name for p in paths)} ({cap.symbol}, {len(cap.diffs)} depth")
    print(
        f"#   events after the snapshot; levels/event median {np.median(sizes):.0f}, max "
        f"{sizes.max()}; <=20: {(sizes <= SMALL).sum()}, >=500: {(sizes >= LARGE).sum()})"
    )
    print(f"# warm-up (numba kernel cache load or compile): {t_warm:.2f} s")
    t0 = time.perf_counter()
    counts = verify(cap.all_frames, args.market, args.top, cap.symbol)
    print(
        f"# verified before timing: baseline output == tickbus output on all {counts['frames']:,}"
        f" frames ({counts['book_tops']:,} BookTop top{args.top}, {counts['trades']:,} Trade, "
        f"{counts['tickers']:,} BookTicker) in {time.perf_counter() - t0:.1f} s"
    )
    # the capture held in memory is the benchmark's, not the code's: keep the collector from
    # walking it on every full collection (it would bill whoever allocates most, the baseline)
    gc.collect()
    gc.freeze()
    print(f"# {args.runs} runs x {args.repeat} replays; load average before: {_load()}")
    runs = []
    for run in range(args.runs):
        gc.collect()
        series = [bench_timer()]
        series += bench_pipeline(cap, args.repeat, args.top, args.market, run)
        series += bench_apply(cap, args.repeat, run)
        series += bench_parse(cap, args.repeat, run)
        runs.append([s.row() for s in series])
    rows = ratios(combine(runs))
    print(f"# load average after: {_load()}")
    print("# figures in us; medians over the runs of per-run percentiles; p50 range over runs")
    for line in LEGEND:
        print(f"#   {line}")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
