"""The risk plugin asks the reference gateway (tools/risk_gateway.py, another process) over a
real ipc socket: approve, reject, timeout, gateway down and restarted - each per policy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_risk_plugin import Bus, collector, wait_for

from tickbus.kernel.app import Kernel
from tickbus.schemas import SCALE, OrderAccepted, OrderRejected

ROOT = Path(__file__).resolve().parents[3]


class GatewayProc:
    """The reference gateway in its own process."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickbus.tools.risk_gateway", "--endpoint", endpoint, *args],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert line.startswith("risk-gateway: listening on"), line

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def gateway(rt: Path) -> Iterator[Callable[..., GatewayProc]]:
    procs: list[GatewayProc] = []

    def start(*args: str) -> GatewayProc:
        g = GatewayProc(f"ipc://{rt}/gw", *args)
        procs.append(g)
        return g

    yield start
    for g in procs:
        g.stop(signal.SIGKILL)


@pytest.fixture
def risk(start_kernel: Callable[..., Kernel], rt: Path) -> Callable[..., Bus]:
    def make(policy: str = "fail_closed", timeout_ms: float = 300.0, **kw: Any) -> Bus:
        cfg = {
            "state_interval_s": 0.0, "risk_gateway": f"ipc://{rt}/gw", "gateway_policy": policy,
            "gateway_timeout_ms": timeout_ms, "max_rejects": 0, "max_orders_per_second": 1000.0,
            **kw,
        }  # fmt: skip
        b = Bus(start_kernel({"plugins": {"risk": cfg, "col": {}}}, {"col": collector}))
        b.book()
        return b

    return make


def gw_stats(b: Bus) -> dict[str, Any]:
    return json.loads(b.command("status").body)["gateway"]


def approved_soon(b: Bus, timeout: float = 10.0) -> OrderAccepted:
    """Send orders until the gateway approves one (the client reconnects on its own; under
    fail_open an order passing without a verdict does not count)."""
    end = time.monotonic() + timeout
    while True:
        before = b.risk.gateway.stats.approved
        d = b.decision(b.order(qty=SCALE // 100))
        if isinstance(d, OrderAccepted) and b.risk.gateway.stats.approved > before:
            return d
        assert time.monotonic() < end, f"never approved; last: {d}"
        time.sleep(0.05)


def test_approve_and_reject(gateway, risk) -> None:
    gateway("--max-qty", "0.05", "--allow", "BTCUSDT")
    b = risk()
    ok = approved_soon(b)
    assert ok.order.qty == SCALE // 100
    big = b.decision(b.order(qty=SCALE // 10))
    assert isinstance(big, OrderRejected)
    assert (big.rule, big.reason) == ("gateway", "gateway: qty 0.1 > gateway max_qty 0.05")
    status = json.loads(b.command("status").body)
    assert status["open_orders_total"] == 1  # the rejected one no longer counts
    assert status["positions"]["BTCUSDT"]["working_buy"] == SCALE // 100
    g = status["gateway"]
    assert g["approved"] >= 1 and g["rejected"] == 1 and g["rtt_last_us"] > 0


def _small(b: Bus) -> Any:
    return b.order(qty=SCALE // 100)


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_timeout_per_policy_and_the_lane_keeps_working(gateway, risk, policy: str) -> None:
    gateway("--delay-ms", "600")
    b = risk(policy, timeout_ms=150.0)
    wait_for(lambda: b.risk.gateway is not None)
    time.sleep(0.3)  # connected
    t0 = time.monotonic()
    o = _small(b)
    # while the order waits for its verdict, the lane goes on with market data
    for _ in range(20):
        t = time.monotonic()
        b.book()
        assert time.monotonic() - t < 0.1
    d = b.decision(o)
    took = time.monotonic() - t0
    assert 0.14 < took < 0.5, took
    if policy == "fail_closed":
        assert isinstance(d, OrderRejected) and d.rule == "gateway"
        assert "within 150 ms (fail_closed)" in d.reason
    else:
        assert isinstance(d, OrderAccepted)
        assert b.risk.fail_open_passes == 1
    wait_for(lambda: b.risk.gateway.stats.late == 1)  # the verdict came after all: ignored
    assert gw_stats(b)["timeouts"] == 1


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_gateway_down_then_restarted(gateway, risk, policy: str) -> None:
    b = risk(policy)
    down = b.decision(_small(b))  # no gateway yet: decided at once, per policy
    if policy == "fail_closed":
        assert isinstance(down, OrderRejected) and "unavailable" in down.reason
    else:
        assert isinstance(down, OrderAccepted)
    g = gateway("--max-qty", "0.05")
    approved_soon(b)
    # the gateway dies and comes back: orders in between follow the policy, then it answers
    g.stop(signal.SIGKILL)
    time.sleep(0.3)
    between = b.decision(_small(b))
    assert isinstance(between, OrderRejected if policy == "fail_closed" else OrderAccepted)
    gateway("--max-qty", "0.05")
    approved_soon(b)
    rej = b.decision(b.order(qty=SCALE // 10))
    assert isinstance(rej, OrderRejected) and rej.reason.startswith("gateway: qty 0.1")
    stats = gw_stats(b)
    assert stats["unavailable"] + stats["timeouts"] >= 2


def test_kill_switch_wins_over_a_late_approval(gateway, risk) -> None:
    gateway("--delay-ms", "300")
    b = risk(timeout_ms=2000.0)
    time.sleep(0.3)
    o = _small(b)
    assert b.command("kill-switch", "on").ok
    d = b.decision(o)
    assert isinstance(d, OrderRejected) and d.rule == "kill_switch"


def test_pending_orders_are_rejected_at_shutdown(gateway, start_kernel, rt) -> None:
    gateway("--drop-every", "1")
    b = Bus(start_kernel({"plugins": {"risk": {"risk_gateway": f"ipc://{rt}/gw",
                                               "gateway_timeout_ms": 60_000.0}, "col": {}}},
                         {"col": collector}))  # fmt: skip
    b.book()
    time.sleep(0.3)
    o = _small(b)
    time.sleep(0.1)
    assert not any(isinstance(m, OrderAccepted | OrderRejected) for m in b.seen)
    b.k.stop()
    d = b.decision(o)
    assert isinstance(d, OrderRejected) and "shutting down" in d.reason
