"""Strategy benchmark: a decision per feature vector, tickbus vs. a fair baseline (not a test).

    python -m tickbus.tools.bench.bench_strategy [--capture FILE ...] [--runs R] [--json FILE]

Input: the real ``md.book`` / ``feat`` messages of a capture (default: the bundled 3-minute
BTCUSDT sample), made by replaying it through ``replay_feed -> book -> features`` once.
Every figure is a per-call ``perf_counter_ns`` sample; p50/p90/p99 over all samples of all
runs; tickbus and the baseline run in the same process, interleaved or back to back per run.

1. **evaluate** (no bus): ``ImbalanceStrategy.evaluate(fv)`` vs. the rule written inline as
   a plain function (the same arithmetic on the same vector, constants in locals); ONNX
   ``OnnxModel.predict(fv)`` (input row, one ``session.run``, output checks) vs. the same
   logistic regression in numpy (standardise, clip, matmul, softmax, argmax) - the obvious
   way to run that model without onnxruntime. Interleaved per vector, order alternating.
2. **feat -> sig, in-lane**: the strategy plugin in the hot lane of a real kernel (replay
   clock), the vector's book published first (untimed), then the time of the synchronous
   ``publish("feat.<S>", fv)``: dispatch, checks, evaluation, book checks, the ``Signal``
   published to a subscriber, and the order logic (without a broker, as now). Only vectors
   that produce a signal are counted. Baseline: a minimal plugin that computes the same
   decision inline and publishes the same ``Signal`` (no order logic).
3. **feat -> sig, own lane**: the same with the strategy in a lane of its own (one config
   line: ``lane = "ml"``): the vector crosses to that lane, the signal comes back; timed from
   the publish in the hot lane to the signal's arrival there (two lane hops included).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.schemas import BookTop, FeatureVector, Signal

from .bench_feed import summary

NO_ENDPOINTS = {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []}
IMB = {"imbalance_threshold": 0.3, "momentum_scale": 2e-5, "volatility_scale": 1e-8,
       "volatility_floor": 1e-10, "min_confidence": 0.7}  # fmt: skip


def capture(files: list[Path]) -> list[tuple[BookTop, FeatureVector]]:
    """(book, vector computed on it) pairs of a replay through the real plugins."""
    books: dict[int, BookTop] = {}
    feats: list[FeatureVector] = []

    class grab:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            # features may see a book before we do: pair them up at the end
            ctx.subscribe("md.book.", lambda b: books.__setitem__(b.last_update_id, b))
            ctx.subscribe("feat.", feats.append)

    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        raw = {
            "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning"},
            "bus": NO_ENDPOINTS,
            "plugins": {
                "replay_feed": {"files": [str(f) for f in files], "progress": False},
                "book": {}, "features": {}, "grab": {},
            },
        }  # fmt: skip
        rc = Kernel(parse_config(raw), extra_plugins={"grab": grab}).run(handle_signals=False)
    if rc:
        raise SystemExit(f"the replay of {files[0].name} failed (exit status {rc})")
    return [(books[f.book_update_id], f) for f in feats]


# ----------------------------------------------------------------------------- baselines


def rule(fv: FeatureVector, k: tuple[float, ...]) -> tuple[int, float, float, int, str] | None:
    """The imbalance rule written plainly (what the baseline computes)."""
    threshold, m_scale, v_scale, v_floor, min_conf = k
    imb = fv.imbalance
    if abs(imb) < threshold:
        return None
    strength = max(-1.0, min(1.0, imb / threshold))
    conf = (min(abs(fv.momentum) / m_scale, 1.0) + min(v_scale / max(fv.volatility, v_floor),
                                                       1.0)) / 2  # fmt: skip
    hold = int(max(100.0, min(10_000.0, 1000.0 / max(abs(imb), 0.01))))
    why = "" if conf >= min_conf else f"confidence {conf:.4g} < min_confidence {min_conf:g}"
    return (1 if imb > 0 else -1), strength, conf, hold, why


class NumpyLR:
    """The bundled logistic regression evaluated in numpy, from the model file."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))
        meta = {p.key: p.value for p in m.metadata_props}
        w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        self.names = meta["tickbus.features"].split(",")
        self.mean = np.array(json.loads(meta["tickbus.norm_mean"]), np.float32)
        self.std = np.array(json.loads(meta["tickbus.norm_std"]), np.float32)
        self.clip = float(json.loads(meta["tickbus.clip"]))
        self.w, self.b = w["W"], w["b"]
        self.hold = float(meta["tickbus.horizon_ms"])
        self.x = np.zeros(len(self.names), np.float32)
        self.get = operator.attrgetter(*self.names)

    def predict(self, fv: FeatureVector) -> tuple[int, float, float]:
        x = self.x
        x[:] = self.get(fv)
        z = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        logits = z @ self.w + self.b
        p = np.exp(logits - logits.max())
        p /= p.sum()
        i = int(p.argmax())
        return i - 1, float(p[i]), self.hold


