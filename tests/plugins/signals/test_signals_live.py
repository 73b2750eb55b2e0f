"""The strategy on the live path: exchange simulator on 127.0.0.1 -> binance_feed -> book ->
features -> imbalance -> risk -> paper broker, live clock. Live, ``ts_recv_ns`` is the
monotonic receive time: a strategy that aged books on the wall clock saw every book as
56 years old and never sent an order."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from signals_harness import out_collector

from conftest import SimThread
from tickbus.schemas import OrderRequest, Signal

ROOT = Path(__file__).resolve().parents[3]


def test_the_imbalance_strategy_trades_live_over_the_simulator(start_kernel) -> None:
    raw = tomllib.loads((ROOT / "configs" / "imbalance.toml").read_text())
    plugins: dict[str, Any] = {
        name: table for name, table in raw["plugins"].items() if name != "replay_feed"
    }
    sim = SimThread(speed=20.0)
    try:
        url = f"127.0.0.1:{sim.port}"
        plugins["binance_feed"] = {
            "lane": "hot", "symbols": ["BTCUSDT"], "ws_url": f"ws://{url}",
            "rest_url": f"http://{url}", "backoff_initial_s": 0.05, "rest_timeout_s": 1.0,
        }  # fmt: skip
        plugins["out"] = {"lane": "hot"}
        # a 20x faster market: the strategy's clock-based settings 20x shorter
        imb = plugins["imbalance"]
        imb["signal_decay_ms"] = 500.0 / 20
        imb["max_book_age_ms"] = 1000.0
        k = start_kernel({"lanes": {"hot": {}}, "plugins": plugins}, {"out": out_collector})
        end = time.monotonic() + 60
        while not sim.finished and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)
        seen = list(k.contexts["out"].component)
    finally:
        sim.close()
    active = [m for m in seen if isinstance(m, Signal) and not m.suppressed]
    stale = [m for m in seen if isinstance(m, Signal) and m.suppressed.startswith("book stale")]
    orders = [m for m in seen if isinstance(m, OrderRequest)]
    assert active, "no active signal"
    assert len(stale) < len(active), f"{len(stale)} signals suppressed as stale"
    assert orders, "the strategy never sent an order live"
    assert all(o.ts_recv_ns > 0 for o in orders if not o.reduce_only)
