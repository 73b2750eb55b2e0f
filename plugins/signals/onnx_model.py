"""The ``onnx_strategy`` plugin: trades the decisions of an ONNX model, and the model contract.

**Model contract** (checked when the plugin sets up; a model that breaks it is rejected with
a one-line error naming what is wrong, before anything runs):

* metadata (``metadata_props``) ``tickbus.features``: the input's feature order, a
  comma-separated list of ``FeatureVector`` field names (any numeric field: ``volatility``,
  ``momentum``, ``imbalance``, ..., ``mid``, ``vwap``), taken raw from each vector;
* exactly one input, ``features``: ``float32`` of shape ``[1, n]`` (or ``[batch, n]``) with
  n the number of names above; any normalisation is inside the graph;
* outputs ``direction`` (+1 buy, 0 none, -1 sell; int or float), ``confidence`` (in [0, 1])
  and ``holding_period`` (ms, >= 0), numeric, one value each per input row (other outputs
  are allowed and ignored). A trial inference at set-up checks the values.

Optional metadata, for people (the strategy does not need it): ``tickbus.norm_mean``,
``tickbus.norm_std``, ``tickbus.clip`` (the standardisation the graph applies, JSON),
``tickbus.horizon_ms``, ``tickbus.dead_band_bps``, ``tickbus.classes``, ``tickbus.data``,
``tickbus.command``, ``tickbus.test_accuracy``, ``tickbus.baseline_accuracy``.

The bundled model (``model/``, see its README) is a multinomial logistic regression made by
``tickbus train-model`` on recorded Binance data. One onnxruntime session per strategy
instance (one thread, no spinning), reused; one inference per feature vector, in the
strategy's lane (``lane = "ml"`` in the instance's table moves it to a lane of its own).

The decision: ``direction`` 0 gives no signal; else ``strength = direction x confidence``,
``holding_period`` clamped to [min_holding_ms, max_holding_ms], suppressed below
``min_confidence``; an output outside the contract at run time (NaN, a direction of 2)
gives a suppressed signal with the reason, counted and logged once. Orders follow as
:mod:`.trader` describes.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tickbus.kernel import PluginContext, TickbusError, strategy_plugin
from tickbus.schemas import FeatureVector

from .trader import Decision, SignalTrader, TraderConfig, clamp

INPUT = "features"
OUTPUTS = ("direction", "confidence", "holding_period")
META_FEATURES = "tickbus.features"
MODEL_DIR = Path(__file__).resolve().parent / "model"
BUNDLED = MODEL_DIR / "spot_lr.onnx"
"""The bundled model (``model/README.md`` says how it was made)."""

_NOT_FEATURES = frozenset({"symbol", "timestamp_ns", "book_update_id", "ts_recv_ns"})
FEATURE_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in msgspec.structs.fields(FeatureVector)
    if f.name not in _NOT_FEATURES and f.type in (float, int)
)
"""The FeatureVector fields a model may take as input."""
_NUMERIC = frozenset({"tensor(float)", "tensor(double)", "tensor(int64)", "tensor(int32)"})


class ModelError(TickbusError):
    """A model file that does not meet the contract, or an output that breaks it."""


class OnnxModel:
    """A model meeting the contract, loaded once: :meth:`predict` per feature vector."""

    def __init__(self, path: Path, key: str = "model") -> None:
        import onnxruntime as ort

        self.path = path
        where = f"{key}.model_path: {path}"
        if not path.is_file():
            raise ModelError(f"{where}: no such model file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one decision at a time; never compete with the lanes
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types for every kind of bad file
            raise ModelError(f"{where}: not a loadable ONNX model ({type(err).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        names = [n.strip() for n in meta.get(META_FEATURES, "").split(",") if n.strip()]
        if not names:
            raise ModelError(f"{where}: metadata {META_FEATURES!r} (the feature order) is missing")
        unknown = [n for n in names if n not in FEATURE_FIELDS]
        if unknown:
            raise ModelError(
                f"{where}: {META_FEATURES} names {', '.join(unknown)}, not numeric FeatureVector"
                f" fields ({', '.join(FEATURE_FIELDS)})"
            )
        self.names = tuple(names)
        n = len(names)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT:
            got = ", ".join(i.name for i in inputs) or "none"
            raise ModelError(f"{where}: needs exactly one input {INPUT!r} (has {got})")
        inp = inputs[0]
        shape = list(inp.shape)
        if (
            inp.type != "tensor(float)"
            or len(shape) != 2
            or shape[1] != n
            or not (shape[0] == 1 or not isinstance(shape[0], int))
        ):
            raise ModelError(
                f"{where}: input {INPUT!r} must be float32 [1, {n}] ({n} features in"
                f" {META_FEATURES}), is {inp.type} {shape}"
            )
        outs = {o.name: o for o in self.session.get_outputs()}
        missing = [o for o in OUTPUTS if o not in outs]
        if missing:
            raise ModelError(
                f"{where}: output(s) {', '.join(missing)} missing (has {', '.join(outs)})"
            )
        for name in OUTPUTS:
            if outs[name].type not in _NUMERIC:
                raise ModelError(f"{where}: output {name!r} must be numeric, is {outs[name].type}")
        self._x = np.zeros((1, n), dtype=np.float32)
        self._feed = {INPUT: self._x}
        self._get = operator.attrgetter(*names) if n > 1 else _one(operator.attrgetter(names[0]))
        self._run = self.session.run
        self._outs = list(OUTPUTS)
        try:
            raw = self._run(self._outs, self._feed)
        except Exception as err:
            raise ModelError(f"{where}: trial inference failed ({type(err).__name__})") from None
        for name, value in zip(OUTPUTS, raw, strict=True):
            if np.size(value) != 1:
                raise ModelError(
                    f"{where}: output {name!r} must hold one value per row, has shape"
                    f" {list(np.shape(value))}"
                )
        try:
            self.check(raw)
        except ModelError as err:
            raise ModelError(f"{where}: on a zero input, {err}") from None
        self._out = self._bind(raw)

    def _bind(self, trial: list[Any]) -> list[Any]:
        """Bind the input row and three preallocated output arrays to the session once
        (IOBinding: ~6.6 us per inference instead of ~10 us for ``session.run`` on the
        2-core VM); the plain ``run`` stays if the binding does not write them."""
        try:
            binding = self.session.io_binding()
            binding.bind_input(INPUT, "cpu", 0, np.float32, list(self._x.shape),
                               self._x.ctypes.data)  # fmt: skip
            outs = []
            for name, value in zip(OUTPUTS, trial, strict=True):
                arr = np.zeros(np.shape(value), dtype=np.asarray(value).dtype)
                if arr.dtype.kind == "f":
                    arr.fill(np.nan)  # proves below that the session writes into it
                else:
                    arr.fill(np.iinfo(arr.dtype).min)
                binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
                outs.append(arr)
            self.session.run_with_iobinding(binding)
        except Exception:  # an exotic model: the plain run works for any of them
            return []
        if not all(np.array_equal(a, np.asarray(t)) for a, t in zip(outs, trial, strict=True)):
            return []
        run_bound = self.session.run_with_iobinding
        self._run = lambda names, feed: (run_bound(binding), outs)[1]
        self._binding = binding  # kept alive with the arrays it points into
        return outs

    @property
    def bound(self) -> bool:
        """True when inference runs through the IOBinding (preallocated buffers)."""
        return bool(self._out)

    def predict(self, fv: FeatureVector) -> tuple[int, float, float]:
        """(direction, confidence, holding period ms) for one vector; ModelError if the
        model's output breaks the contract."""
        self._x[0] = self._get(fv)
        return self.check(self._run(self._outs, self._feed))

    def predict_row(self, row: Any) -> tuple[int, float, float]:
        """The same for a row of raw feature values in :attr:`names` order."""
        self._x[0] = row
        return self.check(self._run(self._outs, self._feed))

    @staticmethod
    def check(raw: list[Any]) -> tuple[int, float, float]:
        """The three outputs as Python numbers, or ModelError saying which is out of range."""
        d, c, h = float(raw[0].item()), float(raw[1].item()), float(raw[2].item())
        if d not in (-1.0, 0.0, 1.0):
            raise ModelError(f"direction {d} not in {{-1, 0, 1}}")
        if not 0.0 <= c <= 1.0:  # also false for NaN
            raise ModelError(f"confidence {c} not in [0, 1]")
        if not (h >= 0.0 and math.isfinite(h)):
            raise ModelError(f"holding_period {h} not a finite number of ms >= 0")
        return int(d), c, h

    def describe(self) -> str:
        """One line for the log: file, features, training figures if recorded."""
        acc = self.metadata.get("tickbus.test_accuracy")
        base = self.metadata.get("tickbus.baseline_accuracy")
        score = f", test accuracy {acc} (majority baseline {base})" if acc else ""
        return f"{self.path.name}: {len(self.names)} features ({', '.join(self.names)}){score}"


