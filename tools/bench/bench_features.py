"""Features benchmark on real Binance data: the ``features`` plugin vs. a fair baseline.

Run by hand (it is not a test)::

    python -m tickbus.tools.bench.bench_features [--quick] [--capture FILE ...] [--runs N]
                                                 [--repeat R] [--json FILE]

Default capture: ``shared/data/binance`` spot BTCUSDT 2024-08-08+09 (6,493 books, 19,904
trades) when present, else the shipped 3-minute sample. The capture is replayed once through
the real ``replay_feed`` + ``book`` plugins (replay clock) to get the ``BookTop`` and ``Trade``
messages the features plugin sees, in their order.

The baseline (:class:`BaselineEngine`, below) is what a careful engineer writes without
numba: the same definitions and the same O(1) algorithm - ``collections.deque`` windows,
running sums (exact Python ints for volumes and the VWAP notional, Neumaier-compensated
floats for the realised variance and the imbalance integral), a ``deque(maxlen=n)`` of VPIN
buckets - and the top-N levels read through ``memoryview(levels).cast("q")`` (measured ~6x
faster than ``numpy.frombuffer`` + vector ops on 5 levels, so numpy is not used there).
Before anything is timed both run over every message and must give the same vectors (floats
within 1e-9 relative, VWAP within one 1e-8 unit), or the run stops.

What is measured: the plugin's handlers ``Features.on_book`` / ``on_trade`` (symbol lookup,
validity check, the compiled update, the ``FeatureVector`` built and handed to ``publish``)
against the baseline's handlers doing the same, per message, interleaved (order alternating),
``perf_counter_ns`` around each call. Per run p50/p90/p99/mean, then the median over runs and
the range of the per-run p50s; ``tickbus/baseline`` rows divide tickbus's figure by the
baseline's (< 1: tickbus takes less time). The timer's own cost is the first row.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.features import rolling
from tickbus.plugins.features.plugin import Features, FeaturesConfig
from tickbus.schemas import SCALE, BookTop, FeatureVector, Trade

ROOT = Path(__file__).resolve().parents[2]
SPOT = ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples" / "spot"
FIELDS = [f for f in FeatureVector.__struct_fields__ if f not in ("symbol",)]


def default_capture() -> list[Path]:
    files = [SPOT / "btcusdt_20240808.gz", SPOT / "btcusdt_20240809.gz"]
    return files if all(f.exists() for f in files) else [SAMPLE]


# --------------------------------------------------------------------------- baseline


class _Sum:
    """Neumaier-compensated float sum (add and remove)."""

    __slots__ = ("s", "c")

    def __init__(self) -> None:
        self.s = self.c = 0.0

    def add(self, x: float) -> None:
        s = self.s
        t = s + x
        self.c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
        self.s = t

    def zero(self) -> None:
        self.s = self.c = 0.0


class BaselineEngine:
    """The features of one symbol in plain Python: the plugin's definitions, O(1)."""

    def __init__(self, symbol: str, cfg: FeaturesConfig) -> None:
        self.symbol = symbol
        self.topic = f"feat.{symbol}"
        self.W = cfg.feature_window_ms * 1_000_000
        self.L = cfg.volume_surge_window_ms * 1_000_000
        self.H = cfg.momentum_half_life_ms * 1e6
        self.N2 = 2 * cfg.depth_levels
        self.k = 1e4 / cfg.pressure_decay_bps
        self.vb = round(cfg.vpin_bucket_volumes.get(symbol, cfg.vpin_bucket_volume) * SCALE)
        self.nb = cfg.vpin_buckets
        self.tau = self.t0 = 0
        self.tw: deque[tuple[int, int, int, bool]] = deque()  # trades in the window
        self.tl: deque[tuple[int, int]] = deque()  # (t, qty) in the surge window
        self.w_q = self.w_buy = self.w_pq = self.l_q = 0  # exact ints
        self.v_buy = self.v_sell = self.v_sum = self.v_done = 0
        self.v_ring: deque[int] = deque(maxlen=self.nb)
        self.rv, self.integ = _Sum(), _Sum()
        self.invalidate()

    def invalidate(self) -> None:
        self.book_t0 = self.prev_sum = self.mom_t = 0
        self.mom_s = self.mom_w = self.prev_mom = 0.0
        self.rets: deque[tuple[int, float]] = deque()  # (t, r*r) in the window
        self.segs: deque[list[Any]] = deque()  # closed segments [start, end, imbalance, c]
        self.open: tuple[int, float] | None = None  # (t, imbalance) of the last book
        self.rv.zero()
        self.integ.zero()

    def _clock(self, ts: int) -> int:
        if ts > self.tau:
            self.tau = ts
        if self.t0 == 0 and self.tau > 0:
            self.t0 = self.tau
        return self.tau

    def _expire_trades(self, tau: int) -> None:
        cut = tau - self.W
        tw = self.tw
        while tw and tw[0][0] <= cut:
            _, px, q, buy = tw.popleft()
            self.w_q -= q
            self.w_pq -= px * q
            if buy:
                self.w_buy -= q
        cut = tau - self.L
        tl = self.tl
        while tl and tl[0][0] <= cut:
            self.l_q -= tl.popleft()[1]

    def trade(self, msg: Trade) -> int:
        px, q = msg.px, msg.qty
        if px <= 0 or q <= 0 or px >= 1 << 56 or q >= 1 << 56:
            return -3
        tau = self._clock(msg.ts_exchange_ns)
        buy = not msg.buyer_is_maker
        self.tw.append((tau, px, q, buy))
        self.tl.append((tau, q))
        self.w_q += q
        self.w_pq += px * q
        self.l_q += q
        if buy:
            self.w_buy += q
        self._expire_trades(tau)
        vb, n, rem = self.vb, self.nb, q
        while rem > 0:
            take = min(rem, vb - self.v_buy - self.v_sell)
            if buy:
                self.v_buy += take
            else:
                self.v_sell += take
            rem -= take
            if self.v_buy + self.v_sell == vb:
                imb = abs(self.v_buy - self.v_sell)
                if len(self.v_ring) == n:
                    self.v_sum -= self.v_ring[0]
                self.v_ring.append(imb)
                self.v_sum += imb
                self.v_done += 1
                self.v_buy = self.v_sell = 0
                full = rem // vb
                if full > n:
                    self.v_done += full - n
                    rem -= (full - n) * vb
        return 0

    def _side(self, levels: bytes, sign: int) -> tuple[int, float]:
        lv = memoryview(levels).cast("q")[: self.N2].tolist()
        if not lv or lv[0] <= 0:
            return 0, 0.0
        best = lv[0]
        k = self.k / best
        depth, pressure = 0, 0.0
        for i in range(0, len(lv), 2):
            p, q = lv[i], lv[i + 1]
            if p <= 0:
                break
            if q < 0 or q >= 1 << 56 or p >= 1 << 56:
                raise ValueError("bad level")
            depth += q
            pressure += q / 1e8 * math.exp(-sign * (best - p) * k)
        return depth, pressure

    def book(self, msg: BookTop) -> FeatureVector | int:
        bids, asks, b, a = msg.bids, msg.asks, msg.bid_px, msg.ask_px
        if len(bids) % 16 or len(asks) % 16 or b < 0 or a < 0:
            return -1
        two = b > 0 and a > 0
        if two and b >= a:
            return -2
        try:
            bd, bp = self._side(bids, 1)
            ad, ap = self._side(asks, -1)
        except ValueError:
            return -1
        tau = self._clock(msg.ts_exchange_ns)
        if self.book_t0 == 0:
            self.book_t0 = tau
        W = self.W
        lo = max(tau - W, self.book_t0)
        imb = (bd - ad) / (bd + ad) if bd + ad > 0 else 0.0
        if self.open is not None:
            t_prev, i_prev = self.open
            s = max(t_prev, lo)
            c = i_prev * (tau - s) if tau > s else 0.0
            self.segs.append([s, tau, i_prev, c])
            self.integ.add(c)
        self.open = (tau, imb)
        if two:
            total = b + a
            if self.prev_sum > 0:
                r = math.log(total / self.prev_sum)
                self.rets.append((tau, r * r))
                self.rv.add(r * r)
                d = 2.0 ** (-(tau - self.mom_t) / self.H) if self.mom_w > 0.0 else 0.0
                self.mom_s = self.mom_s * d + r
                self.mom_w = self.mom_w * d + 1.0
                self.mom_t = tau
            self.prev_sum = total
        else:
            self.prev_sum = 0
        cut = tau - W
        rets = self.rets
        while rets and rets[0][0] <= cut:
            self.rv.add(-rets.popleft()[1])
        if not rets:
            self.rv.zero()
        segs = self.segs
        while segs and segs[0][1] <= lo:
            self.integ.add(-segs.popleft()[3])
        if not segs:
            self.integ.zero()
        self._expire_trades(tau)
        volatility = max(self.rv.s + self.rv.c, 0.0)
        momentum = self.mom_s / self.mom_w if self.mom_w > 0.0 else 0.0
        acceleration = momentum - self.prev_mom
        self.prev_mom = momentum
        span = tau - lo
        if span > 0:
            integ = self.integ.s + self.integ.c
            if segs and lo > segs[0][0]:
                integ -= segs[0][2] * (lo - segs[0][0])
            wimb = min(max(integ / span, -1.0), 1.0)
        else:
            wimb = imb
        if two:
            mid = (b + a) // 2
            spread = (a - b) * 2e4 / (a + b)
        else:
            mid, spread = 0, 10_000.0
        wq = self.w_q
        if wq:
            vwap = (2 * self.w_pq + wq) // (2 * wq)  # exact, rounded half up
            flow = (2 * self.w_buy - wq) / wq
        else:
            vwap, flow = mid, 0.0
        toxicity = self.v_sum / (min(self.v_done, self.nb) * self.vb) if self.v_done else 0.0
        lq = self.l_q
        elapsed = tau - self.t0 if self.t0 > 0 else 0
        if lq == 0:
            surge = 0.0
        elif elapsed <= 0:
            surge = 1.0
        else:
            surge = (wq * min(self.L, elapsed)) / (lq * min(W, elapsed))
        return FeatureVector(
            self.symbol, msg.ts_exchange_ns, mid, volatility, momentum, imb, wimb, spread,
            max(bd, 1) / max(ad, 1), bp, ap, vwap, flow, toxicity, acceleration, surge,
            msg.last_update_id, msg.ts_recv_ns,
        )  # fmt: skip


