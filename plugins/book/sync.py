"""Binance local-order-book synchronisation: a pure state machine, no I/O.

Implements Binance's documented procedure ("How to manage a local order book correctly";
``shared/data/binance/SOURCES.md`` §5.2 spot, §5.3 USD-M / COIN-M):

1. Until a REST snapshot is supplied, diff events are **buffered**.
2. On a snapshot with ``lastUpdateId = L``: buffered events that are already contained in it
   are dropped (spot ``u <= L``; futures ``u < L``). The first remaining event must
   **straddle** the snapshot (spot ``U <= L + 1 <= u``; futures ``U <= L <= u``); if it
   starts later, the snapshot is too old: ask for another one (the buffer is kept).
3. Otherwise the book is built from the snapshot and the buffered events are applied.
4. Every later event must **chain** (spot ``U == previous u + 1``; futures
   ``pu == previous u``). Events already applied (``u <=`` the book's id: duplicates, late
   re-deliveries) are dropped as stale. Anything else is a **gap**: the book is invalid, the
   event starts a new buffer, and a fresh snapshot is needed (back to 1).

A book that ends up crossed (best bid >= best ask) cannot be in sync with the venue, so by
default it is treated like a gap as well.

A message that cannot be real - an update id outside ``0 .. 2**63 - 1`` (``pu`` may be -1:
none), ``U > u``, malformed levels (not a multiple of 16 bytes, a price <= 0, a quantity
< 0) or another symbol - raises :class:`BadMessage` and changes nothing: such an id would
become the book's id and every real event after it would look stale, with the book still
valid. Messages can come from another process over the bus, so this is checked here, not
trusted to the parser.

:class:`BookSync` owns the :class:`~plugins.book.orderbook.OrderBook` it maintains, so a live
feed and a replay drive it the same way: ``on_diff`` for every depth event, ``on_snapshot``
whenever ``need_snapshot`` asked for one and it arrived.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, fields
from typing import Literal

from tickbus.schemas import BookTop, DepthDiff, DepthSnapshot

from .orderbook import BookError, OrderBook, check_levels

__all__ = ["Action", "BadMessage", "BookSync", "Market", "SyncState", "SyncStats"]

Market = Literal["spot", "usdm", "coinm"]

_ID_END = 2**63  # update ids are int64 on the venue and on the wire


class BadMessage(ValueError):
    """A depth message that cannot be real; the :class:`BookSync` did not change.

    ``kind`` is stable (count and log by it): ``"ids"``, ``"levels"`` or ``"symbol"``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_diff(d: DepthDiff) -> None:
    """Raise :class:`BadMessage` unless ``d``'s ids and levels can be real."""
    if not (0 <= d.first_update_id <= d.last_update_id < _ID_END) or not (
        -1 <= d.prev_update_id < _ID_END
    ):
        raise BadMessage(
            f"{d.symbol}: update ids out of range: U={d.first_update_id} "
            f"u={d.last_update_id} pu={d.prev_update_id}",
            "ids",
        )
    try:
        check_levels(d.bids, d.asks)
    except BookError as err:
        raise BadMessage(f"{d.symbol}: {err}", "levels") from None


def check_snapshot(s: DepthSnapshot) -> None:
    """Raise :class:`BadMessage` unless ``s``'s id and levels can be real."""
    if not 0 <= s.last_update_id < _ID_END:
        raise BadMessage(
            f"{s.symbol}: snapshot lastUpdateId out of range: {s.last_update_id}", "ids"
        )
    try:
        check_levels(s.bids, s.asks)
    except BookError as err:
        raise BadMessage(f"{s.symbol}: snapshot: {err}", "levels") from None


class SyncState(enum.Enum):
    """Where the book is in the procedure."""

    WAIT_SNAPSHOT = "wait_snapshot"  # buffering; a snapshot is needed
    LIVE = "live"  # built from a snapshot and chained since


_LIVE = SyncState.LIVE


class Action(enum.IntEnum):
    """What :meth:`BookSync.on_diff` / :meth:`BookSync.on_snapshot` did."""

    BUFFERED = 0  # diff kept until a snapshot arrives
    STALE = 1  # diff dropped: already contained in the book/snapshot
    APPLIED = 2  # diff applied, the book moved on
    GAP = 3  # sequence break: book invalid, diff buffered, snapshot needed
    CROSSED = 4  # diff applied but the book crossed: invalid, snapshot needed
    SYNCED = 5  # snapshot accepted, buffered diffs applied, book valid
    SNAPSHOT_TOO_OLD = 6  # snapshot rejected: it ends before the first buffered diff
    IGNORED = 7  # snapshot not needed (book already live)