# ----------------------------------------------------------------------------- 1. evaluate


def bench_evaluate(pairs: list[tuple[BookTop, FeatureVector]], runs: int) -> dict[str, Any]:
    from tickbus.plugins.signals import imbalance
    from tickbus.plugins.signals.onnx_model import BUNDLED, OnnxModel

    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        raw = {"kernel": {"runtime_dir": rt, "log_level": "warning"}, "bus": NO_ENDPOINTS,
               "plugins": {"s": {"plugin": "imb", **IMB}}}  # fmt: skip
        k = Kernel(parse_config(raw), extra_plugins={"imb": imbalance.plugin})
        k.start()
        strat = k.contexts["s"].component  # a real instance; evaluate() is bus-free
        k.stop()
    k = (IMB["imbalance_threshold"], IMB["momentum_scale"], IMB["volatility_scale"],
         IMB["volatility_floor"], IMB["min_confidence"])  # fmt: skip
    model, ref = OnnxModel(BUNDLED), NumpyLR(BUNDLED)
    clock = time.perf_counter_ns
    out: dict[str, list[float]] = {"imbalance.evaluate": [], "baseline: plain rule": [],
                                   "onnx.predict": [], "baseline: numpy LR": []}  # fmt: skip
    evaluate = strat.evaluate
    for run in range(runs):
        for i, (_, fv) in enumerate(pairs):
            first = (i + run) % 2
            for which in (0, 1) if first else (1, 0):
                t0 = clock()
                a = evaluate(fv) if which == 0 else rule(fv, k)
                out["imbalance.evaluate" if which == 0 else "baseline: plain rule"].append(
                    (clock() - t0) / 1000
                )
            if (a is None) != (rule(fv, k) is None):
                raise SystemExit(f"vector {i}: imbalance evaluate and the plain rule disagree")
            for which in (0, 1) if first else (1, 0):
                t0 = clock()
                d = model.predict(fv) if which == 0 else ref.predict(fv)
                out["onnx.predict" if which == 0 else "baseline: numpy LR"].append(
                    (clock() - t0) / 1000
                )
            if model.predict(fv)[0] != ref.predict(fv)[0]:
                raise SystemExit(f"vector {i}: onnxruntime and numpy disagree ({d})")
    return {name: summary(xs) for name, xs in out.items()}


# ----------------------------------------------------------------------------- 2./3. lanes


def _baseline_plugin(kind: str) -> Any:
    """A minimal plugin: the decision inline, the same Signal published."""
    from tickbus.plugins.signals.onnx_model import BUNDLED

    k = (IMB["imbalance_threshold"], IMB["momentum_scale"], IMB["volatility_scale"],
         IMB["volatility_floor"], IMB["min_confidence"])  # fmt: skip
    lr = NumpyLR(BUNDLED) if kind == "onnx" else None

    class baseline:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            publish, now = ctx.publish, ctx.clock.now_ns

            def on_feat(fv: FeatureVector) -> None:
                if lr is None:
                    if not (math.isfinite(fv.imbalance) and math.isfinite(fv.momentum)
                            and math.isfinite(fv.volatility)):  # fmt: skip
                        return
                    r = rule(fv, k)
                    if r is None:
                        return
                    d, s, c, h, why = r
                else:
                    d, c, hf = lr.predict(fv)
                    if not d:
                        return
                    s, h, why = d * c, int(hf), "" if c >= 0.5 else "confidence"
                publish(f"sig.{fv.symbol}",
                        Signal(fv.symbol, "s", d, s, c, h, why, now(), fv.ts_recv_ns))  # fmt: skip

            ctx.subscribe("feat.", on_feat)

    return baseline


