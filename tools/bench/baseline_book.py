"""The fair baseline of the book benchmarks: Binance frames -> top of book in plain Python.

What a careful engineer writes without numba, so that a figure of tickbus means something
next to it (``docs``: shared/DESIGN.md, "Performance budget"):

* **decode**: ``msgspec`` typed Structs per stream (``gc=False``; levels as
  ``list[tuple[str, str]]``, the fastest typed shape measured: an ``array_like`` Struct per
  level and ``list[list[str]]`` are 1.5x slower), the stream picked from the envelope's
  ``stream`` name without decoding anything twice;
* **exact integers**: Binance formats every price (and every quantity) of a symbol with a
  fixed number of decimals, so ``int(s.replace(".", ""))`` is the exact value in units of
  ``10**-d``, times a precomputed scale to reach ``schemas.SCALE``. The decimals are learnt
  per symbol from the first value seen; each string is checked to have its point at that
  position, and a list with one that does not takes an exact, validating slow path (no
  float anywhere); a depth frame with a ``-`` anywhere is refused (Binance sends no signs);
* **book**: per side a sorted ``list`` of keys kept with ``bisect`` plus a ``dict``
  key -> qty; the key is ``+price`` for bids and ``-price`` for asks, so both lists are
  ascending with the best level **at the end** (an insert near the top shifts few items) and
  top-N is a slice from the end - no sort, no heap per event;
* **sync**: the same Binance procedure as ``plugins/book/sync.py`` (buffer until the
  snapshot, drop what it contains, first event must straddle it, chain on ``U == u + 1``
  (spot) or ``pu == u`` (futures), stale events dropped, a gap or a crossed book invalidates);
* **output**: the same ``schemas.BookTop`` tickbus publishes (top-N packed with a
  precompiled ``struct.Struct``), so the two can be compared for equality on every event.

It checks less than tickbus's parser, which also refuses what ``int()`` takes after the
point check (``+``, ``_``, spaces, non-ASCII digits) and zero prices: the baseline is not
handicapped by validation that tickbus does and it does not.

Tried and not kept (BTCUSDT frames, same machine): a dict memo of converted strings (no
gain: a lookup costs about what the conversion does); removing every ``.`` from the frame
bytes and letting msgspec's lax mode parse ints (refuses the leading zeros of ``"0.001"``;
with a regex stripping them ~20% faster on the parse step, but it rewrites any other string
of the frame that has a point or a leading zero: not exact in general).

Read-side helpers for the ``.gz`` replay baseline (:func:`iter_capture_lines`) decompress in
the calling thread with ``gzip`` in 1 MiB reads and split lines in bulk.
"""

from __future__ import annotations

import gzip
import struct
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterator
from operator import neg
from pathlib import Path
from typing import Generic, Literal, TypeVar

import msgspec

from tickbus.schemas import BookTicker, BookTop, Trade

__all__ = [
    "APPLIED",
    "BUFFERED",
    "CROSSED",
    "GAP",
    "IGNORED",
    "STALE",
    "SYNCED",
    "TOO_OLD",
    "BaselineBook",
    "BaselineFeed",
    "BaselineSync",
    "DepthEvent",
    "Diff",
    "Fixed",
    "RestDepth",
    "iter_capture_lines",
]

_MS = 1_000_000  # Binance timestamps are ms; tickbus's are ns
_DECIMALS = 8  # SCALE = 10**8

# what BaselineSync did with an input (the same outcomes as tickbus's sync.Action)
BUFFERED, STALE, APPLIED, GAP, CROSSED, SYNCED, TOO_OLD, IGNORED = range(8)

Pairs = list[tuple[str, str]]
IntPairs = list[tuple[int, int]]
Market = Literal["spot", "usdm", "coinm"]
E = TypeVar("E")


# --------------------------------------------------------------------------- schema


class DepthEvent(msgspec.Struct, gc=False):
    """A ``depthUpdate`` payload (spot; futures add ``pu``)."""

    E: int
    s: str
    U: int
    u: int
    b: Pairs
    a: Pairs
    pu: int = -1


