"""The exchange simulator, driven by real websockets/HTTP clients over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import tickbus_cmd, tickbus_env
from tickbus.plugins.binance.capture import SAMPLE, Record, read_capture
from tickbus.tools.exchange_sim import ExchangeSim, Fault, main, parse_fault

ROOT = Path(__file__).resolve().parents[2]
DEPTH = "btcusdt@depth@100ms"
TRADE = "btcusdt@trade"
BOOKT = "btcusdt@bookTicker"
ALL = f"/stream?streams={DEPTH}/{TRADE}/{BOOKT}"


@cache
def recorded() -> tuple[Record, ...]:
    return tuple(read_capture(SAMPLE))


def frames_of(*streams: str) -> list[bytes]:
    return [r.payload for r in recorded() if r.stream in streams]


def run_sim(body: Callable[[ExchangeSim, int], Awaitable[None]], **kw: Any) -> None:
    """Run ``body(sim, port)`` against a fresh simulator on an ephemeral port."""

    async def go() -> None:
        kw.setdefault("speed", 0)
        sim = ExchangeSim([SAMPLE], port=0, **kw)
        port = await sim.start()
        try:
            await asyncio.wait_for(body(sim, port), 15)
        finally:
            await asyncio.wait_for(sim.stop(), 5)

    asyncio.run(go())


def wsc(port: int, path: str, **kw: Any) -> Any:
    """A real websockets client. max_queue=None: it keeps reading into its own buffer, so a
    close after a partial read is answered at once (a bounded client queue stops reading the
    socket, and the server's close frame would sit behind unread data until close_timeout)."""
    return connect(f"ws://127.0.0.1:{port}{path}", max_queue=None, close_timeout=2, **kw)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Blocking GET; returns (status, headers, body) for 2xx and error statuses alike."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def aget(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http_get, port, path, timeout)


async def recv_all(ws: ClientConnection, limit: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    with pytest.raises(ConnectionClosed) if limit is None else _nothing():
        while limit is None or len(out) < limit:
            out.append(await ws.recv(decode=False))
    return out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def depth_ids(frames: list[bytes]) -> list[tuple[int, int]]:
    out = []
    for f in frames:
        d = json.loads(f)
        d = d.get("data", d)
        if d.get("e") == "depthUpdate":
            out.append((d["U"], d["u"]))
    return out


# ---------------------------------------------------------------- streams


def test_combined_stream_replays_every_frame_byte_exact() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        async with wsc(port, ALL) as ws:
            got = await recv_all(ws)
            assert ws.close_code == 1001 and ws.close_reason == "end of recorded data"
        assert got == frames_of(DEPTH, TRADE, BOOKT)
        assert len(got) == 18_506
        assert sim.finished.is_set()
        # after the end of the data a new client is told so at once
        async with wsc(port, ALL) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001

    run_sim(body)


def test_raw_stream_sends_the_data_part_only() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        async with wsc(port, f"/ws/{TRADE}") as ws:
            got = await recv_all(ws)
        envelopes = frames_of(TRADE)
        assert len(got) == len(envelopes) == 3219
        prefix = b'{"stream":"%s","data":' % TRADE.encode()
        for raw, env in zip(got, envelopes, strict=True):
            assert env == prefix + raw + b"}"  # byte-exact inner object
            assert json.loads(raw)["e"] == "trade"

    run_sim(body)


def test_only_subscribed_streams_and_several_clients() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        async with (
            wsc(port, f"/stream?streams={DEPTH}") as a,
            wsc(port, f"/stream?streams={DEPTH}/{TRADE}") as b,
        ):
            got_a, got_b = await asyncio.gather(recv_all(a), recv_all(b))
        # a connected first, so the (speed 0) replay started with it: a sees everything
        assert got_a == frames_of(DEPTH)
        # b joined a moving market: it gets an unbroken tail of the stream, from where it was
        want_b = frames_of(DEPTH, TRADE)
        start = want_b.index(got_b[0])
        assert got_b == want_b[start:]
        assert {json.loads(f)["stream"] for f in got_b} == {DEPTH, TRADE}

    run_sim(body)


def test_ws_subscribe_requests() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        async with wsc(port, "/ws") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nope@x"], "id": 1}))
            err = json.loads(await ws.recv())
            assert err["id"] == 1 and err["error"]["code"] == 2 and "nope@x" in err["error"]["msg"]
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [TRADE], "id": 2}))
            assert json.loads(await ws.recv()) == {"result": None, "id": 2}
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
            first = json.loads(await ws.recv())
            # the listing may come after the first trades; skip those
            while "id" not in first:
                assert first["e"] == "trade"
                first = json.loads(await ws.recv())
            assert first == {"result": [TRADE], "id": 3}
            await ws.send("{not json")
            while "error" not in (msg := json.loads(await ws.recv())):
                assert msg["e"] == "trade"
            assert msg["error"]["code"] == 3

    run_sim(body)