def bench_lane(
    pairs: list[tuple[BookTop, FeatureVector]], kind: str, who: str, own_lane: bool, runs: int
) -> list[float]:
    """feat -> sig latency (us) of the vectors that produce a signal."""
    from tickbus.plugins.signals import imbalance, onnx_model
    from tickbus.plugins.signals.onnx_model import BUNDLED, OnnxModel

    if kind == "imbalance":
        emits = [abs(fv.imbalance) >= IMB["imbalance_threshold"] for _, fv in pairs]
        plugin, settings = imbalance.plugin, dict(IMB)
    else:
        model = OnnxModel(BUNDLED)
        emits = [model.predict(fv)[0] != 0 for _, fv in pairs]
        plugin, settings = onnx_model.plugin, {}
    if who == "baseline":
        plugin, settings = _baseline_plugin(kind), {}
    got = {"t": 0}
    arrived = threading.Event()

    class sink:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            def on_sig(sig: Signal) -> None:
                got["t"] = time.perf_counter_ns()
                arrived.set()

            ctx.subscribe("sig.", on_sig)

    samples: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
            lanes = {"hot": {}, "ml": {}} if own_lane else {"hot": {}}
            raw = {
                "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning",
                           "heartbeat_s": 1.0, "status_interval_s": 0},
                "bus": NO_ENDPOINTS, "lanes": lanes,
                "plugins": {"s": {"plugin": "strat", "lane": "ml" if own_lane else "hot",
                                  **settings},
                            "sink": {"lane": "hot"}},
            }  # fmt: skip
            k = Kernel(parse_config(raw), extra_plugins={"strat": plugin, "sink": sink})
            k.start()
            try:
                samples += _drive(k, pairs, emits, own_lane, got, arrived)
            finally:
                k.stop()
    return samples


def _drive(
    k: Kernel, pairs: list[tuple[BookTop, FeatureVector]], emits: list[bool], own_lane: bool,
    got: dict[str, int], arrived: threading.Event,
) -> list[float]:  # fmt: skip
    """Publish every (book, vector) in the hot lane; feat -> sig latencies (us)."""
    hot = k.lanes["hot"]
    advance = k.clock.advance  # type: ignore[union-attr]
    publish = hot.publish
    samples: list[float] = []
    if not own_lane:

        def drive() -> None:
            clock = time.perf_counter_ns
            for (book, fv), emit in zip(pairs, emits, strict=True):
                advance(fv.ts_recv_ns)
                publish(f"md.book.{book.symbol}", book)
                got["t"] = 0
                t0 = clock()
                publish(f"feat.{fv.symbol}", fv)
                t1 = clock()
                if emit != bool(got["t"]):
                    raise SystemExit(f"vector {fv.book_update_id}: signal expected: {emit}")
                if emit:
                    samples.append((t1 - t0) / 1000)

        hot.call(drive, timeout=600)
        return samples

    def send(book: BookTop, fv: FeatureVector) -> int:
        advance(fv.ts_recv_ns)
        publish(f"md.book.{book.symbol}", book)
        t0 = time.perf_counter_ns()
        publish(f"feat.{fv.symbol}", fv)
        return t0

    for (book, fv), emit in zip(pairs, emits, strict=True):
        arrived.clear()
        t0 = hot.call(send, book, fv)
        if emit:
            if not arrived.wait(5):
                raise SystemExit(f"vector {fv.book_update_id}: no signal within 5 s")
            samples.append((got["t"] - t0) / 1000)
    return samples


def main() -> int:
    p = argparse.ArgumentParser(prog="bench_strategy", description=__doc__.split("\n")[0])
    p.add_argument("--capture", nargs="+", type=Path, help="capture files (one stream)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    from tickbus.plugins.binance.capture import SAMPLE

    files = args.capture or [SAMPLE]
    pairs = capture(files)
    print(f"{len(pairs)} feature vectors of {', '.join(f.name for f in files)};"
          f" {platform.python_version()} on {platform.machine()}, {args.runs} runs")  # fmt: skip
    results: dict[str, Any] = {"evaluate": bench_evaluate(pairs, args.runs)}
    for kind in ("imbalance", "onnx"):
        for own in (False, True):
            for who in ("tickbus", "baseline"):
                key = f"{kind} feat->sig {'own lane' if own else 'in-lane'} {who}"
                results[key] = summary(bench_lane(pairs, kind, who, own, args.runs))
    flat = {**results.pop("evaluate"), **results}
    print(f"{'path':44s} {'n':>7s} {'p50 us':>8s} {'p90 us':>8s} {'p99 us':>8s}")
    for name, s in flat.items():
        print(f"{name:44s} {s['n']:7d} {s['p50']:8.2f} {s['p90']:8.2f} {s['p99']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(flat, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
