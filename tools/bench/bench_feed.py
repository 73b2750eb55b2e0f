"""Feed + book benchmark on real Binance data: tickbus vs. a fair plain-Python baseline.

    python -m tickbus.tools.bench.bench_feed [--quick] [--capture FILE ...] [--runs R]
                                             [--kernel-runs K] [--depth N] [--json FILE]

Default capture: ../shared/data spot BTCUSDT 2024-08-08+09 (the 11-minute, 99,574-frame
capture) when present, else the shipped 3-minute sample.

The baseline (``tools/bench/baseline_book.py``: msgspec typed Structs, exact ints from
``int(s.replace(".", ""))`` with the decimals checked, a bisect-sorted key list + dict per
side, top-N sliced from the end, Binance's sync rules, the same ``BookTop``/``Trade``/
``BookTicker`` out) is checked before anything is timed: both run over every frame and must
give equal output, or the run stops. Every ratio is ``tickbus / baseline`` of the figure in
its row: for latencies < 1 means tickbus is faster, for frames/s > 1 does.

1. **frame -> md.book**, per depth frame: tickbus in-lane - a driver plugin in the hot lane
   takes the raw frame bytes, parses them (``FrameParser``, as the feeds do) and publishes
   ``md.depth``; the ``book`` plugin syncs, applies, takes the top N and publishes
   ``md.book``; a subscriber in the same lane stops the clock. The baseline: frame bytes to
   its ``BookTop`` (no bus). Every frame of the capture goes through both (trades and
   tickers untimed), so caches see the real mix; each pass replays the whole capture alone
   (its own cache state), passes alternate (A B, then B A), and the md.book BookTops must
   equal the baseline's on every frame.
2. **replay throughput, feed + book**, frames/s over the whole capture (every frame: depth,
   trades, book tickers, the REST snapshot), first frame to last:

   * *in-process, no bus*: tickbus = ``FrameParser`` + ``BookSync`` + ``book_top`` per frame
     (:class:`~tools.bench.compare.TickbusFeedBook`), baseline = ``BaselineFeed``; the same
     loop drives both, runs alternating (A B A B ...). **from memory**: frames already
     decompressed and split into a list. **from .gz**: the files read and decompressed in
     the run - tickbus with its replay reader (``read_frames``: gzip inflated in a
     read-ahead thread, lines cut by a numba kernel), the baseline with ``gzip`` + bulk
     ``split`` in the same thread.
   * *through the kernel*: ``replay_feed`` (speed 0) + ``book`` plugins in one lane, every
     message published on the bus, a fresh process per run, peak RSS of that process;
     from .gz (the plugin as shipped) and from memory (its reader swapped for a list of
     frames read beforehand). Ratios against the baseline's in-process figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

from .compare import Frame, Market, default_capture, replay, verify

ROOT = Path(__file__).resolve().parents[2]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": statistics.median(xs),
        "p90": pct(xs, 0.90),
        "p99": pct(xs, 0.99),
        "max": max(xs),
    }


def _freeze() -> None:
    """Frames read beforehand are the benchmark's, not the code's: keep the collector from
    walking them on every full collection (it would bill whoever allocates most)."""
    gc.collect()
    gc.freeze()


def _symbol(frames: list[Frame]) -> str:
    return next(s for _, kind, s, _ in frames if kind == "rest" and s)


# ----------------------------------------------------------------------------- 1. latency


def bench_latency(records: list[Frame], runs: int, depth: int, market: Market) -> dict[str, Any]:
    from tickbus.kernel import hookimpl
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config
    from tickbus.plugins.binance.parse import FrameParser, topic_of

    from .baseline_book import BaselineFeed

    sym = _symbol(records)
    levels = [  # bids + asks of each depth frame, in order
        len(d.bids) // 16 + len(d.asks) // 16  # type: ignore[union-attr]
        for d in (
            FrameParser().parse(p, 0)
            for _, kind, _, p in records
            if kind == "ws" and p.find(b"depthUpdate", 0, 160) >= 0
        )
    ]
    samples: dict[str, list[tuple[int, int]]] = {"tickbus": [], "baseline": []}  # (ns, levels)
    clock = time.perf_counter_ns

    class driver:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: Any) -> dict[str, Any]:
            state: dict[str, Any] = {"got": 0, "top": None}

            def on_book(msg: Any) -> None:
                state["got"] = clock()
                state["top"] = msg

            ctx.subscribe("md.book.", on_book)
            return state

    def tickbus_pass() -> list[Any]:
        """One kernel, every record through the driver; md.book of each depth frame."""
        rt = tempfile.mkdtemp(prefix="tb", dir="/tmp")
        cfg = parse_config(
            {
                "kernel": {"runtime_dir": rt, "clock": "replay"},
                "bus": {"tap": ""},
                "plugins": {"book": {"depth": depth, "market": market}, "driver": {}},
            }
        )
        k = Kernel(cfg, extra_plugins={"driver": driver})
        k.start()
        ctx = k.contexts["driver"]
        tops: list[Any] = []

        def feed_all() -> None:
            parser = FrameParser()
            publish = ctx.publish
            state = ctx.component
            topics: dict[tuple[type, str], str] = {}
            out = samples["tickbus"]
            for ts, kind, symbol, payload in records:
                if kind == "rest":
                    publish(f"md.depth.{symbol}", parser.parse_snapshot(payload, symbol, ts))
                    continue
                if kind != "ws":
                    continue
                depth_frame = payload.find(b"depthUpdate", 0, 160) >= 0
                state["got"], state["top"] = 0, None
                t0 = clock()
                msg = parser.parse(payload, ts)
                key = (type(msg), msg.symbol)
                topic = topics.get(key) or topics.setdefault(key, topic_of(msg))
                publish(topic, msg)
                if depth_frame:
                    if state["got"]:
                        out.append((state["got"] - t0, levels[len(tops)]))
                    tops.append(state["top"])

        k.lanes["main"].call(feed_all, timeout=600)
        k.stop()
        return tops

    def baseline_pass() -> list[Any]:
        """The same records through the baseline; its BookTop of each depth frame."""
        base = BaselineFeed(market, depth)
        tops: list[Any] = []
        out = samples["baseline"]
        for ts, kind, symbol, payload in records:
            if kind == "rest":
                base.on_rest(payload, symbol or sym, ts)
                continue
            if kind != "ws":
                continue
            if payload.find(b"depthUpdate", 0, 160) < 0:
                base.on_frame(payload, ts)
                continue
            t0 = clock()
            top = base.on_frame(payload, ts)
            t1 = clock()
            if top is not None:
                out.append((t1 - t0, levels[len(tops)]))
            tops.append(top)
        return tops

    for run in range(runs):
        # A B, then B A: both see the same machine conditions, each its own cache state
        passes = [tickbus_pass, baseline_pass] if run % 2 == 0 else [baseline_pass, tickbus_pass]
        got = {p.__name__: p() for p in passes}
        if got["tickbus_pass"] != got["baseline_pass"]:
            raise SystemExit("frame -> md.book: the book plugin's BookTops != the baseline's")
    out: dict[str, Any] = {}
    for who, pairs in samples.items():
        lat = [s / 1000 for s, _ in pairs]
        out[who] = {"samples": len(lat), "all": summary(lat)}
        for name, lo, hi in (("<=20 levels", 0, 20), ("21-499", 21, 499), (">=500", 500, 10**9)):
            sub = [s / 1000 for s, n in pairs if lo <= n <= hi]
            if sub:
                out[who][name] = summary(sub)
    return out


# ----------------------------------------------------------------------------- 2. throughput


def _timed_replay(
    make: Callable[[], Any], frames: Callable[[], Iterable[Frame]], sym: str
) -> float:
    """frames/s of one replay: the feed made, the source opened and read inside the clock."""
    feed = make()
    gc.collect()
    t0 = time.perf_counter()
    n = replay(feed, frames(), sym)
    dt = time.perf_counter() - t0
    if feed.bad:
        raise SystemExit(f"{type(feed).__name__}: {feed.bad} bad frames in a real capture")
    return n / dt


def bench_inprocess(
    files: list[Path], frames: list[Frame], runs: int, depth: int, market: Market
) -> dict[str, dict[str, list[float]]]:
    """frames/s per run: {source: {who: [...]}}, A B A B."""
    from tickbus.plugins.binance.capture import read_frames

    from .baseline_book import BaselineFeed, iter_capture_lines
    from .compare import TickbusFeedBook

    sym = _symbol(frames)
    rows: dict[str, dict[str, list[float]]] = {
        "memory": {"tickbus": [], "baseline": []},
        "gz": {"tickbus": [], "baseline": []},
    }
    variants: list[tuple[str, str, Callable[[], Any], Callable[[], Iterable[Frame]]]] = [
        ("memory", "tickbus", lambda: TickbusFeedBook(market, depth), lambda: frames),
        ("memory", "baseline", lambda: BaselineFeed(market, depth), lambda: frames),
        ("gz", "tickbus", lambda: TickbusFeedBook(market, depth), lambda: read_frames(*files)),
        ("gz", "baseline", lambda: BaselineFeed(market, depth), lambda: iter_capture_lines(*files)),
    ]
    for r in range(runs):
        # A B A B, and the pair order flips every run (neither side always goes first)
        order = variants if r % 2 == 0 else [variants[i] for i in (1, 0, 3, 2)]
        for source, who, make, src in order:
            rows[source][who].append(_timed_replay(make, src, sym))
    return rows


def replay_child(files: list[str], source: str, market: str) -> None:
    """Run replay_feed + book to the end in this process; print figures as JSON."""
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config
    from tickbus.plugins.binance import replay as replay_mod

    real = replay_mod.read_frames
    pre = list(real(*files)) if source == "memory" else []
    _freeze()
    clock: dict[str, float] = {}

    def timed_reader(*paths: Any, **kw: Any) -> Generator[Frame, None, None]:
        """The plugin's reader (or the list read beforehand), clocked first to last frame."""
        clock["t0"] = time.perf_counter()
        yield from (pre if source == "memory" else real(*paths, **kw))
        clock["t1"] = time.perf_counter()

    replay_mod.read_frames = timed_reader  # type: ignore[assignment]
    rt = tempfile.mkdtemp(prefix="tb", dir="/tmp")
    cfg = parse_config(
        {
            "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning"},
            "bus": {"tap": ""},
            "plugins": {
                "book": {"depth": 20, "market": market},
                "replay_feed": {"files": files, "speed": 0, "exit_at_end": False},
            },
        }
    )
    k = Kernel(cfg)
    k.start()
    rep = k.contexts["replay_feed"].component
    while not rep.done and not k.failures:
        time.sleep(0.005)
    k.stop()
    if k.failures or "t1" not in clock:
        raise SystemExit(f"replay did not finish: {k.failures}")
    sync = k.contexts["book"].component.syncs
    print(
        json.dumps(
            {
                "frames": rep.frames,
                "bad": rep.bad,
                "seconds": clock["t1"] - clock["t0"],
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "books": {s: [v.last_update_id, v.valid, v.stats.gaps] for s, v in sync.items()},
            }
        )
    )