class BaselineFeatures:
    """The baseline's handlers, doing what the plugin's do."""

    def __init__(self, publish: Callable[[str, Any], None], cfg: FeaturesConfig) -> None:
        self.cfg = cfg
        self.engines: dict[str, BaselineEngine] = {}
        self._publish = publish

    def _engine(self, symbol: str) -> BaselineEngine:
        eng = self.engines.get(symbol)
        if eng is None:
            eng = self.engines[symbol] = BaselineEngine(symbol, self.cfg)
        return eng

    def on_book(self, msg: BookTop) -> None:
        eng = self._engine(msg.symbol)
        if not msg.valid:
            eng.invalidate()
            return
        out = eng.book(msg)
        if type(out) is not int:
            self._publish(eng.topic, out)

    def on_trade(self, msg: Trade) -> None:
        self._engine(msg.symbol).trade(msg)


# --------------------------------------------------------------------------- data


class _collector:
    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        ctx.subscribe("md.book.", seen.append)
        ctx.subscribe("md.trade.", seen.append)
        return seen


def load(paths: list[Path]) -> list[BookTop | Trade]:
    """The capture through the real replay_feed + book plugins: md.book and md.trade."""
    with tempfile.TemporaryDirectory(prefix="tbf", dir="/tmp") as rt:
        raw = {
            "kernel": {"clock": "replay", "runtime_dir": rt, "status_interval_s": 0},
            "plugins": {
                "book": {"depth": 20},
                "replay_feed": {
                    "exit_at_end": False, "speed": 0.0, "files": [str(p) for p in paths]
                },
                "collector": {},
            },
        }  # fmt: skip
        k = Kernel(
            parse_config(raw, str(ROOT / "bench.toml")), extra_plugins={"collector": _collector}
        )
        k.start()
        try:
            rep = k.contexts["replay_feed"].component
            while not rep.done:
                time.sleep(0.02)
        finally:
            k.stop()
        return list(k.contexts["collector"].component)


