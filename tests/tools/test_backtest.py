"""``tickbus backtest`` as a user runs it: real processes, the shipped configs, the bundled
real capture (and the larger ones in ../shared when present)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, tickbus_env
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.schemas import NOTIONAL_SCALE

CONFIG = ROOT / "configs" / "backtest.toml"
MULTI = ROOT / "configs" / "backtest-multi.toml"
SPOT = ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples" / "spot"
SAMPLE_FRAMES = 18507  # 1 REST snapshot + 18,506 ws frames


def backtest(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickbus.tools.backtest", *map(str, args)],
        env=tickbus_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def renamed_sample(path: Path, symbol: bytes) -> Path:
    """The bundled BTCUSDT capture as if it were another symbol's (same market data)."""
    raw = gzip.decompress(SAMPLE.read_bytes())
    path.write_bytes(
        gzip.compress(raw.replace(b"btcusdt", symbol.lower()).replace(b"BTCUSDT", symbol), 1)
    )
    return path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bt") / "out"
    r = backtest(CONFIG, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_backtest_runs_the_pipeline_and_reports(
    sample_run: tuple[Path, dict[str, Any], str],
) -> None:
    out, s, stderr = sample_run
    assert s["exit_status"] == 0 and s["frames"] == SAMPLE_FRAMES
    assert json.loads((out / "summary.json").read_text()) == s
    orders, fills = lines(out / "orders.jsonl"), lines(out / "fills.jsonl")
    kinds = {o["type"] for o in orders}
    assert {"OrderRequest", "OrderAccepted", "OrderUpdate"} <= kinds
    assert s["orders"] == sum(o["type"] == "OrderRequest" for o in orders) > 0
    f = s["report"]
    assert f["fills"] == len(fills) > 0 and f["trades"]["count"] >= 1
    # the report's money is the fills' money: fees and realised PnL recomputed by hand from
    # the fill log (exact integers; the position is flat at the end)
    assert f["symbols"]["BTCUSDT"]["position"] == "0"
    fees = sum(x["fee"] for x in fills)
    cash = sum(x["px"] * x["qty"] * (1 if x["side"] == "sell" else -1) for x in fills)
    pnl = {k: Decimal(v) for k, v in f["pnl"].items()}
    assert pnl["fees"] == Decimal(fees) / NOTIONAL_SCALE
    assert pnl["realized"] == Decimal(cash) / NOTIONAL_SCALE and pnl["unrealized"] == 0
    assert pnl["net"] == Decimal(cash - fees) / NOTIONAL_SCALE
    assert Decimal(f["max_drawdown"]) >= max(Decimal(0), -pnl["net"])
    assert s["frames_per_s"] > 0 and s["wall_s"] > s["replay_s"] > 0
    # each order request is logged before what it caused
    first = {}
    for i, o in enumerate(orders):
        cid = o["client_order_id"] if "client_order_id" in o else o["order"]["client_order_id"]
        first.setdefault(cid, (i, o["type"]))
    assert {t for _, t in first.values()} == {"OrderRequest"}
    assert "replay finished: 18507 frames published, 0 skipped" in stderr


def test_the_report_equals_tickbus_report_on_the_database(
    sample_run: tuple[Path, dict[str, Any], str],
) -> None:
    """Two independent paths: the backtest's own recorder in the hot lane, and the
    persistence plugin's database in its lane read back by ``tickbus report``."""
    out, s, _ = sample_run
    assert s["databases"] == [str(out.resolve() / "persistence.db")]
    r = subprocess.run(
        [sys.executable, "-m", "tickbus.tools.report", "--json", s["databases"][0]],
        env=tickbus_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == s["report"]


def test_text_report(tmp_path: Path) -> None:
    r = backtest(CONFIG, "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet: warnings and errors only
    for word in ("PnL net", "realized", "unrealized", "fees", "round trips", "win rate",
                 "max drawdown", "Sharpe", "latency", "frames/s", "wall", "persistence.db"):
        assert word in r.stdout, word


def test_two_processes_write_byte_identical_order_and_fill_logs(
    sample_run: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    first, s, _ = sample_run
    r = backtest(CONFIG, "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    for name in ("orders.jsonl", "fills.jsonl"):
        a, b = (first / name).read_bytes(), (tmp_path / name).read_bytes()
        assert len(a) > 1000 and a == b, name
    again = json.loads(r.stdout)
    assert again["report"] == s["report"] and again["orders"] == s["orders"]


def test_data_replaces_the_config_files_and_set_changes_a_setting(tmp_path: Path) -> None:
    """Two symbols from the bundled capture (the second is the same data renamed): the
    multi-symbol config trades both, and, seeing the same market, makes the same decisions
    for each."""
    eth = renamed_sample(tmp_path / "eth.gz", b"ETHUSDT")
    r = backtest(MULTI, "--data", SAMPLE, eth, "--set", "risk.max_notional_exposure=50000",
                 "--out", tmp_path / "out", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["frames"] == 2 * SAMPLE_FRAMES
    assert s["settings"] == {"risk.max_notional_exposure": 50000}
    assert set(s["report"]["symbols"]) == {"BTCUSDT", "ETHUSDT"}
    orders = lines(tmp_path / "out" / "orders.jsonl")
    req = [o for o in orders if o["type"] == "OrderRequest"]

    def decisions(sym: str) -> list[tuple[Any, ...]]:
        return [(o["side"], o["order_type"], o["px"], o["ts_recv_ns"]) for o in req
                if o["symbol"] == sym]  # fmt: skip

    assert len(decisions("BTCUSDT")) > 10 and decisions("ETHUSDT") == decisions("BTCUSDT")
    assert {o["qty"] for o in req if o["symbol"] == "ETHUSDT" and not o["reduce_only"]} == {
        10_000_000  # 0.1 ETH: the ETH instance's own size
    }
    fills = lines(tmp_path / "out" / "fills.jsonl")
    assert {f["symbol"] for f in fills} == {"BTCUSDT", "ETHUSDT"}


@pytest.mark.skipif(not (SPOT / "ethusdt_20240809.gz").exists(), reason="../shared absent")
def test_multi_symbol_on_the_real_captures(tmp_path: Path) -> None:
    r = backtest(MULTI, "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["frames"] == 99_574 + 79_744  # BTCUSDT + ETHUSDT, 2024-08-08 and 09
    fills = lines(tmp_path / "fills.jsonl")
    assert {f["symbol"] for f in fills} == {"BTCUSDT", "ETHUSDT"}
    assert {f["strategy_id"] for f in fills} == {"imbalance_btc", "imbalance_eth"}
    # one clock for both: the fills come in recorded-time order across the symbols
    stamps = [f["ts_fill_ns"] for f in fills]
    assert stamps == sorted(stamps)


def test_sweep_two_values_in_two_processes(tmp_path: Path) -> None:
    r = backtest(CONFIG, "--sweep", "imbalance_threshold=0.6,0.95", "--jobs", "2",
                 "--out", tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["settings"] for row in rows] == [
        {"imbalance_threshold": 0.6}, {"imbalance_threshold": 0.95},
    ]  # fmt: skip
    low, high = (row["summary"] for row in rows)
    assert low["settings"] == {"imbalance_threshold": 0.6}
    assert high["settings"] == {"imbalance_threshold": 0.95}
    assert low["orders"] > high["orders"]  # a higher threshold: fewer signals, fewer orders
    for row in rows:  # each run's own logs
        assert (tmp_path / row["run"] / "orders.jsonl").exists()
    table = [line.split() for line in r.stdout.splitlines()]
    assert table[0][:2] == ["imbalance_threshold", "net"]
    assert [t[0] for t in table[1:3]] == ["0.6", "0.95"]
    assert all(t[-1] == "ok" for t in table[1:3])
    tsv = (tmp_path / "sweep.tsv").read_text().splitlines()
    assert len(tsv) == 3 and tsv[0].split("\t")[:4] == [
        "imbalance_threshold", "net PnL", "realised", "fees",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("sweep", "names"),
    [
        ("no_such_setting=1,2", "no_such_setting"),
        ("risk.no_such=1", "no_such"),
        ("nobody.max_order_size=1", "nobody"),
        ("imbalance_threshold=abc,0.3", "imbalance_threshold"),
        ("imbalance_threshold", "imbalance_threshold"),
    ],
)
def test_bad_sweep_is_one_line(tmp_path: Path, sweep: str, names: str) -> None:
    r = backtest(CONFIG, "--sweep", sweep, "--out", tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("tickbus backtest: error: --sweep") and names in r.stderr
    assert r.stdout == "" and not (tmp_path / "sweep.json").exists()


def test_a_failed_run_exits_non_zero_with_its_report(tmp_path: Path) -> None:
    """A capture with a corrupt line: the replay skips it and the run fails (the backtest
    did not see all of its data); the report still comes, saying so."""
    raw = gzip.decompress(SAMPLE.read_bytes()).splitlines(keepends=True)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"".join([*raw[:5000], b"garbage\n", *raw[5000:]]), 1))
    r = backtest(CONFIG, "--data", bad, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert "FAILED" in r.stdout
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["exit_status"] == 1 and s["failures"] and s["frames"] == SAMPLE_FRAMES


def test_the_replay_starts_last_so_a_slow_start_loses_nothing(tmp_path: Path) -> None:
    """The data listed first and a persistence plugin slow to start (fsync per row): the
    sample used to be over before persistence had started, the kernel then skipped stop,
    drain and flush - empty logs, an empty report, exit status 0."""
    text = CONFIG.read_text()
    start = text.index("[plugins.replay_feed]")
    replay = text[start:]
    text = text[:start].replace("[plugins.book]", replay + "\n[plugins.book]", 1)
    cfg = tmp_path / "first.toml"
    cfg.write_text(text)
    from tickbus.kernel.app import _start_order
    from tickbus.kernel.config import load_config
    from tickbus.tools.backtest import backtest_config

    assert next(iter(load_config(cfg).plugins)) == "replay_feed"
    bt, _ = backtest_config(load_config(cfg), [], tmp_path / "x")
    assert _start_order({n: e for n, e in bt.plugins.items() if e.enabled})[-1] == "replay_feed"
    r = backtest(cfg, "--set", 'persistence.synchronous="FULL"', "--set",
                 "persistence.batch_rows=1", "--out", tmp_path / "out", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["orders"] > 10 and s["report"]["fills"] == len(lines(tmp_path / "out" / "fills.jsonl"))
    assert s["report"]["fills"] > 0


def test_config_without_a_replay_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[plugins.book]\nmarket = "spot"\n')
    r = backtest(cfg, "--out", tmp_path / "out")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "replay_feed" in r.stderr
    r = backtest(CONFIG, "--data", tmp_path / "missing.gz", "--out", tmp_path / "out")
    assert r.returncode == 2 and "missing.gz" in r.stderr.strip().splitlines()[-1]
