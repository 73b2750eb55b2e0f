"""The ONNX strategy: its decisions equal the model evaluated independently in numpy on the
same inputs; a model file that is missing, corrupt or off the contract is rejected at set-up
with one line naming what is wrong; an output off the contract at run time is a suppressed
signal, never an order; ``enable_ml`` gates the imbalance strategy with the model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from signals_harness import Harness

from tickbus.kernel import TickbusError
from tickbus.plugins.signals import imbalance, onnx_model
from tickbus.plugins.signals.onnx_model import BUNDLED, FEATURE_FIELDS, OnnxModel
from tickbus.schemas import OrderRequest, Signal
from tickbus.tools.train_model import DEFAULT_FEATURES, Fit, build_model

SEED = 7


def lr_model(path: Path, horizon_ms: float = 1500.0) -> Path:
    """A logistic-regression model from train-model's graph builder, random weights."""
    rng = np.random.default_rng(SEED)
    n = len(DEFAULT_FEATURES)
    f32 = np.float32
    fit = Fit(
        rng.normal(0, 0.1, n).astype(f32), rng.uniform(0.05, 2.0, n).astype(f32), 3.0,
        rng.normal(0, 1.5, (n, 3)).astype(f32), rng.normal(0, 0.5, 3).astype(f32),
    )  # fmt: skip
    meta = {"tickbus.horizon_ms": f"{horizon_ms:g}"}
    path.write_bytes(build_model(DEFAULT_FEATURES, fit, horizon_ms, meta).SerializeToString())
    return path


def numpy_reference(path: Path, rows: np.ndarray) -> list[tuple[int, float, float]]:
    """The model evaluated without onnxruntime: weights from the graph's initializers,
    standardisation from the metadata, the arithmetic written out here."""
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    mean = np.array(json.loads(meta["tickbus.norm_mean"]), np.float32)
    std = np.array(json.loads(meta["tickbus.norm_std"]), np.float32)
    clip = np.float32(json.loads(meta["tickbus.clip"]))
    out = []
    for x in rows.astype(np.float32):
        z = np.clip((x - mean) / std, -clip, clip)
        logits = z @ w["W"] + w["b"]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out.append((int(p.argmax()) - 1, float(p.max()), float(meta["tickbus.horizon_ms"])))
    return out


def random_rows(n_rows: int) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    return rng.normal(0, 1, (n_rows, len(DEFAULT_FEATURES))) * rng.uniform(0.01, 3, (1, 12))


def test_decisions_equal_the_model_evaluated_in_numpy(start_kernel, tmp_path: Path) -> None:
    path = lr_model(tmp_path / "m.onnx", horizon_ms=15_000)
    rows = random_rows(400)
    x = Harness(start_kernel, onnx_model.plugin, model_path=str(path), min_confidence=0.6,
                signal_decay_ms=1e9)  # fmt: skip
    idx = {name: i for i, name in enumerate(DEFAULT_FEATURES)}
    for uid, row in enumerate(rows, 1):
        kw = {name: float(row[i]) for name, i in idx.items() if name not in ("imbalance",)}
        x.tick(float(row[idx["imbalance"]]), uid=uid, **kw)
        x.after_ms(1)
    ref = numpy_reference(path, rows)
    sigs = iter(x.of(Signal))
    n_dir = n_sup = 0
    for d, c, hold in ref:
        if d == 0:
            continue  # no signal
        s = next(sigs)
        assert s.direction == d
        assert s.confidence == pytest.approx(c, abs=2e-6)
        assert s.strength == pytest.approx(d * c, abs=2e-6)
        assert s.holding_period_ms == min(int(hold), 10_000), "clamped to max_holding_ms"
        n_dir += 1
        if c < 0.6 - 1e-6:
            assert s.suppressed.startswith("confidence ")
            n_sup += 1
        elif c > 0.6 + 1e-6:
            assert s.suppressed == ""
    assert next(sigs, None) is None
    assert x.s.model.bound
    # the comparison covered every kind of decision
    assert n_dir > 100 and 0 < n_sup < n_dir and sum(d == 0 for d, _, _ in ref) > 10
    assert x.of(OrderRequest), "active decisions trade"
    assert x.errors() == 0