def test_speed_and_live_clock() -> None:
    index = {r.payload: r.ts_ns for r in recorded() if r.kind == "ws"}
    t_first = recorded()[0].ts_ns

    async def body(sim: ExchangeSim, port: int) -> None:
        await asyncio.sleep(0.5)  # the market moves on without us: 0.5 s x 20 = ~10 s
        async with wsc(port, ALL) as ws:
            first = await ws.recv(decode=False)
            t0 = time.monotonic()
            last = first
            # read until 20 recorded seconds have gone by: ~1 s of wall time at speed 20
            while index[last] - index[first] < 20 * 10**9:
                last = await ws.recv(decode=False)
            wall = time.monotonic() - t0
        start_s = (index[first] - t_first) / 1e9
        assert 7.0 < start_s < 14.0, start_s  # joined the live stream, not its beginning
        assert 0.85 < wall < 1.4, wall

    run_sim(body, speed=20)


def test_server_sends_pings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="websockets.client")

    async def body(sim: ExchangeSim, port: int) -> None:
        # no subscription (and a replay that does not end meanwhile): only keepalive traffic
        async with wsc(port, "/ws", ping_interval=None) as ws:
            await asyncio.sleep(0.35)
            assert ws.state.name == "OPEN"

    run_sim(body, ping_interval=0.1, speed=1)
    pings = [r for r in caplog.records if "< PING" in r.getMessage()]
    assert len(pings) >= 2


# ---------------------------------------------------------------- REST


def test_rest_before_replay_serves_recorded_snapshot() -> None:
    snap = next(r for r in recorded() if r.kind == "rest")

    async def body(sim: ExchangeSim, port: int) -> None:
        # speed 0 and no client yet: the replay has not moved, the snapshot is "in the future"
        status, headers, raw = await aget(port, "/api/v3/depth?symbol=BTCUSDT&limit=1000")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert raw == snap.payload
        status, _, raw = await aget(port, "/api/v3/depth?symbol=BTCUSDT&limit=5")
        body_ = json.loads(raw)
        assert body_["lastUpdateId"] == 50093239218
        assert body_["bids"] == json.loads(snap.payload)["bids"][:5]
        assert len(body_["asks"]) == 5

    run_sim(body)


def test_rest_snapshot_chains_with_the_stream_and_matches_book_ticker() -> None:
    # bookTicker.u == book id gives an independent top-of-book oracle (SOURCES.md §4)
    tickers = {}
    for r in recorded():
        if r.stream == BOOKT:
            d = json.loads(r.payload)["data"]
            tickers[d["u"]] = d

    async def body(sim: ExchangeSim, port: int) -> None:
        checks = snaps = n = 0
        pending: list[int] = []  # snapshot ids still waiting for the event after them
        async with wsc(port, f"/stream?streams={DEPTH}") as ws:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:  # ~100 s of market at speed 40
                d = json.loads(await ws.recv())["data"]
                n += 1
                for L in list(pending):
                    if d["u"] > L:  # the first event the snapshot does not contain
                        assert d["U"] <= L + 1 <= d["u"], (L, d["U"], d["u"])
                        pending.remove(L)
                if n % 5:
                    continue
                status, _, raw = await aget(port, "/fapi/v1/depth?symbol=BTCUSDT")
                assert status == 200
                book = json.loads(raw)
                snaps += 1
                assert len(book["bids"]) == len(book["asks"]) == 100  # default limit
                bids = [Decimal(p) for p, _ in book["bids"]]
                asks = [Decimal(p) for p, _ in book["asks"]]
                assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
                assert bids[0] < asks[0]
                assert all(len(p.split(".")[1]) == 8 for p, _ in book["bids"])
                L = book["lastUpdateId"]
                # never older than what the stream already delivered
                assert L >= d["u"]
                pending.append(L)
                if L in tickers:
                    t = tickers[L]
                    assert book["bids"][0] == [t["b"], t["B"]]
                    assert book["asks"][0] == [t["a"], t["A"]]
                    checks += 1
            # a loaded client reads the stream behind the server (REST answers from its
            # current book): read on until every snapshot met the event after it
            t1 = time.monotonic()
            while pending and time.monotonic() - t1 < 20:
                d = json.loads(await ws.recv())["data"]
                for L in list(pending):
                    if d["u"] > L:
                        assert d["U"] <= L + 1 <= d["u"], (L, d["U"], d["u"])
                        pending.remove(L)
        assert n > 500 and snaps > 100
        assert pending == [], "a snapshot never chained with the stream"
        assert len(set(pending)) < snaps  # the snapshots moved with the stream
        assert checks >= 3, checks

    run_sim(body, speed=40)


