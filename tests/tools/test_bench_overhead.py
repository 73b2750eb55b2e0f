"""The overhead benchmark (tools/bench/bench_overhead.py): persistence and metrics vs the bare
hot lane of ``tickbus bench``.

A smoke run of its ``--quick`` mode, for real (the exchange simulator, engine processes, a
SQLite file, the metrics endpoint scraped over HTTP), so the benchmark never rots: what is
checked is that it measured what it says - every order in the database, every tick-caused
order on the endpoint, nothing sent out of the bare hot lane - never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tickbus.tools.bench import bench_overhead as bo
from tickbus.tools.bench.hdr import Histogram

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("p50", "p90", "p99", "p99_9")


def test_the_variants_differ_from_the_tickbus_bench_hot_lane_by_the_observers_only() -> None:
    base = bo.load_config()
    (bare,) = bo.variant_processes(base, "bare")
    with open(ROOT / "configs" / "bench.toml", "rb") as fh:
        hot = tomllib.load(fh)
    assert bare["plugins"] == hot["plugins"] and bare["lanes"] == hot["lanes"]
    assert bo.HOT in bare["lanes"]
    (both,) = bo.variant_processes(base, "persistence+metrics")
    assert both == base
    (persistence,) = bo.variant_processes(base, "persistence")
    assert set(persistence["plugins"]) == set(bare["plugins"]) | {"persistence"}
    # each observer in a lane of its own, off the hot lane
    lanes = {both["plugins"][p]["lane"] for p in ("persistence", "metrics")}
    assert len(lanes) == 2 and not lanes & set(bare["lanes"])
    assert set(persistence["lanes"]) == set(bare["lanes"]) | {
        both["plugins"]["persistence"]["lane"]
    }
    # or in a process of their own, the hot lane's process left as the bare one
    host, observers = bo.variant_processes(base, bo.SECOND_PROCESS)
    assert host == bare and set(observers["plugins"]) == {"persistence", "metrics"}
    assert (
        set(observers["lanes"]) == lanes and observers["kernel"]["name"] != base["kernel"]["name"]
    )
    assert "metrics" in base["plugins"] and "persistence" in base["plugins"]  # not changed


def _run(t2t_us: int, orders: int = 10) -> dict[str, Any]:
    h = Histogram()
    for _ in range(orders):
        h.record(t2t_us * 1000)
    return {"tick_to_trade": h.to_dict(), "tick_to_decision": h.to_dict(), "timer_orders": 0,
            "counts": {"orders": orders, "accepted": orders, "fills": 0}, "sent": {"hot": 0},
            "db_rows": None, "scrape": None, "handler_errors": 0,
            "peak_rss_mb": 100.0}  # fmt: skip


def test_ratios_are_taken_within_a_round_then_their_median() -> None:
    """A slow round slows every variant of it: the ratio to the bare pipeline is taken per
    round (2.0, 1.1, 1.0 -> median 1.1), not as the ratio of the medians (200/110)."""
    rounds = [{"bare": _run(b), "persistence": _run(p)}
              for b, p in ((100, 200), (300, 330), (110, 110))]  # fmt: skip
    res = bo.summarize(rounds)
    assert res["persistence"]["tick_to_trade"]["p50"] == 200.0
    assert res["bare"]["tick_to_trade"]["p50"] == 110.0
    r = res["persistence"]["tick_to_trade"]["ratio_to_bare"]["p50"]
    assert r["median"] == 1.1 and r["min"] == 1.0 and r["max"] == 2.0
    assert res["persistence"]["tick_to_trade"]["n"] == 30
    assert "ratio_to_bare" not in res["bare"]["tick_to_trade"]


@pytest.mark.timeout(300)
def test_quick_run_measures_the_bare_and_the_observed_hot_lane(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tickbus.tools.bench.bench_overhead", "--quick",
         "--variants", "persistence+metrics", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    res = rep["variants"]
    assert set(res) == {"bare", "persistence+metrics"}
    for name, v in res.items():
        c = v["counts"]
        assert c["orders"] > 0 and c["book_events"] > 100, (name, c)
        assert v["handler_errors"] == 0, name
        for fig in ("tick_to_trade", "tick_to_decision"):
            assert v[fig]["n"] > 0, (name, fig)
            values = [v[fig][k] for k in ORDER]
            assert values == sorted(values) and values[0] > 0, (name, fig, values)
    bare, both = res["bare"], res["persistence+metrics"]
    # an unobserved hot lane encodes nothing; observed, every order crosses lanes, and every
    # book (the metrics plugin follows md.book) - each send timed in the hot lane
    assert bare["sent_by_lane"]["hot"] == 0 and bare["db_rows"] is None and not bare["sends_us"]
    assert both["sent_per_order"] > 1
    books = both["sends_us"]["md.book"]
    assert books["per_run"] == both["counts"]["book_events"], books
    assert 0 < books["encode_p50"] and 0 < books["send_p50"] <= books["send_p99"], books
    assert both["sends_us"]["ord.accepted"]["per_run"] == both["counts"]["accepted"]
    # every order and fill of the run is in the SQLite file
    c = both["counts"]
    assert both["db_rows"]["orders"] == c["orders"] and both["db_rows"]["fills"] == c["fills"]
    # the endpoint was scraped while the run went on, and saw every order
    s = both["scrape"]
    assert s["errors"] == 0 and s["scrapes"] >= 2
    assert s["endpoint"]["metrics_scrapes_total"] == s["scrapes"]
    assert s["endpoint"]["orders_total"] == c["orders"]
    r = both["tick_to_trade"]["ratio_to_bare"]["p50"]
    assert r["min"] <= r["median"] <= r["max"] and r["median"] > 0
    assert "tick-to-trade p50 us" in proc.stdout and "+ persistence + metrics" in proc.stdout


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--variants", "bare,nope"], ["--rounds", "0"], ["--scrape-interval", "0"]):
        assert bo.main(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