def test_the_bundled_model_meets_the_contract_and_matches_numpy() -> None:
    model = OnnxModel(BUNDLED)
    assert model.names == DEFAULT_FEATURES
    rows = random_rows(200)
    for row, (d, c, h) in zip(rows, numpy_reference(BUNDLED, rows), strict=True):
        got = model.predict_row(row)
        assert got[0] == d and got[1] == pytest.approx(c, abs=2e-6) and got[2] == h
    meta = model.metadata
    assert meta["tickbus.command"].startswith("tickbus train-model")
    assert float(meta["tickbus.test_accuracy"]) > 0


# ----------------------------------------------------------------------------- bad files


def graph_model(
    path: Path,
    *,
    names: str | None = "imbalance,momentum",
    n: int = 2,
    input_name: str = "features",
    input_type: int = TensorProto.FLOAT,
    extra_input: bool = False,
    outputs: tuple[str, ...] = ("direction", "confidence", "holding_period"),
    direction: str = "passthrough",
    direction_type: int = TensorProto.FLOAT,
    wide_confidence: bool = False,
) -> Path:
    """A tiny hand-made model: ``direction`` = the first feature ("passthrough") or a
    constant, confidence 0.9, holding 500 ms; each keyword breaks one part of the contract."""
    f32 = np.float32
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "col0"),
        numpy_helper.from_array(np.array([0.0], f32), "zero"),
        numpy_helper.from_array(np.array([0.9], f32), "c"),
        numpy_helper.from_array(np.array([500.0], f32), "h"),
        numpy_helper.from_array(
            np.array([float(direction) if direction != "passthrough" else 0.0], f32), "dconst"
        ),  # fmt: skip
    ]
    node = helper.make_node
    x = input_name
    cast = []
    if input_type != TensorProto.FLOAT:
        cast = [node("Cast", [x], ["xf"], to=TensorProto.FLOAT)]
        x = "xf"
    nodes = [
        *cast,
        node("Gather", [x, "col0"], ["first1"], axis=1),  # [1, n] -> [1]
        node("Mul", ["first1", "zero"], ["zeros"]),
    ]
    d = "direction" if direction_type == TensorProto.FLOAT else "direction_f"
    if direction == "passthrough":
        nodes.append(node("Identity", ["first1"], [d]))
    else:
        nodes.append(node("Add", ["zeros", "dconst"], [d]))
    if d != "direction":
        nodes.append(node("Cast", [d], ["direction"], to=direction_type))
    if wide_confidence:
        inits.append(numpy_helper.from_array(np.array([0.9, 0.8], f32), "c2"))
        nodes.append(node("Add", ["zeros", "c2"], ["confidence"]))
    else:
        nodes.append(node("Add", ["zeros", "c"], ["confidence"]))
    nodes.append(node("Add", ["zeros", "h"], ["holding_period"]))
    made = {"direction", "confidence", "holding_period"}
    types = {"direction": direction_type}
    outs = [helper.make_tensor_value_info(o, types.get(o, TensorProto.FLOAT), None)
            for o in outputs if o in made]  # fmt: skip
    inputs = [helper.make_tensor_value_info(input_name, input_type, [1, n])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 1]))
    graph = helper.make_graph(nodes, "tiny", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if names is not None:
        helper.set_model_props(model, {"tickbus.features": names})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.INT64, TensorProto.DOUBLE])