def test_rest_errors_and_misc_endpoints() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        status, _, raw = await aget(port, "/api/v3/depth?symbol=ETHUSDT")
        assert status == 400 and json.loads(raw) == {"code": -1121, "msg": "Invalid symbol."}
        status, _, raw = await aget(port, "/api/v3/depth")
        assert status == 400 and json.loads(raw)["code"] == -1102
        status, _, raw = await aget(port, "/api/v3/depth?symbol=BTCUSDT&limit=abc")
        assert status == 400 and json.loads(raw)["code"] == -1100
        assert (await aget(port, "/api/v3/ping"))[::2] == (200, b"{}")
        status, _, raw = await aget(port, "/api/v3/time")
        assert status == 200 and json.loads(raw)["serverTime"] == recorded()[0].ts_ns // 10**6
        status, _, raw = await aget(port, "/api/v3/nothing")
        assert status == 404 and b"/api/v3/nothing" in raw
        # bad WS URLs: a clean HTTP error, no upgrade
        for path, code in [
            ("/nowhere", 404),
            ("/stream?streams=btcusdt@kline_1m", 400),
            ("/stream", 400),
            (f"/ws/{TRADE}/{DEPTH}", 400),
        ]:
            with pytest.raises(InvalidStatus) as ei:
                async with wsc(port, path):
                    pass
            assert ei.value.response.status_code == code, path
        assert sim.rest_requests == 0  # rejected requests did not count

    run_sim(body)


def test_exchange_info_lists_the_captures_symbols() -> None:
    def listed(raw: bytes) -> list[tuple[str, str]]:
        return [(s["symbol"], s["status"]) for s in json.loads(raw)["symbols"]]

    async def body(sim: ExchangeSim, port: int) -> None:
        for path in ("/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo"):
            status, _, raw = await aget(port, path)
            assert status == 200 and listed(raw) == [("BTCUSDT", "TRADING")]
        q = urllib.parse.quote('["BTCUSDT"]')
        status, _, raw = await aget(port, f"/api/v3/exchangeInfo?symbols={q}")
        assert status == 200 and listed(raw) == [("BTCUSDT", "TRADING")]
        # one unknown symbol fails the whole request, as on Binance
        q = urllib.parse.quote('["BTCUSDT","ETHUSDT"]')
        for query in (f"symbols={q}", "symbol=ETHUSDT"):
            status, _, raw = await aget(port, f"/api/v3/exchangeInfo?{query}")
            assert status == 400 and json.loads(raw) == {"code": -1121, "msg": "Invalid symbol."}
        status, _, raw = await aget(port, "/api/v3/exchangeInfo?symbols=BTCUSDT")
        assert status == 400 and json.loads(raw)["code"] == -1100
        assert sim.rest_requests == 0  # depth requests only

    run_sim(body)


def test_unknown_stream_handshake_is_a_400_with_a_binance_like_body() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        with pytest.raises(InvalidStatus) as ei:
            async with wsc(port, f"/stream?streams={TRADE}/btcusdt@depth"):
                pass
        resp = ei.value.response
        assert resp.status_code == 400
        err = json.loads(resp.body)
        assert set(err) == {"code", "msg"} and err["code"] < 0
        assert "btcusdt@depth" in err["msg"] and TRADE not in err["msg"].split(";")[0]

    run_sim(body)


# ---------------------------------------------------------------- faults


def test_parse_fault() -> None:
    assert parse_fault("drop:3") == Fault("drop", 3)
    assert parse_fault("rest:429:2") == Fault("rest", 2, 429)
    assert parse_fault("rest:timeout:1") == Fault("rest", 1, None)
    assert parse_fault("rest:403:2") == Fault("rest", 2, 403)
    assert parse_fault("ws:503:2") == Fault("ws", 2, 503)
    for bad in ["drop", "drop:0", "drop:x", "rest:429", "rest:200:1", "rest:nope:1", "boom:1",
                "ws:timeout:1", "ws:200:1", "ws:503"]:  # fmt: skip
        with pytest.raises(ValueError, match="bad fault"):
            parse_fault(bad)
    with pytest.raises(ValueError, match="bad fault"):
        ExchangeSim([SAMPLE], faults=["swap"])
    with pytest.raises(ValueError, match="speed"):
        ExchangeSim([SAMPLE], speed=-1)


def _depth_faulted(fault: str, n_frames: int = 8) -> list[tuple[int, int]]:
    got: list[bytes] = []

    async def body(sim: ExchangeSim, port: int) -> None:
        async with wsc(port, f"/ws/{DEPTH}") as ws:
            got.extend(await recv_all(ws, n_frames))

    run_sim(body, faults=[fault])
    return depth_ids(got)


