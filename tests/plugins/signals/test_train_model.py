"""``tickbus train-model``: labels with a dead band over a horizon, a time-ordered split that
keeps training horizons out of the test period, a real run on the bundled capture through
the real plugins, and the bundled model reproduced by the command recorded in it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import tickbus_env
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.signals.onnx_model import BUNDLED, OnnxModel
from tickbus.tools.train_model import DEFAULT_CAPTURES, DEFAULT_FEATURES, Stream, labels, split

ROOT = Path(__file__).resolve().parents[3]
MS = 1_000_000


def stream(mids: list[float], step_ms: int = 100) -> Stream:
    n = len(mids)
    t = np.arange(n, dtype=np.int64) * step_ms * MS
    return Stream("s", t, np.array(mids, dtype=np.float64), np.arange(n * 2.0).reshape(n, 2))


def test_labels_are_the_sign_of_the_mid_move_with_a_dead_band() -> None:
    # mid 10000 -> +1 bp is 10001; horizon 200 ms = two steps ahead
    s = stream([10000, 10000, 10001, 10000.5, 9999, 9999, 9999])
    y, observed = labels(s, 200 * MS, band_bps=0.5)
    assert observed.tolist() == [True, True, True, True, True, False, False]
    # moves: +1 bp, +0.5 bp (in the band), -2 bp, -1.5 bp, 0
    assert y[:5].tolist() == [2, 1, 0, 0, 1]


def test_the_horizon_takes_the_latest_mid_at_or_before_t_plus_h() -> None:
    s = Stream("s", np.array([0, 90, 250, 400]) * MS, np.array([100.0, 101, 99, 99]),
               np.zeros((4, 1)))  # fmt: skip
    y, observed = labels(s, 100 * MS, band_bps=0.0)
    # t=0: the mid at 100 ms is the one from 90 ms (101): up; t=90: at 190 ms still 101:
    # flat; t=250: at 350 ms still 99: flat; t=400: its horizon is past the end
    assert y[:3].tolist() == [2, 1, 1]
    assert observed.tolist() == [True, True, True, False]


def test_the_split_is_in_time_and_training_horizons_stay_out_of_the_test() -> None:
    rng = np.random.default_rng(3)
    s = stream(list(10_000 + np.cumsum(rng.normal(0, 1, 500))))
    h = 300 * MS
    x_tr, y_tr, x_te, y_te = split([s], h, 0.1, 0.3)
    # x holds the index (x[:, 0] = 2 * i): recover the times
    t_tr = s.t_ns[(x_tr[:, 0] / 2).astype(int)]
    t_te = s.t_ns[(x_te[:, 0] / 2).astype(int)]
    assert t_tr.max() + h < t_te.min(), "no training label looks into the test period"
    assert np.all(np.diff(t_te) > 0) and np.all(np.diff(t_tr) > 0)
    observed = int(labels(s, h, 0.1)[1].sum())
    assert len(y_te) == observed - int(observed * 0.7)
    assert len(y_tr) == int(observed * 0.7) - 3, "the last 3 training vectors (300 ms) dropped"


def run_tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickbus.tools.train_model", *args], cwd=ROOT,
        env=tickbus_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_train_on_the_bundled_capture_writes_a_model_meeting_the_contract(tmp_path) -> None:
    out = run_tool("--capture", str(SAMPLE), "--horizon-ms", "1000", "--steps", "300",
                   "--out", str(tmp_path / "m.onnx"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout and "majority-class baseline" in out.stdout
    model = OnnxModel(tmp_path / "m.onnx")
    assert model.names == DEFAULT_FEATURES
    meta = model.metadata
    assert meta["tickbus.horizon_ms"] == "1000" and meta["tickbus.data"] == SAMPLE.name
    acc = float(meta["tickbus.test_accuracy"])
    assert f"test accuracy {acc:.4f}" in out.stdout
    assert len(meta["tickbus.norm_mean"].split(",")) == len(DEFAULT_FEATURES)
    assert model.predict_row(np.zeros(len(DEFAULT_FEATURES)))[2] == 1000.0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--features", "imbalance,colour"], "unknown features ['colour']"),
        (["--capture", "/nonexistent.gz"], "no such capture file: /nonexistent.gz"),
        (["--test-fraction", "1.5"], "--test-fraction must be in (0, 1)"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], words: str) -> None:
    out = run_tool(*args)
    assert out.returncode == 2
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(
    not all(p.exists() for g in DEFAULT_CAPTURES for p in g), reason="needs ../shared/data"
)
def test_the_recorded_command_reproduces_the_bundled_model(tmp_path) -> None:
    bundled = onnx.load(str(BUNDLED))
    meta = {p.key: p.value for p in bundled.metadata_props}
    argv = shlex.split(meta["tickbus.command"])
    assert argv[:2] == ["tickbus", "train-model"]
    i = argv.index("--out")
    assert argv[i + 1] == "plugins/signals/model/spot_lr.onnx"
    argv[i + 1] = str(tmp_path / "again.onnx")
    out = run_tool(*argv[2:])
    assert out.returncode == 0, out.stderr
    again = onnx.load(str(tmp_path / "again.onnx"))
    weights = lambda m: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}  # noqa: E731
    a, b = weights(bundled), weights(again)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
    meta2 = {p.key: p.value for p in again.metadata_props}
    assert meta2["tickbus.test_accuracy"] == meta["tickbus.test_accuracy"]
    assert meta2["tickbus.features"] == meta["tickbus.features"]
