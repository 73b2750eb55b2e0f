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
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from kernel import PluginContext, TickbusError, hookimpl
from schemas import BookTicker, DepthDiff, SnapshotRequest, Trade

from .capture import SAMPLE, CaptureError, read_capture
from .parse import FrameError, FrameParser, warmup

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
        self._topics: dict[tuple[type, str], str] = {}
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
        key = (type(msg), msg.symbol)
        topic = self._topics.get(key)
        if topic is None:
            family = {DepthDiff: "md.depth", Trade: "md.trade", BookTicker: "md.ticker"}
            topic = self._topics[key] = f"{family[type(msg)]}.{msg.symbol}"
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
        publish = ctx.publish
        parse, parse_snapshot = self.parser.parse, self.parser.parse_snapshot
        advance = getattr(ctx.clock, "advance", None)
        wanted = self._wanted
        topic_of = self._topic
        t0_rec = t0_wall = 0.0
        n = 0
        try:
            for rec in read_capture(*self.files):
                if wanted and rec.symbol not in wanted:
                    continue
                ts = rec.ts_ns
                if cfg.speed:
                    if not t0_wall:
                        t0_rec, t0_wall = ts, time.monotonic()
                    delay = t0_wall + (ts - t0_rec) / 1e9 / cfg.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif n % _BATCH == _BATCH - 1:
                    await asyncio.sleep(0)
                n += 1
                if advance is not None:
                    advance(ts)
                try:
                    if rec.kind == "ws":
                        msg = parse(rec.payload, ts)
                        publish(topic_of(msg), msg)
                    else:
                        snap = parse_snapshot(rec.payload, rec.symbol, ts)
                        publish(f"md.depth.{snap.symbol}", snap)
                except FrameError as err:
                    self._skip(str(err), rec.payload)
                    continue
                self.frames += 1
        except CaptureError as err:
            ctx.log.error("replay stopped: %s", err)
        self.done = True
        ctx.log.info("replay finished: %d frames published, %d skipped", self.frames, self.bad)
        if cfg.exit_at_end:
            ctx.request_shutdown("replay finished")


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
