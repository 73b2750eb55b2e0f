"""``tickbus train-model``: fit the ONNX model of ``onnx_strategy`` on recorded market data.

    tickbus train-model [--capture FILE [FILE ...]] ... [--horizon-ms 2000]
                        [--dead-band-bps 0.25] [--test-fraction 0.3] [--l2 0.001]
                        [--config FILE] [--out spot_lr.onnx]

1. **Features** come from the real plugins: each ``--capture`` group (files read as one
   stream, e.g. the two halves of a day) is replayed in-process through ``replay_feed``
   (as fast as possible, replay clock) -> ``book`` -> ``features``, and every ``feat.<S>``
   vector is kept. ``--config`` takes the ``[plugins.book]`` and ``[plugins.features]``
   tables from a tickbus config (default: their defaults), so the model sees what the
   strategy will see.
2. **Label** of a vector at time t: the sign of the mid move from t to t + H
   (``--horizon-ms``; the mid of the latest vector at or before t + H), 0 inside the dead
   band (``|move| <= --dead-band-bps``); vectors whose horizon runs past the stream's end
   are dropped. Classes: -1 down, 0 flat, +1 up.
3. **Split** in time, per stream: the last ``--test-fraction`` is the test set; training
   vectors whose horizon reaches into the test period are dropped (no look-ahead).
4. **Fit**: multinomial logistic regression in numpy (features standardised with the
   training mean and standard deviation, clipped to +-``--clip`` sigmas, L2 penalty
   ``--l2``, full-batch gradient descent with a fixed number of steps: deterministic).
5. **Write** the ONNX graph (``onnx.helper``): ``features`` float32 [1, n] -> standardise ->
   clip -> MatMul + Add -> Softmax; outputs ``direction`` (argmax - 1), ``confidence``
   (the top class probability), ``holding_period`` (H ms), plus ``probabilities``.
   Metadata: feature order, normalisation, horizon, dead band, data, the command, and the
   test figures. Prints out-of-sample accuracy against the majority-class baseline (the
   training set's most frequent class, predicted for every test vector).

The model contract is in :mod:`tickbus.plugins.signals.onnx_model`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples" / "spot"
DEFAULT_CAPTURES = [
    [SHARED / "btcusdt_20240808.gz", SHARED / "btcusdt_20240809.gz"],
    [SHARED / "ethusdt_20240808.gz", SHARED / "ethusdt_20240809.gz"],
]
DEFAULT_FEATURES = (
    "volatility", "momentum", "imbalance", "weighted_imbalance", "spread_bps", "depth_ratio",
    "bid_pressure", "ask_pressure", "trade_flow", "toxicity", "price_acceleration",
    "volume_surge",
)  # fmt: skip
CLASSES = (-1, 0, 1)
OPSET = 17
IR_VERSION = 8  # what opset 17 needs; old enough for any onnxruntime that has opset 17


@dataclass
class Stream:
    """The feature vectors of one symbol of one replay, in time order."""

    name: str
    t_ns: np.ndarray
    """Receive time (the replay clock) of each vector."""
    mid: np.ndarray
    """Mid price (1/SCALE units)."""
    x: np.ndarray
    """[len, n] raw feature values in the order of ``names``."""


# ----------------------------------------------------------------------------- features


def collect(
    files: list[Path], names: tuple[str, ...], tables: dict[str, dict[str, Any]]
) -> list[Stream]:
    """Replay ``files`` (one stream) through replay_feed -> book -> features in-process and
    return the feature vectors of each symbol."""
    from tickbus.kernel import PluginContext, hookimpl
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.config import parse_config

    rows: dict[str, list[tuple[Any, ...]]] = {}

    class collector:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> None:
            def on_feat(fv: Any) -> None:
                row = (fv.ts_recv_ns, fv.mid, *(getattr(fv, n) for n in names))
                rows.setdefault(fv.symbol, []).append(row)

            ctx.subscribe("feat.", on_feat)

    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        raw = {
            "kernel": {"runtime_dir": rt, "clock": "replay", "log_level": "warning"},
            "bus": {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []},
            "plugins": {
                "replay_feed": {
                    "files": [str(f) for f in files], "speed": 0.0, "progress": False,
                },
                "book": tables.get("book", {}),
                "features": tables.get("features", {}),
                "collector": {},
            },
        }  # fmt: skip
        k = Kernel(parse_config(raw), extra_plugins={"collector": collector})
        rc = k.run(handle_signals=False)
    if rc:
        raise SystemExit(f"train-model: the replay of {files[0].name} failed (exit status {rc})")
    out = []
    for symbol, got in sorted(rows.items()):
        a = np.array(got, dtype=np.float64)
        out.append(Stream(f"{files[0].name}:{symbol}", a[:, 0].astype(np.int64), a[:, 1], a[:, 2:]))
    return out


# ----------------------------------------------------------------------------- labels, split


def labels(s: Stream, horizon_ns: int, band_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """(class index 0/1/2 = down/flat/up, mask of vectors whose horizon is observed)."""
    j = np.searchsorted(s.t_ns, s.t_ns + horizon_ns, side="right") - 1
    observed = s.t_ns + horizon_ns <= s.t_ns[-1]
    move_bps = (s.mid[j] - s.mid) / s.mid * 1e4
    y = np.where(move_bps > band_bps, 2, np.where(move_bps < -band_bps, 0, 1))
    return y, observed


def split(
    streams: list[Stream], horizon_ns: int, band_bps: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Time-ordered split per stream, with the training horizon kept out of the test period:
    (x_train, y_train, x_test, y_test)."""
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for s in streams:
        y, observed = labels(s, horizon_ns, band_bps)
        idx = np.flatnonzero(observed)
        if len(idx) < 10:
            continue
        cut = idx[int(len(idx) * (1 - test_fraction))]
        test_start = s.t_ns[cut]
        train = idx[(idx < cut) & (s.t_ns[idx] + horizon_ns < test_start)]
        test = idx[idx >= cut]
        xs_tr.append(s.x[train])
        ys_tr.append(y[train])
        xs_te.append(s.x[test])
        ys_te.append(y[test])
    if not xs_tr:
        raise SystemExit("train-model: not enough feature vectors to train on")
    cat = np.concatenate
    return cat(xs_tr), cat(ys_tr), cat(xs_te), cat(ys_te)


