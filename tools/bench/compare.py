"""tickbus's market-data path and the plain-Python baseline behind one interface, so the
benchmarks run the very same loop over both, and a check that they give the same output.

* :class:`TickbusFeedBook` - ``FrameParser`` (numba) + one ``BookSync`` per symbol (numba
  book) + ``book_top``: what ``replay_feed``/``binance_feed`` and the ``book`` plugin do per
  frame, without the bus.
* :class:`~tools.bench.baseline_book.BaselineFeed` - msgspec + dict + bisect, no numba.

Both take ``on_frame(frame, ts_recv_ns)`` / ``on_rest(body, symbol, ts_recv_ns)`` and return
the ``BookTop`` after an applied depth event (or the snapshot that synced the book), the
``Trade``/``BookTicker`` of a trade/ticker frame, or None.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.binance.parse import FrameError, FrameParser
from tickbus.plugins.book.sync import Action, BookSync
from tickbus.schemas import BookTicker, BookTop, DepthDiff, Trade

from .baseline_book import BaselineFeed, Market

__all__ = [
    "SHARED_SPOT",
    "FeedBook",
    "Frame",
    "Market",
    "Mismatch",
    "TickbusFeedBook",
    "default_capture",
    "replay",
    "verify",
]

Out = BookTop | Trade | BookTicker | None
Frame = tuple[int, str, str | None, bytes]

_ROOT = Path(__file__).resolve().parents[2]
SHARED_SPOT = _ROOT.parent / "shared" / "data" / "binance" / "hftbacktest" / "examples" / "spot"
_BIG = [SHARED_SPOT / "btcusdt_20240808.gz", SHARED_SPOT / "btcusdt_20240809.gz"]


def default_capture() -> list[Path]:
    """The 11-minute spot BTCUSDT capture in ``../shared/data`` when present, else the
    3-minute sample shipped with tickbus."""
    return _BIG if all(p.exists() for p in _BIG) else [SAMPLE]


class FeedBook(Protocol):
    """What the replay loop drives."""

    bad: int

    def on_frame(self, frame: bytes, ts_recv_ns: int) -> Out: ...

    def on_rest(self, body: bytes, symbol: str, ts_recv_ns: int) -> BookTop | None: ...


class TickbusFeedBook:
    """tickbus's parser and book sync, per frame, as the plugins run them (minus the bus)."""

    def __init__(self, market: Market = "spot", depth: int = 20) -> None:
        self.market: Market = market
        self.depth = depth
        self.parser = FrameParser()
        self.syncs: dict[str, BookSync] = {}
        self.bad = 0
        self.last_action = -1

    def _sync(self, symbol: str) -> BookSync:
        s = self.syncs.get(symbol)
        if s is None:
            s = self.syncs[symbol] = BookSync(self.market, symbol)
        return s

    def on_frame(self, frame: bytes, ts_recv_ns: int) -> Out:
        try:
            msg = self.parser.parse(frame, ts_recv_ns)
        except FrameError:
            self.bad += 1
            return None
        if isinstance(msg, DepthDiff):
            sync = self.syncs.get(msg.symbol) or self._sync(msg.symbol)
            act = sync.on_diff(msg)
            self.last_action = int(act)
            if act is Action.APPLIED:
                return sync.book_top(self.depth, msg.ts_exchange_ns, msg.ts_recv_ns)
            return None
        return msg

    def on_rest(self, body: bytes, symbol: str, ts_recv_ns: int) -> BookTop | None:
        try:
            snap = self.parser.parse_snapshot(body, symbol, ts_recv_ns)
        except FrameError:
            self.bad += 1
            return None
        sync = self._sync(snap.symbol)
        act = sync.on_snapshot(snap)
        self.last_action = int(act)
        if act is Action.SYNCED:
            return sync.book_top(self.depth, snap.ts_exchange_ns, snap.ts_recv_ns)
        return None


_KIND: dict[type, str] = {BookTop: "book_tops", Trade: "trades", BookTicker: "tickers"}


def replay(feed: FeedBook, frames: Iterable[Frame], symbol: str) -> int:
    """Drive ``feed`` with every frame (REST bodies without a symbol are ``symbol``'s);
    returns the number of frames handed to it. The loop of the throughput figures."""
    on_frame, on_rest = feed.on_frame, feed.on_rest
    n = 0
    for ts, kind, sym, payload in frames:
        if kind == "ws":
            on_frame(payload, ts)
        elif kind == "rest":
            on_rest(payload, sym or symbol, ts)
        else:
            continue
        n += 1
    return n


class Mismatch(AssertionError):
    """The baseline and tickbus disagree: a comparison of the two would be meaningless."""


def verify(frames: Iterable[Frame], market: Market, depth: int, symbol: str) -> dict[str, int]:
    """Run both on every frame; raise :class:`Mismatch` at the first frame where their
    output (``BookTop`` - top ``depth`` levels, best bid/ask, update id, valid -, ``Trade``,
    ``BookTicker``) or the sync outcome differs. Returns counts of what was compared and
    tickbus's sync counters (``gaps``, ``stale``, ``syncs``, ``too_old``, ``crossed``),
    summed over symbols."""
    tb = TickbusFeedBook(market, depth)
    base = BaselineFeed(market, depth)
    counts = {"frames": 0, "book_tops": 0, "trades": 0, "tickers": 0, "no_output": 0}
    for i, (ts, kind, sym, payload) in enumerate(frames):
        if kind == "ws":
            mine: Out = tb.on_frame(payload, ts)
            other: Out = base.on_frame(payload, ts)
        elif kind == "rest":
            mine = tb.on_rest(payload, sym or symbol, ts)
            other = base.on_rest(payload, sym or symbol, ts)
        else:
            continue
        if mine != other or tb.last_action != base.last_action or tb.bad != base.bad:
            raise Mismatch(
                f"frame {i}: tickbus {mine!r} (action {tb.last_action}, bad {tb.bad}) != "
                f"baseline {other!r} (action {base.last_action}, bad {base.bad})"
            )
        counts["frames"] += 1
        key = _KIND.get(type(mine))
        counts[key or "no_output"] += 1
    for name in ("gaps", "stale", "syncs", "too_old", "crossed"):
        counts[name] = sum(getattr(s.stats, name) for s in tb.syncs.values())
    return counts
