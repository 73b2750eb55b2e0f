"""The ``binance_feed`` plugin: live Binance market data onto the bus.

One combined WebSocket stream for all configured symbols (``/stream?streams=...``):
diff depth, trades and book tickers are parsed into exact fixed-point messages and
published on ``md.depth.<SYMBOL>``, ``md.trade.<SYMBOL>`` and ``md.ticker.<SYMBOL>``. REST
depth snapshots are fetched when a book asks for one (``SnapshotRequest`` on
``md.resync.<SYMBOL>``) and published on ``md.depth.<SYMBOL>``: the book plugin runs
Binance's sync procedure, the feed does the I/O.

At set-up the symbols are checked against the venue's ``exchangeInfo``: one it does not list
stops the start (a typo would otherwise be a silent, empty stream); when exchangeInfo cannot
be reached the feed warns and goes on.

Connection care, as Binance documents it: WebSocket pings are answered (the ``websockets``
library does it) and our own pings detect a dead peer; a stale-feed watchdog reconnects
when nothing arrived for ``stale_after_s``; the connection is renewed before Binance's 24-hour
limit; a ``serverShutdown`` event triggers a reconnect; reconnects back off exponentially
with jitter, for ever (any error, even a bug of ours, costs a reconnect, never the feed). A
handshake the server rejects with a 4xx status (other than 429/418) is not transient (an
unknown stream, a bad URL): the process stops with that status and the server's reason.
Every REST snapshot failure (network, any HTTP status, a bad body) is logged with its status
and a sample of the body and retried with backoff; ``Retry-After`` is honoured up to
``retry_after_max_s``. Every connection change is published as ``FeedStatus`` on
``md.status.<SYMBOL>`` so the books invalidate across a disconnect. A malformed frame, and a
frame of a symbol that is not configured, is counted, logged once per kind with a sample,
and skipped.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.schemas import FeedStatus, SnapshotRequest

from .capture import check_symbols
from .parse import FrameError, FrameParser, topic_of, warmup

DEFAULT_URLS = {
    "spot": ("wss://stream.binance.com:9443", "https://api.binance.com", "/api/v3/depth"),
    "usdm": ("wss://fstream.binance.com", "https://fapi.binance.com", "/fapi/v1/depth"),
}
EXCHANGE_INFO = {"spot": "/api/v3/exchangeInfo", "usdm": "/fapi/v1/exchangeInfo"}
_BODY_SAMPLE = 200  # bytes of a server's answer quoted in a log line or an error
_MAX_KINDS = 64  # kinds of bad input logged; input cannot grow the set (or the log) further


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
    retry_after_max_s: float = 600.0
    """Longest wait a ``Retry-After`` answer (429/418, or any other status that sends one)
    imposes before the next try; a longer one (an IP ban of hours) is retried this often."""
    rest_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    max_frame_bytes: int = 16 * 1024 * 1024


class _Reconnect(Exception):
    """Leave the current connection and open a new one."""


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped. The
    exponent is capped too, so attempt 10**6 (a week-long outage) is just ``cap``."""
    base = min(cap, initial * 2.0 ** min(attempt, 64))
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


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds of a ``Retry-After`` header (0 when absent or not a number of seconds)."""
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return 0.0
    return 0.0


def handshake_rejection(err: InvalidStatus) -> tuple[int, str, float]:
    """A rejected WebSocket handshake as (HTTP status, "HTTP 400: <body sample>", the
    ``Retry-After`` seconds)."""
    resp = err.response
    body = bytes(resp.body or b"")[:_BODY_SAMPLE].decode("utf-8", "replace").strip()
    text = f"HTTP {resp.status_code}" + (f": {body}" if body else "")
    return resp.status_code, text, retry_after(resp.headers)


def is_permanent(status: int) -> bool:
    """A 4xx handshake answer other than the rate limits: retrying cannot help."""
    return 400 <= status < 500 and status not in (429, 418)


class _SymbolInfo(msgspec.Struct):
    symbol: str
    status: str = ""


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_SymbolInfo]


class _ApiError(msgspec.Struct):
    code: int = 0
    msg: str = ""


class Feed:
    """The connection, the parser, the snapshot fetches and their counters."""

    def __init__(self, ctx: PluginContext, cfg: FeedConfig) -> None:
        key = f"plugins.{ctx.name}"
        if not cfg.symbols:
            raise TickbusError(f"{key}.symbols: list at least one symbol")
        try:
            self.symbols = check_symbols(cfg.symbols, f"{key}.symbols")
        except ValueError as err:
            raise TickbusError(str(err)) from None
        if not 0 < cfg.backoff_initial_s <= cfg.backoff_max_s:
            raise TickbusError(f"{key}: need 0 < backoff_initial_s <= backoff_max_s")
        ws_default, rest_default, self.depth_path = DEFAULT_URLS[cfg.market]
        self.ctx = ctx
        self.cfg = cfg
        self.ws_base = (cfg.ws_url or ws_default).rstrip("/")
        self.rest_base = (cfg.rest_url or rest_default).rstrip("/")
        self.parser = FrameParser()
        self.stats = {"frames": 0, "bad_frames": 0, "dropped": 0, "connects": 0}
        self.stats |= {"disconnects": 0, "snapshots": 0, "rest_errors": 0, "stale": 0}
        self.stats |= {"renewals": 0, "rejected": 0, "errors": 0}
        self.connected = False
        self.last_frame = time.monotonic()
        self._wanted = frozenset(self.symbols)
        self._topics: dict[tuple[type, str], str] = {}  # configured symbols only: bounded
        self._fetching: set[str] = set()
        self._bad_kinds: set[str] = set()
        self._error_kinds: set[str] = set()
        self._ws: ClientConnection | None = None
        self._close_reason = ""
        self._status_at = (time.monotonic(), 0)
        # a test runs hours of reconnects on a fake clock through this
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def url(self) -> str:
        """The combined-stream URL for every symbol and stream kind."""
        cfg = self.cfg
        return stream_url(self.ws_base, self.symbols, cfg.depth_interval, cfg.trades, cfg.tickers)

    # ------------------------------------------------------------------ venue check

    def check_venue(self) -> None:
        """Raise TickbusError if the venue's exchangeInfo does not list every symbol; warn
        (and go on) if it cannot be asked. Blocking: called once, at set-up."""
        try:
            unknown, inactive = self._venue_symbols()
        except _Unavailable as why:
            self.ctx.log.warning(
                "could not check the symbols against %s (%s); going on", self.rest_base, why
            )
            return
        if inactive:
            self.ctx.log.warning("not trading on the venue now: %s", ", ".join(inactive))
        if unknown:
            raise TickbusError(
                f"plugins.{self.ctx.name}.symbols: {self.cfg.market} exchangeInfo at "
                f"{self.rest_base} does not list {', '.join(unknown)}"
            )

    def _venue_symbols(self) -> tuple[list[str], list[str]]:
        """(symbols the venue does not list, listed ones whose status is not TRADING)."""
        url = f"{self.rest_base}{EXCHANGE_INFO[self.cfg.market]}"
        if self.cfg.market == "spot":
            arg = urllib.parse.quote(msgspec.json.encode(self.symbols).decode(), safe="")
            listed = self._exchange_info(f"{url}?symbols={arg}")
            if listed is None:  # one of them is unknown: Binance says which one by one only
                listed = {}
                for s in self.symbols:
                    listed |= self._exchange_info(f"{url}?symbol={s}") or {}
        else:  # USD-M takes no symbol filter: the whole list
            listed = self._exchange_info(url) or {}
        unknown = [s for s in self.symbols if s not in listed]
        inactive = [f"{s} ({st})" for s in self.symbols if (st := listed.get(s, "TRADING"))
                    != "TRADING"]  # fmt: skip
        return unknown, inactive

    def _exchange_info(self, url: str) -> dict[str, str] | None:
        """symbol -> status listed at ``url``; None for Binance's "Invalid symbol" answer."""
        try:
            status, _, body = http_get(url, self.cfg.rest_timeout_s)
        except (OSError, TimeoutError) as err:
            raise _Unavailable(str(err) or type(err).__name__) from None
        if status == 400:
            try:
                if msgspec.json.decode(body, type=_ApiError).code == -1121:
                    return None
            except msgspec.DecodeError:
                pass
        if status != 200:
            raise _Unavailable(f"HTTP {status}: {_sample(body)}")
        try:
            info = msgspec.json.decode(body, type=_ExchangeInfo)
        except msgspec.DecodeError as err:
            raise _Unavailable(f"unreadable exchangeInfo ({err}): {_sample(body)}") from None
        return {s.symbol: s.status for s in info.symbols}

    # ------------------------------------------------------------------ stream

    async def run(self) -> None:
        """Connect, read, reconnect - until cancelled, or until the server rejects the
        handshake for good (then the process stops with the server's reason)."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        attempt = 0
        while True:
            started = loop.time()
            wait = 0.0
            try:
                await self._connection()
            except _Reconnect as why:
                self.ctx.log.warning("reconnecting: %s", why)
            except InvalidStatus as err:
                self.stats["rejected"] += 1
                status, text, wait = handshake_rejection(err)
                if is_permanent(status):
                    reason = f"{self.ws_base} rejected the WebSocket handshake: {text}"
                    self.ctx.request_shutdown(reason, failed=True)
                    return
                wait = min(wait, cfg.retry_after_max_s)
                self.ctx.log.warning("%s rejected the handshake: %s", self.ws_base, text)
            except (OSError, TimeoutError, websockets.WebSocketException) as err:
                self.ctx.log.warning("connection to %s failed: %s", self.ws_base, err or type(err))
            except Exception as err:  # a bug must cost a reconnect, not the market data
                self._unexpected("connection", err)
            finally:
                self._set_connected(False, "disconnected")
            if loop.time() - started > 60:
                attempt = 0  # it ran fine for a while: start the backoff over
            delay = max(wait, backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s))
            attempt += 1
            await self._sleep(delay)

    def _unexpected(self, where: str, err: Exception) -> None:
        """Count an exception nobody expected; its traceback is logged once per kind."""
        self.stats["errors"] += 1
        kind = f"{where}: {type(err).__name__}"
        if kind not in self._error_kinds:
            self._error_kinds.add(kind)
            self.ctx.log.error("unexpected error in the %s (retrying)", where, exc_info=err)
        else:
            self.ctx.log.warning("unexpected error in the %s again: %r", where, err)

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
            now_ns = self.ctx.clock.mono_ns  # ts_recv_ns: monotonic receive time (DESIGN.md)
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
            self._bad(f"{err.kind}: {err}", frame)  # logged once per kind
            return
        key = (type(msg), msg.symbol)
        topic = self._topics.get(key)
        if topic is None:
            if msg.symbol not in self._wanted:  # never a topic (or a book) per input symbol
                self.stats["dropped"] += 1
                self._bad_kind("frame of a symbol that is not configured", frame)
                return
            topic = self._topics[key] = topic_of(msg)
        self.stats["frames"] += 1
        self.ctx.publish(topic, msg)

    def _bad(self, why: str, sample: bytes) -> None:
        self.stats["bad_frames"] += 1
        self._bad_kind(why, sample)

    def _bad_kind(self, why: str, sample: bytes) -> None:
        kind = why.split(":")[0][:60]
        if kind not in self._bad_kinds and len(self._bad_kinds) < _MAX_KINDS:
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

    def status(self) -> str:
        """The status-line fragment: connection, frames/s since the last call, counters."""
        now = time.monotonic()
        then, frames_then = self._status_at
        st = self.stats
        self._status_at = (now, st["frames"])
        rate = (st["frames"] - frames_then) / max(now - then, 1e-9)
        text = (
            f"{'connected' if self.connected else 'DISCONNECTED'}, {rate:.0f} frames/s, "
            f"{st['bad_frames']} bad, {st['dropped']} dropped, "
            f"{max(0, st['connects'] - 1)} reconnects, last frame {now - self.last_frame:.1f} s ago"
        )
        return text + (f", {st['errors']} errors" if st["errors"] else "")

    # ------------------------------------------------------------------ snapshots

    def on_resync(self, req: SnapshotRequest) -> None:
        """A book needs a snapshot: fetch it (once at a time per symbol)."""
        if req.symbol in self._wanted and req.symbol not in self._fetching:
            self._fetching.add(req.symbol)
            self.ctx.spawn(self._fetch(req.symbol), name=f"snapshot-{req.symbol}")

    async def _fetch(self, symbol: str) -> None:
        """Until a snapshot is published: every failure is logged (status, body sample) and
        retried after the backoff delay, or the server's ``Retry-After`` if longer (capped
        at ``retry_after_max_s``)."""
        cfg = self.cfg
        url = f"{self.rest_base}{self.depth_path}?symbol={symbol}&limit={cfg.snapshot_limit}"
        attempt = 0
        try:
            while True:
                delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s)
                attempt += 1
                body = b""
                try:
                    status, headers, body = await asyncio.to_thread(
                        http_get, url, cfg.rest_timeout_s
                    )
                    if status == 200:
                        snap = self.parser.parse_snapshot(body, symbol, self.ctx.clock.mono_ns())
                        self.stats["snapshots"] += 1
                        self.ctx.publish(f"md.depth.{symbol}", snap)
                        return
                    self.stats["rest_errors"] += 1
                    delay = max(delay, min(retry_after(headers), cfg.retry_after_max_s))
                    why = f"HTTP {status}: {_sample(body)}"
                except (OSError, TimeoutError) as err:
                    self.stats["rest_errors"] += 1
                    why = str(err) or type(err).__name__
                except FrameError as err:
                    self._bad(f"snapshot {err.kind}: {err}", body)
                    why = f"unusable body ({str(err)[:100]})"
                except Exception as err:  # a bug must not leave the book unsynced for good
                    self._unexpected("snapshot fetch", err)
                    why = f"{type(err).__name__}: {err}"
                self.ctx.log.warning(
                    "%s snapshot failed: %s; retrying in %.1f s", symbol, why, delay
                )
                await self._sleep(delay)
        finally:
            self._fetching.discard(symbol)


class _Unavailable(Exception):
    """exchangeInfo could not be asked (network, an odd status, an unreadable body)."""


def _sample(body: bytes) -> str:
    return repr(body[:_BODY_SAMPLE].decode("utf-8", "replace"))


@hookimpl
def tickbus_config_type() -> type[FeedConfig]:
    return FeedConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Feed:
    warmup(ctx.log)  # compile (or load) the numba kernels now, not on the first frame
    feed = Feed(ctx, ctx.config)
    feed.check_venue()
    ctx.subscribe("md.resync.", feed.on_resync)
    return feed


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.spawn(ctx.component.run(), name="binance-feed")


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return str(ctx.component.status())


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    ctx.component.ctx.log.info("feed stats: %s", ctx.component.stats)