# ----------------------------------------------------------------------------- model


@dataclass
class Fit:
    mean: np.ndarray
    std: np.ndarray
    clip: float
    w: np.ndarray
    """[n, 3] weights on standardised features."""
    b: np.ndarray
    """[3] intercepts."""

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, computed the way the ONNX graph does (float32)."""
        z = np.clip((x.astype(np.float32) - self.mean) / self.std, -self.clip, self.clip)
        logits = z @ self.w + self.b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def fit(x: np.ndarray, y: np.ndarray, l2: float, clip: float, steps: int = 3000) -> Fit:
    """Multinomial logistic regression by full-batch gradient descent on standardised,
    clipped features (convex: a fixed number of steps converges, and is deterministic)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[~(std > 0)] = 1.0  # a constant feature: leave it at 0
    z = np.clip((x - mean) / std, -clip, clip)
    onehot = np.eye(3)[y]
    n, k = z.shape
    w = np.zeros((k, 3))
    b = np.log(onehot.mean(axis=0) + 1e-9)  # start at the class frequencies
    rate = 0.5
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        w -= rate * (z.T @ g + l2 * w)
        b -= rate * g.sum(axis=0)
    f32 = np.float32
    return Fit(mean.astype(f32), std.astype(f32), clip, w.astype(f32), b.astype(f32))


def build_model(names: tuple[str, ...], f: Fit, horizon_ms: float, metadata: dict[str, str]) -> Any:
    """The ONNX graph of ``f`` meeting the onnx_strategy contract."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(names)
    f32 = np.float32
    inits = [
        numpy_helper.from_array(f.mean.reshape(1, n), "mean"),
        numpy_helper.from_array(f.std.reshape(1, n), "std"),
        numpy_helper.from_array(np.array(-f.clip, f32), "clip_lo"),
        numpy_helper.from_array(np.array(f.clip, f32), "clip_hi"),
        numpy_helper.from_array(f.w, "W"),
        numpy_helper.from_array(f.b, "b"),
        numpy_helper.from_array(np.array([1.0], f32), "one"),
        numpy_helper.from_array(np.array([0.0], f32), "zero"),
        numpy_helper.from_array(np.array([horizon_ms], f32), "horizon"),
    ]
    node = helper.make_node
    nodes = [
        node("Sub", ["features", "mean"], ["centred"]),
        node("Div", ["centred", "std"], ["scaled"]),
        node("Clip", ["scaled", "clip_lo", "clip_hi"], ["z"]),
        node("MatMul", ["z", "W"], ["zw"]),
        node("Add", ["zw", "b"], ["logits"]),
        node("Softmax", ["logits"], ["probabilities"], axis=1),
        node("ReduceMax", ["probabilities"], ["confidence"], axes=[1], keepdims=0),
        node("ArgMax", ["probabilities"], ["cls"], axis=1, keepdims=0),
        node("Cast", ["cls"], ["cls_f"], to=TensorProto.FLOAT),
        node("Sub", ["cls_f", "one"], ["direction"]),
        # one holding period per row: confidence x 0 + H keeps the batch shape
        node("Mul", ["confidence", "zero"], ["zeros"]),
        node("Add", ["zeros", "horizon"], ["holding_period"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tickbus_lr",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n])],
        [
            helper.make_tensor_value_info("direction", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("holding_period", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tickbus train-model",
        ir_version=IR_VERSION,
    )
    meta = {
        "tickbus.features": ",".join(names),
        "tickbus.norm_mean": json.dumps([float(v) for v in f.mean]),
        "tickbus.norm_std": json.dumps([float(v) for v in f.std]),
        "tickbus.clip": json.dumps(f.clip),
        "tickbus.classes": ",".join(str(c) for c in CLASSES),
        **metadata,
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------- command


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``train-model`` arguments to ``p``."""
    p.add_argument(
        "--capture", action="append", nargs="+", type=Path, metavar="FILE",
        help="capture files read as one stream (repeat for more streams; default: ../shared"
             " spot BTCUSDT and ETHUSDT 2024-08-08+09, else the bundled sample)",
    )  # fmt: skip
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                   help="comma-separated FeatureVector fields, in input order")  # fmt: skip
    p.add_argument("--horizon-ms", type=float, default=2000.0, help="label horizon H (ms)")
    p.add_argument("--dead-band-bps", type=float, default=0.25,
                   help="|mid move| up to this is class 0 (bps)")  # fmt: skip
    p.add_argument("--test-fraction", type=float, default=0.3, help="last share of each stream")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty")
    p.add_argument("--clip", type=float, default=5.0, help="clip standardised features (sigmas)")
    p.add_argument("--steps", type=int, default=3000, help="gradient descent steps")
    p.add_argument("--config", type=Path,
                   help="take [plugins.book] and [plugins.features] from this config")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("spot_lr.onnx"), help="model file")