class _TradeEvent(msgspec.Struct, gc=False):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _TickerEvent(msgspec.Struct, gc=False):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    E: int = 0  # futures only


class _Frame(msgspec.Struct, Generic[E], gc=False):
    """A combined-stream envelope; ``stream`` is read from the bytes, not decoded."""

    data: E


class RestDepth(msgspec.Struct, gc=False):
    """A REST ``/depth`` body."""

    lastUpdateId: int
    bids: Pairs
    asks: Pairs
    E: int = 0  # futures only


decode_depth = msgspec.json.Decoder(_Frame[DepthEvent]).decode
decode_trade = msgspec.json.Decoder(_Frame[_TradeEvent]).decode
decode_ticker = msgspec.json.Decoder(_Frame[_TickerEvent]).decode
decode_rest = msgspec.json.Decoder(RestDepth).decode


# --------------------------------------------------------------------------- numbers


def _exact(text: str, scale_digits: int = _DECIMALS) -> int:
    """Exact decimal string -> int in units of ``10**-scale_digits``; ValueError otherwise."""
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    digits = whole + frac
    if len(frac) > scale_digits or not (digits.isdigit() and digits.isascii()):
        raise ValueError(f"not an unsigned decimal with <= {scale_digits} decimals: {text!r}")
    return int(whole + frac.ljust(scale_digits, "0"))


def _decimals(text: str) -> int:
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


class Fixed:
    """Decimal strings of one symbol -> exact ``SCALE`` ints, for the symbol's fixed number
    of price decimals and quantity decimals (learnt from the first values seen)."""

    __slots__ = ("pos_p", "pos_q", "mul_p", "mul_q", "unit")

    def __init__(self, price: str, qty: str) -> None:
        dp, dq = _decimals(price), _decimals(qty)
        if dp > _DECIMALS or dq > _DECIMALS or not dp or not dq:
            dp = dq = 0  # no fast path: every value takes the exact one
        self.pos_p, self.pos_q = -dp - 1, -dq - 1  # where the point must be
        self.mul_p, self.mul_q = 10 ** (_DECIMALS - dp), 10 ** (_DECIMALS - dq)
        self.unit = self.mul_p == 1 and self.mul_q == 1 and dp > 0

    def pairs(self, raw: Pairs, keys_negated: bool = False) -> IntPairs:
        """``[(price, qty), ...]`` strings -> exact ints (prices negated if asked: ask keys).
        Raises ValueError for a value that is not a decimal of <= 8 decimals; signs are the
        caller's to refuse (one ``-`` check per frame instead of one per value)."""
        n = len(raw)
        if n:
            i, j = self.pos_p, self.pos_q
            try:
                if self.unit:  # the common case (spot): no multiplication at all
                    if keys_negated:
                        out = [
                            (-int(p.replace(".", "")), int(q.replace(".", "")))
                            for p, q in raw
                            if p[i] == "." == q[j]
                        ]
                    else:
                        out = [
                            (int(p.replace(".", "")), int(q.replace(".", "")))
                            for p, q in raw
                            if p[i] == "." == q[j]
                        ]
                elif i != -1:
                    mp, mq = (-self.mul_p if keys_negated else self.mul_p), self.mul_q
                    out = [
                        (int(p.replace(".", "")) * mp, int(q.replace(".", "")) * mq)
                        for p, q in raw
                        if p[i] == "." == q[j]
                    ]
                else:
                    out = []
                if len(out) == n:
                    return out
            except (IndexError, ValueError):
                pass  # a value not in the symbol's format: the exact path decides
        sign = -1 if keys_negated else 1
        return [(sign * _exact(p), _exact(q)) for p, q in raw]

    def one(self, text: str, price: bool) -> int:
        """One price (or quantity) -> exact int."""
        i, mul = (self.pos_p, self.mul_p) if price else (self.pos_q, self.mul_q)
        if i != -1 and len(text) > -i and text[i] == "." and text[0] != "-":
            try:
                return int(text.replace(".", "")) * mul
            except ValueError:
                pass
        return _exact(text)


# --------------------------------------------------------------------------- book


_EXACT = Fixed("0", "0")  # no fast path: every value takes the exact one


