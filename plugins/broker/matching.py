"""Fill models of the paper broker: the book walk of aggressive orders, and the queue position
of passive ones.

**Aggressive** (market, IOC, FOK, and the crossing part of a limit order): the order takes
the displayed levels of the latest ``md.book`` on the other side, best first, up to its limit
price, never more than a level displays. Our orders are not in the real book, so what we
took stays *taken* (:class:`Taken`): the next order sees ``displayed - taken`` at that
price until the level leaves the book; if the level shrinks below what we took, taken shrinks
with it (what is left is what we took).

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

The per-book work on our resting orders is one compiled scan per side (:func:`_scan_side`)
over the packed levels and our sorted level prices: the risk-averse ``min`` is kept per level
as a ``cap`` and applied to the orders only when a trade or a new order at that level needs
them, so a book event costs the same whether a level holds 1 order or 50.
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
_I8 = np.dtype("<i8")
_NATIVE_LE = sys.byteorder == "little"


# --------------------------------------------------------------------------- book levels


def levels_of(packed: bytes) -> list[tuple[int, int]]:
    """Packed ``Levels`` bytes as [(price, qty), ...], best first, padding dropped."""
    v = np.frombuffer(packed, _I8).tolist()
    return [(p, q) for p, q in zip(v[0::2], v[1::2], strict=True) if p > 0]


def displayed_at(levels: list[tuple[int, int]], full: bool, px: int, buy: bool) -> int:
    """Displayed quantity at ``px`` on a side (``buy``: the bid side); 0 if the price is
    within the displayed range but has no level, :data:`UNKNOWN` if it is beyond it (the
    side shows all ``full`` top-N levels and ``px`` is worse than the last)."""
    for p, q in levels:
        if p == px:
            return q
    if full and levels and (px < levels[-1][0] if buy else px > levels[-1][0]):
        return UNKNOWN
    return 0


class Taken:
    """Liquidity our aggressive orders took from one side of a symbol's book: price ->
    quantity, kept while the level is displayed (see the module docstring)."""

    __slots__ = ("qty",)

    def __init__(self) -> None:
        self.qty: dict[int, int] = {}

    def available(self, px: int, displayed: int) -> int:
        """What is left at ``px`` for us."""
        return displayed - self.qty.get(px, 0)

    def take(self, px: int, qty: int) -> None:
        self.qty[px] = self.qty.get(px, 0) + qty

    def refresh(self, levels: list[tuple[int, int]], full: bool, buy: bool) -> None:
        """A new book of this side: forget levels that left it, shrink to what is shown."""
        shown = dict(levels)
        worst = levels[-1][0] if levels else 0
        for px, qty in list(self.qty.items()):
            q = shown.get(px)
            if q is None:
                if full and levels and (px < worst if buy else px > worst):
                    continue  # beyond the displayed depth: unknown, keep
                del self.qty[px]
            elif q < qty:
                self.qty[px] = q


def walk(
    levels: list[tuple[int, int]], qty: int, limit_px: int, buy: bool, taken: Taken
) -> list[tuple[int, int]]:
    """The fills of an aggressive order of ``qty`` against ``levels`` (the other side, best
    first) up to ``limit_px`` (0: no limit): [(price, qty), ...], at most what each level
    displays minus what we already took. Takes nothing (the caller commits with
    :meth:`Taken.take`)."""
    out: list[tuple[int, int]] = []
    for px, shown in levels:
        if qty <= 0:
            break
        if limit_px and (px > limit_px if buy else px < limit_px):
            break
        avail = taken.available(px, shown)
        if avail > 0:
            q = avail if avail < qty else qty
            out.append((px, q))
            qty -= q
    return out


# --------------------------------------------------------------------------- resting orders


@njit(cache=True, nogil=True)
def _scan_side(
    packed: bytes, desc: bool, px: np.ndarray, cap: np.ndarray, shown: np.ndarray,
    dec: np.ndarray, n: int,
) -> int:  # fmt: skip
    """One book side against our ``n`` level prices ``px`` (sorted best first, like the
    side: ``desc`` for bids). For each level within the displayed range: ``cap =
    min(cap, displayed)``, ``dec`` = how much the displayed quantity fell since ``shown``
    (0 if it did not, or if ``shown`` was unknown, < 0), ``shown = displayed``. Levels
    beyond the displayed depth keep cap and shown, with ``dec = -1``. Returns how many
    levels fell."""
    a = np.frombuffer(packed, dtype=np.int64)
    m = a.shape[0] // 2
    mv = 0
    while mv < m and a[2 * mv] > 0:
        mv += 1
    full = mv == m and mv > 0
    worst = a[2 * (mv - 1)] if mv > 0 else 0
    fell = 0
    j = 0
    for k in range(n):
        p = px[k]
        if full and (p < worst if desc else p > worst):
            for r in range(k, n):  # beyond the displayed depth: unknown, left alone
                dec[r] = -1
            break
        if desc:
            while j < mv and a[2 * j] > p:
                j += 1
        else:
            while j < mv and a[2 * j] < p:
                j += 1
        q = a[2 * j + 1] if j < mv and a[2 * j] == p else 0
        if q < cap[k]:
            cap[k] = q
        s = shown[k]
        if 0 <= q < s:
            dec[k] = s - q
            fell += 1
        else:
            dec[k] = 0
        shown[k] = q
    return fell


_ARR = types.Array(types.int64, 1, "C")
_SCAN_SIG = types.int64(
    types.Bytes(types.uint8, 1, "C", readonly=True), types.boolean, _ARR, _ARR, _ARR, _ARR,
    types.int64,
)  # fmt: skip


@functools.cache
def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the scan kernel for its one signature."""
    _scan_side.compile(_SCAN_SIG)
    _scan_side.disable_compile()


