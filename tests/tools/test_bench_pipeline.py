"""``tickbus bench`` (tools/bench/pipeline.py) and its HDR histogram (tools/bench/hdr.py).

The benchmark runs in CI in its ``--quick`` mode, for real: the exchange simulator serving
the bundled capture over a WebSocket, the engine processes of every scenario, the baseline.
What is checked is that the report is complete and sane - every section there, samples
counted, percentiles in order - never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tickbus.tools.bench import pipeline
from tickbus.tools.bench.hdr import Histogram

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("p50", "p90", "p99", "p99_9", "max")


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tickbus.tools.bench.pipeline", "--quick", "--json", str(out),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _ordered(fig: dict[str, Any]) -> None:
    values = [fig[k] for k in ORDER]
    assert values == sorted(values), fig
    assert 0 <= fig["min"] <= fig["p50"]


@pytest.mark.timeout(900)
def test_quick_bench_reports_every_scenario_completely(tmp_path: Path) -> None:
    proc, rep = _bench(tmp_path)
    m = rep["machine"]
    assert m["cpu_model"] and m["cores"] >= 1 and m["python"]
    assert {"numpy", "numba", "pyzmq", "msgspec"} <= set(m["versions"])
    assert len(m["load_avg_start"]) == 3 and len(m["load_avg_end"]) == 3
    assert rep["capture"]["frames"] > 1000
    assert set(rep["scenarios"]) == set(pipeline.SCENARIOS)
    for name, sc in rep["scenarios"].items():
        c = sc["counts"]
        assert c["frames"] > 1000 and c["book_events"] > 100, (name, c)
        assert c["orders"] > 0 and c["accepted"] > 0, (name, c)
        for fig in ("tick_to_trade_us", "tick_to_decision_us"):
            assert sc[fig]["n"] > 0, (name, fig)
            _ordered(sc[fig]["pooled"])
        # every book event the strategy evaluated has its tick-to-decision
        assert sc["tick_to_decision_us"]["n"] >= c["book_events"] // 2, (name, c)
        for key in ("parse frame", "book md.depth", "features md.book", "signal md.book",
                    "risk ord.request", "broker ord.accepted"):  # fmt: skip
            stage = sc["stages_us"][key]
            assert stage["n"] > 0, (name, key)
            assert stage["p50"] <= stage["p99"] <= stage["max"], (name, key)
        assert sc["throughput_fps"] > 0
        assert sc["tick_to_decision_back_to_back_us"]["n"] > 0
        assert sc["peak_rss_mb"]["total"] > 20
        if name != "baseline":
            r = sc["ratio_to_baseline"]
            assert r["tick_to_trade_p50"] > 0 and r["throughput"] > 0 and r["peak_rss"] > 0
    # the strategy in its own process: two processes measured, the strategy's RSS apart
    assert set(rep["scenarios"]["remote"]["peak_rss_mb"]) == {"engine", "strategy", "total"}
    assert isinstance(rep["targets"]["p50_met"], bool)
    assert rep["probe_cost_ns"]["stage_wrapper"] > 0
    assert "tick-to-trade us p50" in proc.stdout and "hot lane" in proc.stdout


@pytest.mark.timeout(300)
def test_soak_loops_the_capture_and_reports_rss(tmp_path: Path) -> None:
    proc, rep = _bench(tmp_path, "--soak", "4")
    s = rep["soak"]
    # every loop after the first is a resync: the books keep trading through all of them
    assert s["loops"] >= 2 and s["book_events"] > s["loops"] * 100 and s["orders"] > 0, s
    assert 0 < s["rss_start_mb"] <= s["rss_max_mb"] and s["rss_end_mb"] <= s["rss_max_mb"]
    assert isinstance(s["rss_growth_pct"], float) and s["series"]
    assert "RSS" in proc.stdout


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for args in (["--scenarios", "hot,nope"], ["--runs", "0"], ["--capture", "/no/such"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tickbus.tools.bench.pipeline", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------------------- probes


def test_stage_probe_bills_each_handler_only_its_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that publishes in its lane calls the next one: each is billed its own
    time, not the time of what it called (a fake clock, so the figures are exact)."""
    now = [0]
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now[0])
    probes = pipeline.Probes(stages=True, touch=False, t2t=False, t2d=False)

    def broker(msg: Any) -> None:
        now[0] += 7

    wrapped_broker = probes.wrap("ord.accepted", _owned_by("tickbus.plugins.broker", broker))

    def risk(msg: Any) -> None:
        now[0] += 30
        wrapped_broker(msg)
        now[0] += 20

    wrapped_risk = probes.wrap("ord.request", _owned_by("tickbus.plugins.risk.plugin", risk))
    for _ in range(3):
        wrapped_risk(None)
    assert probes.hists["risk ord.request"].count == 3
    assert probes.hists["risk ord.request"].max == 50
    assert probes.hists["risk ord.request"].min == 50
    assert probes.hists["broker ord.accepted"].max == 7
    # a handler of no known plugin (the bench's own, a test's) is left alone
    assert probes.wrap("md.book.X", _test_handler) is _test_handler


