"""The ``replay_feed`` plugin: recorded Binance traffic onto the bus, as if live.

Plays capture files (``tickbus record`` output and the hftbacktest / cryptofeed formats, see
:mod:`plugins.binance.capture`; default: the sample shipped with tickbus) through the same
parser as the live feed and publishes what the live feed publishes:

* ``DepthDiff`` and the recorded REST ``DepthSnapshot`` on ``md.depth.<SYMBOL>``,
* ``Trade`` on ``md.trade.<SYMBOL>``, ``BookTicker`` on ``md.ticker.<SYMBOL>``,

with ``ts_recv_ns`` = the recorded local receive time. With ``[kernel] clock = "replay"`` the
kernel clock follows the recorded time, so a backtest is deterministic. ``speed``: 1 = real
time, N = N times faster, 0 = as fast as possible.

A replay cannot fetch a new snapshot: a ``SnapshotRequest`` is answered by the next snapshot
in the file, if there is one (logged once).

Files: relative paths resolve against the config file's directory; each one is checked at
set-up (exists, opens, is a capture), so a wrong path is a one-line error naming it and
``plugins.<name>.files``. The files are read with
:func:`~plugins.binance.capture.read_frames` (decompressed in a thread of their own, ws JSON
left to the parser). What the replay skips:

* a corrupt line or a frame that does not parse (``bad``): counted, logged once per kind,
  skipped - and the run ends with a non-zero exit status, since the backtest did not see
  all of its data;
* a well-formed record of a kind tickbus does not use (``ignored``: e.g. ``kline`` or
  ``markPriceUpdate`` events, an exchangeInfo body in a cryptofeed capture): counted and
  logged once per kind only.

A file that turns out unreadable on the way (a truncated gzip, corrupt data), or any other
error, ends the run at once with a non-zero exit status and a one-line reason.

While it runs, the replay reports its position (share of the files' bytes read), frames/s
and speed (x real time) in the status line, and, when stderr is a terminal, in a progress
bar (updated a few times per second by a timer, never per frame).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.schemas import BookTicker, DepthDiff, SnapshotRequest, Trade

from .capture import (
    SAMPLE,
    SYMBOL_RE,
    CaptureError,
    Frame,
    check_capture,
    check_symbols,
    read_frames,
)
from .parse import FrameError, FrameParser, topic_of, warmup

_BATCH = 2000  # records per loop iteration at full speed: heartbeats and drains still run
_BAR_EVERY_S = 0.25  # progress bar refresh period
_MAX_KINDS = 64  # kinds of skipped records logged; a file cannot grow the set (or the log)
# events tickbus parses (plugins.binance.parse); a well-formed event of another type is
# "ignored", not "bad"
_SUPPORTED_EVENTS = frozenset({"depthUpdate", "trade", "aggTrade", "bookTicker"})


class ReplayConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.replay_feed]``."""

    files: list[str] = msgspec.field(default_factory=list)
    """Capture files, read as one stream in time order; relative paths are relative to the
    config file's directory; empty: the bundled BTCUSDT sample."""
    speed: float = 0.0
    """1 = real time, N = N x real time, 0 = as fast as possible."""
    symbols: list[str] = msgspec.field(default_factory=list)
    """Only these symbols; empty: all."""
    exit_at_end: bool = True
    """Ask the kernel to stop when the files are exhausted."""
    progress: bool = True
    """Show a progress bar when stderr is a terminal."""


