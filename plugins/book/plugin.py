"""The ``book`` plugin: local order books kept in sync with the venue, ``md.book`` out.

Subscribes to ``md.depth.`` (``DepthSnapshot`` and ``DepthDiff`` from a feed, live or replay),
runs Binance's book-sync procedure per symbol (:mod:`plugins.book.sync`) over a numba order
book (:mod:`plugins.book.orderbook`), and publishes a ``BookTop`` on ``md.book.<SYMBOL>``
after every applied event. When a book needs a snapshot - at start, after a sequence gap, or
when it crossed - it publishes ``BookTop(valid=False)`` once and a ``SnapshotRequest`` on
``md.resync.<SYMBOL>``; the feed answers with a fresh ``DepthSnapshot``. If none arrives within
``snapshot_timeout_s`` (on ``ctx.clock``, checked as events arrive, so replays behave the
same), it asks again. Nothing may trade on an invalid book.

Messages can come from another process over the bus: one whose ids, levels or symbol cannot
be real is counted, logged once per kind with a sample, and skipped - it never becomes book
state. Symbols that are not configured (or, with no ``symbols``, beyond ``max_symbols``) are
dropped and counted: input cannot grow the number of books without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import BookTop, DepthDiff, DepthSnapshot, FeedStatus, SnapshotRequest

from .orderbook import warmup
from .sync import Action, BadMessage, BookSync

SYMBOL_PATTERN = "^[A-Z0-9_]{1,20}$"
"""A venue symbol: upper-case letters, digits and ``_`` (COIN-M's ``BTCUSD_PERP``)."""
_SYMBOL = re.compile(SYMBOL_PATTERN)
_MAX_REMEMBERED = 1024  # dropped symbols remembered (so each costs one lookup); bounded


class BookConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.book]``."""

    market: Literal["spot", "usdm", "coinm"] = "spot"
    """Which sync rules: spot chains on ``U == prev_u + 1``, futures on ``pu == prev_u``."""
    depth: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 20
    """Levels per side carried in each ``md.book`` message."""
    symbols: list[Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_]{1,20}$")]] = msgspec.field(
        default_factory=list
    )
    """Only these symbols (any case); empty: every symbol seen on ``md.depth.``, up to
    ``max_symbols``."""
    max_symbols: Annotated[int, msgspec.Meta(ge=1)] = 64
    """With no ``symbols``: books made at most; messages of further symbols are dropped."""
    max_buffer: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Diffs kept per symbol while waiting for a snapshot."""
    snapshot_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Ask for a snapshot again when none arrived this long after the request."""


@dataclass(slots=True, eq=False)
class _Book:
    """One symbol's book and what the plugin knows about it."""

    sync: BookSync
    topic: str  # md.book.<S>
    resync_topic: str  # md.resync.<S>
    invalid_since_ns: int  # clock time the book became unusable; -1 while it is live
    valid: bool = False  # what the last published BookTop said
    requested_ns: int = -1  # clock time of the pending snapshot request; -1: none pending
    last_event_ns: int = 0  # ts_exchange_ns of the last depth event accepted (lag)
    bad: int = 0  # messages of this symbol skipped as impossible


