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

1. **frame -> md.book**, per depth frame, in-lane: a driver plugin in the hot lane takes the
   raw frame bytes, parses them (``FrameParser``, as the feeds do) and publishes
   ``md.depth``; the ``book`` plugin syncs, applies, takes the top N and publishes
   ``md.book``; a subscriber in the same lane stops the clock. The baseline runs on the same
   thread, interleaved per frame (order alternating), from frame bytes to its ``BookTop``
   (no bus; the two BookTops are compared on every frame). Every frame of the capture is fed
   to both (trades and tickers untimed), so caches see the real mix.
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


def _symbol(frames: list[Frame]) -> str:
    return next(s for _, kind, s, _ in frames if kind == "rest" and s)


# ----------------------------------------------------------------------------- 1. latency


def bench_latency(files: list[Path], runs: int, depth: int, market: str) -> dict[str, Any]:
    from tickbus.kernel import hookimpl
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config
    from tickbus.plugins.binance.capture import read_frames
    from tickbus.plugins.binance.parse import FrameParser, topic_of

    from .baseline_book import BaselineFeed

    records = list(read_frames(*files))
    samples: dict[str, list[tuple[int, int]]] = {"tickbus": [], "baseline": []}  # (ns, levels)

    class driver:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: Any) -> dict[str, Any]:
            state: dict[str, Any] = {"got": 0, "top": None}

            def on_book(msg: Any) -> None:
                state["got"] = time.perf_counter_ns()
                state["top"] = msg

            ctx.subscribe("md.book.", on_book)
            return state

    for run in range(runs):
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
        lane = k.lanes["main"]
        ctx = k.contexts["driver"]

        def feed_all(ctx: Any = ctx, run: int = run) -> None:
            parser = FrameParser()
            base = BaselineFeed(market, depth)  # type: ignore[arg-type]
            publish = ctx.publish
            state = ctx.component
            clock = time.perf_counter_ns
            topics: dict[tuple[type, str], str] = {}
            mine, theirs = samples["tickbus"], samples["baseline"]

            def tickbus(payload: bytes, ts: int) -> Any:
                msg = parser.parse(payload, ts)
                key = (type(msg), msg.symbol)
                topic = topics.get(key) or topics.setdefault(key, topic_of(msg))
                publish(topic, msg)
                return msg

            for i, (ts, kind, symbol, payload) in enumerate(records):
                if kind == "rest":
                    publish(f"md.depth.{symbol}", parser.parse_snapshot(payload, symbol, ts))
                    base.on_rest(payload, symbol or "", ts)
                    continue
                if kind != "ws":
                    continue
                if payload.find(b"depthUpdate", 0, 160) < 0:  # untimed: trades, tickers
                    tickbus(payload, ts)
                    base.on_frame(payload, ts)
                    continue
                state["got"] = 0
                state["top"] = None
                if (i + run) % 2:
                    t0 = clock()
                    msg = tickbus(payload, ts)
                    t1 = clock()
                    top = base.on_frame(payload, ts)
                    t2 = clock()
                    mine_ns, base_ns = state["got"] - t0, t2 - t1
                else:
                    t0 = clock()
                    top = base.on_frame(payload, ts)
                    t1 = clock()
                    msg = tickbus(payload, ts)
                    mine_ns, base_ns = state["got"] - t1, t1 - t0
                if top != state["top"]:
                    raise SystemExit(f"frame {i}: md.book {state['top']!r} != baseline {top!r}")
                if state["got"]:
                    n = len(msg.bids) // 16 + len(msg.asks) // 16
                    mine.append((mine_ns, n))
                    theirs.append((base_ns, n))

        lane.call(feed_all, timeout=600)
        k.stop()
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
    files: list[Path], runs: int, depth: int, market: Market
) -> dict[str, dict[str, list[float]]]:
    """frames/s per run: {source: {who: [...]}}, A B A B."""
    from tickbus.plugins.binance.capture import read_frames

    from .baseline_book import BaselineFeed, iter_capture_lines
    from .compare import TickbusFeedBook

    frames = list(read_frames(*files))
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
    if args.role == "replay":
        replay_child([str(f) for f in files], args.source, args.market)
        return 0
    if args.quick:
        args.runs, args.kernel_runs = 3, 1
    from tickbus.plugins.binance.capture import read_frames

    cmd = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"command : python -m tickbus.tools.bench.bench_feed {cmd}".rstrip())
    print(f"machine : nproc {os.cpu_count()}, CPython {platform.python_version()}, load {_load()}")
    print(f"capture : {', '.join(str(f) for f in files)}")
    print(f"runs    : {args.runs} (latency, in-process), {args.kernel_runs} (kernel, per source)")
    frames = list(read_frames(*files))
    t0 = time.perf_counter()
    counts = verify(frames, args.market, args.depth, _symbol(frames))
    print(
        f"verified: before timing, baseline output == tickbus output on all "
        f"{counts['frames']:,} frames ({counts['book_tops']:,} BookTop, {counts['trades']:,} "
        f"Trade, {counts['tickers']:,} BookTicker; {time.perf_counter() - t0:.1f} s)"
    )
    del frames

    lat = bench_latency(files, args.runs, args.depth, args.market)
    print(
        f"\n1. FRAME -> md.book per depth frame (us), {lat['tickbus']['samples']} frames each;"
        " interleaved per frame\n   tickbus: parse + publish md.depth + book plugin (sync,"
        " apply, top N, BookTop) + publish md.book, in-lane\n   baseline: msgspec decode +"
        " exact ints + sync + bisect/dict apply + top N + BookTop, no bus"
    )
    print(f"   {'depth frames':<14}{'who':<10}{'n':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}")
    ratios: dict[str, Any] = {"latency": {}, "throughput": {}}
    for key in ("all", "<=20 levels", "21-499", ">=500"):
        if key not in lat["tickbus"]:
            continue
        a, b = lat["tickbus"][key], lat["baseline"][key]
        for who, r in (("tickbus", a), ("baseline", b)):
            cells = f"{r['p50']:>8.1f}{r['p90']:>8.1f}{r['p99']:>8.1f}{r['max']:>9.1f}"
            print(f"   {key:<14}{who:<10}{r['n']:>7}{cells}")
        rat = {q: a[q] / b[q] for q in ("p50", "p90", "p99")}
        ratios["latency"][key] = rat
        cells = "".join(f"{rat[q]:>7.2f}x" for q in ("p50", "p90", "p99"))
        print(f"   {key:<14}{'ratio':<10}{'':>7}{cells}   (tickbus/baseline)")

    inproc = bench_inprocess(files, args.runs, args.depth, args.market)
    kern = {s: bench_kernel(files, args.kernel_runs, s, args.market) for s in ("memory", "gz")}
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
    print(f"   load average after: {_load()}")
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