class _Sink:
    """Stands in for the lane's publish: keeps the last message (nothing else)."""

    def __init__(self) -> None:
        self.last: Any = None
        self.n = 0

    def __call__(self, topic: str, msg: Any) -> None:
        self.last = msg
        self.n += 1


def _plugin(cfg: FeaturesConfig) -> tuple[Features, _Sink]:
    sink = _Sink()
    ctx = SimpleNamespace(publish=sink, log=logging.getLogger("tickbus.bench.features"))
    return Features(ctx, cfg), sink  # type: ignore[arg-type]


def verify(msgs: list[BookTop | Trade], cfg: FeaturesConfig) -> int:
    """Both produce the same vectors on every message; how many vectors."""
    plug, ps = _plugin(cfg)
    bs = _Sink()
    base = BaselineFeatures(bs, cfg)
    n = 0
    for m in msgs:
        if type(m) is BookTop:
            plug.on_book(m)
            base.on_book(m)
            if not m.valid:
                continue
            a, b = ps.last, bs.last
            for f in FIELDS:
                x, y = getattr(a, f), getattr(b, f)
                ok = abs(x - y) <= 1 if f == "vwap" else math.isclose(x, y, rel_tol=1e-9,
                                                                       abs_tol=1e-15)  # fmt: skip
                if not ok:
                    raise SystemExit(f"baseline != plugin at book {m.last_update_id}: {f} {x} {y}")
            n += 1
        else:
            plug.on_trade(m)
            base.on_trade(m)
    if plug.bad or ps.n != bs.n:
        raise SystemExit(f"unexpected: bad input {plug.bad}, vectors {ps.n} vs {bs.n}")
    return n


