"""The ``binance_feed`` plugin: live Binance market data onto the bus.

One combined WebSocket stream for all configured symbols (``/stream?streams=...``):
diff depth, trades and book tickers are parsed into exact fixed-point messages and
published on ``md.depth.<SYMBOL>``, ``md.trade.<SYMBOL>`` and ``md.ticker.<SYMBOL>``. REST
depth snapshots are fetched when a book asks for one (``SnapshotRequest`` on
``md.resync.<SYMBOL>``) and published on ``md.depth.<SYMBOL>``: the book plugin runs
Binance's sync procedure, the feed does the I/O.

Connection care, as Binance documents it: WebSocket pings are answered (the ``websockets``
library does it) and our own pings detect a dead peer; a stale-feed watchdog reconnects
when nothing arrived for ``stale_after_s``; the connection is renewed before Binance's 24-hour
limit; a ``serverShutdown`` event triggers a reconnect; reconnects back off exponentially
with jitter; REST 429/418 answers are respected (``Retry-After``), other REST failures are
retried with backoff. Every connection change is published as ``FeedStatus`` on
``md.status.<SYMBOL>`` so the books invalidate across a disconnect. A malformed frame is
counted, logged once per kind with a sample, and skipped.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.error
import urllib.request
from typing import Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.schemas import FeedStatus, SnapshotRequest

from .parse import FrameError, FrameParser, topic_of, warmup

DEFAULT_URLS = {
    "spot": ("wss://stream.binance.com:9443", "https://api.binance.com", "/api/v3/depth"),
    "usdm": ("wss://fstream.binance.com", "https://fapi.binance.com", "/fapi/v1/depth"),
}


class FeedConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.binance_feed]``."""

    symbols: list[str]
    market: Literal["spot", "usdm"] = "spot"
    ws_url: str = ""
    """WebSocket base URL; default: Binance's for the market (a simulator: ws://127.0.0.1:P)."""
    rest_url: str = ""
    """REST base URL; default: Binance's for the market."""
    depth_interval: str = "100ms"
    """Diff-depth update speed: spot "100ms" or "1000ms"; USD-M "0ms"... "500ms"."""
    trades: bool = True
    tickers: bool = True
    snapshot_limit: int = 1000
    stale_after_s: float = 10.0
    max_connection_s: float = 23.5 * 3600
    """Renew the connection before Binance closes it at 24 hours."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    rest_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_frame_bytes: int = 16 * 1024 * 1024


class _Reconnect(Exception):
    """Leave the current connection and open a new one."""


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    base = min(cap, initial * 2**attempt)
    return base / 2 + random.uniform(0, base / 2)


def stream_url(
    ws_base: str, symbols: list[str], depth_interval: str, trades: bool, tickers: bool
) -> str:
    """Binance combined-stream URL: depth (and trades, book tickers) of every symbol."""
    streams = []
    suffix = "" if depth_interval == "1000ms" else f"@{depth_interval}"
    for s in symbols:
        low = s.lower()
        streams.append(f"{low}@depth{suffix}")
        if trades:
            streams.append(f"{low}@trade")
        if tickers:
            streams.append(f"{low}@bookTicker")
    return f"{ws_base.rstrip('/')}/stream?streams={'/'.join(streams)}"


def http_get(url: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Blocking GET (run in a worker thread): status, headers, body; never raises on a
    HTTP error status, only on network failures (OSError, TimeoutError)."""
    req = urllib.request.Request(url, headers={"User-Agent": "tickbus"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read() or b""


class Feed:
    """The connection, the parser, the snapshot fetches and their counters."""

    def __init__(self, ctx: PluginContext, cfg: FeedConfig) -> None:
        if not cfg.symbols:
            raise TickbusError("symbols must list at least one symbol")
        ws_default, rest_default, self.depth_path = DEFAULT_URLS[cfg.market]
        self.ctx = ctx
        self.cfg = cfg
        self.symbols = [s.upper() for s in cfg.symbols]
        self.ws_base = (cfg.ws_url or ws_default).rstrip("/")
        self.rest_base = (cfg.rest_url or rest_default).rstrip("/")
        self.parser = FrameParser()
        self.stats = {"frames": 0, "bad_frames": 0, "connects": 0, "disconnects": 0}
        self.stats |= {"snapshots": 0, "rest_errors": 0, "stale": 0, "renewals": 0}
        self.connected = False
        self.last_frame = time.monotonic()
        self._topics: dict[tuple[type, str], str] = {}
        self._fetching: set[str] = set()
        self._bad_kinds: set[str] = set()
        self._ws: ClientConnection | None = None
        self._close_reason = ""

    @property
    def url(self) -> str:
        """The combined-stream URL for every symbol and stream kind."""
        cfg = self.cfg
        return stream_url(self.ws_base, self.symbols, cfg.depth_interval, cfg.trades, cfg.tickers)

    # ------------------------------------------------------------------ stream

    async def run(self) -> None:
        """Connect, read, reconnect - until cancelled."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connection()
            except _Reconnect as why:
                self.ctx.log.warning("reconnecting: %s", why)
            except (OSError, TimeoutError, websockets.WebSocketException) as err:
                self.ctx.log.warning("connection to %s failed: %s", self.ws_base, err or type(err))
            finally:
                self._set_connected(False, "disconnected")
            if time.monotonic() - started > 60:
                attempt = 0  # it ran fine for a while: start the backoff over
            delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        cfg = self.cfg
        async with connect(
            self.url,
            compression=None,  # Binance does not compress; deflate would cost CPU per frame
            max_size=cfg.max_frame_bytes,
            max_queue=None,  # never drop frames on our side; the stale watchdog guards us
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_interval_s,
            open_timeout=cfg.rest_timeout_s,
            proxy=None,
        ) as ws:
            self._ws = ws
            self._close_reason = ""
            self.stats["connects"] += 1
            self.last_frame = time.monotonic()
            opened = self.last_frame
            self._set_connected(True, "connected")
            watchdog = asyncio.get_running_loop().create_task(self._watchdog(ws, opened))
            now_ns = self.ctx.clock.now_ns
            on_frame = self.on_frame
            try:
                while True:
                    frame = await ws.recv(decode=False)
                    self.last_frame = time.monotonic()
                    on_frame(frame, now_ns())
            except websockets.ConnectionClosed as closed:
                raise _Reconnect(self._close_reason or f"connection closed ({closed})") from None
            finally:
                watchdog.cancel()
                self._ws = None

    async def _watchdog(self, ws: ClientConnection, opened: float) -> None:
        """Close the connection when it went stale or reached the 24-hour limit."""
        cfg = self.cfg
        while True:
            await asyncio.sleep(min(1.0, cfg.stale_after_s / 4, cfg.max_connection_s / 4))
            now = time.monotonic()
            if now - self.last_frame > cfg.stale_after_s:
                self.stats["stale"] += 1
                self._close_reason = f"no message for {cfg.stale_after_s:g} s"
            elif now - opened > cfg.max_connection_s:
                self.stats["renewals"] += 1
                self._close_reason = "renewing the connection before the 24-hour limit"
            else:
                continue
            await ws.close()
            return

    def on_frame(self, frame: bytes, ts_ns: int) -> None:
        """Parse and publish one frame (the hot path)."""
        try:
            msg = self.parser.parse(frame, ts_ns)
        except FrameError as err:
            if b'"serverShutdown"' in frame[:200]:
                self.ctx.log.warning("Binance announced a server shutdown; reconnecting")
                if self._ws is not None:
                    self.ctx.spawn(self._ws.close(), name="close")
                return
            self._bad(str(err), frame)
            return
        self.stats["frames"] += 1
        key = (type(msg), msg.symbol)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = topic_of(msg)
        self.ctx.publish(topic, msg)

    def _bad(self, why: str, sample: bytes) -> None:
        self.stats["bad_frames"] += 1
        kind = why.split(":")[0][:60]
        if kind not in self._bad_kinds:
            self._bad_kinds.add(kind)
            self.ctx.log.warning("skipped a bad frame (%s); sample %r", why[:200], sample[:120])

    def _set_connected(self, up: bool, reason: str) -> None:
        if up == self.connected:
            return
        self.connected = up
        if not up:
            self.stats["disconnects"] += 1
        now = self.ctx.clock.now_ns()
        for s in self.symbols:
            self.ctx.publish(f"md.status.{s}", FeedStatus(s, up, reason, now))

    # ------------------------------------------------------------------ snapshots

    def on_resync(self, req: SnapshotRequest) -> None:
        """A book needs a snapshot: fetch it (once at a time per symbol)."""
        if req.symbol in self.symbols and req.symbol not in self._fetching:
            self._fetching.add(req.symbol)
            self.ctx.spawn(self._fetch(req.symbol), name=f"snapshot-{req.symbol}")

    async def _fetch(self, symbol: str) -> None:
        cfg = self.cfg
        url = f"{self.rest_base}{self.depth_path}?symbol={symbol}&limit={cfg.snapshot_limit}"
        attempt = 0
        try:
            while True:
                delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s)
                attempt += 1
                try:
                    status, headers, body = await asyncio.to_thread(
                        http_get, url, cfg.rest_timeout_s
                    )
                except (OSError, TimeoutError) as err:
                    self.stats["rest_errors"] += 1
                    self.ctx.log.warning("%s snapshot: %s; retrying in %.1f s", symbol, err, delay)
                    await asyncio.sleep(delay)
                    continue
                if status == 200:
                    try:
                        snap = self.parser.parse_snapshot(body, symbol, self.ctx.clock.now_ns())
                    except FrameError as err:
                        self._bad(f"snapshot: {err}", body)
                        await asyncio.sleep(delay)
                        continue
                    self.stats["snapshots"] += 1
                    self.ctx.publish(f"md.depth.{symbol}", snap)
                    return
                self.stats["rest_errors"] += 1
                if status in (429, 418):  # rate limited / IP banned: Binance says back off
                    wait = max(delay, _retry_after(headers))
                    self.ctx.log.warning(
                        "%s snapshot: HTTP %d (rate limit); waiting %.1f s", symbol, status, wait
                    )
                    await asyncio.sleep(wait)
                elif 400 <= status < 500:
                    self.ctx.log.error(
                        "%s snapshot: HTTP %d %r; not retrying", symbol, status, body[:200]
                    )
                    return
                else:
                    self.ctx.log.warning(
                        "%s snapshot: HTTP %d; retrying in %.1f s", symbol, status, delay
                    )
                    await asyncio.sleep(delay)
        finally:
            self._fetching.discard(symbol)


def _retry_after(headers: dict[str, str]) -> float:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return float(v)
            except ValueError:
                return 0.0
    return 0.0


@hookimpl
def tickbus_config_type() -> type[FeedConfig]:
    return FeedConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Feed:
    warmup()  # compile (or load) the numba kernels now, not on the first frame
    feed = Feed(ctx, ctx.config)
    ctx.subscribe("md.resync.", feed.on_resync)
    return feed


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.spawn(ctx.component.run(), name="binance-feed")


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    ctx.component.ctx.log.info("feed stats: %s", ctx.component.stats)