class BaselineBook:
    """Sorted key lists (``bisect``) + dicts key -> qty, one per side; see the module doc."""

    __slots__ = ("bk", "bq", "ak", "aq")

    def __init__(self) -> None:
        self.bk: list[int] = []  # bid prices, ascending (best last)
        self.bq: dict[int, int] = {}
        self.ak: list[int] = []  # -ask prices, ascending (best last)
        self.aq: dict[int, int] = {}

    def clear(self) -> None:
        self.bk.clear()
        self.bq.clear()
        self.ak.clear()
        self.aq.clear()

    def snapshot(self, bids: IntPairs, ask_keys: IntPairs) -> None:
        """Replace the book: ``bids`` as (price, qty), asks as (-price, qty); qty 0 skipped."""
        self.bq = {p: q for p, q in bids if q}
        self.aq = {k: q for k, q in ask_keys if q}
        self.bk = sorted(self.bq)
        self.ak = sorted(self.aq)

    def apply(self, bids: IntPairs, ask_keys: IntPairs) -> bool:
        """Set each level to its absolute qty (0 deletes; absent deletes are no-ops); asks
        keyed by -price. Returns True if the book is now crossed."""
        for keys, qty, levels in ((self.bk, self.bq, bids), (self.ak, self.aq, ask_keys)):
            for k, q in levels:
                if q:
                    if k not in qty:
                        insort(keys, k)
                    qty[k] = q
                elif qty.pop(k, None) is not None:
                    del keys[bisect_left(keys, k)]
        bk, ak = self.bk, self.ak
        return bool(bk and ak and bk[-1] >= -ak[-1])

    def best(self) -> tuple[int, int, int, int]:
        bk, ak = self.bk, self.ak
        bp = bk[-1] if bk else 0
        ap = -ak[-1] if ak else 0
        return bp, self.bq[bp] if bp else 0, ap, self.aq[-ap] if ap else 0

    def top(self, n: int) -> tuple[bytes, bytes]:
        """Top ``n`` levels per side as packed ``<i8`` (price, qty) pairs, best first."""
        kb = self.bk[: -n - 1 : -1]
        ka = self.ak[: -n - 1 : -1]
        # interleave by slice assignment: ~30% faster than chain(zip(...)) measured
        bids = kb * 2
        bids[1::2] = map(self.bq.__getitem__, kb)
        bids[::2] = kb
        asks = ka * 2
        asks[1::2] = map(self.aq.__getitem__, ka)
        asks[::2] = map(neg, ka)
        return _packer(len(kb)).pack(*bids), _packer(len(ka)).pack(*asks)


_PACKERS: dict[int, struct.Struct] = {}


def _packer(n: int) -> struct.Struct:
    p = _PACKERS.get(n)
    if p is None:
        p = _PACKERS[n] = struct.Struct(f"<{2 * n}q")
    return p


# --------------------------------------------------------------------------- sync


class Diff:
    """A depth event with its levels already exact ints (asks keyed by -price)."""

    __slots__ = ("U", "u", "pu", "bids", "ask_keys")

    def __init__(self, U: int, u: int, pu: int, bids: IntPairs, ask_keys: IntPairs) -> None:
        self.U, self.u, self.pu, self.bids, self.ask_keys = U, u, pu, bids, ask_keys


