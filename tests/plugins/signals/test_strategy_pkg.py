"""The sample third-party strategy package (tests/strategy_pkg), the way a user ships one:
pip-installed into a directory of its own, discovered from its entry point by a real
``tickbus`` process, and sending order requests in a replay of the bundled capture - seen
on the bus by an independent recorder plugin from another installed package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tickbus_cmd, tickbus_env, write_config


@pytest.fixture(scope="module")
def strategy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/strategy_pkg really installed (pip, into a target dir)."""
    target = tmp_path_factory.mktemp("strategy_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target),
         str(ROOT / "tests" / "strategy_pkg")],
        check=True, cwd=tmp_path_factory.mktemp("build"),
    )  # fmt: skip
    return target


def run_cli(args: list[str], *sites: Path) -> subprocess.CompletedProcess[str]:
    env = tickbus_env()
    env["PYTHONPATH"] = ":".join([*map(str, sites), env["PYTHONPATH"]])
    return subprocess.run(
        tickbus_cmd(*args), env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip


def config(tmp_path: Path, rt: Path) -> Path:
    return write_config(
        tmp_path / "flow.toml",
        f"""
[kernel]
runtime_dir = "{rt}"
clock = "replay"
[plugins.book]
[plugins.replay_feed]
speed = 0.0
[plugins.flow]
plugin = "sample_flow"
symbols = ["BTCUSDT"]
window = 40
threshold = 0.5
qty = 0.002
hold_ms = 1500
orders_out = "orders.jsonl"
[plugins.watch]
plugin = "tb_recorder"
prefix = "ord.request"
out = "{tmp_path / "seen.json"}"
""",
    )


def test_the_installed_package_is_discovered_and_trades_in_a_replay(
    strategy_site: Path, plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    cfg = config(tmp_path, rt)
    listed = run_cli(["plugins", "--config", str(cfg)], strategy_site, plugin_site)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("sample_flow "))
    assert "tickbus_sample_strategy.flow:plugin" in line
    assert "tickbus-sample-strategy 0.1.0" in line and "flow (lane main)" in line

    out = run_cli(["run", str(cfg)], strategy_site, plugin_site)
    assert out.returncode == 0, out.stderr
    asked = [json.loads(ln) for ln in (tmp_path / "orders.jsonl").read_text().splitlines()]
    seen = json.loads((tmp_path / "seen.json").read_text())
    entries = [a for a in asked if a["side"] in ("buy", "sell")]
    assert len(entries) >= 3, "it trades on the bundled sample"
    assert all(a["qty"] == 200_000 and a["px"] > 0 for a in entries)
    assert all(a["id"].startswith("flow-") for a in asked)
    # an independent plugin on the bus saw exactly those order requests
    assert seen["types"] == ["OrderRequest"]
    assert len(seen["ids"]) == len(asked)


def test_not_installed_means_not_found(tmp_path: Path, rt: Path, plugin_site: Path) -> None:
    out = run_cli(["run", str(config(tmp_path, rt))], plugin_site)
    assert out.returncode == 2
    assert "unknown plugin 'sample_flow'" in out.stderr
