"""Feed-side benchmark through the real plugins and the real kernel (not a test).

    python -m tickbus.tools.bench.bench_feed [--capture FILE ...] [--runs R] [--json FILE]

Default capture: ../shared/data spot BTCUSDT 2024-08-08+09 (the 11-minute, 99,573-frame
capture) when present, else the shipped 3-minute sample.

1. **frame -> md.book**, per depth frame: a driver plugin in the hot lane takes the raw frame
   bytes, parses them (``FrameParser``, as ``binance_feed``/``replay_feed`` do) and publishes
   ``md.depth``; the ``book`` plugin syncs, applies, takes the top N and publishes ``md.book``;
   a subscriber in the same lane stops the clock. Every frame of the capture is fed (trades
   and tickers too, untimed), so caches see the real mix. p50/p90/p99 over all depth frames of
   all runs, also split by the frame's level count.
2. **replay throughput**: ``replay_feed`` (speed 0) + ``book`` in one lane over the whole
   capture (every frame: depth, trades, book tickers), each run in a fresh process:
   frames/s from the first frame to the last, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples" / "spot"
BIG = [SHARED / "btcusdt_20240808.gz", SHARED / "btcusdt_20240809.gz"]


def default_capture() -> list[Path]:
    from tickbus.plugins.binance.capture import SAMPLE

    return BIG if all(p.exists() for p in BIG) else [SAMPLE]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ----------------------------------------------------------------------------- 1. latency


def bench_latency(files: list[Path], runs: int, depth: int) -> dict[str, Any]:
    from tickbus.kernel import hookimpl
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config
    from tickbus.plugins.binance.capture import read_capture
    from tickbus.plugins.binance.parse import FrameParser

    records = [(r.kind, r.symbol, r.payload, r.ts_ns) for r in read_capture(*files)]
    samples: list[tuple[int, int]] = []  # (ns, levels)

    class driver:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: Any) -> dict[str, int]:
            state = {"t0": 0, "got": 0}

            def on_book(msg: Any) -> None:
                state["got"] = time.perf_counter_ns()

            ctx.subscribe("md.book.", on_book)
            return state

    for _ in range(runs):
        rt = tempfile.mkdtemp(prefix="tb", dir="/tmp")
        cfg = parse_config(
            {
                "kernel": {"runtime_dir": rt, "clock": "replay"},
                "bus": {"tap": ""},
                "plugins": {"book": {"depth": depth}, "driver": {}},
            }
        )
        k = Kernel(cfg, extra_plugins={"driver": driver})
        k.start()
        lane = k.lanes["main"]
        ctx = k.contexts["driver"]

        def feed_all(ctx: Any = ctx) -> None:
            parser = FrameParser()
            publish = ctx.publish
            state = ctx.component
            clock = time.perf_counter_ns
            topics: dict[tuple[type, str], str] = {}
            for kind, symbol, payload, ts in records:
                if kind == "rest":
                    snap = parser.parse_snapshot(payload, symbol, ts)
                    publish(f"md.depth.{snap.symbol}", snap)
                    continue
                depth_frame = b"depthUpdate" in payload[:80]
                t0 = clock()
                msg = parser.parse(payload, ts)
                key = (type(msg), msg.symbol)
                topic = topics.get(key)
                if topic is None:
                    topic = topics[key] = f"md.{type(msg).__name__.lower()}.{msg.symbol}"
                    if type(msg).__name__ == "DepthDiff":
                        topic = topics[key] = f"md.depth.{msg.symbol}"
                state["got"] = 0
                publish(topic, msg)
                if depth_frame and state["got"]:
                    samples.append((state["got"] - t0, len(msg.bids) // 16 + len(msg.asks) // 16))

        lane.call(feed_all, timeout=600)
        k.stop()
    lat = [s / 1000 for s, _ in samples]
    out: dict[str, Any] = {"samples": len(lat), "all": summary(lat)}
    for name, lo, hi in (("<=20 levels", 0, 20), ("21-499", 21, 499), (">=500", 500, 10**9)):
        sub = [s / 1000 for s, n in samples if lo <= n <= hi]
        if sub:
            out[name] = summary(sub)
    return out


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": statistics.median(xs),
        "p90": pct(xs, 0.90),
        "p99": pct(xs, 0.99),
        "max": max(xs),
    }


# ----------------------------------------------------------------------------- 2. throughput


def replay_child(files: list[str]) -> None:
    """Run replay_feed + book to the end in this process; print figures as JSON."""
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config

    rt = tempfile.mkdtemp(prefix="tb", dir="/tmp")
    cfg = parse_config(
        {
            "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning"},
            "bus": {"tap": ""},
            "plugins": {
                "book": {"depth": 20},
                "replay_feed": {"files": files, "speed": 0, "exit_at_end": False},
            },
        }
    )
    k = Kernel(cfg)
    k.start()
    rep = k.contexts["replay_feed"].component
    t0 = time.perf_counter()
    while not rep.done:
        time.sleep(0.002)
    dt = time.perf_counter() - t0
    k.stop()
    sync = k.contexts["book"].component.syncs
    print(
        json.dumps(
            {
                "frames": rep.frames,
                "bad": rep.bad,
                "seconds": dt,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "books": {s: [v.last_update_id, v.valid, v.stats.gaps] for s, v in sync.items()},
            }
        )
    )


def bench_throughput(files: list[Path], runs: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-m", "tickbus.tools.bench.bench_feed", "--role", "replay",
             "--capture", *map(str, files)],
            capture_output=True, text=True, cwd=ROOT, timeout=600, check=True,
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rates = [r["frames"] / r["seconds"] for r in results]
    return {
        "frames": results[0]["frames"],
        "bad": results[0]["bad"],
        "frames_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "seconds_median": statistics.median(r["seconds"] for r in results),
        "maxrss_mb": max(r["maxrss_mb"] for r in results),
        "books": results[0]["books"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_feed", description=__doc__
    )
    p.add_argument("--capture", nargs="+", help="capture files (read as one stream)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--depth", type=int, default=20, help="levels per side in md.book")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--role", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    files = [Path(f) for f in args.capture] if args.capture else default_capture()
    if args.role == "replay":
        replay_child([str(f) for f in files])
        return 0
    print(f"command : python -m tickbus.tools.bench.bench_feed {' '.join(argv or sys.argv[1:])}")
    print(f"machine : nproc {os.cpu_count()}, CPython {platform.python_version()}")
    print(f"capture : {', '.join(str(f) for f in files)}; runs {args.runs}; depth {args.depth}")
    lat = bench_latency(files, args.runs, args.depth)
    print(f"\n1. FRAME -> md.book through the plugins, in-lane (us), {lat['samples']} samples")
    head = f"   {'depth frames':<14}{'n':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}"
    print(head + "   target p50 <= 10")
    for key in ("all", "<=20 levels", "21-499", ">=500"):
        if key in lat:
            r = lat[key]
            cells = f"{r['p50']:>8.1f}{r['p90']:>8.1f}{r['p99']:>8.1f}{r['max']:>9.1f}"
            print(f"   {key:<14}{r['n']:>8}{cells}")
    thr = bench_throughput(files, args.runs)
    f = thr["frames_per_s"]
    print(f"\n2. REPLAY replay_feed + book, one lane, {thr['frames']} frames ({thr['bad']} bad)")
    rates = f"median {f['median']:,.0f}  min {f['min']:,.0f}  max {f['max']:,.0f}"
    print(f"   frames/s {rates}   target >= 250,000 (a fresh process per run)")
    print(f"   peak RSS {thr['maxrss_mb']:.0f} MB; final books {thr['books']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": lat, "throughput": thr}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