@dataclass(slots=True)
class SyncStats:
    """Counters of one :class:`BookSync` (monotonic; never reset by resyncs)."""

    applied: int = 0  # diffs applied
    buffered: int = 0  # diffs buffered while waiting for a snapshot
    stale: int = 0  # diffs dropped as already contained
    gaps: int = 0  # sequence breaks detected
    crossed: int = 0  # applies that left the book crossed
    syncs: int = 0  # snapshots accepted (the first sync and every resync)
    resyncs: int = 0  # syncs after the first one (i.e. recoveries)
    too_old: int = 0  # snapshots rejected as older than the buffered stream
    ignored: int = 0  # snapshots supplied while not needed
    overflow: int = 0  # buffered diffs evicted because the buffer was full

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for metrics)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class BookSync:
    """Keeps one symbol's :class:`OrderBook` in sync with a Binance diff-depth stream.

    ``market``: ``"spot"`` (chain on ``U``) or ``"usdm"`` / ``"coinm"`` (chain on ``pu``).
    ``symbol``: messages of another symbol raise :class:`BadMessage` (a ``ValueError``); if
    not given, it is bound to the symbol of the first message. A message that cannot be real
    raises :class:`BadMessage` too, and nothing changes.
    ``max_buffer``: diffs kept while waiting for a snapshot; the oldest are evicted first
    (which can only make an old snapshot unusable, never corrupt the book).
    ``resync_on_crossed``: treat a crossed book as out of sync (default).
    """

    __slots__ = (
        "book",
        "market",
        "symbol",
        "stats",
        "state",
        "resync_on_crossed",
        "_spot",
        "_id",
        "_first",
        "_buffer",
    )

    def __init__(
        self,
        market: Market,
        symbol: str | None = None,
        *,
        book: OrderBook | None = None,
        depth_hint: int = 4096,
        max_buffer: int = 10_000,
        resync_on_crossed: bool = True,
    ) -> None:
        if market not in ("spot", "usdm", "coinm"):
            raise ValueError(f"market must be 'spot', 'usdm' or 'coinm', got {market!r}")
        self.market: Market = market
        self.symbol = symbol
        self.book = book if book is not None else OrderBook(depth_hint)
        self.stats = SyncStats()
        self.state = SyncState.WAIT_SNAPSHOT
        self.resync_on_crossed = resync_on_crossed
        self._spot = market == "spot"
        self._id = -1  # the book's last update id (snapshot L, then each applied u)
        self._first = False  # next event is the first after the snapshot (must straddle)
        self._buffer: deque[DepthDiff] = deque(maxlen=max_buffer)
        self.book.clear()

    # ------------------------------------------------------------------ queries

    @property
    def need_snapshot(self) -> bool:
        """True while a REST snapshot must be fetched and passed to :meth:`on_snapshot`."""
        return self.state is SyncState.WAIT_SNAPSHOT

    @property
    def valid(self) -> bool:
        """True when the book may be used: live (snapshot + unbroken chain) and not crossed."""
        return self.state is SyncState.LIVE and not self.book.crossed()

    @property
    def last_update_id(self) -> int:
        """Update id the book reflects (-1 before the first snapshot or after a gap)."""
        return self._id if self.state is SyncState.LIVE else -1

    @property
    def buffered(self) -> int:
        """Number of diffs currently waiting for a snapshot."""
        return len(self._buffer)

    # ------------------------------------------------------------------ inputs

    def book_top(self, n: int, ts_exchange_ns: int, ts_recv_ns: int) -> BookTop:
        """The ``md.book`` message for the current book: best level, top ``n`` levels per side
        (``Levels``), ``valid`` and the update id; timestamps of the tick that caused it."""
        book = self.book
        bp, bq, ap, aq = book.best()
        bids, asks = book.top(n)
        live = self.state is SyncState.LIVE
        valid = live and not (bp and ap and bp >= ap)
        return BookTop(
            self.symbol or "",
            self._id if live else -1,
            valid,
            bp,
            bq,
            ap,
            aq,
            bids,
            asks,
            ts_exchange_ns,
            ts_recv_ns,
        )

    def on_diff(self, d: DepthDiff) -> Action:
        """Feed one depth event, in arrival order. Returns what was done with it.

        Raises :class:`BadMessage` (nothing changed) for an event that cannot be real."""
        if d.symbol != self.symbol:
            if self.symbol is not None:
                raise BadMessage(f"BookSync({self.symbol}) got a diff for {d.symbol}", "symbol")
            self.symbol = d.symbol
        if self.state is _LIVE:
            # hot path, inlined: a live book and an event that chains on the previous one,
            # with in-range ids (integer compares); the levels are checked by the apply
            # kernel before it writes anything
            if (
                not self._first
                and (
                    d.first_update_id == self._id + 1
                    if self._spot
                    else d.prev_update_id == self._id
                )
                and 0 <= d.first_update_id <= d.last_update_id < _ID_END
                and -1 <= d.prev_update_id < _ID_END
            ):
                try:
                    crossed = self.book.apply_levels(d.bids, d.asks)
                except BookError as err:
                    raise BadMessage(f"{d.symbol}: {err}", "levels") from None
                self._id = d.last_update_id
                self.stats.applied += 1
                if crossed and self.resync_on_crossed:
                    self.stats.crossed += 1
                    self._invalidate(None)
                    return Action.CROSSED
                return Action.APPLIED
            check_diff(d)
            return self._live(d)
        check_diff(d)  # before it is buffered: a buffered diff is applied later, unchecked
        self._buffer_diff(d)
        return Action.BUFFERED

    def on_snapshot(self, s: DepthSnapshot) -> Action:
        """Supply a REST snapshot. Returns ``SYNCED`` (book valid), ``SNAPSHOT_TOO_OLD``
        (fetch another), ``GAP`` (the buffered diffs themselves have a hole: fetch another)
        or ``IGNORED`` (the book is live; the snapshot is not used); ``CROSSED`` if the
        rebuilt book is crossed (fetch another)."""
        if s.symbol != self.symbol:
            if self.symbol is not None:
                raise BadMessage(f"BookSync({self.symbol}) got a snapshot for {s.symbol}", "symbol")
            self.symbol = s.symbol
        check_snapshot(s)  # before anything: a bad L would drop the buffered diffs below
        if self.state is SyncState.LIVE:
            self.stats.ignored += 1
            return Action.IGNORED
        L = s.last_update_id
        buf = self._buffer
        while buf and self._contained(buf[0], L):
            buf.popleft()
            self.stats.stale += 1
        if buf and not self._straddles(buf[0], L):
            self.stats.too_old += 1
            return Action.SNAPSHOT_TOO_OLD
        self.book.apply_snapshot(s.bids, s.asks)
        self._id = L
        self._first = True
        self.state = SyncState.LIVE
        self.stats.syncs += 1
        if self.stats.syncs > 1:
            self.stats.resyncs += 1
        pending = list(buf)
        buf.clear()
        for i, d in enumerate(pending):
            act = self._live(d)
            if act is Action.GAP or act is Action.CROSSED:
                for later in pending[i + 1 :]:
                    self._buffer_diff(later, count=False)
                return act
        if self.resync_on_crossed and self.book.crossed():  # a crossed snapshot is bad too
            self._invalidate(None)
            self.stats.crossed += 1
            return Action.CROSSED
        return Action.SYNCED

    def reset(self) -> None:
        """Forget the book and the buffer (e.g. after a reconnect: events were lost)."""
        self._buffer.clear()
        self._invalidate(None)

    # ------------------------------------------------------------------ internals

    def _contained(self, d: DepthDiff, L: int) -> bool:
        """The event adds nothing to a snapshot with lastUpdateId ``L``."""
        if self._spot:
            return d.last_update_id <= L
        return d.last_update_id < L  # futures keep u == L (it is the first to apply)

    def _straddles(self, d: DepthDiff, L: int) -> bool:
        """A non-contained event can be the first one applied on top of snapshot ``L``."""
        if self._spot:
            return d.first_update_id <= L + 1 <= d.last_update_id
        return d.first_update_id <= L <= d.last_update_id

    def _live(self, d: DepthDiff) -> Action:
        bid = self._id
        if self._first:
            if self._contained(d, bid):
                self.stats.stale += 1
                return Action.STALE
            if not self._straddles(d, bid):
                self._invalidate(d)
                return Action.GAP
            self._first = False
        elif self._spot:
            if d.first_update_id != bid + 1:
                if d.last_update_id <= bid:  # duplicate / late re-delivery
                    self.stats.stale += 1
                    return Action.STALE
                self._invalidate(d)
                return Action.GAP
        elif d.prev_update_id != bid:
            if d.last_update_id <= bid:
                self.stats.stale += 1
                return Action.STALE
            self._invalidate(d)
            return Action.GAP
        crossed = self.book.apply_levels(d.bids, d.asks)
        self._id = d.last_update_id
        self.stats.applied += 1
        if crossed and self.resync_on_crossed:
            self.stats.crossed += 1
            self._invalidate(None)
            return Action.CROSSED
        return Action.APPLIED

    def _invalidate(self, d: DepthDiff | None) -> None:
        """Drop the book; ``d`` (the event that broke the chain) starts the new buffer."""
        if d is not None:
            self.stats.gaps += 1
        self.state = SyncState.WAIT_SNAPSHOT
        self.book.clear()
        self._id = -1
        self._first = False
        self._buffer.clear()
        if d is not None:
            self._buffer_diff(d, count=False)

    def _buffer_diff(self, d: DepthDiff, count: bool = True) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.stats.overflow += 1
        self._buffer.append(d)
        if count:
            self.stats.buffered += 1
