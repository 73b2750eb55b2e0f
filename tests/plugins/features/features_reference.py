"""A slow, from-scratch reference of every feature (plugins/features/plugin.py definitions).

Each vector is recomputed from the whole message history of the symbol up to that book -
no running state: windows are selected with masks over the history, sums are plain sums,
VWAP is an exact fraction, VPIN rebuilds its buckets from every trade. It is meant to be
read next to ``FeatureEngine``'s docstring, definition by definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tickbus.schemas import SCALE, BookTop, Trade

FIELDS = (
    "mid", "volatility", "momentum", "imbalance", "weighted_imbalance", "spread_bps",
    "depth_ratio", "bid_pressure", "ask_pressure", "vwap", "trade_flow", "toxicity",
    "price_acceleration", "volume_surge",
)  # fmt: skip


@dataclass(frozen=True)
class Params:
    window_ms: int = 1000
    depth: int = 5
    half_life_ms: float = 500.0
    decay_bps: float = 0.25
    bucket_volume: float = 1.0
    buckets: int = 50
    surge_window_ms: int = 60_000


def levels(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, "<i8").reshape(-1, 2)


def top(raw: bytes, n: int) -> list[tuple[int, int]]:
    """The top ``n`` real levels (zero prices are padding)."""
    out = []
    for p, q in levels(raw)[:n].tolist():
        if p <= 0:
            break
        out.append((p, q))
    return out


def pressure(side: list[tuple[int, int]], decay_bps: float) -> float:
    if not side:
        return 0.0
    best = side[0][0]
    return sum(q / SCALE * math.exp(-abs(best - p) / best * 1e4 / decay_bps) for p, q in side)


def vpin(q: np.ndarray, buy: np.ndarray, bucket: int, n: int) -> float:
    """Buckets by interpolation: cumulative buy volume as a function of cumulative volume
    (slope 1 inside a buy trade, 0 inside a sell trade) read at every bucket boundary."""
    cum = np.concatenate([[0.0], np.cumsum(q)])
    cum_buy = np.concatenate([[0.0], np.cumsum(np.where(buy, q, 0.0))])
    done = int(cum[-1] // bucket)
    if done == 0:
        return 0.0
    edges = np.arange(done + 1, dtype=np.float64) * bucket
    buys = np.diff(np.interp(edges, cum, cum_buy))
    last = buys[-n:]
    return float(np.abs(2 * last - bucket).sum() / (len(last) * bucket))


def imbalance_of(book: BookTop, n: int) -> float:
    bq = sum(q for _, q in top(book.bids, n))
    aq = sum(q for _, q in top(book.asks, n))
    return (bq - aq) / (bq + aq) if bq + aq else 0.0


def two_sided(book: BookTop) -> bool:
    return book.bid_px > 0 and book.ask_px > 0


class History:
    """Every event of one symbol (delivery order) with what is a function of the event alone
    (or of it and the previous valid book): its time - the running max of the venue
    timestamps of trades and valid books - and per valid book its imbalance and log mid
    return. Every aggregate is then taken from scratch over these arrays, per vector."""

    def __init__(self, msgs: list[BookTop | Trade], depth: int) -> None:
        times, tau = [], 0
        for m in msgs:
            if isinstance(m, Trade) or m.valid:  # an invalid book is not used, nor its time
                tau = max(tau, m.ts_exchange_ns)
            times.append(tau)
        self.t0 = next((t for t in times if t > 0), 0)  # first venue time
        trades = [(t, m) for t, m in zip(times, msgs, strict=True) if isinstance(m, Trade)]
        self.tt = np.array([t for t, _ in trades], dtype=np.int64)
        self.tp = [m.px for _, m in trades]
        self.tq = np.array([m.qty for _, m in trades], dtype=np.int64)
        self.tb = np.array([not m.buyer_is_maker for _, m in trades], dtype=bool)
        # valid books: (time, message, trades before it, first book of its segment)
        self.books: list[tuple[int, BookTop, int, int]] = []
        bt, imb, ret = [], [], []
        ntrades, start, prev = 0, 0, None
        for t, m in zip(times, msgs, strict=True):
            if isinstance(m, Trade):
                ntrades += 1
            elif not m.valid:
                start, prev = len(self.books), None  # a new segment: nothing spans the gap
            else:
                self.books.append((t, m, ntrades, start))
                bt.append(t)
                imb.append(imbalance_of(m, depth))
                both = prev is not None and two_sided(prev) and two_sided(m)
                ret.append(
                    math.log((m.bid_px + m.ask_px) / (prev.bid_px + prev.ask_px))
                    if both else math.nan
                )  # fmt: skip
                prev = m
        self.bt = np.array(bt, dtype=np.int64)
        self.imb = np.array(imb)
        self.ret = np.array(ret)


def reference(msgs: list[BookTop | Trade], p: Params) -> list[dict[str, float]]:
    """The vector of every valid book in ``msgs`` (one symbol, in delivery order)."""
    h = History(msgs, p.depth)
    out: list[dict[str, float]] = []
    for i in range(len(h.books)):
        prev_mom = out[-1]["momentum"] if i > h.books[i][3] else 0.0
        out.append(_vector(h, i, prev_mom, p))
    return out


def _vector(h: History, i: int, prev_momentum: float, p: Params) -> dict[str, float]:
    W = p.window_ms * 1_000_000
    L = p.surge_window_ms * 1_000_000
    H = p.half_life_ms * 1e6
    t, book, ntrades, start = h.books[i]
    b, a = book.bid_px, book.ask_px
    mid = (b + a) // 2 if two_sided(book) else 0
    # the segment: valid books since the last invalid one, up to this one
    bt, imb, ret = h.bt[start : i + 1], h.imb[start : i + 1], h.ret[start : i + 1]
    has = ~np.isnan(ret)
    in_w = has & (bt > t - W) & (bt <= t)
    volatility = float(np.sum(ret[in_w] ** 2))
    if has.any():
        rt, r = bt[has], ret[has]
        w = np.exp2(-(rt[-1] - rt) / H)  # relative to the newest return: same ratio
        momentum = float(np.sum(w * r) / np.sum(w))
    else:
        momentum = 0.0
    # time-weighted imbalance: each book's imbalance holds until the next book
    imbalance = float(imb[-1])
    nz = bt[bt > 0]
    lo = max(t - W, int(nz[0]) if len(nz) else 0)
    if t > lo:
        overlap = np.minimum(bt[1:], t) - np.maximum(bt[:-1], lo)
        weighted = float(np.sum(imb[:-1] * np.maximum(overlap, 0)) / (t - lo))
    else:
        weighted = imbalance
    bids, asks = top(book.bids, p.depth), top(book.asks, p.depth)
    B, A = sum(q for _, q in bids), sum(q for _, q in asks)
    # trades seen before this book, in (t - W, t] and in the surge window (t - L, t]
    tt, tq, tb = h.tt[:ntrades], h.tq[:ntrades], h.tb[:ntrades]
    tw = (tt > t - W) & (tt <= t)
    vol = int(tq[tw].sum())
    if vol:
        notional = sum(h.tp[j] * int(tq[j]) for j in np.flatnonzero(tw))
        vwap = math.floor(Fraction(notional, vol) + Fraction(1, 2))
        buys = int(tq[tw & tb].sum())
        flow = (buys - (vol - buys)) / vol
    else:
        vwap, flow = mid, 0.0
    vol_l = int(tq[(tt > t - L) & (tt <= t)].sum())
    elapsed = t - h.t0 if t > 0 else 0
    if vol_l == 0:
        surge = 0.0
    elif elapsed == 0:
        surge = 1.0
    else:
        surge = (vol / min(W, elapsed)) / (vol_l / min(L, elapsed))
    return {
        "mid": mid,
        "volatility": volatility,
        "momentum": momentum,
        "imbalance": imbalance,
        "weighted_imbalance": weighted,
        "spread_bps": (a - b) / ((a + b) / 2) * 1e4 if two_sided(book) else 10_000.0,
        "depth_ratio": max(B, 1) / max(A, 1),
        "bid_pressure": pressure(bids, p.decay_bps),
        "ask_pressure": pressure(asks, p.decay_bps),
        "vwap": vwap,
        "trade_flow": flow,
        "toxicity": vpin(tq.astype(np.float64), tb, round(p.bucket_volume * SCALE), p.buckets),
        "price_acceleration": momentum - prev_momentum,
        "volume_surge": surge,
    }
