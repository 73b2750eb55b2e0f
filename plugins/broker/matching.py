"""Fill models of the paper broker: the book walk of aggressive orders, and the queue position
of passive ones.

**Aggressive** (market, IOC, FOK, and the crossing part of a limit order): the order takes
the displayed levels of the latest ``md.book`` on the other side, best first, up to its limit
price, never more than a level displays. Our orders are not in the real book, so what we
took stays *taken* (:class:`SideBook`): the next order sees ``displayed - taken`` at that
price, until trades at that price have consumed as much as we took (the front of the level,
which we took first) or trades went through it, or the level is no longer displayed; if the
level shrinks below what we took, taken shrinks with it (what is left is what we took).

**Passive** (resting limit orders, in the spirit of hftbacktest's queue models - formulas
ours): an order joins its level behind the displayed quantity (``ahead``) and only moves up:

* a trade at its price with the aggressor on the other side consumes ``ahead``; the part of
  the trade beyond ``ahead`` fills the order (and, in time priority, our later orders at the
  same price: one trade never fills more than its own quantity);
* a trade *through* its price (a sell below our bid, a buy above our ask) means the
  aggressor swept our price level: it fills our orders there, up to the traded quantity;
* a displayed quantity that decreases at its price in a later book consumes ``ahead``:
  ``risk_averse`` assumes a decrease is behind us unless it cannot be (``ahead = min(ahead,
  displayed)``); ``prob`` attributes the part of the decrease not explained by trades at that
  price to the front with probability ``f(front) / (f(front) + f(back))``, ``f(x) = x**n``
  (``n = queue_prob_power``; the estimation of rigtorp.se/2013/06/08 and quant.SE #3782);
* a book whose other side reaches its price (a new ask at or below our bid) fills it at its
  own price, as a maker, up to the quantity displayed there (minus what we took).

An order priced beyond the displayed depth (the top-N levels of ``md.book``) has an unknown
queue (``UNKNOWN`` ahead) until its level comes into view.

``touch`` (the original design's model): an order joins ``queue_position`` (0: front, 1:
back) of the way into the displayed quantity; trades consume that as above, and each trade
that reaches the order fills it with probability ``fill_probability_at_touch`` (seeded
``random.Random``).

The per-book work is one compiled call for both sides (:func:`_scan_book`) over the packed
levels, our sorted level prices and the prices we took liquidity at: the risk-averse ``min``
is kept per level as a ``cap`` and applied to the orders only when a trade or a new order at
that level needs it, so a book event costs the same whether a level holds 1 order or 50.
"""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable

import numpy as np
from numba import njit, types

from .orders import Order

UNKNOWN = 1 << 62
"""Quantity ahead of an order whose price level is beyond the displayed depth."""
_NATIVE_LE = sys.byteorder == "little"


# --------------------------------------------------------------------------- book levels


SideView = tuple[list[tuple[int, int]], bool, dict[int, int]]
"""A decoded book side: levels best first (padding dropped), whether it shows all of its
top-N slots (then prices beyond the last are unknown), and price -> displayed quantity."""


def side_view(packed: bytes) -> SideView:
    """Packed ``Levels`` bytes (length a multiple of 16) decoded for the cold paths."""
    v = memoryview(packed).cast("q").tolist()  # native order: little-endian, checked at import
    lv = list(zip(v[0::2], v[1::2], strict=True))
    n = len(lv)
    while n and lv[n - 1][0] <= 0:  # zero padding at the end
        n -= 1
    full = n == len(lv) and n > 0
    del lv[n:]
    return lv, full, dict(lv)


def displayed_at(view: SideView, px: int, buy: bool) -> int:
    """Displayed quantity at ``px`` on a side (``buy``: the bid side); 0 if the price is
    within the displayed range but has no level, :data:`UNKNOWN` if it is beyond it."""
    levels, full, shown = view
    q = shown.get(px)
    if q is not None:
        return q
    if full and (px < levels[-1][0] if buy else px > levels[-1][0]):
        return UNKNOWN
    return 0


