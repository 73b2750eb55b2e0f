"""Built-in strategies, written against the public strategy API (``tickbus.kernel.Strategy``):

* ``imbalance_strategy`` (:mod:`.imbalance`): the original design's order-book imbalance rules;
* ``onnx_strategy`` (:mod:`.onnx_model`): any ONNX model meeting the documented contract
  (the bundled one is in ``model/``, made by ``tickbus train-model``).

Both share the signal-to-order logic of :mod:`.trader` (sizing, touch/market prices, one
working intent per symbol, holding-period and flip exits, stale orders, book checks).
"""