def _one(get: Any) -> Any:
    """attrgetter of one name returns a scalar; the input row wants a sequence."""
    return lambda fv: (get(fv),)


def model_file(ctx: PluginContext, path: str) -> Path:
    """``model_path`` resolved against the config file ("" = the bundled model)."""
    return ctx.resolve_path(path) if path else BUNDLED


class OnnxConfig(TraderConfig, frozen=True):
    """``[plugins.onnx_strategy]`` (plus every :class:`TraderConfig` setting)."""

    model_path: str = ""
    """The model (relative to the config file); "": the bundled model."""
    min_confidence: float = 0.5
    """Model decisions below this confidence are suppressed."""


class OnnxStrategy(SignalTrader):
    """Trades an ONNX model's decisions (see the module docstring)."""

    Config = OnnxConfig

    def __init__(self, ctx: PluginContext, config: Any) -> None:
        super().__init__(ctx, config)
        self.model = OnnxModel(model_file(ctx, config.model_path), f"plugins.{self.id}")
        self.uses = self.model.names
        self.log.info("model %s", self.model.describe())
        self._k = (
            float(config.min_holding_ms), float(config.max_holding_ms), config.min_confidence,
        )  # fmt: skip

    def evaluate(self, fv: FeatureVector) -> Decision | None:
        h_min, h_max, min_conf = self._k
        try:
            direction, confidence, holding = self.model.predict(fv)
        except ModelError as err:
            why = f"model output invalid: {err}"
            self._bad(why, fv)
            return Decision(0, 0.0, 0.0, 0, why)
        if not direction:
            return None
        why = "" if confidence >= min_conf else (
            f"confidence {confidence:.4g} < min_confidence {min_conf:g}"
        )  # fmt: skip
        return Decision(
            direction, direction * confidence, confidence, int(clamp(holding, h_min, h_max)), why
        )


plugin = strategy_plugin(OnnxStrategy)