def _test_handler(msg: Any) -> None:
    pass


def _owned_by(module: str, fn: Any) -> Any:
    fn.__module__ = module
    return fn


def test_time_scaled_divides_the_strategy_clock_by_the_pace() -> None:
    raw = {"plugins": {"imb": {"plugin": "imbalance_strategy", "signal_decay_ms": 400.0},
                       "paper_broker": {}, "book": {"depth": 20}}}  # fmt: skip
    got = pipeline.time_scaled(raw, 40.0)
    imb = got["plugins"]["imb"]
    assert imb["signal_decay_ms"] == 10.0 and imb["holding_scale_ms"] == 25.0
    assert imb["min_holding_ms"] == 2 and imb["max_holding_ms"] == 250  # ints stay ints
    assert got["plugins"]["paper_broker"]["mark_interval_ms"] == 25.0
    assert got["plugins"]["book"] == {"depth": 20}
    assert raw["plugins"]["imb"] == {"plugin": "imbalance_strategy", "signal_decay_ms": 400.0}


# ---------------------------------------------------------------------------- histogram


def test_histogram_percentiles_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(9.0, 1.5, 50_000).astype(np.int64)  # ~8 us median, long tail
    h = Histogram()
    for v in values.tolist():
        h.record(v)
    assert h.count == len(values) and h.total == int(values.sum())
    assert h.max == int(values.max())
    assert int(values.min()) * (1 - 1 / 128) <= h.min <= int(values.min())
    for q in (50.0, 90.0, 99.0, 99.9):
        exact = int(np.percentile(values, q, method="inverted_cdf"))
        got = h.percentile(q)
        assert exact <= got <= exact * (1 + 1 / 128), (q, exact, got)
    assert h.percentile(100.0) == h.max


def test_histogram_buckets_tile_the_range() -> None:
    h = Histogram()
    edges = [v for b in range(1, 45) for v in ((1 << b) - 1, 1 << b, (1 << b) + 1)]
    for v in [*range(600), *edges]:
        i = h._index(v)
        assert h.bucket_high(i) >= v, v
        assert i == 0 or h.bucket_high(i - 1) < v, v


def test_histogram_vector_record_merge_and_json_round_trip() -> None:
    values = np.array([0, 1, 255, 256, 257, 1000, 123_456, 10**9, 10**12], np.int64)
    a, b = Histogram(), Histogram()
    for v in values.tolist():
        a.record(v)
    b.record_array(values)
    assert (a.counts == b.counts).all() and a.total == b.total and a.max == b.max
    a.merge(b)
    assert a.count == 2 * len(values)
    c = Histogram.from_dict(json.loads(json.dumps(a.to_dict())))
    assert (c.counts == a.counts).all() and c.summary() == a.summary()
    assert Histogram().summary() == {"n": 0} and Histogram().percentile(50) == 0


def test_histogram_counts_values_out_of_range_apart() -> None:
    h = Histogram()
    h.record(-5)  # a clock stepped back between the two stamps
    h.record(1 << 50)
    h.record(10)
    s = h.summary(1.0)
    assert s["n"] == 3 and s["negative"] == 1 and s["overflow"] == 1
    assert h.percentile(1) == 0 and h.max == (1 << 45) - 1
    with pytest.raises(ValueError):
        Histogram().merge(Histogram(precision=5))