class Replay:
    """Reads, parses and publishes; counts what it skipped."""

    def __init__(self, ctx: PluginContext, cfg: ReplayConfig) -> None:
        key = f"plugins.{ctx.name}"
        if cfg.speed < 0:
            raise TickbusError(f"{key}.speed: must be >= 0 (0: as fast as possible)")
        self.ctx = ctx
        self.cfg = cfg
        self.files = [ctx.resolve_path(f) for f in cfg.files] or [SAMPLE]
        for f in self.files:
            try:
                check_capture(f)
            except CaptureError as err:
                raise TickbusError(f"{key}.files: {err}") from None
        try:
            self._wanted = set(check_symbols(cfg.symbols, f"{key}.symbols"))
        except ValueError as err:
            raise TickbusError(str(err)) from None
        self.parser = FrameParser()
        self.frames = 0
        self.bad = 0
        """Corrupt lines and frames that do not parse: skipped, and the exit status is 1."""
        self.ignored = 0
        """Well-formed records of kinds tickbus does not use (klines...): skipped."""
        self.done = False
        self.last_ts = 0
        """Recorded time of the latest frame (updated once per batch at full speed)."""
        self.read_bytes = [0] * len(self.files)
        self.total_bytes = sum(os.path.getsize(f) for f in self.files)
        self._topics: dict[type, dict[str, str]] = {DepthDiff: {}, Trade: {}, BookTicker: {}}
        self._bad_kinds: set[str] = set()
        self._warned_resync = False
        self._status_at = (time.monotonic(), 0, 0)
        self._bar: Any = None  # a tqdm bar while one is shown
        self._bar_at = (0.0, 0, 0)

    @property
    def position(self) -> float:
        """Share of the files read, 0..1 (by bytes on disk; gzip is read a little ahead)."""
        return min(1.0, sum(self.read_bytes) / self.total_bytes) if self.total_bytes else 1.0

    @property
    def name(self) -> str:
        """The files, for humans."""
        first = self.files[0].name
        return first if len(self.files) == 1 else f"{first} (+{len(self.files) - 1} files)"

    def on_resync(self, msg: SnapshotRequest) -> None:
        """A book wants a snapshot: only the file can provide one."""
        if msg.reason != "start" and not self._warned_resync:
            self._warned_resync = True
            self.ctx.log.warning(
                "%s needs a snapshot (%s); a replay can only offer the next one in the file",
                msg.symbol,
                msg.reason,
            )

    def _topic(self, msg: DepthDiff | Trade | BookTicker, payload: bytes) -> str:
        """The topic of a symbol met for the first time ("" and skipped if it is no symbol:
        a topic is never made of arbitrary input)."""
        if not SYMBOL_RE.fullmatch(msg.symbol):
            self._skip(f"not a symbol: {msg.symbol[:40]!r}", payload, "bad")
            return ""
        topic = self._topics[type(msg)][msg.symbol] = topic_of(msg)
        return topic

    def _skip(self, why: str, sample: bytes, kind: str) -> None:
        """Count and skip a record: ``ignored`` if it is a well-formed one of a kind tickbus
        does not use, else ``bad``; logged once per kind."""
        what = _ignorable(kind, sample)
        if what:
            self.ignored += 1
            why, level = f"{what} (ignored)", 20
        else:
            self.bad += 1
            level = 30
        label = why.split(":")[0]
        if label not in self._bad_kinds and len(self._bad_kinds) < _MAX_KINDS:
            self._bad_kinds.add(label)
            self.ctx.log.log(level, "skipped a record (%s): %r", why[:300], sample[:120])

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Play the files to the end (or until the task is cancelled); a file that cannot be
        read to its end, or any error, stops the process with a non-zero exit status."""
        ctx, cfg = self.ctx, self.cfg
        failed = ""
        frames = read_frames(*self.files, read_bytes=self.read_bytes)
        if cfg.progress and sys.stderr.isatty():
            self._open_bar()
        try:
            try:
                first = next(frames, None)  # its time starts the speed (x real time) figures
                if first is not None:
                    self.last_ts = first[0]
                    self._status_at = self._bar_at = (time.monotonic(), 0, first[0])
                    stream = itertools.chain((first,), frames)
                    if cfg.speed:
                        await self._play(stream, cfg.speed)
                    else:
                        await self._play_fast(stream)
            finally:
                frames.close()  # stops the read-ahead threads (also when cancelled)
        except CaptureError as err:
            failed = f"plugins.{ctx.name}.files: {err}"
        except Exception as err:  # a dead replay must not leave a process that looks alive
            ctx.log.error("replay failed", exc_info=err)
            failed = f"replay failed after {self.frames} frames: {type(err).__name__}: {err}"
        self.done = True
        self._close_bar()  # its last state, before the log lines below
        ctx.log.info(
            "replay %s: %d frames published, %d skipped%s",
            "stopped early" if failed else "finished",
            self.frames,
            self.bad,
            f", {self.ignored} ignored (kinds tickbus does not use)" if self.ignored else "",
        )
        if self.bad:
            ctx.report_failure(
                f"{self.bad} corrupt line(s) or bad frame(s) skipped in {self.name} "
                "(the first of each kind is logged above)"
            )
        if failed:
            ctx.request_shutdown(failed, failed=True)
        elif cfg.exit_at_end:
            ctx.request_shutdown("replay finished")

    def _other(self, ts: int, kind: str, symbol: str | None, payload: bytes) -> None:
        """A REST snapshot, or a line the reader could not read."""
        if kind == "bad":
            self._skip(f"unreadable capture line: {symbol}", payload, kind)
            return
        if self._wanted and symbol not in self._wanted:
            return
        advance = getattr(self.ctx.clock, "advance", None)
        if advance is not None:
            advance(ts)
        try:
            snap = self.parser.parse_snapshot(payload, symbol, ts)
        except FrameError as err:
            self._skip(f"{err.kind}: {err}", payload, kind)
            return
        if not SYMBOL_RE.fullmatch(snap.symbol):
            self._skip(f"not a symbol: {snap.symbol[:40]!r}", payload, "bad")
            return
        self.ctx.publish(f"md.depth.{snap.symbol}", snap)
        self.frames += 1

    async def _play_fast(self, frames: Iterator[Frame]) -> None:
        """As fast as possible: the hot loop, ``_BATCH`` frames between yields to the loop."""
        publish = self.ctx.publish
        parse = self.parser.parse
        advance = getattr(self.ctx.clock, "advance", None) or _no_clock
        wanted = self._wanted
        topics = self._topics
        batch = itertools.islice
        ts = 0
        while True:
            n = published = 0
            try:
                for ts, kind, symbol, payload in batch(frames, _BATCH):
                    n += 1
                    if kind != "ws":
                        self._other(ts, kind, symbol, payload)
                        continue
                    if wanted and symbol not in wanted:
                        continue
                    advance(ts)
                    try:
                        msg = parse(payload, ts)
                    except FrameError as err:
                        self._skip(f"{err.kind}: {err}", payload, kind)
                        continue
                    topic = topics[type(msg)].get(msg.symbol) or self._topic(msg, payload)
                    if topic:
                        publish(topic, msg)
                        published += 1
            finally:
                self.frames += published
                self.last_ts = ts or self.last_ts
            if n < _BATCH:
                return
            await asyncio.sleep(0)  # heartbeats, drains, other plugins of the lane

    async def _play(self, frames: Iterator[Frame], speed: float) -> None:
        """Paced: frames go out at their recorded times, ``speed`` x faster."""
        t0_rec = t0_wall = 0.0
        for ts, kind, symbol, payload in frames:
            if kind != "bad":
                if self._wanted and symbol not in self._wanted:
                    continue
                if not t0_wall:
                    t0_rec, t0_wall = ts, time.monotonic()
                delay = t0_wall + (ts - t0_rec) / 1e9 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.last_ts = ts
            if kind != "ws":
                self._other(ts, kind, symbol, payload)
                continue
            advance = getattr(self.ctx.clock, "advance", None)
            if advance is not None:
                advance(ts)
            try:
                msg = self.parser.parse(payload, ts)
            except FrameError as err:
                self._skip(f"{err.kind}: {err}", payload, kind)
                continue
            topic = self._topics[type(msg)].get(msg.symbol) or self._topic(msg, payload)
            if topic:
                self.ctx.publish(topic, msg)
                self.frames += 1

    # ------------------------------------------------------------------ progress

    def status(self) -> str:
        """The status-line fragment: position, frames/s and speed since the last call."""
        now = time.monotonic()
        then, frames_then, ts_then = self._status_at
        self._status_at = (now, self.frames, self.last_ts)
        dt = max(now - then, 1e-9)
        rate = (self.frames - frames_then) / dt
        speed = (self.last_ts - ts_then) / 1e9 / dt if ts_then else 0.0
        state = "done, " if self.done else ""
        return (
            f"{state}{self.position:.0%} of {self.name}, {self.frames:,} frames, "
            f"{rate:,.0f} frames/s, {speed:.1f}x real time"
        )

    def _open_bar(self) -> None:
        """A progress bar on the terminal, refreshed by a task of its own (never per frame)."""
        try:
            from tqdm import tqdm

            try:  # a terminal that reports no size (a bare pty) would get no bar at all
                size = os.get_terminal_size(sys.stderr.fileno())
                sized = size.columns > 0 and size.lines > 0
            except OSError:
                sized = False
            self._bar = tqdm(
                total=self.total_bytes,
                desc=f"replay {self.name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                mininterval=_BAR_EVERY_S,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}{postfix}]",
            )
        except Exception as err:  # a terminal tqdm cannot draw on must not stop the replay
            self.ctx.log.warning("no progress bar: %r", err)
            return
        self._bar_at = (time.monotonic(), 0, 0)
        self.ctx.spawn(self._progress(), name="replay-progress")

    async def _progress(self) -> None:
        try:
            while self._bar is not None:
                self._refresh_bar()
                await asyncio.sleep(_BAR_EVERY_S)
        finally:  # cancelled (the run stops): leave the bar as it was
            self._close_bar(refresh=False)

    def _refresh_bar(self) -> None:
        bar = self._bar
        try:
            bar.update(min(sum(self.read_bytes), self.total_bytes) - bar.n)
            now = time.monotonic()
            then, frames_then, ts_then = self._bar_at
            dt = max(now - then, 1e-9)
            rate = (self.frames - frames_then) / dt
            speed = (self.last_ts - ts_then) / 1e9 / dt if ts_then else 0.0
            bar.set_postfix_str(f"{self.frames:,} frames, {rate:,.0f}/s, {speed:.1f}x")
            self._bar_at = (now, self.frames, self.last_ts)
        except Exception as err:  # a bar must never stop a replay
            self._bar = None
            self.ctx.log.warning("progress bar stopped: %r", err)

    def _close_bar(self, refresh: bool = True) -> None:
        bar = self._bar
        if bar is None:
            return
        if refresh:
            self._refresh_bar()
        self._bar = None
        try:
            bar.close()
        except Exception as err:
            self.ctx.log.warning("progress bar: %r", err)


def _ignorable(kind: str, payload: bytes) -> str:
    """What a skipped record is if it is a well-formed one of a kind tickbus does not use
    ("unsupported event type 'kline'", "REST body that is not a depth snapshot"), else ""."""
    if kind == "bad":
        return ""
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return ""
    if not isinstance(doc, dict):
        return ""
    if kind == "rest":
        return "" if "lastUpdateId" in doc else "REST body that is not a depth snapshot"
    data = doc.get("data") if "stream" in doc else doc
    event = data.get("e") if isinstance(data, dict) else None
    if isinstance(event, str) and event not in _SUPPORTED_EVENTS:
        return f"unsupported event type {event[:40]!r}"
    return ""


def _no_clock(ts_ns: int) -> None:
    """Stands in for the clock's ``advance`` when the kernel clock is not a replay clock."""


@hookimpl
def tickbus_config_type() -> type[ReplayConfig]:
    return ReplayConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Replay:
    warmup(ctx.log)  # compile (or load) the numba kernels now, not on the first frame
    replay = Replay(ctx, ctx.config)
    ctx.subscribe("md.resync.", replay.on_resync)
    return replay


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.spawn(ctx.component.run(), name="replay")


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return str(ctx.component.status())
