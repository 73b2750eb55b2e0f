"""The metrics plugin, scraped over real HTTP and parsed with prometheus-client's own text
parser, while a replay trades through the strategy, risk, the paper broker and persistence
(each of metrics and persistence in a lane of its own)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import tickbus_cmd, tickbus_env, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "persistence"))
from persistence_support import everything, trading_config  # noqa: E402

from tickbus.kernel.app import Kernel  # noqa: E402
from tickbus.schemas import (  # noqa: E402
    NOTIONAL_SCALE,
    SCALE,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    Signal,
)

pytest.importorskip("tickbus.plugins.broker.plugin", reason="the paper broker (issue 8)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


FAMILIES: set[str] = set()
"""Every metric family name the endpoint declared (with or without samples)."""


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        FAMILIES.add(fam.name)
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v) in ls for k, v in labels.items()))  # fmt: skip


def run_until_replayed(start_kernel: Callable[..., Kernel], raw: dict[str, Any]) -> Kernel:
    k = start_kernel(raw, {"everything": everything})
    end = time.monotonic() + 120
    while not k._stop_requested.is_set():  # the replay asks to stop at its end
        assert time.monotonic() < end, "the replay did not finish"
        time.sleep(0.05)
    time.sleep(0.3)  # the other lanes catch up
    return k


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Samples, list[Any], Kernel]:
    from tickbus.kernel.config import parse_config

    rt = tmp_path_factory.mktemp("rt")
    raw = trading_config(rt, rt / "m.db")
    raw["lanes"]["metrics"] = {}
    raw["plugins"]["metrics"] = {"lane": "metrics", "port": 0}
    raw["plugins"]["persistence"]["stats_interval_ms"] = 1000.0
    k = Kernel(parse_config(raw, "test.toml"), extra_plugins={"everything": everything})
    k.start()
    try:
        end = time.monotonic() + 120
        while not k._stop_requested.is_set():
            assert time.monotonic() < end, "the replay did not finish"
            time.sleep(0.05)
        m = k.contexts["metrics"].component
        while len(m.heartbeats) < 3:  # every lane beats once a second
            assert time.monotonic() < end + 5, "no heartbeat from every lane"
            time.sleep(0.05)
        samples = scrape(m.url)
        again = scrape(m.url)
    finally:
        k.stop()
    assert again[("tickbus_metrics_scrapes_total", ())] == 2
    return samples, list(k.contexts["published"].component), k


def of(seen: list[Any], cls: type) -> list[Any]:
    return [m for m in seen if type(m) is cls]


def test_orders_fills_rejections_signals(scraped: tuple[Samples, list[Any], Kernel]) -> None:
    s, seen, _ = scraped
    assert total(s, "tickbus_orders_total") == len(of(seen, OrderRequest)) > 0
    assert total(s, "tickbus_fills_total") == len(of(seen, Fill)) > 0
    for side in ("buy", "sell"):
        qty = sum(f.qty for f in of(seen, Fill) if f.side == side) / SCALE
        assert total(s, "tickbus_fill_quantity_total", side=side) == pytest.approx(qty)
    assert total(s, "tickbus_rejections_total", source="risk") == len(of(seen, OrderRejected))
    reports = of(seen, OrderUpdate)
    for status in {u.status for u in reports}:
        n = len([u for u in reports if u.status == status])
        assert total(s, "tickbus_order_updates_total", status=status) == n
    sigs = of(seen, Signal)
    assert total(s, "tickbus_signals_total", active="true") == len(
        [g for g in sigs if not g.suppressed])
    assert total(s, "tickbus_signals_total") == len(sigs)


def test_position_and_pnl_are_the_last_published(
    scraped: tuple[Samples, list[Any], Kernel],
) -> None:
    s, seen, _ = scraped
    last = of(seen, Position)[-1]
    assert total(s, "tickbus_position_quantity", symbol="BTCUSDT") == last.qty / SCALE
    net = (last.realized_pnl + last.unrealized_pnl - last.fees) / NOTIONAL_SCALE
    assert total(s, "tickbus_pnl", symbol="BTCUSDT", kind="net") == pytest.approx(net)
    assert total(s, "tickbus_pnl", symbol="BTCUSDT", kind="fees") == pytest.approx(
        last.fees / NOTIONAL_SCALE)


def test_latency_histograms(scraped: tuple[Samples, list[Any], Kernel]) -> None:
    s, seen, _ = scraped
    # orders a timer sent (holding-period exits) have no causing tick: ts_recv_ns 0
    accepted = [u for u in of(seen, OrderUpdate) if u.status == "accepted" and u.ts_recv_ns]
    assert total(s, "tickbus_tick_to_trade_seconds_count") == len(accepted) > 0
    assert total(s, "tickbus_stage_latency_seconds_count", stage="decision") == len(
        [o for o in of(seen, OrderRequest) if o.ts_recv_ns])
    assert total(s, "tickbus_stage_latency_seconds_count", stage="fill") == len(
        [f for f in of(seen, Fill) if f.ts_recv_ns])
    assert total(s, "tickbus_latency_skipped_total") == 0


def test_bus_rates_lanes_books_and_persistence(
    scraped: tuple[Samples, list[Any], Kernel],
) -> None:
    s, seen, k = scraped
    assert total(s, "tickbus_messages_published_total", lane="hot",
                 topic="exec.fill") == len(of(seen, Fill))  # fmt: skip
    assert total(s, "tickbus_messages_published_total", topic="md.book.BTCUSDT") > 1000
    for lane in ("hot", "persist", "metrics"):
        assert total(s, "tickbus_lane_alive", lane=lane) == 1
        assert ("tickbus_lane_heartbeat_age_seconds", (("lane", f"tickbus/{lane}"),)) in s
    assert total(s, "tickbus_lane_sent_total", lane="hot") > 0
    assert total(s, "tickbus_book_valid", symbol="BTCUSDT") == 1
    assert ("tickbus_book_update_age_seconds", (("symbol", "BTCUSDT"),)) in s
    assert total(s, "tickbus_persistence_rows_total") > 0
    assert total(s, "tickbus_persistence_commit_seconds_count") > 0
    assert ("tickbus_persistence_pending_rows", (("instance", "persistence"),)) in s
    assert total(s, "tickbus_risk_state", state="active") == 1


def test_without_books_no_book_leaves_the_hot_lane(
    start_kernel: Callable[..., Kernel], rt: Path
) -> None:
    """``books = false``: md.book is not routed out of the hot lane for metrics (the hot
    lane encodes nothing for it); with books on it is."""
    routed = {}
    for books in (False, True):
        raw = trading_config(rt, rt / f"b{books}.db")
        del raw["plugins"]["persistence"]
        raw["lanes"]["metrics"] = {}
        raw["plugins"]["metrics"] = {"lane": "metrics", "port": 0, "books": books}
        k = run_until_replayed(start_kernel, raw)
        m = k.contexts["metrics"].component
        s = scrape(m.url)
        routed[books] = k.lanes["hot"]._routes["md.book.BTCUSDT"].to_bus
        assert (("tickbus_book_valid", (("symbol", "BTCUSDT"),)) in s) is books
        k.stop()
    assert routed == {False: False, True: True}


def test_a_port_in_use_is_one_line_at_start(tmp_path: Path, rt: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "m.toml", f"""
[kernel]
runtime_dir = "{rt}"
[plugins.metrics]
port = {port}
""")
        out = subprocess.run(tickbus_cmd("run", str(cfg)), env=tickbus_env(),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("tickbus: error: ") and "Traceback" not in out.stderr
    assert f"127.0.0.1:{port}: address already in use" in lines[-1]
    assert "plugins.metrics" in lines[-1]


def test_the_grafana_dashboard_queries_only_metrics_that_exist(
    scraped: tuple[Samples, list[Any], Kernel],
) -> None:
    """configs/grafana-dashboard.json: valid JSON, every panel has a query, and every
    tickbus_* series a query names is a family the endpoint declares."""
    import json
    import re

    s, _, _ = scraped
    exposed = {name for name, _ in s}
    dash = json.loads((Path(__file__).resolve().parents[3] / "configs"
                       / "grafana-dashboard.json").read_text())  # fmt: skip
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    names = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names |= set(re.findall(r"tickbus_\w+", t["expr"]))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    missing = {n for n in names if n not in exposed and n not in FAMILIES
               and not any(n.endswith(x) and n.removesuffix(x) in FAMILIES for x in suffixes)}
    assert not missing, missing
    assert "tickbus_feed_connected" in FAMILIES  # declared though no feed ran