def walk(
    levels: list[tuple[int, int]], qty: int, limit_px: int, buy: bool, taken: SideBook,
    pending: dict[int, int] | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """The fills of an aggressive order of ``qty`` (``buy``: it buys) against ``levels``
    (the other side, best first) up to ``limit_px`` (0: no limit): [(price, qty), ...], at
    most what each level displays minus what we already took from it (``taken``: that
    side; ``pending``: taken too, not committed yet). Takes nothing (the caller commits
    with :meth:`SideBook.take`)."""
    out: list[tuple[int, int]] = []
    for px, shown in levels:
        if qty <= 0:
            break
        if limit_px and (px > limit_px if buy else px < limit_px):
            break
        avail = taken.available(px, shown)
        if pending:
            avail -= pending.get(px, 0)
        if avail > 0:
            q = avail if avail < qty else qty
            out.append((px, q))
            qty -= q
    return out


# --------------------------------------------------------------------------- resting orders


PX, CAP, SHOWN, DEC = 0, 1, 2, 3
"""Rows of a side's scan state (a ``(4, n + nt)`` int64 array)."""


_DROPPED = 1 << 31
"""In a scan's result: a taken price dropped to 0 (drop it at the next rebuild)."""


@njit(cache=True, nogil=True)
def _scan(a: np.ndarray, desc: bool, st: np.ndarray, n: int) -> int:
    """One book side ``a`` (flat (price, qty) int64 pairs, best first, zero padded;
    ``desc``: bids) against a side's scan state: columns ``[0, n)`` are our level prices,
    ``[n, ...)`` the prices we took liquidity at, each group sorted best first.

    Our levels within the displayed range: ``CAP = min(CAP, displayed)``; ``DEC`` = how much
    the displayed quantity fell since ``SHOWN`` (0 if it did not; -2 if ``SHOWN`` was
    unknown, < 0); ``SHOWN = displayed``. Beyond the displayed depth: left alone, ``DEC =
    -1``.
    Taken prices: ``CAP = min(CAP, displayed)``, 0 once no longer displayed. Returns how
    many of our levels fell, ``| _DROPPED`` if a taken price dropped to 0."""
    m = a.shape[0] // 2
    mv = 0
    while mv < m and a[2 * mv] > 0:
        mv += 1
    full = mv == m and mv > 0
    worst = a[2 * (mv - 1)] if mv > 0 else 0
    fell = 0
    dropped = 0
    j = 0
    for k in range(st.shape[1]):
        if k == n:
            j = 0  # the taken prices: a second merge walk
        p = st[PX, k]
        if full and (p < worst if desc else p > worst):
            if k < n:
                st[DEC, k] = -1
            elif st[CAP, k] > 0:
                st[CAP, k] = 0
                dropped = _DROPPED
            continue
        if desc:
            while j < mv and a[2 * j] > p:
                j += 1
        else:
            while j < mv and a[2 * j] < p:
                j += 1
        q = a[2 * j + 1] if j < mv and a[2 * j] == p else 0
        if q < st[CAP, k]:
            st[CAP, k] = q
            if q == 0 and k >= n:
                dropped = _DROPPED
        if k < n:
            s = st[SHOWN, k]
            if s < 0:
                st[DEC, k] = -2  # in view again: what it shows now bounds the queue
            elif q < s:
                st[DEC, k] = s - q
                fell += 1
            else:
                st[DEC, k] = 0
            st[SHOWN, k] = q
    return fell | dropped


@njit(cache=True, nogil=True)
def _scan_side(packed: bytes, desc: bool, st: np.ndarray, n: int) -> int:
    """:func:`_scan` on ``Levels`` bytes, viewed in place."""
    return _scan(np.frombuffer(packed, dtype=np.int64), desc, st, n)


@njit(cache=True, nogil=True)
def _scan_book(bids: bytes, asks: bytes, stb: np.ndarray, nb: int, sta: np.ndarray, na: int) -> int:
    """Both sides in one call (one dispatch instead of two): bids' result in the low 32
    bits, asks' in the high."""
    rb = _scan(np.frombuffer(bids, dtype=np.int64), True, stb, nb)
    ra = _scan(np.frombuffer(asks, dtype=np.int64), False, sta, na)
    return rb | (ra << 32)


_BYTES = types.Bytes(types.uint8, 1, "C", readonly=True)
_ST = types.Array(types.int64, 2, "C")
_SIGS = (
    (_scan_side, types.int64(_BYTES, types.boolean, _ST, types.int64)),
    (_scan_book, types.int64(_BYTES, _BYTES, _ST, types.int64, _ST, types.int64)),
)


@functools.cache
def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the scan kernels, one signature each."""
    for kernel, sig in _SIGS:
        kernel.compile(sig)
        kernel.disable_compile()


class Level:
    """Our resting orders at one price of one side, in time priority."""

    __slots__ = ("px", "orders", "idx", "shown0", "traded")

    def __init__(self, px: int, shown: int) -> None:
        self.px = px
        self.orders: list[Order] = []
        self.idx = -1
        """Column in the side's scan state (-1 until the next rebuild)."""
        self.shown0 = shown
        """Displayed quantity when the level was created (-1: beyond the displayed depth)."""
        self.traded = 0
        """Trade quantity at this price since the last book (the prob model nets it out)."""


class SideBook:
    """One side of one symbol's book as the broker keeps it (``buy``: the bids): our resting
    orders there, indexed by price, and the liquidity our aggressive orders took from it."""

    __slots__ = ("buy", "levels", "count", "best", "st", "n", "nt", "tcol", "dirty")

    def __init__(self, buy: bool) -> None:
        self.buy = buy
        self.levels: dict[int, Level] = {}
        self.count = 0
        """Resting orders."""
        self.best = -1 if buy else UNKNOWN
        """Our best price (highest bid / lowest ask); a sentinel no price can cross."""
        self.st = np.empty((4, 0), np.int64)
        self.n = 0
        """Our levels in ``st`` (then ``nt`` taken prices)."""
        self.nt = 0
        self.tcol: dict[int, int] = {}
        """Taken price -> its column in ``st``."""
        self.dirty = False

    # ------------------------------------------------------------------ resting orders

    def add(self, order: Order, displayed: int, ahead: int) -> Level:
        """Rest ``order`` at its price, ``ahead`` in its queue; ``displayed`` is what the
        book shows there now (:data:`UNKNOWN` beyond the displayed depth)."""
        px = order.px
        lv = self.levels.get(px)
        if lv is None:
            lv = self.levels[px] = Level(px, -1 if displayed >= UNKNOWN else displayed)
            self.dirty = True
            if (px > self.best) if self.buy else (px < self.best):
                self.best = px
        else:
            self.settle(lv, True)  # the cap since the last book binds those already there
        order.ahead = ahead
        order.level = lv
        lv.orders.append(order)
        self.count += 1
        return lv

    def remove(self, order: Order) -> None:
        """Take ``order`` out of its level (finished or canceled)."""
        lv = order.level
        order.level = None
        lv.orders.remove(order)
        self.count -= 1
        if not lv.orders:
            del self.levels[lv.px]
            self.dirty = True
            if lv.px == self.best:
                lvls = self.levels
                self.best = (
                    (max(lvls) if self.buy else min(lvls)) if lvls
                    else (-1 if self.buy else UNKNOWN)
                )  # fmt: skip

    def settle(self, lv: Level, reset: bool = False) -> None:
        """Apply the level's pending cap (the risk-averse ``min``) to its orders. ``reset``
        before a new order joins (the cap does not bind it); otherwise the cap may stay:
        applying it again later is a no-op, as trades only lower what is ahead."""
        i = lv.idx
        if i < 0:
            return
        cap = self.st.item(CAP, i)
        if cap < UNKNOWN:
            for o in lv.orders:
                if o.ahead > cap:
                    o.ahead = cap
            if reset:
                self.st[CAP, i] = UNKNOWN

    def scan(self, packed: bytes) -> int:
        """A new book of this side (see :func:`_scan_side`); how many of our levels fell."""
        if self.dirty:
            self._rebuild(None)
        got = int(_scan_side(packed, self.buy, self.st, self.n))
        if got & _DROPPED:  # a taken price is no longer counted: drop it at the next rebuild
            self.dirty = True
        return got & (_DROPPED - 1)

    def scan_both(self, asks: SideBook, bids_packed: bytes, asks_packed: bytes) -> None:
        """A new book for this (bid) side and ``asks``, each with something to scan: one
        compiled call instead of two."""
        if self.dirty:
            self._rebuild(None)
        if asks.dirty:
            asks._rebuild(None)
        got = _scan_book(bids_packed, asks_packed, self.st, self.n, asks.st, asks.n)
        if got & _DROPPED:
            self.dirty = True
        if (got >> 32) & _DROPPED:
            asks.dirty = True

    def ordered(self) -> list[Level]:
        """Our levels, best first."""
        return sorted(self.levels.values(), key=_px, reverse=self.buy)

    # ------------------------------------------------------------------ taken liquidity

    def available(self, px: int, displayed: int) -> int:
        """What is left for us at ``px`` of the ``displayed`` quantity."""
        c = self.tcol.get(px)
        return displayed if c is None else displayed - int(self.st[CAP, c])

    def taken(self) -> dict[int, int]:
        """Price -> quantity we took and still count as taken."""
        st = self.st
        return {p: q for p, q in zip(st[PX, self.n :].tolist(), st[CAP, self.n :].tolist(),
                                     strict=True) if q > 0}  # fmt: skip

    def take(self, fills: list[tuple[int, int]]) -> None:
        """Our aggressive order took ``fills`` [(price, qty), ...] from this side."""
        t = self.taken()
        for px, q in fills:
            t[px] = t.get(px, 0) + q
        self._rebuild(t)

    def traded(self, px: int, qty: int) -> None:
        """A trade hit this side at ``px``: the market consumed the front of that level (the
        very quantity we took first, in our picture) and every better level."""
        st, buy = self.st, self.buy
        for c in range(self.n, self.n + self.nt):
            p = int(st[PX, c])
            if (p > px) if buy else (p < px):
                st[CAP, c] = 0
                self.dirty = True  # dropped at the next rebuild
            elif p == px:
                left = int(st[CAP, c]) - qty
                st[CAP, c] = left if left > 0 else 0
                self.dirty = self.dirty or left <= 0

    def _rebuild(self, taken: dict[int, int] | None) -> None:
        """A new scan state for the current levels and ``taken`` (None: as it is); pending
        caps and shown quantities carry over, taken prices no longer counted drop out.
        Built from Python lists in one go: element-wise numpy writes cost ~0.1 us each."""
        if taken is None:
            taken = self.taken() if self.nt else {}
        lvls = self.ordered()
        old_cap, old_shown = self.st[CAP].tolist(), self.st[SHOWN].tolist()
        px: list[int] = []
        cap: list[int] = []
        shown: list[int] = []
        for i, lv in enumerate(lvls):
            px.append(lv.px)
            if lv.idx >= 0:
                cap.append(old_cap[lv.idx])
                shown.append(old_shown[lv.idx])
            else:
                cap.append(UNKNOWN)
                shown.append(lv.shown0)
            lv.idx = i
        n = len(lvls)
        tpx = sorted(taken, reverse=self.buy)
        px += tpx
        cap += [taken[p] for p in tpx]
        shown += [0] * len(tpx)
        width = len(px)
        self.st = np.array(px + cap + shown + [0] * width, dtype=np.int64).reshape(4, width)
        self.n, self.nt = n, len(tpx)
        self.tcol = {p: n + j for j, p in enumerate(tpx)}
        self.dirty = False


def _px(lv: Level) -> int:
    return lv.px


# --------------------------------------------------------------------------- fill models


class QueueModel:
    """How passive orders advance: ``risk_averse``, ``prob`` or ``touch`` (module doc)."""

    def __init__(
        self, kind: str, *, power: float = 2.0, p_touch: float = 1.0,
        queue_position: float = 1.0, seed: int = 0,
    ) -> None:  # fmt: skip
        self.kind = kind
        self.prob = kind == "prob"
        self.power = power
        self.queue_position = queue_position
        self.p_touch = p_touch
        self.rng = random.Random(seed)
        self.gate: Callable[[], bool] | None = self._touch if kind == "touch" else None

    def join(self, displayed: int) -> int:
        """Quantity ahead of a new order behind ``displayed``."""
        if self.kind == "touch" and displayed < UNKNOWN:
            return round(displayed * self.queue_position)
        return displayed

    def _touch(self) -> bool:
        return self.rng.random() < self.p_touch

    def cancels(self, side: SideBook) -> None:
        """prob model, after a scan: spread each level's fall (net of the trades at its price
        since the last book) over front and back of each order. Only a fall moves anyone:
        what is ahead never exceeds what the level showed at the last book (orders join
        behind what it shows, trades only lower it), so a level that did not fall leaves
        every order where it was."""
        n = self.power
        st = side.st
        dec = st[DEC].tolist()
        for lv in side.levels.values():
            i = lv.idx
            d = dec[i] if i >= 0 else -1
            if d == -1:  # not in view (or new since the scan): nothing to learn
                continue
            traded = lv.traded
            lv.traded = 0
            if d == -2:  # back in view: what it shows bounds the queue
                side.settle(lv, True)
                continue
            if d == 0:
                continue
            new = st.item(SHOWN, i)
            chg = d - traded
            if chg <= 0:  # the trades explain the fall
                for o in lv.orders:
                    if o.ahead > new:
                        o.ahead = new
                continue
            prev = new + d
            for o in lv.orders:
                front = o.ahead
                if front >= UNKNOWN:
                    o.ahead = new
                    continue
                back = max(prev - front, 0)
                ff, fb = float(front) ** n, float(back) ** n
                w = ff / (ff + fb) if ff + fb > 0 else 1.0
                cut = chg * w + max(chg * (1.0 - w) - back, 0.0)
                est = max(front - round(cut), 0)
                o.ahead = est if est < new else new


def queue_fills(
    orders: list[Order], qty: int, used: int, gate: Callable[[], bool] | None
) -> tuple[list[tuple[Order, int]], int]:
    """A trade of ``qty`` at the orders' price (aggressor on the other side), ``used`` of it
    already given to our better-priced orders: each order, in time priority, gets what of the
    trade reaches past its queue position and is not taken by our orders ahead of it; then
    the trade moves every order up. Returns the fills and the new ``used``."""
    out: list[tuple[Order, int]] = []
    for o in orders:
        ahead = o.ahead
        over = qty - ahead - used
        if over > 0 and (gate is None or gate()):
            f = over if over < o.leaves else o.leaves
            out.append((o, f))
            used += f
        o.ahead = ahead - qty if ahead > qty else 0
    return out, used


def through_fills(orders: list[Order], qty: int, used: int) -> tuple[list[tuple[Order, int]], int]:
    """A trade of ``qty`` through the orders' price: they were in front of it, so they fill
    in time priority up to what is left of the trade."""
    out: list[tuple[Order, int]] = []
    for o in orders:
        o.ahead = 0
        left = qty - used
        if left > 0:
            f = left if left < o.leaves else o.leaves
            out.append((o, f))
            used += f
    return out, used


if not _NATIVE_LE:  # pragma: no cover - the scan reads the packed <i8 levels in place
    raise ImportError("the broker's scan kernel needs a little-endian machine")
