"""``tickbus ctl`` against a real ``tickbus run`` process: the kill switch, flipped from a
second process, stops orders within one message; status shows the running state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel.router import frame, split_frame
from tickbus.schemas import (
    SCALE,
    Codec,
    ControlCommand,
    ControlReply,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
)

ORIGIN = b"\xff\xff\xff\xfe"  # no lane of the running process has it


def ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickbus.tools.ctl", *args], env=tickbus_env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class Running:
    """``tickbus run`` with book + replay (real time) + risk, and a strategy stand-in in
    this process: it publishes orders into the bus and reads every decision, in order."""

    def __init__(self, tmp_path: Path, rt: Path) -> None:
        self.rt = rt
        self.cfg = write_config(
            tmp_path / "run.toml",
            f"""
[kernel]
runtime_dir = "{rt}"
clock = "replay"
status_interval_s = 0
[plugins.book]
market = "spot"
depth = 5
[plugins.replay_feed]
speed = 1.0
exit_at_end = false
[plugins.risk]
max_orders_per_second = 10000.0
burst = 10000
max_position_size = 1000.0
max_order_size = 1.0
max_notional_exposure = 1e12
max_rejects = 0
""",
        )
        self.proc = subprocess.Popen(
            tickbus_cmd("run", str(self.cfg)), env=tickbus_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        end = time.monotonic() + 30
        while not (rt / "bus-sub").exists():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < end, "tickbus did not come up"
            time.sleep(0.02)
        self.zctx = zmq.Context()
        self.sub = self.zctx.socket(zmq.SUB)
        for prefix in (b"ord.", b"ctl.reply"):
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sub.connect(f"ipc://{rt}/bus-sub")
        self.pub = self.zctx.socket(zmq.XPUB)
        self.pub.connect(f"ipc://{rt}/bus-pub")
        # the XPUB hears the running process subscribe: risk is there to take orders
        while self.pub.recv() != b"\x01ord.request":
            pass
        self.codec = Codec()
        self.seen: list[Any] = []
        self.n = 0  # orders sent
        self.decided = 0  # decisions read

    def order(self) -> OrderRequest:
        self.n += 1
        o = OrderRequest(f"t-{self.n}", "ext", "BTCUSDT", "buy", "market", "IOC", SCALE // 1000,
                         0, 0, False, "", time.time_ns(), time.time_ns())  # fmt: skip
        self.pub.send(frame("ord.request", ORIGIN, msgspec.msgpack.encode(o)))
        return o

    def read(self, wait_ms: int = 0) -> None:
        while self.sub.poll(wait_ms):
            _topic, _origin, body = split_frame(self.sub.recv())
            msg = self.codec.decode(body)
            self.seen.append(msg)
            self.decided += isinstance(msg, OrderAccepted | OrderRejected)
            wait_ms = 0

    def until(self, cond: Any, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, f"timed out; last seen {self.seen[-3:]}"
            self.read(20)

    def settle(self) -> None:
        """Read until every order sent has its decision."""
        self.until(lambda: self.decided >= self.n)

    def first_accept(self) -> None:
        """Send orders until the first is accepted (the book is valid from then on)."""
        while not any(isinstance(m, OrderAccepted) for m in self.seen):
            self.order()
            self.settle()
            time.sleep(0.05)

    def close(self) -> str:
        self.sub.close(linger=0)
        self.pub.close(linger=0)
        self.zctx.term()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        finally:
            self.proc.kill()
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def running(tmp_path: Path, rt: Path) -> Iterator[Running]:
    r = Running(tmp_path, rt)
    yield r
    r.close()


def decisions(seen: list[Any]) -> list[Any]:
    return [m for m in seen if isinstance(m, OrderAccepted | OrderRejected | ControlReply)]


def test_kill_switch_from_a_second_process_stops_orders_within_one_message(
    running: Running,
) -> None:
    r = running
    # wait for a valid book: the first accepted order
    r.first_accept()
    r.seen.clear()
    # keep orders flowing while the operator flips the switch from another process
    stop = threading.Event()

    def flow() -> None:
        while not stop.is_set():
            r.order()
            time.sleep(0.002)

    # the sender owns the socket while it runs (ZeroMQ sockets are not thread-safe)
    thread = threading.Thread(target=flow)
    thread.start()
    try:
        time.sleep(0.3)
        out = ctl("kill-switch", "on", "--config", str(r.cfg))
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("kill switch ON (risk);"), out.stdout
    r.settle()
    stream = decisions(r.seen)
    at = next(i for i, m in enumerate(stream) if isinstance(m, ControlReply))
    before, after = stream[:at], stream[at + 1 :]
    assert len(before) > 10 and len(after) > 10, (len(before), len(after))
    assert all(isinstance(m, OrderAccepted) for m in before)
    assert all(isinstance(m, OrderRejected) and m.rule == "kill_switch" for m in after)
    # every order it had let through was asked to be cancelled (cancel_on_kill), before
    # the reply; the reply says how many
    reply = stream[at]
    cancels = [m for m in r.seen if isinstance(m, OrderCancel)]
    assert json.loads(reply.body)["canceled"] == len(cancels) >= len(before)
    assert f"{len(cancels)} working orders asked to cancel" in out.stdout

    off = ctl("kill-switch", "off", "--config", str(r.cfg))
    assert off.returncode == 0 and off.stdout.startswith("kill switch off"), off.stderr
    o = r.order()
    r.until(lambda: any(isinstance(m, OrderAccepted) and m.order == o for m in r.seen))


def test_status_and_state(running: Running) -> None:
    r = running
    r.first_accept()
    out = ctl("status", "--config", str(r.cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "risk: ACTIVE, kill switch off"
    assert "BTCUSDT" in out.stdout and "open orders:" in out.stdout
    assert any(ln.strip().startswith("t-") and "market" in ln for ln in lines)
    js = ctl("status", "--json", "--config", str(r.cfg))
    body = json.loads(js.stdout)
    accepted = sum(isinstance(m, OrderAccepted) for m in r.seen)
    assert body["accepted"] == accepted == body["open_orders_total"]
    assert body["positions"]["BTCUSDT"]["working_buy"] == accepted * SCALE // 1000
    assert body["positions"]["BTCUSDT"]["book_valid"] is True

    red = ctl("state", "reducing", "--config", str(r.cfg))
    assert red.returncode == 0 and red.stdout.strip() == "trading state reducing (risk)"
    o = r.order()
    r.until(lambda: any(isinstance(m, OrderRejected) and m.order == o for m in r.seen))
    assert [m.rule for m in r.seen if isinstance(m, OrderRejected) and m.order == o] == ["reducing"]


def test_an_unknown_command_is_refused_and_changes_nothing(running: Running) -> None:
    r = running
    before = json.loads(ctl("status", "--json", "--config", str(r.cfg)).stdout)
    r.pub.send(frame("ctl.risk", ORIGIN, msgspec.msgpack.encode(
        ControlCommand("x1", "self-destruct", [], time.time_ns()))))  # fmt: skip

    def mine() -> list[ControlReply]:
        return [m for m in r.seen if isinstance(m, ControlReply) and m.request_id == "x1"]

    r.until(mine)
    reply = mine()[0]
    assert (reply.target, reply.ok) == ("risk", False)
    assert "unknown command 'self-destruct'" in json.loads(reply.body)["error"]
    after = json.loads(ctl("status", "--json", "--config", str(r.cfg)).stdout)
    for key in ("state", "kill_switch", "accepted", "rejected", "open_orders"):
        assert after[key] == before[key]


def test_no_subscriber_and_no_process_are_one_line_errors(running: Running, tmp_path: Path) -> None:
    r = running
    t0 = time.monotonic()
    out = ctl("status", "--target", "nobody", "--timeout", "1", "--config", str(r.cfg))
    assert out.returncode == 1 and time.monotonic() - t0 < 10
    assert out.stderr.startswith("tickbus ctl: nothing subscribes to ctl.nobody")
    assert out.stderr.count("\n") == 1
    gone = tmp_path / "gone"
    gone.mkdir(mode=0o700)
    cfg = write_config(tmp_path / "gone.toml", f'[kernel]\nruntime_dir = "{gone}"\n')
    out = ctl("kill-switch", "on", "--config", str(cfg))
    assert out.returncode == 1 and out.stderr.startswith("tickbus ctl: no bus at ipc://")
    out = ctl("state", "sideways", "--config", str(cfg))
    assert out.returncode == 2  # a usage error, before anything is sent


def test_endpoints_follow_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tickbus.tools.ctl import endpoints

    cfg = write_config(tmp_path / "a.toml", '[kernel]\nruntime_dir = "/run/x"\n')
    assert endpoints(str(cfg))[:2] == ("ipc:///run/x/bus-pub", "ipc:///run/x/bus-sub")
    joined = write_config(
        tmp_path / "b.toml",
        '[bus]\njoin_pub = "ipc:///run/host/bus-pub"\njoin_sub = "ipc:///run/host/bus-sub"\n',
    )
    assert endpoints(str(joined))[:2] == ("ipc:///run/host/bus-pub", "ipc:///run/host/bus-sub")
    monkeypatch.setenv("TICKBUS_CONFIG", str(cfg))
    assert endpoints(None)[0] == "ipc:///run/x/bus-pub"