def test_fault_drop_dup_swap() -> None:
    clean = depth_ids(frames_of(DEPTH))[:9]
    assert _depth_faulted("drop:3") == clean[:2] + clean[3:9]  # a sequence gap
    assert _depth_faulted("dup:3") == clean[:3] + clean[2:7]
    assert _depth_faulted("swap:3") == clean[:2] + [clean[3], clean[2]] + clean[4:8]
    # the chain checks a client does see each fault
    gap = _depth_faulted("drop:3")
    assert gap[2][0] != gap[1][1] + 1


def test_fault_close_and_malformed() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        async with wsc(port, ALL) as ws:
            got = await recv_all(ws)
            assert ws.close_code == 1001 and ws.close_reason == "fault close:10"
        want = frames_of(DEPTH, TRADE, BOOKT)[:10]
        assert len(got) == 11  # 10 frames + the extra malformed one
        assert got[:4] + got[5:] == want
        with pytest.raises(json.JSONDecodeError):
            json.loads(got[4])
        assert want[4].startswith(got[4])  # a truncated copy of frame 5
        # each connection counts from its own start
        async with wsc(port, ALL) as ws:
            assert len(await recv_all(ws)) == 11

    run_sim(body, faults=["close:10", "malformed:5"])


def test_fault_rest_codes() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        url = "/api/v3/depth?symbol=BTCUSDT&limit=10"
        for _ in range(2):
            status, headers, raw = await aget(port, url)
            assert status == 429 and headers["Retry-After"] == "7"
            assert json.loads(raw)["code"] == -1003
        status, headers, _ = await aget(port, url)
        assert status == 418 and headers["Retry-After"] == "7"
        status, headers, raw = await aget(port, url)
        assert status == 500 and "Retry-After" not in headers
        assert json.loads(raw)["code"] == -1001
        status, _, raw = await aget(port, url)
        assert status == 200 and len(json.loads(raw)["bids"]) == 10
        assert sim.rest_requests == 5

    run_sim(body, faults=["rest:429:2", "rest:418:1", "rest:500:1"], retry_after_s=7)


def test_fault_rest_403() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        url = "/api/v3/depth?symbol=BTCUSDT&limit=10"
        for _ in range(2):
            status, headers, raw = await aget(port, url)
            assert status == 403 and "Retry-After" not in headers
            assert json.loads(raw)["msg"].startswith("Forbidden")
        assert (await aget(port, url))[0] == 200

    run_sim(body, faults=["rest:403:2"])


def test_fault_ws_handshake() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        for code in (429, 503, 503):
            with pytest.raises(InvalidStatus) as ei:
                async with wsc(port, ALL):
                    pass
            resp = ei.value.response
            assert resp.status_code == code and "code" in json.loads(resp.body)
            assert (resp.headers.get("Retry-After") == "3") == (code == 429)
        async with wsc(port, ALL) as ws:
            assert len(await recv_all(ws, 5)) == 5

    run_sim(body, faults=["ws:429:1", "ws:503:2"], retry_after_s=3)


def test_fault_rest_timeout() -> None:
    async def body(sim: ExchangeSim, port: int) -> None:
        url = "/api/v3/depth?symbol=BTCUSDT&limit=10"
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            await aget(port, url, timeout=0.3)  # the client gives up first
        assert time.monotonic() - t0 < 1.0
        # a patient client sees the connection dropped without an answer after the hang
        t0 = time.monotonic()
        with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
            await aget(port, url, timeout=5)
        assert 0.5 <= time.monotonic() - t0 < 3
        status, _, _ = await aget(port, url)
        assert status == 200

    run_sim(body, faults=["rest:timeout:2"], rest_hang_s=0.8)


# ---------------------------------------------------------------- CLI


def test_cli_subprocess_serves_then_exits_at_end_of_data() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickbus.tools.exchange_sim", "--data", str(SAMPLE), "--speed", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])

        async def client() -> int:
            async with wsc(port, f"/ws/{TRADE}") as ws:
                return len(await recv_all(ws))

        assert asyncio.run(client()) == 3219
        assert proc.wait(timeout=10) == 0
        assert "end of data" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_cli_port_out_of_range_is_one_line(port: str) -> None:
    out = subprocess.run(
        tickbus_cmd("exchange-sim", "--data", str(SAMPLE), "--port", port),
        env=tickbus_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--port" in out.stderr, out.stderr


def test_cli_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--data", str(tmp_path / "missing.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--data", str(SAMPLE), "--fault", "drop:zero"]) == 2
    assert "bad fault" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a capture\n")
    assert main(["--data", str(bad)]) == 1
    assert "not a recognised capture format" in capsys.readouterr().err