class BaselineSync:
    """One symbol's book kept in sync with a Binance diff-depth stream (the rules of
    ``plugins/book/sync.py``, same outcomes)."""

    __slots__ = ("book", "spot", "live", "first", "id", "buf", "symbol")

    def __init__(self, market: Market, symbol: str, max_buffer: int = 10_000) -> None:
        self.book = BaselineBook()
        self.spot = market == "spot"
        self.live = False
        self.first = False  # next event is the first after the snapshot (must straddle)
        self.id = -1
        self.buf: deque[Diff] = deque(maxlen=max_buffer)
        self.symbol = symbol

    def _apply(self, d: Diff) -> int:
        crossed = self.book.apply(d.bids, d.ask_keys)
        self.id = d.u
        if crossed:
            self._invalidate(None)
            return CROSSED
        return APPLIED

    def on_diff(self, d: Diff) -> int:
        if self.live:
            if not self.first and (d.U == self.id + 1 if self.spot else d.pu == self.id):
                return self._apply(d)
            return self._live(d)
        self.buf.append(d)
        return BUFFERED

    def on_snapshot(self, last_update_id: int, bids: IntPairs, ask_keys: IntPairs) -> int:
        if self.live:
            return IGNORED
        L = last_update_id
        buf = self.buf
        while buf and (buf[0].u <= L if self.spot else buf[0].u < L):
            buf.popleft()
        if buf and not self._straddles(buf[0], L):
            return TOO_OLD
        self.book.snapshot(bids, ask_keys)
        self.id, self.first, self.live = L, True, True
        pending = list(buf)
        buf.clear()
        for i, d in enumerate(pending):
            act = self._live(d)
            if act == GAP or act == CROSSED:
                buf.extend(pending[i + 1 :])
                return act
        bk, ak = self.book.bk, self.book.ak
        if bk and ak and bk[-1] >= -ak[-1]:
            self._invalidate(None)
            return CROSSED
        return SYNCED

    def _straddles(self, d: Diff, L: int) -> bool:
        return d.U <= L + 1 <= d.u if self.spot else d.U <= L <= d.u

    def _live(self, d: Diff) -> int:
        if self.first:
            if d.u <= self.id if self.spot else d.u < self.id:
                return STALE
            if not self._straddles(d, self.id):
                self._invalidate(d)
                return GAP
            self.first = False
        elif (d.U != self.id + 1) if self.spot else (d.pu != self.id):
            if d.u <= self.id:
                return STALE
            self._invalidate(d)
            return GAP
        return self._apply(d)

    def _invalidate(self, d: Diff | None) -> None:
        self.live = self.first = False
        self.id = -1
        self.book.clear()
        self.buf.clear()
        if d is not None:
            self.buf.append(d)

    def top(self, n: int, ts_exchange_ns: int, ts_recv_ns: int) -> BookTop:
        """The ``BookTop`` tickbus's book plugin would publish now."""
        bp, bq, ap, aq = self.book.best()
        bids, asks = self.book.top(n)
        valid = self.live and not (bp and ap and bp >= ap)
        return BookTop(
            self.symbol,
            self.id if self.live else -1,
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


# --------------------------------------------------------------------------- feed + book


class BaselineFeed:
    """Frames in, messages out: depth events (levels converted to exact ints as the frame
    is parsed) go to the symbol's :class:`BaselineSync` (a ``BookTop`` comes back when the
    book moved), trades and book tickers become the same ``Trade`` / ``BookTicker``
    messages tickbus's feed publishes. Combined-stream frames (``{"stream":...,"data":...}``),
    as recorded; a frame that does not decode is counted in ``bad`` and skipped (it never
    reaches the book)."""

    def __init__(self, market: Market = "spot", depth: int = 20) -> None:
        self.market: Market = market
        self.depth = depth
        self.syncs: dict[str, BaselineSync] = {}
        self.bad = 0
        self.last_action = -1
        self._kinds: dict[bytes, int] = {}  # stream name -> 0 depth, 1 trade, 2 ticker, 3 other
        self._fixed: dict[str, Fixed] = {}  # number format per symbol

    def _sync(self, symbol: str) -> BaselineSync:
        s = self.syncs.get(symbol)
        if s is None:
            s = self.syncs[symbol] = BaselineSync(self.market, symbol)
        return s

    def _kind(self, stream: bytes) -> int:
        kind = 3
        if b"@depth" in stream:
            kind = 0
        elif stream.endswith(b"@trade"):
            kind = 1
        elif stream.endswith(b"@bookTicker"):
            kind = 2
        if len(self._kinds) < 4096:  # bounded: garbage stream names cannot grow it
            self._kinds[stream] = kind
        return kind

    def _learn(self, symbol: str, price: str, qty: str) -> Fixed:
        fx = Fixed(price, qty)
        if len(self._fixed) < 4096:  # bounded: garbage symbols cannot grow it
            self._fixed[symbol] = fx
        return fx

    def _fixed_for(self, symbol: str, levels: Pairs) -> Fixed:
        if levels:
            return self._learn(symbol, *levels[0])
        return _EXACT  # nothing to learn the format from yet

    def on_frame(self, frame: bytes, ts_recv_ns: int) -> BookTop | Trade | BookTicker | None:
        """One WS frame: the BookTop after an applied depth event, the Trade or BookTicker,
        or None (buffered/stale/gap/bad/other)."""
        end = frame.find(b'"', 11)
        if not frame.startswith(b'{"stream":"') or end < 0:
            self.bad += 1
            return None
        stream = frame[11:end]
        kind = self._kinds.get(stream)
        if kind is None:
            kind = self._kind(stream)
        try:
            if kind == 0:
                if b"-" in frame:  # Binance sends no signs: "-1.0" would pass int()
                    raise ValueError("signed number in a depth frame")
                ev = decode_depth(frame).data
                fx = self._fixed.get(ev.s) or self._fixed_for(ev.s, ev.b or ev.a)
                d = Diff(ev.U, ev.u, ev.pu, fx.pairs(ev.b), fx.pairs(ev.a, True))
                sync = self.syncs.get(ev.s) or self._sync(ev.s)
                act = self.last_action = sync.on_diff(d)
                if act == APPLIED:
                    return sync.top(self.depth, ev.E * _MS, ts_recv_ns)
                return None
            if kind == 1:
                t = decode_trade(frame).data
                fx = self._fixed.get(t.s) or self._learn(t.s, t.p, t.q)
                return Trade(
                    t.s, t.t, fx.one(t.p, True), fx.one(t.q, False), t.m, t.T * _MS, ts_recv_ns
                )
            if kind == 2:
                k = decode_ticker(frame).data
                fx = self._fixed.get(k.s) or self._learn(k.s, k.b, k.B)
                one = fx.one
                return BookTicker(
                    k.s,
                    k.u,
                    one(k.b, True),
                    one(k.B, False),
                    one(k.a, True),
                    one(k.A, False),
                    k.E * _MS,
                    ts_recv_ns,
                )
        except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
            self.bad += 1
        return None

    def on_rest(self, body: bytes, symbol: str, ts_recv_ns: int) -> BookTop | None:
        """A REST depth snapshot of ``symbol``: the BookTop if the book is now synced."""
        try:
            if b"-" in body:  # Binance sends no signs: "-1.0" would pass int()
                raise ValueError("signed number in a depth snapshot")
            snap = decode_rest(body)
            fx = self._fixed.get(symbol) or self._fixed_for(symbol, snap.bids or snap.asks)
            bids, asks = fx.pairs(snap.bids), fx.pairs(snap.asks, True)
        except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
            self.bad += 1
            return None
        sync = self._sync(symbol)
        act = self.last_action = sync.on_snapshot(snap.lastUpdateId, bids, asks)
        if act == SYNCED:
            return sync.top(self.depth, snap.E * _MS, ts_recv_ns)
        return None


# --------------------------------------------------------------------------- reading


def iter_capture_lines(*paths: Path) -> Iterator[tuple[int, str, None, bytes]]:
    """``(ts_ns, kind, None, payload)`` per line of hftbacktest captures (``<ns> <json>``,
    gzip; the shape of ``read_frames`` items, symbol unknown), the files read one after the
    other (they follow each other in time). ``kind``: ``"ws"`` (a combined-stream frame),
    ``"rest"`` (a REST body) or ``"bad"`` (no timestamp: the caller counts it; ``payload``
    is the line)."""
    for path in paths:
        with gzip.open(path, "rb") as fh:
            for lines in _line_blocks(fh.read):
                for line in lines:
                    ts, _, payload = line.partition(b" ")
                    if ts.isdigit() and payload:
                        kind = "ws" if payload.startswith(b'{"stream"') else "rest"
                        yield int(ts), kind, None, payload
                    elif line:
                        yield 0, "bad", None, line


def _line_blocks(read: Callable[[int], bytes]) -> Iterator[list[bytes]]:
    """The lines of a file in blocks (1 MiB reads, one ``split`` per block)."""
    rest = b""
    while chunk := read(1 << 20):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]