def bench_kernel(files: list[Path], runs: int, source: str, market: str) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-m", "tickbus.tools.bench.bench_feed", "--role", "replay",
             "--source", source, "--market", market, "--capture", *map(str, files)],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )  # fmt: skip
        if out.returncode:
            raise SystemExit(f"kernel replay failed ({out.returncode}): {out.stderr[-2000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rates = [r["frames"] / r["seconds"] for r in results]
    return {
        "frames": results[0]["frames"],
        "bad": results[0]["bad"],
        "frames_per_s": rates,
        "maxrss_mb": max(r["maxrss_mb"] for r in results),
        "books": results[0]["books"],
    }


# ----------------------------------------------------------------------------- output


def _rate_cells(xs: list[float]) -> str:
    return f"{statistics.median(xs):>11,.0f} {min(xs):>11,.0f} {max(xs):>11,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_feed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--capture", nargs="+", help="capture files (read as one stream)")
    p.add_argument("--runs", type=int, default=5, help="latency and in-process runs")
    p.add_argument("--kernel-runs", type=int, default=3, help="fresh processes per source")
    p.add_argument("--market", default="spot", choices=["spot", "usdm", "coinm"])
    p.add_argument("--depth", type=int, default=20, help="levels per side in md.book")
    p.add_argument("--quick", action="store_true", help="3 runs, 1 kernel run (< 1 minute)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--role", default="", help=argparse.SUPPRESS)
    p.add_argument("--source", default="gz", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    files = [Path(f) for f in args.capture] if args.capture else default_capture()
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"no such capture file: {', '.join(missing)}")
    if args.role == "replay":
        replay_child([str(f) for f in files], args.source, args.market)
        return 0
    if args.quick:
        args.runs, args.kernel_runs = 3, 1
    lat_runs = 2 if args.quick else args.runs  # quick: one pass each way (A B, B A)
    from tickbus.plugins.binance.capture import read_frames

    cmd = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"command : python -m tickbus.tools.bench.bench_feed {cmd}".rstrip())
    print(f"machine : nproc {os.cpu_count()}, CPython {platform.python_version()}, load {_load()}")
    print(f"capture : {', '.join(str(f) for f in files)}")
    print(
        f"runs    : {lat_runs} (latency passes each), {args.runs} (in-process throughput), "
        f"{args.kernel_runs} (kernel throughput, per source)"
    )
    frames = list(read_frames(*files))
    _freeze()  # read once, shared by every in-process section
    t0 = time.perf_counter()
    counts = verify(frames, args.market, args.depth, _symbol(frames))
    print(
        f"verified: before timing, baseline output == tickbus output on all "
        f"{counts['frames']:,} frames ({counts['book_tops']:,} BookTop, {counts['trades']:,} "
        f"Trade, {counts['tickers']:,} BookTicker; {time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    lat = bench_latency(frames, lat_runs, args.depth, args.market)
    print(
        f"\n1. FRAME -> md.book per depth frame (us), {lat['tickbus']['samples']} frames each;"
        " whole passes, alternating\n   tickbus: parse + publish md.depth + book plugin (sync,"
        " apply, top N, BookTop) + publish md.book, in-lane\n   baseline: msgspec decode +"
        " exact ints + sync + bisect/dict apply + top N + BookTop, no bus"
    )
    print(f"   {'depth frames':<14}{'who':<10}{'n':>7}{'p50':>8}{'p90':>8}{'p99':>10}{'max':>11}")
    ratios: dict[str, Any] = {"latency": {}, "throughput": {}}
    for key in ("all", "<=20 levels", "21-499", ">=500"):
        if key not in lat["tickbus"]:
            continue
        a, b = lat["tickbus"][key], lat["baseline"][key]
        for who, r in (("tickbus", a), ("baseline", b)):
            cells = f"{r['p50']:>8.1f}{r['p90']:>8.1f}{r['p99']:>10.1f}{r['max']:>11.1f}"
            print(f"   {key:<14}{who:<10}{r['n']:>7}{cells}")
        rat = {q: a[q] / b[q] for q in ("p50", "p90", "p99")}
        ratios["latency"][key] = rat
        cells = "".join(f"{rat[q]:>{w - 1}.2f}x" for q, w in (("p50", 8), ("p90", 8), ("p99", 10)))
        print(f"   {key:<14}{'ratio':<10}{'':>7}{cells}   (tickbus/baseline)")

    print(f"   ({lat_runs} passes each, {time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    inproc = bench_inprocess(files, frames, args.runs, args.depth, args.market)
    kern = {s: bench_kernel(files, args.kernel_runs, s, args.market) for s in ("memory", "gz")}
    took = time.perf_counter() - t0
    n = kern["gz"]["frames"]
    print(
        f"\n2. REPLAY THROUGHPUT feed + book, frames/s over all {n:,} frames "
        f"({kern['gz']['bad']} bad), first frame to last"
    )
    print(f"   {'source':<8}{'path':<52}{'median':>11} {'min':>11} {'max':>11}{'tb/base':>9}")
    for source, what in (
        ("memory", "frames already decompressed, in a list"),
        ("gz", "the .gz files read and decompressed in the run"),
    ):
        print(f"   -- {source}: {what}")
        base = statistics.median(inproc[source]["baseline"])
        rows = (
            ("in-process, no bus: tickbus parser + BookSync", inproc[source]["tickbus"]),
            ("in-process, no bus: baseline", inproc[source]["baseline"]),
            ("kernel: replay_feed + book plugins, one lane, bus", kern[source]["frames_per_s"]),
        )
        for label, xs in rows:
            ratio = statistics.median(xs) / base
            ratios["throughput"][f"{source}: {label}"] = ratio
            print(f"   {source:<8}{label:<52}{_rate_cells(xs)}{ratio:>8.2f}x")
    print(
        f"   kernel runs: a fresh process each; peak RSS {kern['gz']['maxrss_mb']:.0f} MB (.gz),"
        f" {kern['memory']['maxrss_mb']:.0f} MB (memory); final books {kern['gz']['books']}"
    )
    print(f"   ({took:.0f} s); load average after: {_load()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"latency": lat, "inprocess": inproc, "kernel": kern, "ratios": ratios}, indent=2
            )
        )
    return 0


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