def test_a_hand_made_model_meets_the_contract(tmp_path: Path, dtype: int) -> None:
    m = OnnxModel(graph_model(tmp_path / "ok.onnx", direction_type=dtype))
    assert m.names == ("imbalance", "momentum")
    assert m.bound, "inference through the preallocated IOBinding"
    for _ in range(2):
        assert m.predict_row([1.0, 0.0]) == (1, pytest.approx(0.9), 500.0)
        assert m.predict_row([-1.0, 0.0])[0] == -1
        assert m.predict_row([0.0, 5.0])[0] == 0


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p, "no such model file"),
        (lambda p: (p.write_bytes(b"\x08\x07garbage" * 50), p)[1], "not a loadable ONNX model"),
        (lambda p: (p.write_bytes(graph_model(p).read_bytes()[:300]), p)[1],
         "not a loadable ONNX model"),  # truncated
        (lambda p: graph_model(p, names=None), "metadata 'tickbus.features' (the feature order)"),
        (lambda p: graph_model(p, names="imbalance,colour"), "names colour, not numeric"),
        (lambda p: graph_model(p, names="imbalance,symbol"), "names symbol, not numeric"),
        (lambda p: graph_model(p, input_name="x"), "needs exactly one input 'features' (has x)"),
        (lambda p: graph_model(p, extra_input=True), "needs exactly one input 'features'"),
        (lambda p: graph_model(p, n=3), "input 'features' must be float32 [1, 2]"),
        (lambda p: graph_model(p, input_type=TensorProto.DOUBLE), "must be float32 [1, 2]"),
        (lambda p: graph_model(p, outputs=("direction", "confidence")),
         "output(s) holding_period missing"),
        (lambda p: graph_model(p, direction="2"), "direction 2.0 not in {-1, 0, 1}"),
        (lambda p: graph_model(p, wide_confidence=True),
         "output 'confidence' must hold one value per row"),
    ],
)  # fmt: skip
def test_bad_model_files_are_rejected_in_one_line(make, words: str, tmp_path: Path,
                                                  start_kernel) -> None:  # fmt: skip
    path = make(tmp_path / "bad.onnx")
    with pytest.raises(TickbusError) as err:
        Harness(start_kernel, onnx_model.plugin, model_path=str(path))
    msg = str(err.value)
    assert words in msg
    assert "plugins.s.model_path" in msg and str(path) in msg
    assert "\n" not in msg


def test_model_path_is_relative_to_the_config_and_defaults_to_the_bundled_one(
    start_kernel, tmp_path: Path
) -> None:
    x = Harness(start_kernel, onnx_model.plugin)
    assert x.s.model.path == BUNDLED
    assert set(x.s.model.names) <= set(FEATURE_FIELDS)


def test_output_off_the_contract_at_run_time_is_suppressed(start_kernel, tmp_path) -> None:
    path = graph_model(tmp_path / "m.onnx")  # direction = the imbalance itself
    x = Harness(start_kernel, onnx_model.plugin, model_path=str(path))
    x.tick(2.0, uid=1)
    x.tick(float("nan"), uid=2)
    x.tick(-1.0, uid=3)
    sigs = x.of(Signal)
    assert sigs[0].suppressed == "model output invalid: direction 2.0 not in {-1, 0, 1}"
    assert sigs[1].suppressed.startswith("non-finite feature imbalance=")
    assert (sigs[2].direction, sigs[2].suppressed, sigs[2].holding_period_ms) == (-1, "", 500)
    assert [r.side for r in x.of(OrderRequest)] == ["sell"]
    assert x.s.counts["bad_features"] == 2
    assert x.errors() == 0


@pytest.mark.parametrize(("direction", "traded"), [("passthrough", True), ("0", False)])
def test_enable_ml_gates_imbalance_signals(start_kernel, tmp_path, direction, traded) -> None:
    path = graph_model(tmp_path / "m.onnx", direction=direction)
    x = Harness(start_kernel, imbalance.plugin, enable_ml=True, model_path=str(path))
    x.tick(1.0, 0.02, 0.0)
    (sig,) = x.of(Signal)
    assert bool(x.of(OrderRequest)) == traded
    assert sig.suppressed == ("" if traded else "model disagrees: direction +0 (confidence 0.900)")


def test_enable_ml_with_a_bad_model_fails_at_set_up(start_kernel, tmp_path) -> None:
    with pytest.raises(TickbusError, match="no such model file"):
        Harness(start_kernel, imbalance.plugin, enable_ml=True, model_path=str(tmp_path / "x"))


def test_one_session_is_reused(start_kernel, tmp_path) -> None:
    x = Harness(start_kernel, onnx_model.plugin, model_path=str(graph_model(tmp_path / "m")))
    session = x.s.model.session
    for uid in range(1, 6):
        x.tick(random.Random(uid).choice([1.0, -1.0]), uid=uid)
    assert x.s.model.session is session