# --------------------------------------------------------------------------- timing


def run_once(msgs: list[BookTop | Trade], cfg: FeaturesConfig, repeat: int) -> dict[str, list]:
    """One run: fresh state each replay, plugin and baseline interleaved per message."""
    samples: dict[str, list[int]] = {k: [] for k in ("tb_book", "tb_trade", "bl_book",
                                                      "bl_trade", "timer")}  # fmt: skip
    clock = time.perf_counter_ns
    for _ in range(repeat):
        plug, _s1 = _plugin(cfg)
        base = BaselineFeatures(_Sink(), cfg)
        for i, m in enumerate(msgs):
            kind = "book" if type(m) is BookTop else "trade"
            fa = plug.on_book if kind == "book" else plug.on_trade
            fb = base.on_book if kind == "book" else base.on_trade
            first, second = ((fa, "tb"), (fb, "bl")) if i & 1 else ((fb, "bl"), (fa, "tb"))
            t0 = clock()
            first[0](m)  # type: ignore[operator]
            t1 = clock()
            second[0](m)  # type: ignore[operator]
            t2 = clock()
            samples[f"{first[1]}_{kind}"].append(t1 - t0)
            samples[f"{second[1]}_{kind}"].append(t2 - t1)
            t3 = clock()
            samples["timer"].append(clock() - t3)
    return samples


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3