class Level:
    """Our resting orders at one price of one side, in time priority."""

    __slots__ = ("px", "orders", "idx", "shown0", "traded")

    def __init__(self, px: int, shown: int) -> None:
        self.px = px
        self.orders: list[Order] = []
        self.idx = -1
        """Slot in the side's scan arrays (-1 until the next rebuild)."""
        self.shown0 = shown
        """Displayed quantity when the level was created (-1: beyond the displayed depth)."""
        self.traded = 0
        """Trade quantity at this price since the last book (the prob model nets it out)."""


class SideBook:
    """Our resting orders on one side (``buy``) of one symbol, indexed by price."""

    __slots__ = (
        "buy", "levels", "count", "best", "px", "cap", "shown", "dec", "n", "dirty",
    )  # fmt: skip

    def __init__(self, buy: bool) -> None:
        self.buy = buy
        self.levels: dict[int, Level] = {}
        self.count = 0
        """Resting orders."""
        self.best = -1 if buy else UNKNOWN
        """Our best price (highest bid / lowest ask); a sentinel no price can cross."""
        self.px = np.empty(0, np.int64)
        self.cap = np.empty(0, np.int64)
        self.shown = np.empty(0, np.int64)
        self.dec = np.empty(0, np.int64)
        self.n = 0
        self.dirty = False

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
            self.settle(lv)  # the cap since the last book binds the orders already there
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

    def settle(self, lv: Level) -> None:
        """Apply the level's pending cap (the risk-averse ``min``) to its orders."""
        i = lv.idx
        if i < 0:
            return
        cap = int(self.cap[i])
        if cap < UNKNOWN:
            for o in lv.orders:
                if o.ahead > cap:
                    o.ahead = cap
            self.cap[i] = UNKNOWN

    def scan(self, packed: bytes) -> int:
        """A new book of this side: update every level's cap and shown quantity (see
        :func:`_scan_side`); how many levels fell."""
        if self.dirty:
            self._rebuild()
        return int(_scan_side(packed, self.buy, self.px, self.cap, self.shown, self.dec, self.n))

    def ordered(self) -> list[Level]:
        """Our levels, best first."""
        return sorted(self.levels.values(), key=_px, reverse=self.buy)

    def _rebuild(self) -> None:
        """New scan arrays for the current levels (after a level came or went); pending caps
        and shown quantities carry over."""
        lvls = self.ordered()
        n = len(lvls)
        px = np.empty(n, np.int64)
        cap = np.full(n, UNKNOWN, np.int64)
        shown = np.empty(n, np.int64)
        old_cap, old_shown = self.cap, self.shown
        for i, lv in enumerate(lvls):
            px[i] = lv.px
            if lv.idx >= 0:
                cap[i] = old_cap[lv.idx]
                shown[i] = old_shown[lv.idx]
            else:
                shown[i] = lv.shown0
            lv.idx = i
        self.px, self.cap, self.shown, self.n = px, cap, shown, n
        self.dec = np.zeros(n, np.int64)
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
        since the last book) over front and back of each order."""
        n = self.power
        for lv in side.levels.values():
            i = lv.idx
            fell = int(side.dec[i]) if i >= 0 else -1
            if fell < 0:  # not in view (or new since the scan): nothing to learn
                continue
            chg = fell - lv.traded
            lv.traded = 0
            new = int(side.shown[i])
            side.cap[i] = UNKNOWN  # applied here, exactly, with the estimate
            if chg <= 0:
                for o in lv.orders:
                    if o.ahead > new:
                        o.ahead = new
                continue
            prev = new + fell
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
