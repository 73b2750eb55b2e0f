"""A Binance-compatible market-data server on localhost, replaying recorded captures.

It speaks enough of Binance's public market-data API for a feed handler to run unchanged against
it: WebSocket combined streams (``/stream?streams=a/b``) and raw streams (``/ws/<stream>``) with
the recorded frames sent byte-for-byte, ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS``
requests, and REST ``/api/v3/depth`` / ``/fapi/v1/depth`` / ``/dapi/v1/depth`` snapshots that are
consistent with the stream position (a book is rebuilt from the recorded snapshot plus the depth
diffs as they go out; a paced replay answers a request made before the recorded snapshot's
time at that time, with the recorded body), ``exchangeInfo`` listing the capture's symbols
(``symbol=``/``symbols=`` filters answered as Binance does: 400 ``-1121 Invalid symbol.`` if
one is not listed), plus ``ping`` and ``time``. A WebSocket handshake for a stream the capture
does not have is refused with HTTP 400 and a Binance-like JSON body naming it. Faults (gaps,
duplicates, reordering, dropped connections, malformed frames, REST errors) can be injected to
test a client's recovery paths.

The replay is a live market: the clock starts when the server starts and every client sees the
stream from the current position on. ``--speed X`` replays X times faster than recorded;
``--speed 0`` replays as fast as the slowest connected client reads, and pauses while no client
is connected (so a test sees the capture from its first frame). ``--wait`` starts a paced replay
when the first client connects instead of at start-up: a client that takes a while to start
still sees the capture from its first frame, at the recorded pace (how a live run is compared
with a backtest of the same capture).

    tickbus exchange-sim --data plugins/binance/data/btcusdt_spot_20240808_sample.gz \\
        --port 9443 --speed 1 [--wait] --fault drop:100 --fault rest:429:1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import http
import logging
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tickbus.plugins.binance.capture import CaptureError, read_capture

__all__ = ["ExchangeSim", "Fault", "build_parser", "main", "parse_fault", "run"]

log = logging.getLogger("tickbus.exchange_sim")

FaultKind = Literal["drop", "dup", "swap", "close", "malformed", "rest", "ws"]
_DEPTH_PATHS = frozenset({"/api/v3/depth", "/fapi/v1/depth", "/dapi/v1/depth"})
_PING_PATHS = frozenset({"/api/v3/ping", "/fapi/v1/ping", "/dapi/v1/ping"})
_TIME_PATHS = frozenset({"/api/v3/time", "/fapi/v1/time", "/dapi/v1/time"})
_INFO_PATHS = frozenset({"/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"})
_MAX_LIMIT = 5000  # spot caps larger limits at 5000 (futures at 1000; one cap is enough here)
_DEFAULT_LIMIT = 100
# Backlog bounds per client: at speed 0 the replay waits above HIGH (paced by the slowest
# reader); at real speed a client this far behind is disconnected, as Binance does.
_BACKLOG_HIGH = 256
_BACKLOG_LOW = 64
_BACKLOG_MAX = 100_000


# ------------------------------------------------------------------------------------ faults


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault.

    ``drop``/``dup``/``swap`` act on the ``n``-th depth event of each connection (1-based;
    ``swap`` exchanges events n and n+1); ``close`` closes each connection after its ``n``-th
    frame; ``malformed`` sends a truncated frame before frame ``n``; ``rest`` makes the first
    ``n`` REST depth requests fail with HTTP ``code`` (``None`` = hang, then drop the connection);
    ``ws`` refuses the first ``n`` WebSocket handshakes with HTTP ``code``.
    """

    kind: FaultKind
    n: int
    code: int | None = None


