"""The imbalance strategy in a replay of the bundled real capture through the real plugins
(replay_feed -> book -> features -> imbalance_strategy, one lane, replay clock), with the
shipped ``configs/imbalance.toml``: it trades, the original constants never do, and the
same replay twice gives the identical sequence of signals and order messages."""

from __future__ import annotations

import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from signals_harness import NO_ENDPOINTS, out_collector

from tickbus.kernel.app import Kernel
from tickbus.kernel.config import parse_config
from tickbus.schemas import SCALE, OrderCancel, OrderRequest, Signal

pytest.importorskip("tickbus.plugins.features.plugin", reason="the features plugin (issue 7)")

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "imbalance.toml"
_RUN = re.compile(r"^(.+)-[0-9a-z]+-(\d+)$")


def replay(strategy: dict[str, Any] | None = None, **settings: Any) -> list[Any]:
    """Run configs/imbalance.toml to the end (its strategy settings changed by
    ``settings``, or the strategy table replaced by ``strategy``); every sig./ord. message
    in order."""
    raw = tomllib.loads(CONFIG.read_text())
    with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
        raw["kernel"]["runtime_dir"] = rt
        raw["bus"] = NO_ENDPOINTS
        raw["plugins"]["imbalance"].update(settings)
        if strategy is not None:
            raw["plugins"]["imbalance"] = strategy
            raw["lanes"]["ml"] = {}
        raw["plugins"]["out"] = {"lane": "hot"}
        k = Kernel(parse_config(raw, str(CONFIG)), extra_plugins={"out": out_collector})
        assert k.run(handle_signals=False) == 0
        return list(k.contexts["out"].component)


def comparable(msgs: list[Any]) -> list[Any]:
    """Messages as builtins; order ids without their run stamp (time-based, per run)."""
    out = []
    for m in msgs:
        d = msgspec.to_builtins(m)
        for i, v in enumerate(d):
            if isinstance(v, str) and _RUN.match(v):
                d[i] = _RUN.sub(r"\1-RUN-\2", v)
        out.append(d)
    return out


@pytest.fixture(scope="module")
def first_run() -> list[Any]:
    return replay()


def test_the_calibrated_config_trades_on_the_bundled_sample(first_run: list[Any]) -> None:
    sigs = [m for m in first_run if isinstance(m, Signal)]
    active = [s for s in sigs if not s.suppressed]
    orders = [m for m in first_run if isinstance(m, OrderRequest)]
    assert len(sigs) > 500
    assert 0.02 * len(sigs) < len(active) < 0.5 * len(sigs)
    assert all(s.confidence >= 0.7 for s in active)
    assert all(s.suppressed.startswith("confidence ") for s in sigs if s.suppressed)
    assert all(abs(s.strength) == 1.0 and s.direction in (-1, 1) for s in sigs)
    assert len(orders) >= 4
    entries = [o for o in orders if not o.reduce_only]
    exits = [o for o in orders if o.reduce_only]
    assert entries and exits, "the config runs the paper broker: positions open and close"
    for o in entries:
        assert (o.strategy_id, o.symbol, o.qty) == ("imbalance", "BTCUSDT", SCALE // 200)
        assert o.order_type == "limit" and o.px > 0 and o.ts_recv_ns > 0
    for o in exits:  # exit_price_mode = "market", never more than the position
        assert o.order_type == "market" and 0 < o.qty <= SCALE // 100
    # every entry follows an active signal of its direction, or replaces such an order
    by_id = {o.client_order_id: o for o in orders}
    for o in entries:
        root = o
        while root.replaces:
            root = by_id[root.replaces]
        cause = [s for s in active if s.ts_recv_ns <= root.ts_recv_ns][-1]
        assert (cause.direction > 0) == (o.side == "buy")


def test_the_original_constants_never_trade_on_real_data() -> None:
    msgs = replay(momentum_scale=0.01, volatility_scale=0.01, volatility_floor=0.001)
    sigs = [m for m in msgs if isinstance(m, Signal)]
    assert len(sigs) > 500
    assert max(s.confidence for s in sigs) < 0.51
    assert all(s.suppressed for s in sigs)
    assert not [m for m in msgs if isinstance(m, OrderRequest | OrderCancel)]


def test_the_same_replay_twice_gives_the_same_signals_and_orders(first_run: list[Any]) -> None:
    again = replay()
    assert len(again) == len(first_run)
    assert comparable(again) == comparable(first_run)
    assert any(isinstance(m, OrderCancel) for m in first_run)


def test_onnx_strategy_moves_to_its_own_lane_with_one_line() -> None:
    """In-lane or in a lane of its own (``lane = "ml"``): the same decisions on the same
    vectors (only the decision's clock stamp may differ: the replay lane runs ahead)."""
    table = {"plugin": "onnx_strategy", "symbols": ["BTCUSDT"], "min_confidence": 0.55}

    def decisions(lane: str) -> list[tuple[Any, ...]]:
        msgs = replay({**table, "lane": lane})
        return [(s.direction, s.strength, s.confidence, s.holding_period_ms, s.suppressed,
                 s.ts_recv_ns) for s in msgs if isinstance(s, Signal)]  # fmt: skip

    here, there = decisions("hot"), decisions("ml")
    assert len(here) > 50 and any(not d[4] for d in here)
    assert there == here


def test_a_rejected_order_is_not_resent_at_once() -> None:
    """Risk's max_order_size below the strategy's size: every entry is refused. Without a
    back-off the refused order goes out again at the next chance (an exit risk refuses went
    out again on every book: 1,801 rejects in 3 minutes, just under the circuit breaker)."""
    from tickbus.schemas import OrderRejected

    def rejects(backoff_ms: float) -> int:
        raw = tomllib.loads(CONFIG.read_text())
        with tempfile.TemporaryDirectory(prefix="tb", dir="/tmp") as rt:
            raw["kernel"]["runtime_dir"] = rt
            raw["bus"] = NO_ENDPOINTS
            raw["plugins"]["risk"]["max_order_size"] = 0.001  # the strategy sends 0.005
            raw["plugins"]["imbalance"]["reject_backoff_ms"] = backoff_ms
            raw["plugins"]["out"] = {"lane": "hot"}
            k = Kernel(parse_config(raw, str(CONFIG)), extra_plugins={"out": out_collector})
            assert k.run(handle_signals=False) == 0, k.failures
            seen = list(k.contexts["out"].component)
        refused = [m for m in seen if isinstance(m, OrderRejected)]
        assert all(r.rule == "max_order_size" for r in refused)
        return len(refused)

    # measured on the sample: 112 without a back-off, 36 with the default 1 s
    assert rejects(1000.0) * 2 < rejects(0.0)
