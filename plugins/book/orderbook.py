"""A venue-agnostic local limit order book on exact fixed-point integers.

Layout (measured against alternatives in ``tools/bench/bench_book.py``):

* one flat ``int64`` buffer holds everything: a 16-slot header (level counts, best bid/ask
  price and qty, capacity) and, per side, a pool of fixed-size **blocks** of up to 32 sorted
  levels plus the blocks' order. One buffer means one argument per compiled call (each extra
  argument costs ~0.1 us of dispatch on the 2-core VM) and :meth:`OrderBook.best` reads the
  header without a compiled call at all;
* the key is ``+price`` for bids and ``-price`` for asks, so both sides are sorted
  **ascending by key with the best level at the end** and one kernel serves both sides;
* why blocks: real Binance diffs touch levels hundreds deep in books of 2-6k levels (median
  ~65 levels from the top, p90 ~1,000). In one sorted array every insert/delete shifts
  everything above it (~3 us per 20-level diff measured); with blocks it shifts at most one
  block, and a full block splits in two (an index shift of ~100 ids).

Small diffs are applied level by level (binary search + short shift); large diffs
(:data:`MERGE_MIN` levels or more on a side, e.g. the 1,000+ level bursts in real Binance
data) are merged in one linear pass. Inputs are ``int64`` arrays of shape ``(k, 2)`` of
``(price, qty)`` in ``schemas.SCALE`` units, or the packed ``Levels`` bytes themselves
(:meth:`OrderBook.apply_levels`, the fastest path: the bytes are viewed inside the kernel).
Quantities are absolute: ``0`` deletes the level (deleting an absent level is a no-op).

Capacity grows (doubling) *before* any level is written, so an update is never truncated and
a rejected update never leaves the book half-modified.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import numpy as np
from numba import njit, types

from tickbus.kernel import jit

__all__ = ["MERGE_MIN", "BookError", "OrderBook", "check_levels", "warmup"]

_log = logging.getLogger(__name__)

if sys.byteorder != "little":  # Levels bytes are little-endian int64; we view them natively
    raise ImportError("plugins.book.orderbook needs a little-endian machine")

MERGE_MIN = 128
"""Diffs with at least this many levels on a side are merged in one O(n + k) pass instead of
k block inserts. Measured on the real BTCUSDT book (2-3k levels a side): level-wise costs
~75 ns a level, a merge ~6.5 us + ~25 ns a level, equal at ~125-150 levels."""

_I8 = np.dtype("<i8")
_EMPTY = np.zeros((0, 2), dtype=np.int64)
_B = 32  # levels per block (an insert/delete shifts at most this many slots)
_FILL = 24  # levels per block after a re-layout: room for inserts before a split
_SIDE_WORDS = 2 * _B + 4  # int64 words per block and side: keys, qtys, count, order, first, free
_HDR = 16
# header slots: 0/1 level counts (bid/ask), 2-5 best bid px/qty, ask px/qty,
# 6 blocks per side (capacity), 7 spare, 8/9 blocks in use (bid/ask)

# kernel return codes (a bad level's index is in the bits above the low byte)
_OK = 0
_OK_CROSSED = -1  # applied; the book is now crossed (best bid >= best ask)
_NEED_CAPACITY = 1
_BAD_LEVEL = 2  # price <= 0 or qty < 0
_BAD_LENGTH = 3  # packed bytes not a multiple of 16


class BookError(ValueError):
    """An update the book cannot represent (non-positive price, negative quantity, bad shape)."""


def _probe() -> None:
    """Nothing: numba picks a cache location per source file, so it probes this one."""


_CACHE = jit.can_cache(_probe)  # False: compile on every start (warmup says so)


# --------------------------------------------------------------------------- kernels

# The Python-facing kernels get explicit signatures (:data:`_SIGNATURES`), compiled (or loaded
# from the cache) by :func:`_compile` - not at import, so that :func:`warmup` can say what it
# is doing first - after which the dispatcher *refuses* a float or 1-D array instead of
# silently compiling a new specialisation that would truncate floats into the int book.
_BUF_T = types.Array(types.int64, 1, "C")
_LV_RW = types.Array(types.int64, 2, "C")
_LV_RO = types.Array(types.int64, 2, "C", readonly=True)  # views of Levels bytes
_BYTES_T = types.Bytes(types.uint8, 1, "C", readonly=True)
# two signatures, not four: mixed writable/read-only pairs go through the slow path, which
# passes read-only views (each signature costs ~2-5 s of cold compile time)
_APPLY_SIGS = [types.int64(_BUF_T, t, t, types.int64) for t in (_LV_RW, _LV_RO)]


@njit(cache=_CACHE, nogil=True, inline="always")
def _bases(buf: np.ndarray, s: int) -> tuple[int, int, int, int, int, int]:
    """Offsets in ``buf`` of side ``s``'s arrays: keys ``[block * B + i]``, qtys (same
    shape), block counts, ordered block ids, first key of each ordered block, free stack.

    Flat offsets instead of reshaped views: a numba ``reshape`` costs ~40 ns per call and
    this runs several times per diff."""
    m = buf[6]
    kb = _HDR + s * m * _SIDE_WORDS
    qb = kb + m * _B
    cb = qb + m * _B
    return kb, qb, cb, cb + m, cb + 2 * m, cb + 3 * m


@njit(cache=_CACHE, nogil=True)
def _validate(upd: np.ndarray) -> int:
    """Index of the first invalid (price <= 0 or qty < 0) level, or -1."""
    for i in range(upd.shape[0]):
        if upd[i, 0] <= 0 or upd[i, 1] < 0:
            return i
    return -1


@njit(cache=_CACHE, nogil=True)
def _refresh_best(buf: np.ndarray) -> None:
    for s in range(2):
        nb = buf[8 + s]
        if nb > 0:
            kb, qb, cb, ob, _, _ = _bases(buf, s)
            b = buf[ob + nb - 1]
            i = b * _B + buf[cb + b] - 1
            key = buf[kb + i]
            buf[2 + 2 * s] = key if s == 0 else -key
            buf[3 + 2 * s] = buf[qb + i]
        else:
            buf[2 + 2 * s] = 0
            buf[3 + 2 * s] = 0


@njit(cache=_CACHE, nogil=True)
def _collect(buf: np.ndarray, s: int, extra: int) -> tuple[np.ndarray, np.ndarray]:
    """All levels of side ``s`` as ascending (keys, qtys), with ``extra`` spare slots."""
    kb, qb, cb, ob, _, _ = _bases(buf, s)
    n = buf[s]
    keys = np.empty(n + extra, dtype=np.int64)
    qtys = np.empty(n + extra, dtype=np.int64)
    i = 0
    for j in range(buf[8 + s]):
        b = buf[ob + j]
        for t in range(buf[cb + b]):
            keys[i] = buf[kb + b * _B + t]
            qtys[i] = buf[qb + b * _B + t]
            i += 1
    return keys, qtys


@njit(cache=_CACHE, nogil=True)
def _rebuild(buf: np.ndarray, s: int, keys: np.ndarray, qtys: np.ndarray, n: int) -> None:
    """Lay ``n`` ascending levels out in blocks of ``_FILL`` (room to grow before a split)."""
    kb, qb, cb, ob, fb, sb = _bases(buf, s)
    m = buf[6]
    nb = (n + _FILL - 1) // _FILL
    for j in range(nb):
        lo = j * _FILL
        cnt = min(_FILL, n - lo)
        for t in range(cnt):
            buf[kb + j * _B + t] = keys[lo + t]
            buf[qb + j * _B + t] = qtys[lo + t]
        buf[cb + j] = cnt
        buf[ob + j] = j
        buf[fb + j] = keys[lo]
    for i in range(m - nb):  # free stack: blocks nb..m-1
        buf[sb + i] = m - 1 - i
    buf[s] = n
    buf[8 + s] = nb


@njit(cache=_CACHE, nogil=True)
def _side_levelwise(buf: np.ndarray, s: int, upd: np.ndarray) -> None:
    """Apply ``upd`` to side ``s`` level by level: find the block (the top block is tried
    first: most updates are near the best price), binary search in it, shift <= B slots."""
    kb, qb, cb, ob, fb, sb = _bases(buf, s)
    m = buf[6]
    sgn = 1 - 2 * s
    n = buf[s]
    nb = buf[8 + s]
    for i in range(upd.shape[0]):
        key = sgn * upd[i, 0]
        qty = upd[i, 1]
        if nb == 0:
            if qty != 0:
                b = buf[sb + m - 1]  # stack top: the free stack holds m - nb ids
                buf[kb + b * _B] = key
                buf[qb + b * _B] = qty
                buf[cb + b] = 1
                buf[ob] = b
                buf[fb] = key
                nb = 1
                n = 1
            continue
        if key >= buf[fb + nb - 1]:
            j = nb - 1
        else:  # last ordered block whose first key <= key (block 0 if none)
            lo = 0
            hi = nb - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if buf[fb + mid] <= key:
                    lo = mid + 1
                else:
                    hi = mid
            j = lo - 1 if lo > 0 else 0
        b = buf[ob + j]
        cnt = buf[cb + b]
        kk = kb + b * _B  # this block's keys
        qq = qb + b * _B
        lo = 0
        hi = cnt
        while lo < hi:
            mid = (lo + hi) >> 1
            if buf[kk + mid] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < cnt and buf[kk + lo] == key:
            if qty != 0:
                buf[qq + lo] = qty
                continue
            for t in range(lo, cnt - 1):  # delete inside the block
                buf[kk + t] = buf[kk + t + 1]
                buf[qq + t] = buf[qq + t + 1]
            cnt -= 1
            buf[cb + b] = cnt
            n -= 1
            if cnt == 0:  # block emptied: unlink it, back to the free stack
                for t in range(j, nb - 1):
                    buf[ob + t] = buf[ob + t + 1]
                    buf[fb + t] = buf[fb + t + 1]
                nb -= 1
                buf[sb + m - nb - 1] = b
            elif lo == 0:
                buf[fb + j] = buf[kk]
        elif qty != 0:
            if cnt == _B:  # full: move the upper half to a new block after it
                nbk = buf[sb + m - nb - 1]
                h = _B // 2
                nk = kb + nbk * _B
                nq = qb + nbk * _B
                for t in range(_B - h):
                    buf[nk + t] = buf[kk + h + t]
                    buf[nq + t] = buf[qq + h + t]
                buf[cb + b] = h
                buf[cb + nbk] = _B - h
                for t in range(nb, j + 1, -1):
                    buf[ob + t] = buf[ob + t - 1]
                    buf[fb + t] = buf[fb + t - 1]
                buf[ob + j + 1] = nbk
                buf[fb + j + 1] = buf[nk]
                nb += 1
                if lo > h:
                    b = nbk
                    kk = nk
                    qq = nq
                    lo -= h
                    j += 1
                cnt = buf[cb + b]
            for t in range(cnt, lo, -1):  # insert inside the block
                buf[kk + t] = buf[kk + t - 1]
                buf[qq + t] = buf[qq + t - 1]
            buf[kk + lo] = key
            buf[qq + lo] = qty
            buf[cb + b] = cnt + 1
            n += 1
            if lo == 0:  # only when key is below every level (block 0)
                buf[fb + j] = key
    buf[s] = n
    buf[8 + s] = nb
    if nb > 8 and nb * _FILL > 4 * n:  # many near-empty blocks: compact (rare, O(n))
        keys, qtys = _collect(buf, s, 0)
        _rebuild(buf, s, keys, qtys, n)


@njit(cache=_CACHE, nogil=True)
def _side_merge(buf: np.ndarray, s: int, upd: np.ndarray) -> None:
    """Apply ``upd`` to side ``s`` by one linear merge and re-layout (bulk diffs, snapshots).

    Same result as :func:`_side_levelwise`: for a price repeated within one update the last
    occurrence wins."""
    sgn = 1 - 2 * s
    n = buf[s]
    kk = upd.shape[0]
    keys, qtys = _collect(buf, s, 0)
    ukeys = np.empty(kk, dtype=np.int64)
    for i in range(kk):
        ukeys[i] = sgn * upd[i, 0]
    # Binance sends bids high->low and asks low->high, i.e. keys strictly descending on both
    # sides: detect the common orders and only sort (stably) when needed.
    ascending = True
    descending = True
    for i in range(1, kk):
        if ukeys[i] < ukeys[i - 1]:
            ascending = False
        if ukeys[i] >= ukeys[i - 1]:
            descending = False
    if ascending:
        order = np.arange(kk)
    elif descending:
        order = np.arange(kk - 1, -1, -1)
    else:
        order = np.argsort(ukeys, kind="mergesort")  # stable: the last duplicate stays last
    ok = np.empty(n + kk, dtype=np.int64)
    oq = np.empty(n + kk, dtype=np.int64)
    i = 0
    o = 0
    j = 0
    while j < kk:
        idx = order[j]
        key = ukeys[idx]
        while j + 1 < kk and ukeys[order[j + 1]] == key:  # repeated price: keep the last
            j += 1
            idx = order[j]
        qty = upd[idx, 1]
        while i < n and keys[i] < key:
            ok[o] = keys[i]
            oq[o] = qtys[i]
            o += 1
            i += 1
        if i < n and keys[i] == key:
            i += 1  # replaced or deleted
        if qty != 0:
            ok[o] = key
            oq[o] = qty
            o += 1
        j += 1
    while i < n:
        ok[o] = keys[i]
        oq[o] = qtys[i]
        o += 1
        i += 1
    _rebuild(buf, s, ok, oq, o)


@njit(cache=_CACHE, nogil=True, inline="always")
def _need_blocks(buf: np.ndarray, s: int, k: int, merge: bool) -> int:
    """Blocks per side the update can need in the worst case (checked before any write)."""
    if merge:
        return (buf[s] + k + _FILL - 1) // _FILL + 1
    # each existing block may split once, then one more split per B/2 inserts
    return 2 * buf[8 + s] + (2 * k) // _B + 2


@njit(cache=_CACHE, nogil=True)
def _apply(buf: np.ndarray, bids: np.ndarray, asks: np.ndarray, merge_min: int) -> int:
    """Apply a diff to both sides atomically: validate and check capacity before writing.

    Returns 0 (or -1: applied and the book is crossed), ``_NEED_CAPACITY | blocks << 8``
    or ``_BAD_LEVEL | index << 8``; positive codes mean nothing was written."""
    bad = _validate(bids)
    if bad >= 0:
        return _BAD_LEVEL | (bad << 8)
    bad = _validate(asks)
    if bad >= 0:
        return _BAD_LEVEL | ((bids.shape[0] + bad) << 8)
    kb = bids.shape[0]
    ka = asks.shape[0]
    need = max(_need_blocks(buf, 0, kb, kb >= merge_min), _need_blocks(buf, 1, ka, ka >= merge_min))
    if need > buf[6]:
        return _NEED_CAPACITY | (need << 8)
    # the side as a loop variable, not a literal 0/1: numba would compile every side kernel
    # once per literal (twice the cold compile time for the same machine code)
    for s in range(2):
        upd = bids if s == 0 else asks
        k = upd.shape[0]
        if k >= merge_min:
            _side_merge(buf, s, upd)
        elif k > 0:
            _side_levelwise(buf, s, upd)
    _refresh_best(buf)
    if buf[8] > 0 and buf[9] > 0 and buf[2] >= buf[4]:
        return _OK_CROSSED
    return _OK


@njit(cache=_CACHE, nogil=True)
def _apply_packed(buf: np.ndarray, bids: bytes, asks: bytes) -> int:
    """:func:`_apply` on ``Levels`` bytes, viewed in place (no Python-side ``frombuffer``)."""
    if len(bids) % 16 or len(asks) % 16:
        return _BAD_LENGTH
    b = np.frombuffer(bids, dtype=np.int64).reshape((len(bids) // 16, 2))
    a = np.frombuffer(asks, dtype=np.int64).reshape((len(asks) // 16, 2))
    return _apply(buf, b, a, MERGE_MIN)


@njit(cache=_CACHE, nogil=True)
def _regrow(old: np.ndarray, new: np.ndarray) -> None:
    """Copy every level of ``old`` into ``new`` (a larger empty buffer)."""
    for s in range(2):
        keys, qtys = _collect(old, s, 0)
        _rebuild(new, s, keys, qtys, old[s])
    _refresh_best(new)


@njit(cache=_CACHE, nogil=True)
def _clear(buf: np.ndarray) -> None:
    empty = np.empty(0, dtype=np.int64)
    for s in range(2):
        _rebuild(buf, s, empty, empty, empty.shape[0])  # not a literal 0: see _apply
    _refresh_best(buf)


@njit(cache=_CACHE, nogil=True)
def _top(buf: np.ndarray, out: np.ndarray) -> int:
    """Write up to ``m = len(out) // 4`` best levels per side into ``out`` (bids in the first
    half, asks in the second, best first, zero padded). Returns ``n_bids << 32 | n_asks``
    (one int is cheaper to return than a boxed tuple)."""
    m = out.shape[0] // 4
    counts = 0
    for s in range(2):
        kb, qb, cb, ob, _, _ = _bases(buf, s)
        sgn = 1 - 2 * s
        base = 2 * m * s
        i = 0
        j = buf[8 + s] - 1
        while i < m and j >= 0:
            b = buf[ob + j]
            t = buf[cb + b] - 1
            while i < m and t >= 0:
                out[base + 2 * i] = sgn * buf[kb + b * _B + t]
                out[base + 2 * i + 1] = buf[qb + b * _B + t]
                i += 1
                t -= 1
            j -= 1
        out[base + 2 * i : base + 2 * m] = 0  # zero padding for fixed-size callers
        counts = (counts << 32) | i
    return counts


@njit(cache=_CACHE, nogil=True)
def _side_levels(buf: np.ndarray, side: int) -> np.ndarray:
    """All levels of one side as a new ``(n, 2)`` array of (price, qty), best first."""
    keys, qtys = _collect(buf, side, 0)
    n = keys.shape[0]
    sgn = 1 - 2 * side
    out = np.empty((n, 2), dtype=np.int64)
    for i in range(n):
        out[i, 0] = sgn * keys[n - 1 - i]
        out[i, 1] = qtys[n - 1 - i]
    return out


_SIGNATURES: list[tuple[Any, list[Any]]] = [
    (_apply, _APPLY_SIGS),
    (_apply_packed, [types.int64(_BUF_T, _BYTES_T, _BYTES_T)]),
    (_regrow, [types.void(_BUF_T, _BUF_T)]),
    (_clear, [types.void(_BUF_T)]),
    (_top, [types.int64(_BUF_T, _BUF_T)]),
    (_side_levels, [_LV_RW(_BUF_T, types.int64)]),
]
"""Every Python-facing kernel and the only signatures it may run with."""


@functools.cache
def _compile() -> None:
    """Compile (or load from the on-disk cache) :data:`_SIGNATURES`, then forbid any other
    specialisation (what ``njit(signatures)`` does, minus compiling at import)."""
    for kernel, sigs in _SIGNATURES:
        for sig in sigs:
            kernel.compile(sig)
        kernel.disable_compile()


# --------------------------------------------------------------------------- public class


def _as_levels(a: object) -> np.ndarray:
    """Accept ``Levels`` bytes or an int64 ``(k, 2)`` array; reject anything else. Returns a
    C-contiguous read-only array (one of the kernels' signatures)."""
    if isinstance(a, bytes | bytearray | memoryview):
        if len(a) % 16:
            raise BookError(f"packed levels must be a multiple of 16 bytes, got {len(a)}")
        return np.frombuffer(a, _I8).reshape(-1, 2)
    if not isinstance(a, np.ndarray) or a.dtype != np.int64:
        what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise BookError(f"levels must be an int64 (k, 2) array or Levels bytes, got {what}")
    if a.ndim != 2 or a.shape[1] != 2:
        raise BookError(f"levels must have shape (k, 2), got {a.shape}")
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False  # a view: the caller's array stays writable
    return view


def _first_bad(a: np.ndarray) -> int:
    """Index of the first level with price <= 0 or qty < 0, or -1 (numpy: snapshots only)."""
    bad = np.flatnonzero((a[:, 0] <= 0) | (a[:, 1] < 0))
    return int(bad[0]) if bad.size else -1


def check_levels(bids: bytes, asks: bytes) -> None:
    """Raise :class:`BookError` unless both are well-formed ``Levels`` (a multiple of 16
    bytes, every price > 0 and quantity >= 0). Numpy, no compiled call: for the cold paths
    (buffered diffs, snapshots); :meth:`OrderBook.apply_levels` checks the same atomically."""
    for side, levels in (("bid", bids), ("ask", asks)):
        lv = _as_levels(levels)
        i = _first_bad(lv)
        if i >= 0:
            raise BookError(
                f"invalid {side} level (price={int(lv[i, 0])}, qty={int(lv[i, 1])}): "
                "price must be > 0 and qty >= 0"
            )


def _blocks_for(levels: int) -> int:
    return max(4, 2 * ((levels + _FILL - 1) // _FILL) + 2)


def _new_buf(blocks: int) -> np.ndarray:
    buf = np.zeros(_HDR + 2 * blocks * _SIDE_WORDS, dtype=np.int64)
    buf[6] = blocks
    _clear(buf)  # free-block stacks
    return buf


class OrderBook:
    """Local limit order book of one instrument, exact integer prices and quantities.

    Each side is a list of sorted blocks of at most 32 levels, ordered by an index array: an
    insert or delete shifts at most one block, wherever the level is (real Binance diffs touch
    levels hundreds deep), the best level is the last slot of the last block, and top-N walks
    blocks from the end. ``depth_hint`` sizes the initial capacity (levels per side); it
    grows (doubling) whenever an update could exceed it, checked before anything is written,
    so nothing is ever truncated. Not thread-safe: one owner (a lane) mutates it.
    """

    __slots__ = ("_buf", "_best", "_out", "_out_mv", "_out_n")

    def __init__(self, depth_hint: int = 4096) -> None:
        _compile()  # once per process: the kernels then refuse any other argument types
        self._buf = _new_buf(_blocks_for(max(16, int(depth_hint))))
        self._best = self._buf[2:6]  # a view made once: best() is then one tolist()
        self._out_n = -1
        self._out = np.zeros(0, dtype=np.int64)
        self._out_mv = memoryview(b"")

    # ------------------------------------------------------------------ updates

    def _grow(self, blocks: int) -> None:
        new = _new_buf(max(blocks, 2 * int(self._buf[6])))
        _regrow(self._buf, new)
        self._buf = new
        self._best = new[2:6]

    def _run(self, bids: np.ndarray, asks: np.ndarray, merge_min: int = MERGE_MIN) -> bool:
        """Apply with growth and error reporting (the slow, general path); returns crossed."""
        rc = _apply(self._buf, bids, asks, merge_min)
        if rc & 0xFF == _NEED_CAPACITY:
            self._grow(rc >> 8)
            rc = _apply(self._buf, bids, asks, merge_min)
        if rc <= 0:
            return rc < 0
        if rc & 0xFF == _BAD_LEVEL:
            i = rc >> 8
            side, lvl = ("bid", bids[i]) if i < bids.shape[0] else ("ask", asks[i - len(bids)])
            raise BookError(
                f"invalid {side} level (price={int(lvl[0])}, qty={int(lvl[1])}): "
                "price must be > 0 and qty >= 0; nothing was applied"
            )
        raise AssertionError(f"unexpected book kernel code {rc}")  # pragma: no cover

    def apply_levels(self, bids: bytes, asks: bytes) -> bool:
        """Apply a diff given as packed ``Levels`` bytes (e.g. ``DepthDiff.bids``/``.asks``);
        returns :meth:`crossed` after it.

        The fastest entry point: the bytes are viewed inside the compiled kernel. Same
        semantics and errors as :meth:`apply_diff`."""
        try:
            rc = _apply_packed(self._buf, bids, asks)
        except Exception:  # not bytes (bytearray, memoryview...): numba cannot type it
            rc = 1
        if rc <= 0:
            return rc < 0
        return self._run(_as_levels(bids), _as_levels(asks))

    def apply_diff(self, bids: np.ndarray, asks: np.ndarray) -> bool:
        """Set each listed level to its absolute quantity (0 deletes; absent deletes are no-ops);
        returns :meth:`crossed` after it.

        ``bids``/``asks``: int64 ``(k, 2)`` arrays of ``(price, qty)`` (or ``Levels`` bytes).
        All-or-nothing: a level with price <= 0 or qty < 0 raises :class:`BookError` and
        leaves the book untouched."""
        try:
            rc = _apply(self._buf, bids, asks, MERGE_MIN)
        except Exception:  # wrong dtype/shape/type: numba cannot type it
            rc = 1
        if rc <= 0:
            return rc < 0
        return self._run(_as_levels(bids), _as_levels(asks))  # normalise, grow or explain

    def apply_snapshot(self, bids: np.ndarray | bytes, asks: np.ndarray | bytes) -> bool:
        """Replace the whole book by ``bids``/``asks`` (``(k, 2)`` arrays or ``Levels`` bytes,
        any order; qty 0 entries are skipped; a repeated price keeps its last quantity).
        All-or-nothing like :meth:`apply_diff`; returns :meth:`crossed`."""
        b = _as_levels(bids)
        a = _as_levels(asks)
        if _first_bad(b) >= 0 or _first_bad(a) >= 0:
            self._run(b, a)  # raises naming the offending level; book untouched
        _clear(self._buf)
        # merging into an empty side sorts and de-duplicates in O(k log k) whatever the size
        return self._run(b, a, merge_min=1)

    def clear(self) -> None:
        """Remove every level (capacity is kept)."""
        _clear(self._buf)

    # ------------------------------------------------------------------ queries

    def best(self) -> tuple[int, int, int, int]:
        """``(bid_px, bid_qty, ask_px, ask_qty)``; ``0, 0`` for an empty side."""
        bp, bq, ap, aq = self._best.tolist()
        return bp, bq, ap, aq

    def crossed(self) -> bool:
        """True when both sides are non-empty and best bid >= best ask."""
        bp, _, ap, _ = self._best.tolist()
        return bp != 0 and ap != 0 and bp >= ap

    def top(self, n: int, pad: bool = False) -> tuple[bytes, bytes]:
        """The ``n`` best levels per side as packed little-endian int64 ``(px, qty)`` bytes
        (the ``Levels`` format), best first. Without ``pad`` a side with fewer levels gives
        shorter bytes; with ``pad`` both are exactly ``16 * n`` bytes, zero-filled."""
        if n != self._out_n:
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            self._out = np.zeros(4 * n, dtype=np.int64)
            self._out_mv = memoryview(self._out).cast("B")
            self._out_n = n
        counts = _top(self._buf, self._out)
        mv = self._out_mv
        h = 16 * n
        if pad:
            return mv[:h].tobytes(), mv[h:].tobytes()
        return mv[: 16 * (counts >> 32)].tobytes(), mv[h : h + 16 * (counts & 0xFFFFFFFF)].tobytes()

    def levels(self, side: str) -> np.ndarray:
        """A copy of every level of ``side`` (``"bid"`` or ``"ask"``) as ``(n, 2)``, best first."""
        if side not in ("bid", "ask"):
            raise ValueError(f"side must be 'bid' or 'ask', got {side!r}")
        return _side_levels(self._buf, 0 if side == "bid" else 1)

    def __len__(self) -> int:
        """Total number of levels (both sides)."""
        return int(self._buf[0] + self._buf[1])

    @property
    def depth(self) -> tuple[int, int]:
        """Number of ``(bid, ask)`` levels."""
        s = self._buf[:2].tolist()
        return s[0], s[1]

    @property
    def capacity(self) -> int:
        """Current capacity per side in levels (blocks x 32); grows on demand."""
        return int(self._buf[6]) * _B

    def __repr__(self) -> str:
        bp, bq, ap, aq = self.best()
        nb, na = self.depth
        return f"OrderBook(bids={nb}, asks={na}, best={bp}x{bq} / {ap}x{aq})"


COLD_COMPILE_S = 15
"""Measured cold compile of these kernels on the 2-core VM (``NUMBA_CACHE_DIR`` empty)."""


def warmup(log: logging.Logger | None = None) -> float:
    """Compile (or load from the on-disk cache) every kernel signature the hot path uses, so
    the first real tick does not pay JIT time. Plugins call it at start-up.

    On a cold cache (first run, new numba, changed source) it says so at INFO before the
    ~15 s compile and how long it took after. Returns the seconds spent."""
    def exercise() -> None:
        _compile()
        book = OrderBook(16)
        lv = np.array([[100, 1], [99, 2]], dtype=np.int64)
        ask = lv + np.array([[2, 0], [3, 0]], dtype=np.int64)
        ro = np.frombuffer(lv.tobytes(), _I8).reshape(-1, 2)  # read-only views: a separate type
        book.apply_snapshot(lv, ask)
        book.apply_snapshot(ro, np.frombuffer(ask.tobytes(), _I8).reshape(-1, 2))
        book.apply_diff(lv, ask)
        book.apply_diff(ro, ro)
        book.apply_levels(lv.tobytes(), ask.tobytes())
        book.top(5)
        book.levels("bid")
        book.clear()

    kernels = [k for k, _ in _SIGNATURES]
    return jit.warm(log or _log, "order-book", COLD_COMPILE_S, __file__, _CACHE, kernels, exercise)