def _default_captures() -> list[list[Path]]:
    from tickbus.plugins.binance.capture import SAMPLE

    groups = [g for g in DEFAULT_CAPTURES if all(p.exists() for p in g)]
    return groups or [[SAMPLE]]


def _tables(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    plugins = tomllib.loads(path.read_text()).get("plugins", {})
    out = {}
    for name in ("book", "features"):
        table = {k: v for k, v in plugins.get(name, {}).items()
                 if k not in ("plugin", "lane", "enabled", "after")}  # fmt: skip
        out[name] = table
    return out


def run(args: argparse.Namespace) -> int:
    """Collect, label, split, fit, write; print the out-of-sample figures."""
    from tickbus.plugins.signals.onnx_model import FEATURE_FIELDS, OnnxModel

    names = tuple(n.strip() for n in args.features.split(",") if n.strip())
    bad = [n for n in names if n not in FEATURE_FIELDS]
    if bad or not names:
        print(f"train-model: unknown features {bad} (fields: {', '.join(FEATURE_FIELDS)})",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0 < args.test_fraction < 1:
        print("train-model: --test-fraction must be in (0, 1)", file=sys.stderr)
        return 2
    groups = args.capture or _default_captures()
    for g in groups:
        for f in g:
            if not f.is_file():
                print(f"train-model: no such capture file: {f}", file=sys.stderr)
                return 2
    tables = _tables(args.config)
    streams = [s for g in groups for s in collect(g, names, tables)]
    horizon_ns = int(args.horizon_ms * 1e6)
    x_tr, y_tr, x_te, y_te = split(streams, horizon_ns, args.dead_band_bps, args.test_fraction)
    f = fit(x_tr, y_tr, args.l2, args.clip, args.steps)
    pred = f.probabilities(x_te).argmax(axis=1)
    acc = float((pred == y_te).mean())
    majority = int(np.bincount(y_tr, minlength=3).argmax())
    base = float((y_te == majority).mean())
    hindsight = float(np.bincount(y_te, minlength=3).max() / len(y_te))
    share = lambda y: "/".join(f"{v:.2f}" for v in np.bincount(y, minlength=3) / len(y))  # noqa: E731
    meta = {
        "tickbus.horizon_ms": f"{args.horizon_ms:g}",
        "tickbus.dead_band_bps": f"{args.dead_band_bps:g}",
        "tickbus.data": ";".join("+".join(p.name for p in g) for g in groups),
        "tickbus.features_config": json.dumps(tables),
        "tickbus.samples": f"train {len(y_tr)}, test {len(y_te)}",
        "tickbus.test_accuracy": f"{acc:.4f}",
        "tickbus.baseline_accuracy": f"{base:.4f}",
        "tickbus.hindsight_accuracy": f"{hindsight:.4f}",
        "tickbus.command": "tickbus train-model " + shlex.join(sys.argv[2:] if
                           sys.argv[1:2] == ["train-model"] else sys.argv[1:]),
    }  # fmt: skip
    model = build_model(names, f, args.horizon_ms, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(model.SerializeToString())
    OnnxModel(args.out, "train-model")  # the file meets the contract the strategy checks
    directional = pred != 1
    hit = float((pred[directional] == y_te[directional]).mean()) if directional.any() else 0.0
    print(f"streams: {', '.join(s.name for s in streams)}")
    print(f"vectors: train {len(y_tr)}, test {len(y_te)} (last {args.test_fraction:.0%} of each"
          f" stream); classes down/flat/up: train {share(y_tr)}, test {share(y_te)}")  # fmt: skip
    print(f"test accuracy {acc:.4f}; majority-class baseline (the training set's majority,"
          f" {CLASSES[majority]:+d}) {base:.4f}; best constant in hindsight"
          f" {hindsight:.4f}")  # fmt: skip
    print(f"directional calls {int(directional.sum())} of {len(pred)}, right {hit:.2%}")
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="tickbus train-model", description=__doc__.split("\n")[0])
    build_parser(p)
    return run(p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
