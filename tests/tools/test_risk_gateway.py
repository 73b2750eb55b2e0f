"""The risk-gateway protocol document is byte-exact, and the reference gateway
(``python -m tickbus.tools.risk_gateway``) speaks it: a plain DEALER, as an OCaml client would
use, gets the documented answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from tickbus.schemas import SCALE, OrderRequest, RiskCheckReply, RiskCheckRequest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "schemas" / "risk_gateway.md"


def doc_hex(kind: str) -> bytes:
    m = re.search(rf"```hex {kind}\n(.*?)```", DOC.read_text(), re.S)
    assert m, kind
    return bytes.fromhex(m.group(1))


EXAMPLE = OrderRequest("c-1", "s1", "BTCUSDT", "buy", "limit", "GTC", 50_000_000,
                       6_000_000_000_000, 0, False, "", 1723161254087891268,
                       1723161254087899000)  # fmt: skip


def test_the_documented_bytes_are_what_tickbus_sends_and_reads() -> None:
    req = RiskCheckRequest(7, EXAMPLE, -25_000_000, 6_000_000_500_000, 1723161254087899500)
    assert msgspec.msgpack.encode(req) == doc_hex("request")
    rep = RiskCheckReply(7, False, "qty 0.5 > 0.1", 1723161254088012000)
    assert msgspec.msgpack.encode(rep) == doc_hex("reply")
    approval = re.search(r"An approval of the same request is `([0-9a-f \n]+)`", DOC.read_text())
    assert approval is not None
    assert bytes.fromhex(approval.group(1)) == msgspec.msgpack.encode(
        RiskCheckReply(7, True, "", 1723161254088012000)
    )
    # what the document promises a gateway: any int width, extra trailing fields ignored
    wide = (
        b"\x96\xaeRiskCheckReply"  # six elements: one more than tickbus knows
        + b"\xd3" + (7).to_bytes(8, "big")  # correlation_id as int64
        + b"\xc3\xa0"  # approved, reason ""
        + b"\xd3" + (1).to_bytes(8, "big")  # ts_ns as int64
        + b"\xa5extra"  # a field from the future
    )  # fmt: skip
    got = msgspec.msgpack.decode(wide, type=RiskCheckReply)
    assert (got.correlation_id, got.approved, got.ts_ns) == (7, True, 1)


class Gw:
    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickbus.tools.risk_gateway", "--endpoint", endpoint, *args],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stderr is not None
        self.first = self.proc.stderr.readline()

    def stop(self, signum: int | None = signal.SIGTERM) -> tuple[int, str]:
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        rc = self.proc.wait(10)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()


@pytest.fixture
def dealer() -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close(linger=0)
    ctx.term()


def ask(sock: zmq.Socket, corr: int, qty: str = "0.1", symbol: str = "BTCUSDT") -> None:
    o = msgspec.structs.replace(EXAMPLE, qty=int(float(qty) * SCALE), symbol=symbol)
    sock.send(msgspec.msgpack.encode(RiskCheckRequest(corr, o, 0, 6_000_000_000_000, 1)))


def replies(sock: zmq.Socket, n: int, timeout_ms: int = 5000) -> list[RiskCheckReply]:
    out = []
    while len(out) < n and sock.poll(timeout_ms):
        frames = sock.recv_multipart()
        assert len(frames) == 1, "one frame per reply, no delimiter"
        out.append(msgspec.msgpack.decode(frames[0], type=RiskCheckReply))
    return out


def test_rules_drop_and_delay(rt: Path, dealer: zmq.Socket) -> None:
    ep = f"ipc://{rt}/gw"
    gw = Gw(ep, "--max-qty", "0.5", "--allow", "BTCUSDT", "--drop-every", "4")
    try:
        assert gw.first.startswith("risk-gateway: listening on")
        assert os.stat(rt / "gw").st_mode & 0o777 == 0o600
        dealer.connect(ep)
        ask(dealer, 1, "0.5")
        ask(dealer, 2, "0.50000001")
        ask(dealer, 3, "0.1", "ETHUSDT")
        ask(dealer, 4)  # the 4th is dropped
        ask(dealer, 5)
        got = {r.correlation_id: (r.approved, r.reason) for r in replies(dealer, 4)}
        assert got == {
            1: (True, ""),
            2: (False, "qty 0.50000001 > gateway max_qty 0.5"),
            3: (False, "symbol ETHUSDT not in the allow-list"),
            5: (True, ""),
        }
        assert replies(dealer, 1, 300) == []
        # malformed requests: counted, logged once per kind, not answered
        dealer.send(b"\x93\x01\x02\x03")
        dealer.send(b"not msgpack at all")
        dealer.send_multipart([b"", b"two frames"])
        assert replies(dealer, 1, 300) == []
    finally:
        rc, err = gw.stop()
    assert rc == 0
    assert err.count("skipped a request: undecodable request") == 1
    assert err.count("skipped a request: wrong frame count") == 1
    assert "requests 5, approved 2, rejected 2, dropped 1, bad 3" in err
    assert not (rt / "gw").exists()


def test_delay(rt: Path, dealer: zmq.Socket) -> None:
    ep = f"ipc://{rt}/gw"
    gw = Gw(ep, "--delay-ms", "200")
    try:
        dealer.connect(ep)
        time.sleep(0.1)
        t0 = time.monotonic()
        ask(dealer, 1)
        ask(dealer, 2)
        assert [r.correlation_id for r in replies(dealer, 2)] == [1, 2]
        assert 0.19 < time.monotonic() - t0 < 1.0
    finally:
        gw.stop()


def test_bind_refusals(rt: Path, tmp_path: Path) -> None:
    ep = f"ipc://{rt}/gw"
    gw = Gw(ep)
    try:
        second = Gw(ep)
        rc, err = second.stop(None)  # it exits by itself
        assert rc == 2 and "another process is listening there" in second.first + err
    finally:
        gw.stop()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    bad = Gw(f"ipc://{shared}/gw")
    rc, err = bad.stop(None)
    assert rc == 2 and "writable by group or others" in bad.first + err
    ok = Gw(f"ipc://{shared}/gw", "--no-check-dir")
    assert ok.first.startswith("risk-gateway: listening on")
    assert ok.stop()[0] == 0
