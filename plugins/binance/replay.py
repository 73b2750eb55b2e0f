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

The files are read with :func:`~plugins.binance.capture.read_frames` (decompressed in a thread
of their own, ws JSON left to the parser): a frame that does not parse and a line that cannot
be read are both counted in ``bad``, logged once per kind, and skipped. Only an unreadable
file stops the replay early (logged as an error).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.schemas import BookTicker, DepthDiff, SnapshotRequest, Trade

from .capture import SAMPLE, CaptureError, Frame, read_frames
from .parse import FrameError, FrameParser, topic_of, warmup

_BATCH = 2000  # records per loop iteration at full speed: heartbeats and drains still run


class ReplayConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.replay_feed]``."""

    files: list[str] = msgspec.field(default_factory=list)
    """Capture files, read as one stream in time order; empty: the bundled BTCUSDT sample."""
    speed: float = 0.0
    """1 = real time, N = N x real time, 0 = as fast as possible."""
    symbols: list[str] = msgspec.field(default_factory=list)
    """Only these symbols (upper case); empty: all."""
    exit_at_end: bool = True
    """Ask the kernel to stop when the files are exhausted."""


class Replay:
    """Reads, parses and publishes; counts what it skipped."""

    def __init__(self, ctx: PluginContext, cfg: ReplayConfig) -> None:
        if cfg.speed < 0:
            raise TickbusError("speed must be >= 0 (0: as fast as possible)")
        self.ctx = ctx
        self.cfg = cfg
        self.files = [Path(f) for f in cfg.files] or [SAMPLE]
        for f in self.files:
            if not f.is_file():
                raise TickbusError(f"replay file not found: {f}")
        self.parser = FrameParser()
        self.frames = 0
        self.bad = 0
        self.done = False
        self._wanted = {s.upper() for s in cfg.symbols}
        self._topics: dict[type, dict[str, str]] = {DepthDiff: {}, Trade: {}, BookTicker: {}}
        self._bad_kinds: set[str] = set()
        self._warned_resync = False

    def on_resync(self, msg: SnapshotRequest) -> None:
        """A book wants a snapshot: only the file can provide one."""
        if msg.reason != "start" and not self._warned_resync:
            self._warned_resync = True
            self.ctx.log.warning(
                "%s needs a snapshot (%s); a replay can only offer the next one in the file",
                msg.symbol,
                msg.reason,
            )

    def _topic(self, msg: DepthDiff | Trade | BookTicker) -> str:
        topic = self._topics[type(msg)][msg.symbol] = topic_of(msg)
        return topic

    def _skip(self, why: str, sample: bytes) -> None:
        self.bad += 1
        kind = why.split(":")[0]
        if kind not in self._bad_kinds:
            self._bad_kinds.add(kind)
            self.ctx.log.warning("skipped a bad frame (%s): %r", why, sample[:120])

    async def run(self) -> None:
        """Play the files to the end (or until the task is cancelled)."""
        ctx, cfg = self.ctx, self.cfg
        try:
            frames = read_frames(*self.files)
            try:
                if cfg.speed:
                    await self._play(frames, cfg.speed)
                else:
                    await self._play_fast(frames)
            finally:
                frames.close()  # stops the read-ahead threads (also when cancelled)
        except CaptureError as err:
            ctx.log.error("replay stopped: %s", err)
        self.done = True
        ctx.log.info("replay finished: %d frames published, %d skipped", self.frames, self.bad)
        if cfg.exit_at_end:
            ctx.request_shutdown("replay finished")

    def _other(self, ts: int, kind: str, symbol: str | None, payload: bytes) -> None:
        """A REST snapshot, or a line the reader could not read."""
        if kind == "bad":
            self._skip(f"unreadable capture line: {symbol}", payload)
            return
        if self._wanted and symbol not in self._wanted:
            return
        advance = getattr(self.ctx.clock, "advance", None)
        if advance is not None:
            advance(ts)
        try:
            snap = self.parser.parse_snapshot(payload, symbol, ts)
        except FrameError as err:
            self._skip(str(err), payload)
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
                        self._skip(str(err), payload)
                        continue
                    publish(topics[type(msg)].get(msg.symbol) or self._topic(msg), msg)
                    published += 1
            finally:
                self.frames += published
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
            if kind != "ws":
                self._other(ts, kind, symbol, payload)
                continue
            advance = getattr(self.ctx.clock, "advance", None)
            if advance is not None:
                advance(ts)
            try:
                msg = self.parser.parse(payload, ts)
            except FrameError as err:
                self._skip(str(err), payload)
                continue
            self.ctx.publish(self._topics[type(msg)].get(msg.symbol) or self._topic(msg), msg)
            self.frames += 1


def _no_clock(ts_ns: int) -> None:
    """Stands in for the clock's ``advance`` when the kernel clock is not a replay clock."""


@hookimpl
def tickbus_config_type() -> type[ReplayConfig]:
    return ReplayConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Replay:
    warmup()  # compile (or load) the numba kernels now, not on the first frame
    replay = Replay(ctx, ctx.config)
    ctx.subscribe("md.resync.", replay.on_resync)
    return replay


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.spawn(ctx.component.run(), name="replay")