def parse_fault(text: str) -> Fault:
    """Parse ``drop:N``, ``dup:N``, ``swap:N``, ``close:N``, ``malformed:N``, ``rest:CODE:K``
    or ``ws:CODE:K``."""
    parts = text.strip().split(":")
    kind = parts[0]
    usage = (
        "expected drop:N, dup:N, swap:N, close:N, malformed:N, rest:CODE:K or ws:CODE:K "
        "(CODE = 429, 418, 403, 500, another 4xx/5xx, or timeout for rest)"
    )
    if kind in ("drop", "dup", "swap", "close", "malformed"):
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"bad fault {text!r}: {usage}")
        return Fault(kind, int(parts[1]))  # type: ignore[arg-type]
    if kind in ("rest", "ws"):
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"bad fault {text!r}: {usage}")
        if parts[1] == "timeout" and kind == "rest":
            return Fault("rest", int(parts[2]), None)
        if not parts[1].isdigit() or not 400 <= int(parts[1]) <= 599:
            raise ValueError(f"bad fault {text!r}: {usage}")
        return Fault(kind, int(parts[2]), int(parts[1]))  # type: ignore[arg-type]
    raise ValueError(f"bad fault {text!r}: {usage}")


# ------------------------------------------------------------------------------------ data


class _Env(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Kind(msgspec.Struct):
    e: str = ""


class _Depth(msgspec.Struct):
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    E: int | None = None
    T: int | None = None


class _Snapshot(msgspec.Struct):
    lastUpdateId: int  # Binance's field name, kept for direct decoding
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    E: int | None = None
    T: int | None = None
    symbol: str | None = None
    pair: str | None = None


@dataclass(slots=True)
class _Frame:
    """A recorded WS frame: both wire forms (combined envelope / raw data) precomputed."""

    ts_ns: int
    stream: str
    symbol: str | None
    envelope: str
    data: str
    depth: bool


@dataclass(slots=True)
class _SnapItem:
    """A recorded REST depth snapshot in the timeline."""

    ts_ns: int
    symbol: str


class _Book:
    """A plain price -> (price text, qty text) book; exact (Decimal keys), not fast."""

    def __init__(self, snap: _Snapshot) -> None:
        self.last_id = snap.lastUpdateId
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.extra_E, self.extra_T = snap.E, snap.T
        self._symbol, self._pair = snap.symbol, snap.pair
        self._set(self.bids, snap.bids)
        self._set(self.asks, snap.asks)

    @staticmethod
    def _set(side: dict[Decimal, tuple[str, str]], levels: Iterable[tuple[str, str]]) -> None:
        for p, q in levels:
            key = Decimal(p)
            if Decimal(q) == 0:  # absolute qty 0 deletes; unknown levels are fine to delete
                side.pop(key, None)
            else:
                side[key] = (p, q)

    def apply(self, ev: _Depth) -> None:
        """Apply a diff unless it is already contained in the book (``u <= last id``)."""
        if ev.u <= self.last_id:
            return
        self._set(self.bids, ev.b)
        self._set(self.asks, ev.a)
        self.last_id = ev.u
        if self.extra_E is not None and ev.E is not None:
            self.extra_E, self.extra_T = ev.E, ev.T if ev.T is not None else self.extra_T

    def render(self, limit: int) -> bytes:
        """The REST body for the top ``limit`` levels, field order as Binance sends it."""
        body: dict[str, Any] = {"lastUpdateId": self.last_id}
        if self.extra_E is not None:
            body["E"], body["T"] = self.extra_E, self.extra_T
        if self._symbol is not None:
            body["symbol"], body["pair"] = self._symbol, self._pair
        body["bids"] = [list(self.bids[k]) for k in heapq.nlargest(limit, self.bids)]
        body["asks"] = [list(self.asks[k]) for k in heapq.nsmallest(limit, self.asks)]
        return msgspec.json.encode(body)


@dataclass(slots=True)
class _SymbolState:
    recorded: bytes  # the first recorded snapshot body for this symbol, as received
    snap: _Snapshot
    book: _Book | None = None  # None until the replay passes the recorded snapshot
    early: list[_Depth] = field(default_factory=list)  # diffs sent before the snapshot
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # set with ``book``


def _load(paths: Sequence[str | Path]) -> tuple[list[_Frame | _SnapItem], dict[str, bytes]]:
    """Read the captures into a timeline; returns it and the first snapshot body per symbol."""
    timeline: list[_Frame | _SnapItem] = []
    snaps: dict[str, bytes] = {}
    env_dec = msgspec.json.Decoder(_Env)
    kind_dec = msgspec.json.Decoder(_Kind)
    for rec in read_capture(*paths):
        if rec.kind == "ws":
            assert rec.stream is not None
            env = env_dec.decode(rec.payload)
            raw = bytes(env.data)  # the exact bytes of the "data" value
            is_depth = raw.startswith(b"{") and kind_dec.decode(raw).e == "depthUpdate"
            timeline.append(
                _Frame(
                    rec.ts_ns,
                    rec.stream,
                    rec.symbol,
                    rec.payload.decode("utf-8"),
                    raw.decode("utf-8"),
                    is_depth,
                )
            )
        elif rec.symbol is not None and b'"lastUpdateId"' in rec.payload:
            # only depth snapshots; exchangeInfo and the like are not part of the replay
            if rec.symbol not in snaps:
                snaps[rec.symbol] = rec.payload
                timeline.append(_SnapItem(rec.ts_ns, rec.symbol))
    if not any(isinstance(i, _Frame) for i in timeline):
        raise CaptureError(f"no WebSocket frames in {', '.join(map(str, paths))}")
    return timeline, snaps


# ------------------------------------------------------------------------------------ server


@dataclass(eq=False, slots=True)
class _Client:
    ws: ServerConnection
    raw: bool
    streams: set[str]
    queue: asyncio.Queue[_Frame | None] = field(default_factory=asyncio.Queue)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    frames: int = 0
    depth: int = 0
    held: str | None = None
    closed: bool = False


def _json(status: int, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> Response:
    headers = Headers(
        [
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _error(status: int, code: int, msg: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return _json(status, msgspec.json.encode({"code": code, "msg": msg}), extra)


class ExchangeSim:
    """The replay server. ``await start()`` returns the bound port; ``await stop()`` ends it.

    ``data``: capture files (read with :func:`plugins.binance.capture.read_capture`, merged in
    time order). ``speed``: replay speed factor (0 = as fast as clients read). ``faults``:
    :class:`Fault` objects or their text forms. ``rest_hang_s``: how long a ``rest:timeout``
    request hangs before its connection is dropped. ``retry_after_s``: ``Retry-After`` of
    429/418 answers. ``ping_interval``/``ping_timeout``: WebSocket keepalive (Binance: 20 s/60 s).
    """

    def __init__(
        self,
        data: Sequence[str | Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        faults: Iterable[Fault | str] = (),
        rest_hang_s: float = 30.0,
        retry_after_s: int = 1,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        wait: bool = False,
    ) -> None:
        if not data:
            raise ValueError("ExchangeSim needs at least one capture file")
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.data = [Path(p) for p in data]
        self.host, self.port, self.speed = host, port, speed
        self.faults = tuple(f if isinstance(f, Fault) else parse_fault(f) for f in faults)
        self.rest_hang_s, self.retry_after_s = rest_hang_s, retry_after_s
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.wait = wait

        by = {k: frozenset(f.n for f in self.faults if f.kind == k) for k in get_args(FaultKind)}
        self._drop, self._dup, self._swap = by["drop"], by["dup"], by["swap"]
        self._close_at, self._malformed = by["close"], by["malformed"]
        # REST faults are used up in the order given, counted over all depth requests
        self._rest_faults = [[f.code, f.n] for f in self.faults if f.kind == "rest"]
        self._ws_faults = [[f.code, f.n] for f in self.faults if f.kind == "ws"]

        self.rest_requests = 0  # REST depth requests served (tests look at it)
        self._server: Server | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._timeline: list[_Frame | _SnapItem] = []
        self._symbols: dict[str, _SymbolState] = {}
        self._streams: frozenset[str] = frozenset()
        self._clients: set[_Client] = set()
        self._has_clients = asyncio.Event()
        self._stopping = asyncio.Event()
        self.finished = asyncio.Event()  # set when the whole capture has been replayed
        self._t0 = 0.0
        self._paced = False  # the paced clock runs (with ``wait``: from the first client on)
        self._pos_ts_ns = 0

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Load the data, bind the server and start the replay clock; return the port."""
        if self._server is not None:
            raise RuntimeError("ExchangeSim already started")
        # loading parses every line; keep the event loop free meanwhile
        self._timeline, snaps = await asyncio.to_thread(_load, self.data)
        self._symbols = {
            s: _SymbolState(body, msgspec.json.decode(body, type=_Snapshot))
            for s, body in snaps.items()
        }
        self._streams = frozenset(i.stream for i in self._timeline if isinstance(i, _Frame))
        self._known_symbols = frozenset(
            i.symbol for i in self._timeline if isinstance(i, _Frame) and i.symbol
        ) | frozenset(self._symbols)
        self._pos_ts_ns = self._timeline[0].ts_ns
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            # a hanging REST fault must be ours to end, not the handshake timeout's
            open_timeout=max(10.0, self.rest_hang_s + 5.0),
            compression=None,  # Binance streams are not per-message compressed
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = asyncio.get_running_loop().time()
        self._clock_task = asyncio.create_task(self._run_clock(), name="exchange-sim-clock")
        log.info("exchange-sim on %s:%d, %d records", self.host, self.port, len(self._timeline))
        return self.port

    async def stop(self) -> None:
        """Stop replaying, close every connection (1001) and the listening socket."""
        self._stopping.set()
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
            self._clock_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ExchangeSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def streams(self) -> frozenset[str]:
        """The stream names available in the loaded data."""
        return self._streams

    def replay_time_ns(self) -> int:
        """The replay clock: recorded local time of the current position (ns)."""
        if self._paced and not self.finished.is_set():
            now = asyncio.get_running_loop().time()
            start = self._timeline[0].ts_ns
            return max(self._pos_ts_ns, start + int((now - self._t0) * self.speed * 1e9))
        return self._pos_ts_ns

    # -------------------------------------------------------------- replay clock

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        ts0 = self._timeline[0].ts_ns
        depth_dec = msgspec.json.Decoder(_Depth)
        if self.wait and self.speed > 0:
            await self._has_clients.wait()
            self._t0 = loop.time()  # the recorded pace counts from the first connection
        self._paced = self.speed > 0
        for i, item in enumerate(self._timeline):
            if self.speed > 0:
                delay = self._t0 + (item.ts_ns - ts0) / 1e9 / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await self._has_clients.wait()
                if i % 512 == 0:
                    await asyncio.sleep(0)  # let REST requests and handshakes in
            self._pos_ts_ns = item.ts_ns
            if isinstance(item, _SnapItem):
                self._reach_snapshot(self._symbols[item.symbol])
                continue
            if item.depth and item.symbol in self._symbols:
                st = self._symbols[item.symbol]
                ev = depth_dec.decode(item.data)
                if st.book is not None:
                    st.book.apply(ev)
                else:
                    st.early.append(ev)
            await self._broadcast(item)
        self.finished.set()
        for c in list(self._clients):
            c.queue.put_nowait(None)

    @staticmethod
    def _reach_snapshot(st: _SymbolState) -> None:
        # the recorded snapshot is taken "now": start the book from it and apply the diffs
        # already sent that it does not contain (u > lastUpdateId), as a client would
        book = _Book(st.snap)
        for ev in st.early:
            book.apply(ev)
        st.book, st.early = book, []
        st.reached.set()

    async def _broadcast(self, frame: _Frame) -> None:
        for c in list(self._clients):
            if c.closed or frame.stream not in c.streams:
                continue
            c.queue.put_nowait(frame)
            size = c.queue.qsize()
            if self.speed == 0:
                if size >= _BACKLOG_HIGH:
                    c.drained.clear()
                    await c.drained.wait()  # set by the sender, or on disconnect
            elif size > _BACKLOG_MAX:
                c.closed = True
                c.queue.put_nowait(None)
                asyncio.create_task(c.ws.close(1008, "slow consumer"))

    # -------------------------------------------------------------- WebSocket

    def _ws_subscription(self, path: str, query: str) -> tuple[bool, list[str]]:
        """(raw?, streams) of a WS URL; ValueError with a message for a bad one."""
        if path == "/stream":
            streams = [s for s in "/".join(parse_qs(query).get("streams", [])).split("/") if s]
            raw = False
        elif path == "/ws" or path == "/ws/":
            return True, []  # streams come later via SUBSCRIBE
        elif path.startswith("/ws/"):
            streams = [path[4:]]
            if "/" in streams[0]:
                raise ValueError(
                    "a raw stream URL takes one stream (/ws/<stream>); "
                    "use /stream?streams=a/b for several"
                )
            raw = True
        else:
            raise LookupError(path)
        if not streams:
            raise ValueError("no stream given: use /stream?streams=<a>/<b>")
        self._check_streams(streams)
        return raw, streams

    def _check_streams(self, streams: Iterable[str]) -> None:
        unknown = [s for s in streams if s not in self._streams]
        if unknown:
            raise ValueError(
                f"unknown stream(s) {', '.join(unknown)}; this replay has "
                f"{', '.join(sorted(self._streams))}"
            )

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        raw, streams = self._ws_subscription(url.path, url.query)  # validated before accept
        if self.finished.is_set():
            await ws.close(1001, "end of recorded data")
            return
        client = _Client(ws, raw, set(streams))
        client.drained.set()
        self._clients.add(client)
        self._has_clients.set()
        # the reader ends when the peer goes away, the sender when the replay (or a fault)
        # closes the connection; either one ends the connection
        tasks = {
            asyncio.create_task(self._send_loop(client)),
            asyncio.create_task(self._serve_requests(client)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            client.closed = True
            client.drained.set()  # never leave the clock waiting on a gone client
            self._clients.discard(client)
            if not self._clients:
                self._has_clients.clear()
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, Exception) and not isinstance(r, ConnectionClosed):
                    log.error("exchange-sim connection failed: %r", r)

    async def _send_loop(self, c: _Client) -> None:
        ws = c.ws
        while True:
            frame = await c.queue.get()
            if frame is None:
                if not c.closed or self.finished.is_set():
                    await ws.close(1001, "end of recorded data")
                return
            if c.queue.qsize() < _BACKLOG_LOW:
                c.drained.set()
            c.frames += 1
            text = frame.data if c.raw else frame.envelope
            if c.frames in self._malformed:
                await ws.send(text[: len(text) // 2])  # truncated JSON, in addition
            if frame.depth:
                c.depth += 1
                await self._send_depth(c, text)
            else:
                await ws.send(text)
            if c.frames in self._close_at:
                await ws.close(1001, f"fault close:{c.frames}")
                return

    async def _send_depth(self, c: _Client, text: str) -> None:
        d, out = c.depth, []
        if d in self._swap:
            if c.held is not None:
                out.append(c.held)
            c.held = text  # goes out after the next depth event
        elif d not in self._drop:
            out.append(text)
            if d in self._dup:
                out.append(text)
        if c.held is not None and d - 1 in self._swap and d not in self._swap:
            out.append(c.held)
            c.held = None
        for t in out:
            await c.ws.send(t)

    async def _serve_requests(self, c: _Client) -> None:
        """Answer Binance WS API requests: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS."""
        with contextlib.suppress(ConnectionClosed):
            async for msg in c.ws:
                await c.ws.send(self._answer(c, msg))

    def _answer(self, c: _Client, msg: str | bytes) -> str:
        try:
            req = msgspec.json.decode(msg)
        except msgspec.DecodeError:
            return '{"error":{"code":3,"msg":"Invalid JSON"}}'
        if not isinstance(req, dict):
            return '{"error":{"code":2,"msg":"Invalid request: not a JSON object"}}'
        rid = req.get("id")
        method, params = req.get("method"), req.get("params", [])

        def err(code: int, text: str) -> str:
            return msgspec.json.encode({"error": {"code": code, "msg": text}, "id": rid}).decode()

        if method == "LIST_SUBSCRIPTIONS":
            return msgspec.json.encode({"result": sorted(c.streams), "id": rid}).decode()
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return err(2, f"Invalid request: unknown method {method!r}")
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return err(1, "Invalid value type: params must be a list of stream names")
        if method == "SUBSCRIBE":
            try:
                self._check_streams(params)
            except ValueError as exc:
                return err(2, f"Invalid request: {exc}")
            c.streams.update(params)
        else:
            c.streams.difference_update(params)
        return msgspec.json.encode({"result": None, "id": rid}).decode()

    # -------------------------------------------------------------- HTTP

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        try:
            self._ws_subscription(path, url.query)
        except ValueError as exc:
            return _error(400, -1100, str(exc))
        except LookupError:
            pass
        else:  # a WebSocket URL: go on with the handshake, unless a fault refuses it
            fault = next((f for f in self._ws_faults if f[1] > 0), None)
            if fault is None:
                return None
            fault[1] -= 1
            assert fault[0] is not None
            return self._fault_response(fault[0])
        if path in _PING_PATHS:
            return _json(200, b"{}")
        if path in _TIME_PATHS:
            return _json(200, b'{"serverTime":%d}' % (self.replay_time_ns() // 1_000_000))
        if path in _DEPTH_PATHS:
            return await self._rest_depth(conn, parse_qs(url.query))
        if path in _INFO_PATHS:
            return self._exchange_info(parse_qs(url.query))
        return _error(404, -1, f"exchange-sim: no such endpoint {path}")

    def _fault_response(self, code: int) -> Response:
        """The answer of an injected ``rest``/``ws`` fault: Binance's body for the status."""
        retry = [("Retry-After", str(self.retry_after_s))] if code in (418, 429) else []
        msgs = {
            429: (-1003, "Too many requests; current limit exceeded (exchange-sim fault)."),
            418: (-1003, "Way too much request weight used; IP banned (exchange-sim fault)."),
            403: (-1, "Forbidden: blocked by a web application firewall (exchange-sim fault)."),
        }
        c, m = msgs.get(code, (-1001, "Internal error; unable to process your request."))
        return _error(code, c, m, retry)

    def _exchange_info(self, q: dict[str, list[str]]) -> Response:
        """The capture's symbols, all TRADING; ``symbol=X`` or ``symbols=["X","Y"]`` filter
        them, and one that is not listed fails the whole request, as on Binance."""
        wanted: list[str] | None = None
        if "symbol" in q:
            wanted = q["symbol"][:1]
        elif "symbols" in q:
            try:
                wanted = msgspec.json.decode(q["symbols"][0], type=list[str])
            except msgspec.DecodeError:
                msg = "Illegal characters found in parameter 'symbols': not a JSON array."
                return _error(400, -1100, msg)
        if wanted is not None and any(s not in self._known_symbols for s in wanted):
            return _error(400, -1121, "Invalid symbol.")
        names = sorted(self._known_symbols) if wanted is None else wanted
        body = {
            "timezone": "UTC",
            "serverTime": self.replay_time_ns() // 1_000_000,
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [{"symbol": s, "status": "TRADING"} for s in names],
        }
        return _json(200, msgspec.json.encode(body))

    async def _rest_depth(self, conn: ServerConnection, q: dict[str, list[str]]) -> Response:
        symbol = q.get("symbol", [""])[0]
        if not symbol:
            return _error(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        if symbol not in self._known_symbols:
            return _error(400, -1121, "Invalid symbol.")
        limit_s = q.get("limit", [str(_DEFAULT_LIMIT)])[0]
        if not limit_s.isdigit() or int(limit_s) < 1:
            return _error(
                400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1'."
            )
        limit = min(int(limit_s), _MAX_LIMIT)

        self.rest_requests += 1
        fault = next((f for f in self._rest_faults if f[1] > 0), None)
        if fault is not None:
            fault[1] -= 1
            code = fault[0]
            if code is None:  # hang past the client's timeout, then drop the connection
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.rest_hang_s)
                conn.transport.abort()
                return _error(503, -1001, "timeout")  # never delivered: the socket is gone
            return self._fault_response(code)

        st = self._symbols.get(symbol)
        if st is None:
            return _error(503, -1001, f"exchange-sim: no recorded depth snapshot for {symbol}")
        held = st.book is None and self.speed > 0
        if held:
            # A paced replay has no book before the recorded snapshot's time (the recorded
            # one, served early, would hold updates the stream has not sent yet): answer when
            # the replay reaches it, with the recorded body - what the recorder got then.
            stopping = asyncio.ensure_future(self._stopping.wait())
            reached = asyncio.ensure_future(st.reached.wait())
            await asyncio.wait((stopping, reached), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            reached.cancel()
            if self._stopping.is_set():
                return _error(503, -1001, "exchange-sim: stopping")
        if st.book is None or held:
            # before the recorded snapshot's time (as fast as clients read: served at once),
            # or held until it: the recorded body
            if limit >= max(len(st.snap.bids), len(st.snap.asks)):
                return _json(200, st.recorded)
            body = msgspec.json.decode(st.recorded)
            body["bids"], body["asks"] = body["bids"][:limit], body["asks"][:limit]
            return _json(200, msgspec.json.encode(body))
        return _json(200, st.book.render(limit))


# ------------------------------------------------------------------------------------ CLI


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Add the exchange-sim options to ``parser`` (used by ``tickbus exchange-sim`` too)."""
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="capture file (repeat to merge several, e.g. two consecutive days)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay speed factor (default 1 = real time; 0 = as fast as clients read)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="start a paced replay when the first client connects (default: at once)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault: drop:N dup:N swap:N close:N malformed:N rest:CODE:K ws:CODE:K "
        "(N counted per connection; CODE 429/418/403/500, any 4xx/5xx, or timeout for rest); "
        "repeatable",
    )
    parser.add_argument(
        "--rest-hang", type=float, default=30.0, help="seconds a rest:timeout request hangs"
    )
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="server ping interval (s), 0 = off"
    )


def run(args: argparse.Namespace) -> int:
    """Run the simulator from parsed arguments until the data ends or SIGINT/SIGTERM."""
    try:
        faults = [parse_fault(f) for f in args.fault]
        if args.speed < 0:
            raise ValueError(f"--speed must be >= 0, got {args.speed}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be 0-65535 (0: any free port), got {args.port}")
        for d in args.data:
            if not Path(d).is_file():
                raise ValueError(f"--data {d}: no such file")
    except ValueError as exc:
        print(f"exchange-sim: {exc}", file=sys.stderr)
        return 2

    async def serve_until_done() -> int:
        sim = ExchangeSim(
            args.data,
            host=args.host,
            port=args.port,
            speed=args.speed,
            faults=faults,
            rest_hang_s=args.rest_hang,
            ping_interval=args.ping_interval or None,
            wait=args.wait,
        )
        try:
            port = await sim.start()
        except (CaptureError, OSError) as exc:
            print(f"exchange-sim: {exc}", file=sys.stderr)
            return 1
        print(
            f"exchange-sim: listening on ws://{args.host}:{port} (REST http://{args.host}:{port})"
            f" streams={','.join(sorted(sim.streams))} speed={args.speed}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(sim.finished.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        await sim.stop()
        print("exchange-sim: " + ("stopped" if stop.is_set() else "end of data"), flush=True)
        return 0

    return asyncio.run(serve_until_done())


def main(argv: list[str] | None = None) -> int:
    """``python -m tickbus.tools.exchange_sim`` entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="exchange-sim", description="Binance-compatible market-data replay server"
    )
    build_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
