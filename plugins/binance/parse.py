"""Binance market-data frames -> tickbus messages with exact fixed-point integers.

One :class:`FrameParser` per feed (it owns a scratch buffer, so one per thread). Input is the
raw bytes of a WS frame - combined-stream envelope ``{"stream":..,"data":{..}}`` or a raw stream
payload - or a REST depth body; output is a ``schemas`` Struct (:class:`~schemas.DepthDiff`,
:class:`~schemas.DepthSnapshot`, :class:`~schemas.Trade`, :class:`~schemas.BookTicker`) whose
prices and quantities are ``SCALE = 10**8`` integers and whose book levels are packed
``Levels`` bytes.

How (alternatives measured in ``tools/bench/bench_book.py``):

* **depth frames** (most of the bytes on the wire): one numba pass, :func:`_scan_depth`,
  validates the whole JSON document, reads the header (``e E T s U u pu``) and converts every
  ``["price","qty"]`` pair straight from the ASCII digits into int64 fixed-point, into a
  reused scratch buffer that is copied out once as ``Levels`` bytes. It only *accepts* the
  canonical shape Binance sends (ASCII, no escapes, integer ids, documented key types);
  anything else falls back to the general path, so the two always agree (a differential
  fuzz test on mutated real frames checks it). Measured on real BTCUSDT frames: ~3.5 us p50
  vs ~5 us for msgspec + the level kernel and ~25 us for msgspec lists + Python ``int``.
* **spot bookTicker and trade frames** (~93% of the frames of a spot capture): another
  numba pass, :func:`_scan_small`, matches the exact byte layout Binance sends (envelope,
  keys in order, no whitespace, plain ASCII, the same number kernel) and returns every field;
  anything else goes to the general path, which would give the same message (a differential
  fuzz test checks it). It keeps the GIL, and both fast kernels are called through their
  compiled entry points (no per-call type dispatch). Measured on real BTCUSDT frames (same
  process, interleaved): ~0.7 us vs ~1.75 us through msgspec + :func:`_scan`.
* **general path** (aggTrade, futures tickers/trades, unusual frames, REST bodies):
  ``msgspec`` decodes against a typed Struct, which validates the JSON and types every
  scalar; level arrays (and bookTicker's ``b``/``a``, whose type changes per event) are
  ``msgspec.Raw``, skipped rather than built as Python strings. Then :func:`_scan` walks the
  frame once more and converts the prices/quantities with the same number kernel.
* numbers: digits with an optional single ``.``, at most 8 significant decimals (trailing
  zeros beyond are fine), no sign/exponent/NaN/whitespace inside the string, within int64;
  level prices must be > 0.
* ids and times: every update/trade id is in ``0 .. 2**63 - 1`` and ``U <= u``; every venue
  time (``E``, ``T``, ms) lies in 2000..2100, so its ns value always fits int64. Both fast
  paths check this with integer compares; an out-of-range value would otherwise become book
  state (an update id no real event can follow) or overflow an encoder downstream.

Everything that is not exactly what Binance documents raises :class:`FrameError` - one
exception type, a clear message and a stable :attr:`FrameError.kind`, never a
partially-parsed message.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Final

import msgspec
import numba
import numpy as np
from numba import njit

from tickbus.kernel import jit
from tickbus.schemas import SCALE, BookTicker, DepthDiff, DepthSnapshot, Trade

__all__ = [
    "FrameError",
    "FrameParser",
    "MarketMsg",
    "parse_fixed",
    "parse_frame",
    "parse_snapshot",
    "topic_of",
]

_log = logging.getLogger(__name__)

MarketMsg = DepthDiff | Trade | BookTicker
"""What a WS frame parses into."""

_FAMILY: Final = {DepthDiff: "md.depth", Trade: "md.trade", BookTicker: "md.ticker"}


def topic_of(msg: MarketMsg) -> str:
    """The bus topic of a parsed frame: ``md.depth|md.trade|md.ticker.<SYMBOL>`` (feeds
    cache it per type and symbol; this is their cold path)."""
    return f"{_FAMILY[type(msg)]}.{msg.symbol}"


_MS: Final = 1_000_000  # Binance timestamps are ms; ours are ns
_DECIMALS: Final = 8
_MAX_I64: Final = 2**63 - 1
assert 10**_DECIMALS == SCALE, "the level kernel hard-codes 8 decimals"


_TS_MIN_MS: Final = 946_684_800_000  # 2000-01-01: venue times (E, T) before it are absurd
_TS_END_MS: Final = 4_102_444_800_000  # 2100-01-01 (x 1e6 still far below 2**63)

FRAME_ERROR_KINDS: Final = frozenset(
    {
        "json",  # not a JSON document of the expected shape (msgspec refused it)
        "event",  # no or an unsupported event type
        "missing",  # a required field is absent
        "type",  # a field of the wrong JSON type that msgspec leaves to us
        "ids",  # an update/trade id out of 0..2**63-1, or U > u
        "time",  # a venue time (E, T) outside 2000..2100
        "number",  # a price/qty that is not a plain unsigned decimal string
        "decimals",  # a price/qty with more than 8 significant decimals
        "range",  # a price/qty beyond int64 fixed-point
        "zero_price",  # a level with price 0
        "duplicate",  # a repeated level array key
        "syntax",  # malformed JSON or level array found by a kernel
        "symbol",  # no symbol (snapshot body without one, none given)
    }
)


class FrameError(ValueError):
    """A frame that is not a well-formed Binance message of a supported type.

    ``kind`` (one of :data:`FRAME_ERROR_KINDS`) is stable: count and log by it, never by the
    message text (which quotes the frame and, for JSON errors, msgspec's own wording)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------- msgspec schema


class _Event(msgspec.Struct):
    """Union of the fields of every supported event; absent fields keep their default.

    ``b`` and ``a`` change type with the event (level arrays in depth, price strings in
    bookTicker, an int id as aggTrade ``a``), so they stay ``Raw`` and are read per type."""

    e: str | None = None
    E: int | None = None
    T: int | None = None
    s: str | None = None
    U: int | None = None
    u: int | None = None
    pu: int | None = None
    b: msgspec.Raw = msgspec.Raw()
    a: msgspec.Raw = msgspec.Raw()
    B: str | None = None
    A: str | None = None
    t: int | None = None
    p: str | None = None
    q: str | None = None
    m: bool | None = None


class _Frame(_Event):
    """A combined-stream envelope, or (``data`` absent) a raw stream payload."""

    stream: str | None = None
    data: _Event | None = None


class _Rest(msgspec.Struct):
    """REST ``/depth`` body (spot; futures add ``E``/``T``; COIN-M adds ``symbol``/``pair``)."""

    lastUpdateId: int
    bids: msgspec.Raw = msgspec.Raw()
    asks: msgspec.Raw = msgspec.Raw()
    E: int | None = None
    T: int | None = None
    symbol: str | None = None


_frame_decoder = msgspec.json.Decoder(_Frame)  # for the benchmark; parsers own theirs


def _probe() -> None:
    """Nothing: numba picks a cache location per source file, so it probes this one."""


_CACHE = jit.can_cache(_probe)  # False: compile on every start (warmup says so)


# --------------------------------------------------------------------------- numba kernel

# error codes of the level kernel (low byte of the negated return value; position above)
_E_SYNTAX = 1
_E_NUMBER = 2
_E_DECIMALS = 3
_E_RANGE = 4
_E_ZERO_PRICE = 5
_E_DUPLICATE = 6
_E_MISSING = 7
_E_CAPACITY = 8
_E_SLOW = 9  # depth fast path: not the canonical shape, let the msgspec path decide
_E_IDS = 10  # depth fast path: an update id out of range or U > u
_E_TIME = 11  # depth fast path: E or T outside 2000..2100

_ERRORS = {
    _E_SYNTAX: "malformed JSON / level array",
    _E_NUMBER: "price/qty is not a plain unsigned decimal string",
    _E_DECIMALS: f"price/qty has more than {_DECIMALS} decimals",
    _E_RANGE: "price/qty out of int64 fixed-point range",
    _E_ZERO_PRICE: "price must be > 0",
    _E_DUPLICATE: "duplicate level array key",
    _E_MISSING: "level arrays / price fields not found",
    _E_CAPACITY: "internal scratch buffer too small",
    _E_SLOW: "not a canonical depth frame",
    _E_IDS: "update id out of range",
    _E_TIME: "event time out of range",
}
_KINDS = {
    _E_SYNTAX: "syntax",
    _E_NUMBER: "number",
    _E_DECIMALS: "decimals",
    _E_RANGE: "range",
    _E_ZERO_PRICE: "zero_price",
    _E_DUPLICATE: "duplicate",
    _E_MISSING: "missing",
    _E_CAPACITY: "syntax",
    _E_SLOW: "syntax",
    _E_IDS: "ids",
    _E_TIME: "time",
}

_WHOLE_MAX: Final = _MAX_I64 // SCALE  # 92233720368
_FRAC_MAX_AT_WHOLE_MAX: Final = _MAX_I64 % SCALE


# Not inline="always" (nor _slot, _json_int): numba's IR inlining re-types the body at every
# call site (~20 in _scan_depth); LLVM inlines the compiled call anyway. Measured: cold
# compile of the parser 24.4 -> 18.8 s CPU, frames parsed equally fast. The helpers of
# _scan_small stay inlined: without, bookTicker/trade frames took ~20-50 % longer.
@njit(cache=_CACHE, nogil=True)
def _ws(buf: np.ndarray, p: int, n: int) -> int:
    while p < n and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
        p += 1
    return p


@njit(cache=_CACHE, nogil=True)
def _skip_string(buf: np.ndarray, p: int, n: int) -> int:
    """``p`` at an opening quote -> index after the closing quote (-1 if unterminated)."""
    p += 1
    while p < n:
        c = buf[p]
        if c == 92:  # backslash: skip the escaped char
            p += 2
        elif c == 34:
            return p + 1
        else:
            p += 1
    return -1


@njit(cache=_CACHE, nogil=True)
def _skip_value(buf: np.ndarray, p: int, n: int) -> int:
    """Skip one JSON value (msgspec already validated the document); -1 if it runs off."""
    c = buf[p]
    if c == 34:
        return _skip_string(buf, p, n)
    if c == 123 or c == 91:  # { or [
        depth = 0
        while p < n:
            c = buf[p]
            if c == 34:
                p = _skip_string(buf, p, n)
                if p < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return p + 1
            p += 1
        return -1
    while p < n:  # number / true / false / null
        c = buf[p]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
            return p
        p += 1
    return p


@njit(cache=_CACHE, nogil=True, inline="always")
def _number(buf: np.ndarray, p: int, n: int, out: np.ndarray, o: int) -> int:
    """Parse ``"digits[.digits]"`` at ``p`` (a quote) into ``out[o]``; return the index after
    the closing quote, or ``-(code | pos << 8)``."""
    start = p
    p += 1
    whole = 0
    nw = 0
    while p < n:
        d = np.int64(buf[p]) - 48
        if d < 0 or d > 9:
            break
        if nw < 12:  # more whole digits are out of range anyway; stop before overflowing
            whole = whole * 10 + d
        if whole != 0:
            nw += 1  # significant (not leading-zero) digits
        p += 1
    digits = p - start - 1
    frac = 0
    nf = 0
    if p < n and buf[p] == 46:  # '.'
        p += 1
        while p < n:
            d = np.int64(buf[p]) - 48
            if d < 0 or d > 9:
                break
            if nf < _DECIMALS:
                frac = frac * 10 + d
                nf += 1
            elif d != 0:  # a 9th significant decimal cannot be represented exactly
                return -(_E_DECIMALS | (start << 8))
            digits += 1
            p += 1
    if p >= n or buf[p] != 34 or digits == 0:
        return -(_E_NUMBER | (start << 8))
    while nf < _DECIMALS:
        frac *= 10
        nf += 1
    if nw > 11 or whole > _WHOLE_MAX or (whole == _WHOLE_MAX and frac > _FRAC_MAX_AT_WHOLE_MAX):
        return -(_E_RANGE | (start << 8))
    out[o] = whole * 100_000_000 + frac
    return p + 1


@njit(cache=_CACHE, nogil=True)
def _parse_array(buf: np.ndarray, p: int, n: int, out: np.ndarray, base: int, cap: int) -> int:
    """Parse a level array at ``p`` (``[``) into ``out[base : base + 2 * count]``.

    Returns ``index_after_array << 32 | count``, or a negative error."""
    if p >= n or buf[p] != 91:
        return -(_E_SYNTAX | (p << 8))
    p = _ws(buf, p + 1, n)
    k = 0
    if p < n and buf[p] == 93:
        return (p + 1) << 32
    while True:
        if k >= cap:
            return -(_E_CAPACITY | (p << 8))
        if p >= n or buf[p] != 91:
            return -(_E_SYNTAX | (p << 8))
        p = _ws(buf, p + 1, n)
        if p >= n or buf[p] != 34:
            return -(_E_NUMBER | (p << 8))
        q = _number(buf, p, n, out, base + 2 * k)
        if q < 0:
            return q
        if out[base + 2 * k] == 0:
            return -(_E_ZERO_PRICE | (p << 8))
        p = _ws(buf, q, n)
        if p >= n or buf[p] != 44:
            return -(_E_SYNTAX | (p << 8))
        p = _ws(buf, p + 1, n)
        if p >= n or buf[p] != 34:
            return -(_E_NUMBER | (p << 8))
        q = _number(buf, p, n, out, base + 2 * k + 1)
        if q < 0:
            return q
        p = _ws(buf, q, n)
        if p >= n or buf[p] != 93:  # exactly two elements per level
            return -(_E_SYNTAX | (p << 8))
        k += 1
        p = _ws(buf, p + 1, n)
        if p < n and buf[p] == 44:
            p = _ws(buf, p + 1, n)
            continue
        if p < n and buf[p] == 93:
            return ((p + 1) << 32) | k
        return -(_E_SYNTAX | (p << 8))


@njit(cache=_CACHE, nogil=True)
def _key_is(buf: np.ndarray, ks: int, ke: int, word: bytes) -> bool:
    if ke - ks != len(word):
        return False
    for i in range(len(word)):
        if buf[ks + i] != word[i]:
            return False
    return True


# _scan modes: what to look for in the event object
_M_DEPTH = 0  # "b"/"a" level arrays -> out halves
_M_REST = 1  # "bids"/"asks" level arrays -> out halves
_M_TICKER = 2  # "b","B","a","A" decimal strings -> out[0:4]
_M_TRADE = 3  # "p","q" decimal strings -> out[0:2]
_ENVELOPE = 4  # flag: the event is the "data" object of a combined-stream envelope


@njit(cache=_CACHE, nogil=True)
def _slot(buf: np.ndarray, ks: int, ke: int, mode: int) -> int:
    """Which output a key feeds in ``mode``: 0/1 = bids/asks array (depth, REST), 0..3 =
    scalar slot (ticker b, B, a, A; trade p, q), -1 = not wanted."""
    if mode == _M_REST:
        if _key_is(buf, ks, ke, b"bids"):
            return 0
        if _key_is(buf, ks, ke, b"asks"):
            return 1
        return -1
    if ke - ks != 1:
        return -1
    c = buf[ks]
    if mode == _M_DEPTH:
        return 0 if c == 98 else 1 if c == 97 else -1  # b a
    if mode == _M_TICKER:
        return 0 if c == 98 else 1 if c == 66 else 2 if c == 97 else 3 if c == 65 else -1
    return 0 if c == 112 else 1 if c == 113 else -1  # p q


@njit(cache=_CACHE, nogil=True)
def _scan(frame: bytes, out: np.ndarray, flags: int) -> int:
    """Find the wanted values of the event object (see the ``_M_*`` modes) and parse them
    into ``out``: level arrays as bids in the first half of ``out`` and asks in the second,
    scalars into ``out[0:4]``.

    The event is the top object, or with the ``_ENVELOPE`` flag the ``data`` object of a
    combined envelope. Returns ``n_bids << 32 | n_asks`` (arrays) or 0 (scalars), or
    ``-(error_code | byte_position << 8)``."""
    buf = np.frombuffer(frame, dtype=np.uint8)
    n = buf.shape[0]
    mode = flags & 3
    level = 1 if flags & _ENVELOPE else 0
    arrays = mode <= _M_REST
    cap = (out.shape[0] - _HEADER) // 4
    want = 3 if arrays else 15 if mode == _M_TICKER else 3
    seen = 0
    nb = 0
    na = 0
    depth = 0
    p = _ws(buf, 0, n)
    if p >= n or buf[p] != 123:
        return -(_E_SYNTAX | (p << 8))
    p += 1
    while True:
        p = _ws(buf, p, n)
        if p >= n:
            return -(_E_SYNTAX | (p << 8))
        if buf[p] == 125:  # end of an object
            if depth == 0:
                break
            depth -= 1  # left the data object: continue with the envelope's keys
            p += 1
        else:
            if buf[p] != 34:
                return -(_E_SYNTAX | (p << 8))
            ks = p + 1
            p = _skip_string(buf, p, n)
            if p < 0:
                return -(_E_SYNTAX | (ks << 8))
            ke = p - 1
            p = _ws(buf, p, n)
            if p >= n or buf[p] != 58:  # ':'
                return -(_E_SYNTAX | (p << 8))
            p = _ws(buf, p + 1, n)
            if p >= n:
                return -(_E_SYNTAX | (p << 8))
            if depth == 0 and level == 1 and buf[p] == 123 and _key_is(buf, ks, ke, b"data"):
                depth = 1
                p += 1
                continue  # first key of the data object
            slot = _slot(buf, ks, ke, mode) if depth == level else -1
            if slot < 0:
                p = _skip_value(buf, p, n)
                if p < 0:
                    return -(_E_SYNTAX | (ks << 8))
            elif seen & (1 << slot):
                return -(_E_DUPLICATE | (ks << 8))
            elif arrays:
                r = _parse_array(buf, p, n, out, slot * 2 * cap, cap)
                if r < 0:
                    return r
                p = r >> 32
                if slot == 0:
                    nb = r & 0xFFFFFFFF
                else:
                    na = r & 0xFFFFFFFF
                seen |= 1 << slot
            else:
                if buf[p] != 34:
                    return -(_E_NUMBER | (p << 8))
                p = _number(buf, p, n, out, slot)
                if p < 0:
                    return p
                seen |= 1 << slot
        p = _ws(buf, p, n)
        if p < n and buf[p] == 44:  # ','
            p += 1
        elif not (p < n and buf[p] == 125):
            return -(_E_SYNTAX | (p << 8))
    if seen != want:
        return -(_E_MISSING | (p << 8))
    return (nb << 32) | na


# --------------------------------------------------------------------------- depth fast path
#
# Depth frames are most of the bytes on the wire. For them a second kernel does msgspec's job
# too - it validates the whole JSON document and reads the header (e, E, T, s, U, u, pu) - so
# the frame is walked once instead of twice. It only *accepts* the canonical shape Binance
# sends (ASCII, no escapes, integer ids, known keys with their documented types); anything
# else returns ``_E_SLOW`` and the msgspec path decides, so both paths always agree (tested
# by a differential fuzz test on mutated real frames).

_H_E, _H_T, _H_U, _H_LU, _H_PU, _H_S0, _H_S1, _H_SEEN = range(8)  # header slots
_HEADER = 8  # int64 slots after the level halves of ``out``
# bits of the "seen" slot
_S_E, _S_T, _S_U, _S_LU, _S_PU, _S_S, _S_B, _S_A, _S_EV = (1 << i for i in range(9))
_REQUIRED = _S_E | _S_U | _S_LU | _S_S | _S_B | _S_A | _S_EV


@njit(cache=_CACHE, nogil=True, inline="always")
def _ascii_string(buf: np.ndarray, p: int, n: int) -> int:
    """``p`` at a quote -> index after the closing quote; -1 malformed; -2 needs the slow
    path (escape or non-ASCII byte: msgspec's string rules decide those)."""
    p += 1
    while p < n:
        c = buf[p]
        if c == 34:
            return p + 1
        if c == 92 or c >= 128:
            return -2
        if c < 32:
            return -1
        p += 1
    return -1


@njit(cache=_CACHE, nogil=True)
def _skip_number(buf: np.ndarray, p: int, n: int) -> int:
    """Strict JSON number grammar ``-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?``; -1 if malformed."""
    if p < n and buf[p] == 45:
        p += 1
    if p >= n or not 48 <= buf[p] <= 57:
        return -1
    if buf[p] == 48:
        p += 1
    else:
        while p < n and 48 <= buf[p] <= 57:
            p += 1
    if p < n and buf[p] == 46:
        p += 1
        if p >= n or not 48 <= buf[p] <= 57:
            return -1
        while p < n and 48 <= buf[p] <= 57:
            p += 1
    if p < n and (buf[p] == 101 or buf[p] == 69):
        p += 1
        if p < n and (buf[p] == 43 or buf[p] == 45):
            p += 1
        if p >= n or not 48 <= buf[p] <= 57:
            return -1
        while p < n and 48 <= buf[p] <= 57:
            p += 1
    return p


@njit(cache=_CACHE, nogil=True, inline="always")
def _literal(buf: np.ndarray, p: int, n: int, word: bytes) -> int:
    if p + len(word) > n:
        return -1
    for i in range(len(word)):
        if buf[p + i] != word[i]:
            return -1
    return p + len(word)


@njit(cache=_CACHE, nogil=True)
def _skip_json(buf: np.ndarray, p: int, n: int) -> int:
    """Validate and skip one JSON value of any shape (an unknown field); returns the index
    after it, -1 if malformed, -2 if the slow path must decide (non-ASCII, escapes, >62
    levels of nesting)."""
    stack = 0  # bit i set: nesting level i is an object (else an array)
    depth = 0
    while True:
        # ---- one value at p
        p = _ws(buf, p, n)
        if p >= n:
            return -1
        c = buf[p]
        if c == 34:
            p = _ascii_string(buf, p, n)
        elif c == 45 or 48 <= c <= 57:
            p = _skip_number(buf, p, n)
        elif c == 116:
            p = _literal(buf, p, n, b"true")
        elif c == 102:
            p = _literal(buf, p, n, b"false")
        elif c == 110:
            p = _literal(buf, p, n, b"null")
        elif c == 91 or c == 123:
            if depth >= 62:
                return -2
            if c == 123:
                stack |= 1 << depth
            depth += 1
            p = _ws(buf, p + 1, n)
            if p < n and buf[p] == (125 if c == 123 else 93):  # empty container
                depth -= 1
                stack &= ~(1 << depth)
                p += 1
            elif c == 123:  # first key of an object
                if p >= n or buf[p] != 34:
                    return -1
                p = _ascii_string(buf, p, n)
                if p < 0:
                    return p
                p = _ws(buf, p, n)
                if p >= n or buf[p] != 58:
                    return -1
                p += 1
                continue
            else:
                continue  # first element of an array
        else:
            return -1
        if p < 0:
            return p
        # ---- after a complete value: commas and closing brackets
        while depth > 0:
            p = _ws(buf, p, n)
            if p >= n:
                return -1
            c = buf[p]
            is_obj = (stack >> (depth - 1)) & 1
            if c == 44:
                p = _ws(buf, p + 1, n)
                if is_obj:
                    if p >= n or buf[p] != 34:
                        return -1
                    p = _ascii_string(buf, p, n)
                    if p < 0:
                        return p
                    p = _ws(buf, p, n)
                    if p >= n or buf[p] != 58:
                        return -1
                    p += 1
                break  # next value
            if (c == 125 and is_obj) or (c == 93 and not is_obj):
                depth -= 1
                stack &= ~(1 << depth)
                p += 1
            else:
                return -1
        if depth == 0:
            return p


@njit(cache=_CACHE, nogil=True)
def _json_int(buf: np.ndarray, p: int, n: int, out: np.ndarray, o: int) -> int:
    """A JSON integer into ``out[o]``; -1 malformed, -2 slow path (null, string, float or
    more than 18 digits: msgspec's typing decides)."""
    neg = p < n and buf[p] == 45
    if neg:
        p += 1
    s = p
    v = 0
    while p < n and 48 <= buf[p] <= 57:
        v = v * 10 + (np.int64(buf[p]) - 48)
        p += 1
    nd = p - s
    if nd == 0:
        return -1 if neg else -2
    if nd > 18 or (p < n and (buf[p] == 46 or buf[p] == 101 or buf[p] == 69)):
        return -2
    if nd > 1 and buf[s] == 48:
        return -1  # leading zero: not JSON
    out[o] = -v if neg else v
    return p


@njit(cache=_CACHE, nogil=True)
def _scan_depth(frame: bytes, out: np.ndarray) -> int:
    """Validate a whole depth frame (envelope or raw) and read header and levels in one
    pass. Header slots go to ``out[4 * cap:]``; returns ``n_bids << 32 | n_asks`` or
    ``-(code | pos << 8)``, ``_E_SLOW`` meaning "use the msgspec path"."""
    buf = np.frombuffer(frame, dtype=np.uint8)
    n = buf.shape[0]
    cap = (out.shape[0] - _HEADER) // 4
    h = 4 * cap
    slow = -(_E_SLOW | 0)
    seen = 0
    top_event = False  # event keys at the top level (a raw payload)
    has_data = False
    nb = 0
    na = 0
    level = 0
    comma = False  # the previous token was a ',' (so a key must follow)
    p = _ws(buf, 0, n)
    if p >= n or buf[p] != 123:
        return -(_E_SYNTAX | (p << 8))
    p += 1
    while True:
        p = _ws(buf, p, n)
        if p >= n:
            return -(_E_SYNTAX | (p << 8))
        if buf[p] == 125:
            if comma:
                return -(_E_SYNTAX | (p << 8))  # trailing comma
            p += 1
            if level == 0:
                break
            level = 0
        else:
            if buf[p] != 34:
                return -(_E_SYNTAX | (p << 8))
            ks = p + 1
            p = _ascii_string(buf, p, n)
            if p == -2:
                return slow
            if p < 0:
                return -(_E_SYNTAX | (ks << 8))
            ke = p - 1
            klen = ke - ks
            p = _ws(buf, p, n)
            if p >= n or buf[p] != 58:
                return -(_E_SYNTAX | (p << 8))
            p = _ws(buf, p + 1, n)
            if p >= n:
                return -(_E_SYNTAX | (p << 8))
            k0 = buf[ks]
            k1 = buf[ks + 1] if klen > 1 else 0
            slot = -1  # which event key (index into the header/seen bits), -1 other
            if klen == 1:
                if k0 == 101:  # e
                    slot = 0
                elif k0 == 69:  # E
                    slot = 1
                elif k0 == 84:  # T
                    slot = 2
                elif k0 == 115:  # s
                    slot = 3
                elif k0 == 85:  # U
                    slot = 4
                elif k0 == 117:  # u
                    slot = 5
                elif k0 == 98:  # b
                    slot = 7
                elif k0 == 97:  # a
                    slot = 8
                elif k0 == 66 or k0 == 65 or k0 == 116 or k0 == 112 or k0 == 113 or k0 == 109:
                    return slow  # B A t p q m: another event's fields
            elif klen == 2 and k0 == 112 and k1 == 117:  # pu
                slot = 6
            if level == 0 and slot < 0:
                if _key_is(buf, ks, ke, b"data"):
                    if top_event or has_data or buf[p] != 123:
                        return slow
                    has_data = True
                    level = 1
                    comma = False
                    p += 1
                    continue
                if _key_is(buf, ks, ke, b"stream"):
                    if buf[p] != 34:
                        return slow
                    p = _ascii_string(buf, p, n)
                    if p == -2:
                        return slow
                    if p < 0:
                        return -(_E_SYNTAX | (ks << 8))
                    slot = -9  # handled
            if slot >= 0 and level == 0:
                if has_data:
                    return slow  # event fields beside an envelope's data: let msgspec judge
                top_event = True
            if slot == 0:  # e
                if buf[p] != 34:
                    return slow
                vs = p + 1
                p = _ascii_string(buf, p, n)
                if p < 0:
                    return slow if p == -2 else -(_E_SYNTAX | (vs << 8))
                if not _key_is(buf, vs, p - 1, b"depthUpdate"):
                    return slow  # another event type: the general path handles it
                seen |= _S_EV
            elif slot == 3:  # s
                if buf[p] != 34:
                    return slow
                vs = p + 1
                p = _ascii_string(buf, p, n)
                if p < 0:
                    return slow if p == -2 else -(_E_SYNTAX | (vs << 8))
                out[h + _H_S0] = vs
                out[h + _H_S1] = p - 1
                seen |= _S_S
            elif slot == 1 or slot == 2 or slot == 4 or slot == 5 or slot == 6:
                hs = _H_E if slot == 1 else _H_T if slot == 2 else _H_U if slot == 4 else _H_LU
                if slot == 6:
                    hs = _H_PU
                q = _json_int(buf, p, n, out, h + hs)
                if q == -2:
                    return slow
                if q < 0:
                    return -(_E_SYNTAX | (p << 8))
                p = q
                seen |= _S_E if slot == 1 else _S_T if slot == 2 else _S_U if slot == 4 else 0
                seen |= _S_LU if slot == 5 else _S_PU if slot == 6 else 0
            elif slot == 7 or slot == 8:  # b / a
                bit = _S_B if slot == 7 else _S_A
                # errors before the event type is known might belong to another event's
                # fields: only a confirmed depthUpdate reports them, else msgspec decides
                if seen & bit:
                    return -(_E_DUPLICATE | (ks << 8)) if seen & _S_EV else slow
                r = _parse_array(buf, p, n, out, 0 if slot == 7 else 2 * cap, cap)
                if r < 0:
                    return r if seen & _S_EV else slow
                p = r >> 32
                if slot == 7:
                    nb = r & 0xFFFFFFFF
                else:
                    na = r & 0xFFFFFFFF
                seen |= bit
            elif slot == -1:  # an unknown field: validate and skip
                q = _skip_json(buf, p, n)
                if q == -2:
                    return slow
                if q < 0:
                    return -(_E_SYNTAX | (p << 8))
                p = q
        p = _ws(buf, p, n)
        comma = p < n and buf[p] == 44
        if comma:
            p += 1
        elif not (p < n and buf[p] == 125):
            return -(_E_SYNTAX | (p << 8))
    if _ws(buf, p, n) != n:
        return -(_E_SYNTAX | (p << 8))  # trailing bytes after the document
    if (seen & _REQUIRED) != _REQUIRED:
        return slow  # a missing field: the msgspec path names it
    out[h + _H_SEEN] = seen
    # ids fit int64 here (<= 18 digits, else slow); negative or reversed ones are refused
    first = out[h + _H_U]
    if first < 0 or first > out[h + _H_LU] or (seen & _S_PU and out[h + _H_PU] < 0):
        return -_E_IDS
    ts = out[h + _H_E]
    if ts < _TS_MIN_MS or ts >= _TS_END_MS:
        return -_E_TIME
    if seen & _S_T:
        ts = out[h + _H_T]
        if ts < _TS_MIN_MS or ts >= _TS_END_MS:
            return -_E_TIME
    return (nb << 32) | na


# --------------------------------------------------------------------------- ticker/trade fast path
#
# bookTicker and trade frames are ~93% of a spot capture. For them a third kernel matches the
# exact canonical layout Binance sends, byte for byte - combined-stream envelope, these keys in
# this order, no whitespace, plain ASCII strings, JSON integers without sign, leading zero or
# more than 18 digits - and converts the prices with the same ``_number`` as ``_scan``. A frame
# in that layout is trivially valid JSON, so the general path would return exactly the same
# message; anything else (other key order, futures fields, escapes, a bad number...) returns
# ``_SMALL_NO`` and the general path decides, errors and messages included.

_SMALL_NO, _SMALL_TICKER, _SMALL_TRADE = 0, 1, 2
_NO_SMALL = (_SMALL_NO, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=_CACHE, nogil=True, inline="always")
def _plain_uint(buf: np.ndarray, p: int, n: int) -> tuple[int, int]:
    """A JSON integer of 1..18 digits, no sign, no leading zero: ``(index after, value)``;
    index -1 for anything else."""
    s = p
    v = 0
    while p < n and 48 <= buf[p] <= 57:
        v = v * 10 + (np.int64(buf[p]) - 48)
        p += 1
    nd = p - s
    if nd == 0 or nd > 18 or (nd > 1 and buf[s] == 48):
        return -1, 0
    return p, v


@njit(cache=_CACHE, nogil=True, inline="always")
def _plain_number(buf: np.ndarray, p: int, n: int, key: bytes, out: np.ndarray, o: int) -> int:
    """``key`` (e.g. ``,"b":``) then a price/qty string read into ``out[o]`` exactly as
    ``_scan`` reads it: the index after it, -1 on any error."""
    p = _literal(buf, p, n, key)
    if p < 0 or p >= n or buf[p] != 34:
        return -1
    p = _number(buf, p, n, out, o)
    return p if p > 0 else -1


@njit(cache=_CACHE, nogil=True, inline="always")
def _plain_bool(buf: np.ndarray, p: int, n: int) -> tuple[int, int]:
    q = _literal(buf, p, n, b"true")
    if q > 0:
        return q, 1
    return _literal(buf, p, n, b"false"), 0


@njit(cache=_CACHE, nogil=True, inline="always")
def _end(buf: np.ndarray, p: int, n: int) -> bool:
    """``}}`` at ``p`` and nothing after it."""
    return p + 2 == n and buf[p] == 125 and buf[p + 1] == 125


@njit(cache=_CACHE)  # keeps the GIL: releasing it costs more than the ~0.2 us of work
def _scan_small(frame: bytes) -> tuple[int, int, int, int, int, int, int, int]:
    """A canonical spot bookTicker or trade envelope: ``(_SMALL_TICKER, u, s0, s1, b, B, a,
    A)`` or ``(_SMALL_TRADE, t, s0, s1, p, q, T, m)`` - ``frame[s0:s1]`` is the symbol - or
    ``_NO_SMALL`` for anything else."""
    buf = np.frombuffer(frame, dtype=np.uint8)
    n = buf.shape[0]
    p = _literal(buf, 0, n, b'{"stream":')
    if p < 0 or p >= n or buf[p] != 34:
        return _NO_SMALL
    p = _ascii_string(buf, p, n)
    if p < 0:
        return _NO_SMALL
    p = _literal(buf, p, n, b',"data":{"')
    if p < 0 or p >= n:
        return _NO_SMALL
    if buf[p] == 117:  # u: bookTicker (spot: no e/E)
        kind = _SMALL_TICKER
        p = _literal(buf, p, n, b'u":')
    elif buf[p] == 101:  # e
        kind = _SMALL_TRADE
        p = _literal(buf, p, n, b'e":"trade","E":')
    else:
        return _NO_SMALL
    if p < 0:
        return _NO_SMALL
    p, v0 = _plain_uint(buf, p, n)  # ticker u; trade E (validated, unused)
    if p < 0:
        return _NO_SMALL
    if kind == _SMALL_TRADE and (v0 < _TS_MIN_MS or v0 >= _TS_END_MS):
        return _NO_SMALL  # an absurd time: the general path words the error
    p = _literal(buf, p, n, b',"s":')
    if p < 0 or p >= n or buf[p] != 34:
        return _NO_SMALL
    s0 = p + 1
    p = _ascii_string(buf, p, n)
    if p < 0:
        return _NO_SMALL
    s1 = p - 1
    v = np.empty(4, dtype=np.int64)  # the prices: _number writes into an array
    if kind == _SMALL_TICKER:
        p = _plain_number(buf, p, n, b',"b":', v, 0)
        if p < 0:
            return _NO_SMALL
        p = _plain_number(buf, p, n, b',"B":', v, 1)
        if p < 0:
            return _NO_SMALL
        p = _plain_number(buf, p, n, b',"a":', v, 2)
        if p < 0:
            return _NO_SMALL
        p = _plain_number(buf, p, n, b',"A":', v, 3)
        if p < 0:
            return _NO_SMALL
        if not _end(buf, p, n):
            return _NO_SMALL
        return kind, v0, s0, s1, v[0], v[1], v[2], v[3]
    p = _literal(buf, p, n, b',"t":')
    if p < 0:
        return _NO_SMALL
    p, v0 = _plain_uint(buf, p, n)
    if p < 0:
        return _NO_SMALL
    p = _plain_number(buf, p, n, b',"p":', v, 0)
    if p < 0:
        return _NO_SMALL
    p = _plain_number(buf, p, n, b',"q":', v, 1)
    if p < 0:
        return _NO_SMALL
    p = _literal(buf, p, n, b',"T":')
    if p < 0:
        return _NO_SMALL
    p, ts = _plain_uint(buf, p, n)
    if p < 0 or ts < _TS_MIN_MS or ts >= _TS_END_MS:
        return _NO_SMALL
    p = _literal(buf, p, n, b',"m":')
    if p < 0:
        return _NO_SMALL
    p, maker = _plain_bool(buf, p, n)
    if p < 0:
        return _NO_SMALL
    q = _literal(buf, p, n, b',"M":')  # spot's "ignore" flag, optional
    if q > 0:
        p, _ = _plain_bool(buf, q, n)
        if p < 0:
            return _NO_SMALL
    if not _end(buf, p, n):
        return _NO_SMALL
    return kind, v0, s0, s1, v[0], v[1], ts, maker


# --------------------------------------------------------------------------- python side


def _entry_point(kernel: Any, *example: Any) -> Any:
    """``kernel`` compiled (or loaded from the cache) for the types of ``example``, as its
    compiled entry point: a call then skips numba's per-call type dispatch (~0.15 us of a
    ~0.4 us call). Only for kernels that are always called with exactly these types (the
    entry point does not check them). Falls back to ``kernel`` itself if this numba does not
    expose the entry point."""
    kernel(*example)
    try:
        sig = tuple(numba.typeof(a) for a in example)
        entry = kernel.overloads[sig].entry_point
    except (AttributeError, KeyError, TypeError):  # pragma: no cover - another numba
        return kernel
    return entry if callable(entry) else kernel


@functools.cache
def _small_entry() -> Any:
    """``_scan_small`` as an entry point, for ``bytes`` frames."""
    return _entry_point(_scan_small, b"{}")


@functools.cache
def _depth_entry() -> Any:
    """``_scan_depth`` as an entry point, for ``bytes`` frames and an int64 scratch array."""
    return _entry_point(_scan_depth, b"{}", np.zeros(4 + _HEADER, dtype=np.int64))


def _fx(text: str | None, what: str) -> int:
    """Exact decimal string -> SCALE int for the few scalar prices of trade/bookTicker.

    Pure Python is faster than a compiled call for one short string (~0.4 us); the rules are
    those of the level kernel (tested against each other)."""
    if text is None:
        raise FrameError(f"missing field {what!r}", "missing")
    whole, _, frac = text.partition(".")
    if len(frac) > _DECIMALS:
        frac = frac.rstrip("0")
        if len(frac) > _DECIMALS:
            raise FrameError(f"{what}={text!r} has more than {_DECIMALS} decimals", "decimals")
    digits = whole + frac
    # isascii: str.isdigit() also accepts non-ASCII digits ('²', '٣') that int() would take
    if not (digits.isdigit() and digits.isascii()) or text.count(".") > 1:
        raise FrameError(f"{what}={text!r} is not a plain unsigned decimal string", "number")
    value = int(whole + frac.ljust(_DECIMALS, "0"))
    if value > _MAX_I64:
        raise FrameError(f"{what}={text!r} is out of int64 fixed-point range", "range")
    return value


def parse_fixed(text: str | bytes) -> int:
    """Parse one decimal string exactly as the frame parser does (``"0.00000001"`` -> 1).

    Raises :class:`FrameError` on anything Binance would not send (sign, exponent, NaN,
    more than 8 significant decimals, out of int64 range)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"{text!r} is not ASCII", "number") from None
    return _fx(text, "value")


def _snippet(frame: bytes, pos: int) -> str:
    lo = max(0, pos - 20)
    return repr(bytes(frame[lo : pos + 30]))


def _kernel_error(code: int, pos: int, frame: bytes) -> FrameError:
    """The FrameError of a kernel's error code at byte ``pos``."""
    what = _ERRORS.get(code, "bad levels")
    return FrameError(f"{what} at byte {pos}: {_snippet(frame, pos)}", _KINDS.get(code, "syntax"))


def _id(value: int, what: str) -> int:
    """An update/trade id: refused unless ``0 <= value < 2**63`` (msgspec's ``int`` takes
    any size; a huge id would outrank every real event)."""
    if not 0 <= value <= _MAX_I64:
        raise FrameError(f"{what}={value} is not an id in 0..2**63-1", "ids")
    return value


def _ns(ms: int, what: str) -> int:
    """A venue time in ms -> ns; refused outside 2000..2100 (so the ns value fits int64)."""
    if not _TS_MIN_MS <= ms < _TS_END_MS:
        raise FrameError(f"{what}={ms} is not a time in 2000..2100 (ms)", "time")
    return ms * _MS


class FrameParser:
    """Parses Binance frames into ``schemas`` Structs. Not thread-safe (owns a scratch
    buffer): create one per feed/thread; the module functions use a thread-local one."""

    __slots__ = (
        "_scan_small",
        "_scan_depth",
        "_cap",
        "_out",
        "_mv",
        "_head",
        "_hdr",
        "_symbols",
        "_decode",
        "_decode_rest",
    )

    def __init__(self, max_levels_hint: int = 2048) -> None:
        # compiled entry points: called with exactly these types only (bytes, self._out)
        self._scan_small = _small_entry()
        self._scan_depth = _depth_entry()
        self._alloc(max(64, max_levels_hint))
        self._symbols: dict[bytes, str] = {}  # symbol bytes -> one shared str
        # own decoders: nothing shared between threads
        self._decode = msgspec.json.Decoder(_Frame).decode
        self._decode_rest = msgspec.json.Decoder(_Rest).decode

    def _alloc(self, cap: int) -> None:
        self._cap = cap
        # bids: [0, 2cap), asks: [2cap, 4cap), then the depth fast path's header
        self._out = np.empty(4 * cap + _HEADER, dtype=np.int64)
        self._mv = memoryview(self._out).cast("B")
        self._head = self._out[:4]  # scalar results (ticker/trade prices), a view made once
        self._hdr = self._out[4 * cap :]

    def _run(self, frame: bytes, flags: int) -> int:
        """Run the kernel; raise FrameError on its error code."""
        rc = _scan(frame, self._out, flags)
        if rc < 0:
            raise _kernel_error((-rc) & 0xFF, (-rc) >> 8, frame)
        return rc

    def _levels(self, frame: bytes, flags: int) -> tuple[bytes, bytes]:
        """Parse the level arrays; return packed (bids, asks) or raise FrameError."""
        if len(frame) >= self._cap * 10:  # a pair takes >= 10 bytes: ["1","0"],
            self._alloc(max(len(frame) // 10 + 1, 2 * self._cap))
        rc = self._run(frame, flags)
        mv = self._mv
        h = 16 * self._cap  # asks start at int64 index 2 * cap
        return mv[: 16 * (rc >> 32)].tobytes(), mv[h : h + 16 * (rc & 0xFFFFFFFF)].tobytes()

    def parse(self, frame: bytes, ts_recv_ns: int) -> DepthDiff | Trade | BookTicker:
        """Parse one WS frame (combined envelope or raw payload) received at ``ts_recv_ns``.

        Supported: ``depthUpdate`` (spot; futures with ``pu``), ``trade``, ``aggTrade``,
        ``bookTicker`` (spot without ``e``/``E``; futures with them). ``ts_exchange_ns`` is
        ``E`` (trades: ``T``) in ns; spot bookTicker has no venue time, so it is 0.
        Raises :class:`FrameError`."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        if frame[-3:] != b"]}}":  # depth envelopes end so, ticker/trade ones never
            kind, v0, s0, s1, v1, v2, v3, v4 = self._scan_small(frame)
            if kind:  # a canonical spot bookTicker / trade (see _scan_small)
                key = frame[s0:s1]
                sym = self._symbols.get(key)
                if sym is None:
                    sym = self._symbol(key)
                if kind == _SMALL_TICKER:
                    return BookTicker(sym, v0, v1, v2, v3, v4, 0, ts_recv_ns)
                return Trade(sym, v0, v1, v2, v4 == 1, v3 * _MS, ts_recv_ns)
        if frame.find(b"depthUpdate", 0, 160) >= 0:  # cheap pre-filter for the fast path
            msg = self._depth_fast(frame, ts_recv_ns)
            if msg is not None:
                return msg
        return self._parse_general(frame, ts_recv_ns)

    def _symbol(self, key: bytes) -> str:
        """The one shared ``str`` of an ASCII symbol (a kernel checked it is ASCII)."""
        sym = key.decode("ascii")
        if len(self._symbols) < 4096:  # bounded: garbage symbols cannot grow it
            self._symbols[key] = sym
        return sym

    def _depth_fast(self, frame: bytes, ts_recv_ns: int) -> DepthDiff | None:
        """One-pass depth parse (see ``_scan_depth``); None: not canonical, use msgspec."""
        if len(frame) >= self._cap * 10:  # a pair takes >= 10 bytes: ["1","0"],
            self._alloc(max(len(frame) // 10 + 1, 2 * self._cap))
        rc = self._scan_depth(frame, self._out)
        if rc < 0:
            code, pos = (-rc) & 0xFF, (-rc) >> 8
            if code == _E_SLOW or code == _E_SYNTAX:
                return None  # msgspec decides (and words JSON errors its usual way)
            if code == _E_IDS or code == _E_TIME:
                ts, t, first, last, pu, _, _, seen = self._hdr.tolist()
                pu = pu if seen & _S_PU else None
                t = t if seen & _S_T else None
                why = f"U={first} u={last} pu={pu}" if code == _E_IDS else f"E={ts} T={t}"
                raise FrameError(f"depthUpdate event: {_ERRORS[code]}: {why}", _KINDS[code])
            raise _kernel_error(code, pos, frame)
        ts, _, first, last, pu, s0, s1, seen = self._hdr.tolist()
        key = frame[s0:s1]
        sym = self._symbols.get(key)
        if sym is None:
            sym = self._symbol(key)
        mv = self._mv
        h = 16 * self._cap
        return DepthDiff(
            sym,
            first,
            last,
            pu if seen & _S_PU else -1,
            mv[: 16 * (rc >> 32)].tobytes(),
            mv[h : h + 16 * (rc & 0xFFFFFFFF)].tobytes(),
            ts * _MS,
            ts_recv_ns,
        )

    def _parse_general(self, frame: bytes, ts_recv_ns: int) -> DepthDiff | Trade | BookTicker:
        """The msgspec path: every supported event type, any valid JSON shape."""
        # ValidationError is a DecodeError; a str field that is not UTF-8 raises
        # UnicodeDecodeError (msgspec does not check the UTF-8 of skipped values)
        try:
            f = self._decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise FrameError(f"bad frame: {exc}: {_snippet(frame, 0)}", "json") from None
        ev: _Event = f
        flags = 0
        if f.data is not None:
            ev = f.data
            flags = _ENVELOPE
        e = ev.e
        if e == "depthUpdate":
            return self._depth(frame, ev, flags, ts_recv_ns)
        if e == "bookTicker" or (e is None and ev.B is not None and ev.A is not None):
            return self._ticker(frame, ev, flags, ts_recv_ns)
        if e == "trade" or e == "aggTrade":
            return self._trade(frame, ev, flags, e, ts_recv_ns)
        if e is None:
            raise FrameError(f"frame has no event type: {_snippet(frame, 0)}", "event")
        raise FrameError(f"unsupported event type {e!r}", "event")

    def _depth(self, frame: bytes, ev: _Event, flags: int, ts_recv_ns: int) -> DepthDiff:
        first, last, sym, ts = ev.U, ev.u, ev.s, ev.E
        if first is None or last is None or sym is None or ts is None or not ev.b or not ev.a:
            _missing(ev, ("E", "s", "U", "u", "b", "a"), "depthUpdate")
        assert first is not None and last is not None and sym is not None and ts is not None
        pu = ev.pu
        if not 0 <= first <= last <= _MAX_I64 or (pu is not None and not 0 <= pu <= _MAX_I64):
            raise FrameError(
                f"depthUpdate event: {_ERRORS[_E_IDS]}: U={first} u={last} pu={pu}", "ids"
            )
        ts_ns = _ns(ts, "E")
        if ev.T is not None:
            _ns(ev.T, "T")
        bids, asks = self._levels(frame, flags | _M_DEPTH)
        return DepthDiff(sym, first, last, -1 if pu is None else pu, bids, asks, ts_ns, ts_recv_ns)

    def _ticker(self, frame: bytes, ev: _Event, flags: int, ts_recv_ns: int) -> BookTicker:
        sym, uid = ev.s, ev.u
        if sym is None or uid is None or not ev.b or not ev.a:
            _missing(ev, ("s", "u", "b", "a"), "bookTicker")
        assert sym is not None and uid is not None
        _id(uid, "u")
        ts_ns = 0 if ev.E is None else _ns(ev.E, "E")  # spot tickers carry no venue time
        if ev.T is not None:
            _ns(ev.T, "T")
        self._run(frame, flags | _M_TICKER)
        bp, bq, ap, aq = self._head.tolist()
        return BookTicker(sym, uid, bp, bq, ap, aq, ts_ns, ts_recv_ns)

    def _trade(self, frame: bytes, ev: _Event, flags: int, e: str, ts_recv_ns: int) -> Trade:
        sym, ts, maker = ev.s, ev.T, ev.m
        if sym is None or ts is None or maker is None or ev.p is None or ev.q is None:
            _missing(ev, ("s", "T", "m", "p", "q"), e)
        assert sym is not None and ts is not None and maker is not None
        if e == "trade":
            if ev.t is None:
                _missing(ev, ("t",), e)
            trade_id = ev.t
        else:  # aggTrade: "a" is the aggregate trade id
            if not ev.a:
                _missing(ev, ("a",), e)
            try:
                trade_id = msgspec.json.decode(ev.a, type=int)
            except msgspec.DecodeError:
                raise FrameError(
                    f"aggTrade event: 'a' must be an int, got {bytes(ev.a)!r}", "type"
                ) from None
        assert trade_id is not None
        _id(trade_id, "t" if e == "trade" else "a")
        ts_ns = _ns(ts, "T")
        if ev.E is not None:
            _ns(ev.E, "E")
        self._run(frame, flags | _M_TRADE)
        px, qty, _, _ = self._head.tolist()
        return Trade(sym, trade_id, px, qty, maker, ts_ns, ts_recv_ns)

    def parse_snapshot(self, body: bytes, symbol: str | None, ts_recv_ns: int) -> DepthSnapshot:
        """Parse a REST ``/depth`` body. ``symbol`` names the instrument when the body does
        not (spot and USD-M bodies do not; COIN-M ones do). ``ts_exchange_ns`` is the body's
        ``E`` (futures) or 0 (spot has no venue time). Raises :class:`FrameError`."""
        if type(body) is not bytes:
            body = bytes(body)
        try:
            r = self._decode_rest(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise FrameError(f"bad depth snapshot: {exc}: {_snippet(body, 0)}", "json") from None
        sym = r.symbol or symbol
        if not sym:
            raise FrameError("depth snapshot: symbol unknown (not in body, none given)", "symbol")
        if not r.bids or not r.asks:
            raise FrameError("depth snapshot: missing 'bids' or 'asks'", "missing")
        _id(r.lastUpdateId, "depth snapshot: lastUpdateId")
        ts_ns = 0 if r.E is None else _ns(r.E, "depth snapshot: E")  # spot: no venue time
        if r.T is not None:
            _ns(r.T, "depth snapshot: T")
        bids, asks = self._levels(body, _M_REST)
        return DepthSnapshot(sym.upper(), r.lastUpdateId, bids, asks, ts_ns, ts_recv_ns)


def _missing(ev: _Event, names: tuple[str, ...], kind: str) -> None:
    """Raise for the first required field that is absent."""
    for name in names:
        value = getattr(ev, name)
        if value is None or (isinstance(value, msgspec.Raw) and not value):
            raise FrameError(f"{kind} event: missing field {name!r}", "missing")


_local = threading.local()


def _parser() -> FrameParser:
    p = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = FrameParser()
    return p


def parse_frame(frame: bytes, ts_recv_ns: int) -> DepthDiff | Trade | BookTicker:
    """Parse one WS frame with this thread's :class:`FrameParser` (see its ``parse``)."""
    return _parser().parse(frame, ts_recv_ns)


def parse_snapshot(body: bytes, symbol: str | None, ts_recv_ns: int) -> DepthSnapshot:
    """Parse a REST depth body with this thread's :class:`FrameParser` (``parse_snapshot``)."""
    return _parser().parse_snapshot(body, symbol, ts_recv_ns)


COLD_COMPILE_S = 20
"""Measured cold compile of these kernels on the 2-core VM (``NUMBA_CACHE_DIR`` empty)."""


_KERNELS = [_scan_small, _scan_depth, _scan]
"""The kernels the parser calls (the others are compiled into them)."""


def warmup(log: logging.Logger | None = None) -> float:
    """Compile (or load from cache) the kernels before the first real frame.

    On a cold cache (first run, new numba, changed source) it says so at INFO before the
    ~20 s compile and how long it took after. Returns the seconds spent."""
    def exercise() -> None:
        p = FrameParser(64)
        E = b'"E":1723161256314'
        p.parse(b'{"e":"depthUpdate",%s,"s":"X","U":1,"u":2,"b":[["1.5","2"]],"a":[]}' % E, 0)
        p.parse(
            b'{"stream":"x@depth","data":{"e":"depthUpdate",%s,"s":"X","U":1,"u":2,'
            b'"b":[],"a":[["1","1"]]}}' % E,
            0,
        )
        p.parse_snapshot(b'{"lastUpdateId":1,"bids":[["1","1"]],"asks":[]}', "X", 0)
        p.parse(
            b'{"stream":"x@bookTicker","data":{"u":1,"s":"X","b":"1","B":"1","a":"1","A":"1"}}', 0
        )

    return jit.warm(log or _log, "frame-parser", COLD_COMPILE_S, __file__, _CACHE, _KERNELS,
                    exercise)  # fmt: skip
