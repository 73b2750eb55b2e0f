"""The ``imbalance_strategy`` plugin: the original design's order-book imbalance rules.

On every ``feat.<SYMBOL>`` vector (fields of ``FeatureVector``, from the ``features`` plugin):

* no signal while ``|imbalance| < imbalance_threshold`` (a signal at the threshold exactly);
* ``direction`` = sign of the imbalance (more bid depth: buy);
* ``strength = clamp(imbalance / imbalance_threshold, -1, 1)``, decaying with half-life
  ``signal_decay_ms`` on the kernel clock (:meth:`SignalTrader.strength_now`);
* ``confidence = (min(|momentum| / momentum_scale, 1)
  + min(volatility_scale / max(volatility, volatility_floor), 1)) / 2``
  - with the original constants 0.01, 0.01 and 0.001 as defaults. They are scale-dependent:
  with the features' short windows on BTCUSDT, momentum is ~1e-5, so the first term is ~0
  and confidence never reaches 0.7; ``configs/imbalance.toml`` is calibrated on real data;
* suppressed (published with the reason, never traded) when ``confidence < min_confidence``,
  or, with ``enable_ml``, when the ONNX model at ``model_path`` (default: the bundled one)
  does not predict the same direction;
* ``holding period = clamp(holding_scale_ms / max(|imbalance|, 0.01), min_holding_ms,
  max_holding_ms)`` ms (1000, 100, 10000 by default).

Orders follow from active signals as :mod:`.trader` describes (size, price mode, one working
intent, exits, stale orders, book checks).
"""

from __future__ import annotations

from typing import Any

from tickbus.kernel import PluginContext, strategy_plugin
from tickbus.schemas import FeatureVector

from .onnx_model import ModelError, OnnxModel, model_file
from .trader import Decision, SignalTrader, TraderConfig, clamp


class ImbalanceConfig(TraderConfig, frozen=True):
    """``[plugins.imbalance_strategy]`` (plus every :class:`TraderConfig` setting)."""

    imbalance_threshold: float = 0.3
    """No signal below this |imbalance| (the features' top-N depth imbalance)."""
    feature_window_ms: int = 1000
    """Informational (the original design's name): the ``features`` plugin's windows decide
    what the vectors summarise; the strategy reads them as they come."""
    enable_ml: bool = False
    """Also ask the ONNX model: an imbalance signal it does not agree with is suppressed."""
    model_path: str = ""
    """The model for ``enable_ml`` (relative to the config file; "": the bundled model)."""
    momentum_scale: float = 0.01
    """|momentum| that counts as full confidence (the original 0.01)."""
    volatility_scale: float = 0.01
    """Numerator of the volatility term (the original 0.01)."""
    volatility_floor: float = 0.001
    """Volatility below this counts as this (the original 0.001)."""
    holding_scale_ms: float = 1000.0
    """Holding period = holding_scale_ms / max(|imbalance|, 0.01), then clamped."""


class ImbalanceStrategy(SignalTrader):
    """Trades the top-of-book depth imbalance (see the module docstring)."""

    Config = ImbalanceConfig
    uses = ("imbalance", "momentum", "volatility")

    def __init__(self, ctx: PluginContext, config: Any) -> None:
        super().__init__(ctx, config)
        cfg: ImbalanceConfig = config
        self._check(cfg.imbalance_threshold > 0, "imbalance_threshold", "must be > 0")
        self._check(cfg.momentum_scale > 0, "momentum_scale", "must be > 0")
        self._check(cfg.volatility_scale > 0, "volatility_scale", "must be > 0")
        self._check(cfg.volatility_floor > 0, "volatility_floor", "must be > 0")
        self._check(cfg.holding_scale_ms > 0, "holding_scale_ms", "must be > 0")
        self.model: OnnxModel | None = None
        if cfg.enable_ml:
            self.model = OnnxModel(model_file(ctx, cfg.model_path), f"plugins.{self.id}")
            self.uses = tuple(dict.fromkeys((*self.uses, *self.model.names)))
        # the rule's constants, read once (a decision is on the hot path)
        self._k = (
            cfg.imbalance_threshold, cfg.momentum_scale, cfg.volatility_scale,
            cfg.volatility_floor, cfg.holding_scale_ms, float(cfg.min_holding_ms),
            float(cfg.max_holding_ms), cfg.min_confidence,
        )  # fmt: skip

    def evaluate(self, fv: FeatureVector) -> Decision | None:
        threshold, m_scale, v_scale, v_floor, h_scale, h_min, h_max, min_conf = self._k
        imb = fv.imbalance
        if abs(imb) < threshold:
            return None
        strength = clamp(imb / threshold, -1.0, 1.0)
        confidence = (
            min(abs(fv.momentum) / m_scale, 1.0) + min(v_scale / max(fv.volatility, v_floor), 1.0)
        ) / 2
        holding = int(clamp(h_scale / max(abs(imb), 0.01), h_min, h_max))
        direction = 1 if imb > 0 else -1
        why = ""
        if confidence < min_conf:
            why = f"confidence {confidence:.4g} < min_confidence {min_conf:g}"
        elif self.model is not None:
            try:
                m_dir, m_conf, _ = self.model.predict(fv)
            except ModelError as err:
                why = f"model output invalid: {err}"
                self._bad(why, fv)
            else:
                if m_dir != direction:
                    why = f"model disagrees: direction {m_dir:+d} (confidence {m_conf:.3f})"
        return Decision(direction, strength, confidence, holding, why)


plugin = strategy_plugin(ImbalanceStrategy)