def figures(xs: list[int]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50_us": pct(xs, 0.5),
        "p90_us": pct(xs, 0.9),
        "p99_us": pct(xs, 0.99),
        "mean_us": statistics.fmean(xs) / 1e3,
    }


_ROWS = [
    ("timer", "timer", "perf_counter_ns() pair (subtract from the rest)"),
    ("book event", "tb_book", "tickbus: Features.on_book (numba) -> FeatureVector"),
    ("book event", "bl_book", "baseline: plain Python + deque, same vector"),
    ("trade", "tb_trade", "tickbus: Features.on_trade (numba)"),
    ("trade", "bl_trade", "baseline: plain Python + deque"),
]
_FIGS = ("p50_us", "p90_us", "p99_us", "mean_us")


def table(runs: list[dict[str, list]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for section, key, name in _ROWS:
        per_run = [figures(r[key]) for r in runs]
        row: dict[str, Any] = {"section": section, "name": name, "key": key}
        row["n"] = sum(f["n"] for f in per_run)
        for fig in _FIGS:
            row[fig] = statistics.median(f[fig] for f in per_run)
        row["p50_range"] = (min(f["p50_us"] for f in per_run), max(f["p50_us"] for f in per_run))
        rows.append(row)
        if key.startswith("bl_"):
            tb = next(r for r in rows if r["key"] == "tb_" + key[3:])
            rows.append({"section": section, "name": "= tickbus/baseline", "key": "ratio",
                         **{f: tb[f] / row[f] for f in _FIGS}})  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'section':11s} {'variant':52s} {'n':>8s} {'p50':>8s} {'p90':>8s} {'p99':>8s} "
          f"{'mean':>8s} {'p50 range':>12s}")  # fmt: skip
    for r in rows:
        if r["key"] == "ratio":
            cells = "".join(f"{r[k]:8.2f}x" for k in _FIGS)
            print(f"{r['section']:11s} {r['name']:52s} {'':>8s} {cells}")
            continue
        lo, hi = r["p50_range"]
        cells = "".join(f"{r[k]:8.2f} " for k in _FIGS)
        print(f"{r['section']:11s} {r['name']:52s} {r['n']:8d} {cells}{f'{lo:.2f}-{hi:.2f}':>12s}")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tickbus.tools.bench.bench_features", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--capture", type=Path, nargs="+", help="capture file(s), one stream")
    ap.add_argument("--runs", type=int, default=5, help="independent runs (median reported)")
    ap.add_argument("--repeat", type=int, default=3, help="replays of the messages per run")
    ap.add_argument("--quick", action="store_true", help="3 runs x 1 replay")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.repeat = 3, 1
    paths = args.capture or default_capture()
    cmd = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"# command: python -m tickbus.tools.bench.bench_features {cmd}".rstrip())
    print(f"# CPython {platform.python_version()} numpy {np.__version__} on {platform.machine()}")
    t0 = time.perf_counter()
    rolling.warmup()
    print(f"# warm-up (numba cache load or compile): {time.perf_counter() - t0:.2f} s")
    logging.basicConfig(level=logging.WARNING)
    msgs = load(paths)
    books = sum(type(m) is BookTop for m in msgs)
    print(f"# capture: {', '.join(p.name for p in paths)}: {books:,} books, "
          f"{len(msgs) - books:,} trades (through replay_feed + book)")  # fmt: skip
    cfg = msgspec.convert({}, FeaturesConfig)  # the defaults
    t0 = time.perf_counter()
    n = verify(msgs, cfg)
    print(f"# verified before timing: baseline == plugin on all {n:,} vectors "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(f"# {args.runs} runs x {args.repeat} replays; load average before: {_load()}")
    runs = []
    for _ in range(args.runs):
        gc.collect()
        runs.append(run_once(msgs, cfg, args.repeat))
    print(f"# load average after: {_load()}")
    print("# figures in us; medians over the runs of per-run percentiles; p50 range over runs")
    rows = table(runs)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
