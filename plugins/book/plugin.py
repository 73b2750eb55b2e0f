"""The ``book`` plugin: local order books kept in sync with the venue, ``md.book`` out.

Subscribes to ``md.depth.`` (``DepthSnapshot`` and ``DepthDiff`` from a feed, live or replay),
runs Binance's book-sync procedure per symbol (:mod:`plugins.book.sync`) over a numba order
book (:mod:`plugins.book.orderbook`), and publishes a ``BookTop`` on ``md.book.<SYMBOL>``
after every applied event. When a book needs a snapshot - at start, after a sequence gap, or
when it crossed - it publishes ``BookTop(valid=False)`` once and a ``SnapshotRequest`` on
``md.resync.<SYMBOL>``; the feed answers with a fresh ``DepthSnapshot``. Nothing may trade on
an invalid book.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import BookTop, DepthDiff, DepthSnapshot, FeedStatus, SnapshotRequest

from .orderbook import warmup
from .sync import Action, BookSync


class BookConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.book]``."""

    market: Literal["spot", "usdm", "coinm"] = "spot"
    """Which sync rules: spot chains on ``U == prev_u + 1``, futures on ``pu == prev_u``."""
    depth: int = 20
    """Levels per side carried in each ``md.book`` message."""
    symbols: list[str] = msgspec.field(default_factory=list)
    """Only these symbols (upper case); empty: every symbol seen on ``md.depth.``."""
    max_buffer: int = 10_000
    """Diffs kept per symbol while waiting for a snapshot."""


class Books:
    """All books of one plugin instance."""

    def __init__(self, ctx: PluginContext, cfg: BookConfig) -> None:
        if cfg.depth < 1:
            raise ValueError("depth must be >= 1")
        self.ctx = ctx
        self.cfg = cfg
        self.syncs: dict[str, BookSync] = {}
        self._topics: dict[str, tuple[str, str]] = {}
        self._valid: dict[str, bool] = {}
        self._requested: dict[str, bool] = {}
        self._wanted = {s.upper() for s in cfg.symbols}
        self._publish = ctx.publish

    def _sync(self, symbol: str) -> BookSync | None:
        sync = self.syncs.get(symbol)
        if sync is None:
            if self._wanted and symbol not in self._wanted:
                return None
            sync = BookSync(self.cfg.market, symbol, max_buffer=self.cfg.max_buffer)
            self.syncs[symbol] = sync
            self._topics[symbol] = (f"md.book.{symbol}", f"md.resync.{symbol}")
            self._valid[symbol] = False
            self._requested[symbol] = False
        return sync

    def on_depth(self, msg: DepthDiff | DepthSnapshot) -> None:
        """Handler of ``md.depth.``: one event in, at most one ``md.book`` out."""
        sync = self._sync(msg.symbol)
        if sync is None:
            return
        if type(msg) is DepthDiff:
            action = sync.on_diff(msg)
        elif type(msg) is DepthSnapshot:
            action = sync.on_snapshot(msg)
        else:
            return
        if action is Action.APPLIED or action is Action.SYNCED:
            self._requested[msg.symbol] = False
            self._publish_top(sync, msg)
        elif action is Action.BUFFERED:
            if not self._requested[msg.symbol]:
                self._request(msg.symbol, "start" if sync.stats.syncs == 0 else "resync")
        elif action is Action.STALE or action is Action.IGNORED:
            pass
        else:  # GAP, CROSSED, SNAPSHOT_TOO_OLD: the book is not usable until a new snapshot
            if self._valid[msg.symbol]:
                self._publish_top(sync, msg)
            self.ctx.log.warning(
                "%s: %s at update %d; requesting a snapshot",
                msg.symbol,
                action.name.lower(),
                msg.last_update_id,
            )
            self._request(msg.symbol, action.name.lower())

    def on_status(self, msg: FeedStatus) -> None:
        """Handler of ``md.status.``: events may have been missed while disconnected."""
        sync = self.syncs.get(msg.symbol)
        if sync is None or msg.connected:
            return
        sync.reset()
        self._requested[msg.symbol] = False
        if self._valid[msg.symbol]:
            self._valid[msg.symbol] = False
            self._publish(
                self._topics[msg.symbol][0],
                BookTop(msg.symbol, -1, False, 0, 0, 0, 0, b"", b"", 0, msg.ts_ns),
            )

    def _request(self, symbol: str, reason: str) -> None:
        self._requested[symbol] = True
        self._publish(
            self._topics[symbol][1], SnapshotRequest(symbol, reason, self.ctx.clock.now_ns())
        )

    def _publish_top(self, sync: BookSync, msg: DepthDiff | DepthSnapshot) -> None:
        top = sync.book_top(self.cfg.depth, msg.ts_exchange_ns, msg.ts_recv_ns)
        self._valid[msg.symbol] = top.valid
        self._publish(self._topics[msg.symbol][0], top)


@hookimpl
def tickbus_config_type() -> type[BookConfig]:
    return BookConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Books:
    warmup()  # compile (or load) the numba kernels now, not on the first tick
    books = Books(ctx, ctx.config)
    ctx.subscribe("md.depth.", books.on_depth)
    ctx.subscribe("md.status.", books.on_status)
    return books


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    for symbol, sync in ctx.component.syncs.items():
        ctx.log.info(
            "%s: update id %d, valid %s, %s",
            symbol,
            sync.last_update_id,
            sync.valid,
            sync.stats.as_dict(),
        )