class Books:
    """All books of one plugin instance."""

    def __init__(self, ctx: PluginContext, cfg: BookConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.syncs: dict[str, BookSync] = {}
        self.bad = 0  # impossible messages skipped (all symbols)
        self.dropped = 0  # messages of symbols without a book (not configured, invalid, cap)
        self._books: dict[str, _Book] = {}
        self._wanted = {s.upper() for s in cfg.symbols}
        self._refused: set[str] = set()  # symbols dropped before (bounded)
        self._logged: set[str] = set()  # kinds of bad/dropped input already logged
        self._timeout_ns = int(cfg.snapshot_timeout_s * 1e9)
        self._publish = ctx.publish
        self._now = ctx.clock.now_ns

    # ------------------------------------------------------------------ handlers

    def on_depth(self, msg: DepthDiff | DepthSnapshot) -> None:
        """Handler of ``md.depth.``: one event in, at most one ``md.book`` out."""
        t = type(msg)
        if t is not DepthDiff and t is not DepthSnapshot:
            self._drop("type", f"not a depth message: {type(msg).__name__}", msg)
            return
        b = self._books.get(msg.symbol)
        if b is None:
            b = self._new_book(msg)
            if b is None:
                return
        try:
            if type(msg) is DepthDiff:
                action = b.sync.on_diff(msg)
            else:  # checked above: a DepthSnapshot (rare: no cost on the hot path)
                action = b.sync.on_snapshot(cast(DepthSnapshot, msg))
        except BadMessage as err:
            self._bad(b, err, msg)
            return
        if action is Action.APPLIED:  # the hot path
            b.last_event_ns = msg.ts_exchange_ns
            self._publish_top(b, msg)
        else:
            self._other(b, action, msg)

    def on_status(self, msg: FeedStatus) -> None:
        """Handler of ``md.status.``: events may have been missed while disconnected."""
        b = self._books.get(msg.symbol)
        if b is None or msg.connected:
            return
        b.sync.reset()
        b.requested_ns = -1
        if b.invalid_since_ns < 0:
            b.invalid_since_ns = self._now()
        if b.valid:
            b.valid = False
            self._publish(
                b.topic, BookTop(msg.symbol, -1, False, 0, 0, 0, 0, b"", b"", 0, msg.ts_ns)
            )

    # ------------------------------------------------------------------ cold paths

    def _new_book(self, msg: DepthDiff | DepthSnapshot) -> _Book | None:
        """The book for a symbol seen for the first time, or None (dropped and counted)."""
        symbol = msg.symbol
        if symbol in self._refused:
            self.dropped += 1
            return None
        if type(symbol) is not str or not _SYMBOL.match(symbol):
            why, text = "symbol", f"not a valid symbol: {symbol!r}"
        elif self._wanted and symbol not in self._wanted:
            why, text = "unconfigured", f"{symbol} is not in symbols"
        elif not self._wanted and len(self._books) >= self.cfg.max_symbols:
            why, text = "max_symbols", f"{symbol}: already {len(self._books)} books (max_symbols)"
        else:
            sync = BookSync(self.cfg.market, symbol, max_buffer=self.cfg.max_buffer)
            b = _Book(sync, f"md.book.{symbol}", f"md.resync.{symbol}", self._now())
            self._books[symbol] = b
            self.syncs[symbol] = sync
            return b
        if len(self._refused) < _MAX_REMEMBERED and type(symbol) is str:
            self._refused.add(symbol)
        self._drop(why, text, msg)
        return None

    def _other(self, b: _Book, action: Action, msg: DepthDiff | DepthSnapshot) -> None:
        """Everything but a plain applied diff."""
        sync = b.sync
        if type(msg) is DepthDiff and action is not Action.STALE:
            b.last_event_ns = msg.ts_exchange_ns
        if action is Action.SYNCED:
            now = self._now()
            took_ms = (now - b.invalid_since_ns) / 1e6
            self.ctx.log.info(
                "%s %s at update %d after %.0f ms",
                msg.symbol,
                "resynced" if sync.stats.syncs > 1 else "synced",
                sync.last_update_id,
                took_ms,
            )
            b.invalid_since_ns = -1
            b.requested_ns = -1
            self._publish_top(b, msg)
        elif action is Action.BUFFERED:
            if b.requested_ns < 0:
                self._request(b, "start" if sync.stats.syncs == 0 else "resync")
                return
            waited = self._now() - b.requested_ns
            if waited >= self._timeout_ns:  # the request or its answer was lost: ask again
                self.ctx.log.warning(
                    "%s: no snapshot %.1f s after the request; requesting another",
                    msg.symbol,
                    waited / 1e9,
                )
                self._request(b, "timeout")
        elif action is Action.STALE or action is Action.IGNORED:
            pass
        else:  # GAP, CROSSED, SNAPSHOT_TOO_OLD: the book is not usable until a new snapshot
            if b.invalid_since_ns < 0:
                b.invalid_since_ns = self._now()
            if b.valid:
                self._publish_top(b, msg)
            self.ctx.log.warning(
                "%s: %s at update %d; requesting a snapshot",
                msg.symbol,
                action.name.lower(),
                msg.last_update_id,
            )
            self._request(b, action.name.lower())

    def _request(self, b: _Book, reason: str) -> None:
        now = self._now()
        b.requested_ns = now
        self._publish(b.resync_topic, SnapshotRequest(b.sync.symbol or "", reason, now))

    def _publish_top(self, b: _Book, msg: DepthDiff | DepthSnapshot) -> None:
        top = b.sync.book_top(self.cfg.depth, msg.ts_exchange_ns, msg.ts_recv_ns)
        b.valid = top.valid
        self._publish(b.topic, top)

    def _bad(self, b: _Book, err: BadMessage, msg: DepthDiff | DepthSnapshot) -> None:
        """An impossible message of a known symbol: counted, logged once per kind, skipped."""
        b.bad += 1
        self.bad += 1
        if err.kind not in self._logged:
            self._logged.add(err.kind)
            self.ctx.log.warning(
                "skipped a bad %s (%s: %s); sample %s; further ones are only counted",
                type(msg).__name__,
                err.kind,
                err,
                _sample(msg),
            )

    def _drop(self, why: str, text: str, msg: Any) -> None:
        """A message no book takes: counted, logged once per reason."""
        self.dropped += 1
        if why not in self._logged:
            self._logged.add(why)
            self.ctx.log.warning(
                "dropped a message: %s; sample %s; further ones are only counted",
                text,
                _sample(msg),
            )

    # ------------------------------------------------------------------ status

    def status(self) -> str:
        """Short status: per book valid/INVALID, update id, lag, resyncs, bad messages (the
        invalid ones first, two at most), then how many more and what was dropped."""
        now = self._now()
        books = sorted(self._books.items(), key=lambda kv: (kv[1].sync.valid, kv[0]))
        parts = []
        for symbol, b in books[:2]:
            sync = b.sync
            lag = f"{(now - b.last_event_ns) / 1e6:.0f} ms" if b.last_event_ns else "-"
            parts.append(
                f"{symbol} {'valid' if sync.valid else 'INVALID'} @{sync.last_update_id} "
                f"lag {lag} resyncs {sync.stats.resyncs} bad {b.bad}"
            )
        if len(books) > 2:
            valid = sum(b.sync.valid for _, b in books[2:])
            parts.append(f"+{len(books) - 2} books ({valid} valid)")
        if not books:
            parts.append("no book yet")
        if self.dropped:
            parts.append(f"dropped {self.dropped}")
        return ", ".join(parts)  # the kernel joins the fragments with "; "


def _sample(msg: Any) -> str:
    """A short description of a message for a log line (levels as counts, not bytes)."""
    if type(msg) is DepthDiff:
        return (
            f"DepthDiff({msg.symbol!r}, U={msg.first_update_id}, u={msg.last_update_id}, "
            f"pu={msg.prev_update_id}, {len(msg.bids)} + {len(msg.asks)} level bytes)"
        )
    if type(msg) is DepthSnapshot:
        return (
            f"DepthSnapshot({msg.symbol!r}, L={msg.last_update_id}, "
            f"{len(msg.bids)} + {len(msg.asks)} level bytes)"
        )
    return repr(msg)[:160]


@hookimpl
def tickbus_config_type() -> type[BookConfig]:
    return BookConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Books:
    warmup(ctx.log)  # compile (or load) the numba kernels now, not on the first tick
    books = Books(ctx, ctx.config)
    ctx.subscribe("md.depth.", books.on_depth)
    ctx.subscribe("md.status.", books.on_status)
    return books


@hookimpl
def tickbus_status(ctx: PluginContext) -> str | None:
    books: Books = ctx.component
    return books.status()


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    books: Books = ctx.component
    for symbol, b in books._books.items():
        ctx.log.info(
            "%s: update id %d, valid %s, %s, bad %d",
            symbol,
            b.sync.last_update_id,
            b.sync.valid,
            b.sync.stats.as_dict(),
            b.bad,
        )
    if books.dropped:
        ctx.log.info("dropped %d messages of symbols without a book", books.dropped)
