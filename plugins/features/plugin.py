"""The ``features`` plugin: order-book and trade-flow features per symbol, ``feat`` out.

Subscribes to ``md.book.`` (``BookTop``) and ``md.trade.`` (``Trade``); after every *valid*
book event of a symbol it publishes a :class:`~tickbus.schemas.FeatureVector` on
``feat.<SYMBOL>``. The definitions are in :class:`FeatureEngine`; the rolling state and
its numba kernels in :mod:`tickbus.plugins.features.rolling`.
"""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import SCALE, BookTop, FeatureVector, Trade

from . import rolling
from .rolling import BAD_LEVELS, BAD_TRADE, CROSSED, book_update, trade_update

Symbol = Annotated[str, msgspec.Meta(pattern="^[A-Z0-9]{1,20}$")]
_SYMBOL = re.compile(r"[A-Z0-9]{1,20}")


class FeaturesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.features]``. Defaults are chosen from the real Binance spot captures
    (BTCUSDT/ETHUSDT, Aug 2024): book events every 100 ms, 20-30 trades/s, 0.25-0.7 BTC/s
    and ~6.6 ETH/s traded, the 5th level 0.24 bps (BTC) / 0.47 bps (ETH) behind the touch."""

    symbols: list[Symbol] = msgspec.field(default_factory=list)
    """Symbols (upper case, as on the bus); empty: every symbol seen on md.book/md.trade."""
    feature_window_ms: int = 1000
    """The window of volatility, weighted_imbalance, vwap, trade_flow and the volume surge's
    numerator (about 10 book events, 20-30 trades on BTCUSDT)."""
    depth_levels: int = 5
    """N: levels per side summed for imbalance, depth_ratio and the pressures (at most the
    levels the book carries: the ``book`` plugin's ``depth``, default 20)."""
    momentum_half_life_ms: float = 500.0
    """Half-life of the momentum's EW mean (about 5 book events at 100 ms)."""
    pressure_decay_bps: float = 0.25
    """Decay length of the pressure weights, in bps behind the touch: the 5th level (0.24
    bps behind on BTCUSDT) weighs e^-1."""
    vpin_bucket_volume: float = 1.0
    """VPIN volume bucket, base asset (1 BTC: about 1.5-4 s of BTCUSDT trading)."""
    vpin_bucket_volumes: dict[Symbol, float] = msgspec.field(default_factory=dict)
    """Per-symbol buckets, e.g. ``{ ETHUSDT = 10.0 }`` (ETHUSDT trades ~10x BTC's volume)."""
    vpin_buckets: int = 50
    """Completed buckets averaged by VPIN (Easley, Lopez de Prado, O'Hara use 50)."""
    volume_surge_window_ms: int = 60_000
    """The longer-run window whose average per-window volume the surge compares with."""

    def __post_init__(self) -> None:
        positive = {
            "feature_window_ms": self.feature_window_ms,
            "depth_levels": self.depth_levels,
            "momentum_half_life_ms": self.momentum_half_life_ms,
            "pressure_decay_bps": self.pressure_decay_bps,
            "vpin_bucket_volume": self.vpin_bucket_volume,
            "vpin_buckets": self.vpin_buckets,
            **{f"vpin_bucket_volumes.{k}": v for k, v in self.vpin_bucket_volumes.items()},
        }
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        for key, value in {"vpin_bucket_volume": self.vpin_bucket_volume,
                           **self.vpin_bucket_volumes}.items():  # fmt: skip
            if round(value * SCALE) < 1:
                raise ValueError(f"{key} must be at least 1e-8 (one quantity unit)")
        if self.volume_surge_window_ms <= self.feature_window_ms:
            raise ValueError(
                f"volume_surge_window_ms ({self.volume_surge_window_ms}) must be longer than"
                f" feature_window_ms ({self.feature_window_ms})"
            )
        if self.vpin_buckets > 100_000:
            raise ValueError(f"vpin_buckets must be at most 100000, got {self.vpin_buckets}")


class FeatureEngine:
    """The features of one symbol, updated in O(1) per event (ring buffers and running
    sums in preallocated arrays, one compiled call per event; see ``rolling``).

    **Time.** An event's time ``t`` is the running maximum of the venue timestamps
    (``ts_exchange_ns``) of the symbol's trades and valid books: Binance's trade and depth
    times interleave out of order by a few ms, and a book synced from a REST snapshot carries
    no venue time (0). Time before the symbol's first venue timestamp counts in no window.
    The window is ``(t - W, t]``, ``W = feature_window_ms``; a trade is in it if its time is.

    **Resets.** A book with ``valid=False`` publishes nothing and restarts the book-derived
    state (mid chain, returns, momentum, imbalance history): nothing spans a sequence gap.
    Trade state is kept (trades are genuine whatever the book's state). Bad input (malformed
    levels, a crossed book marked valid, a non-positive price or quantity) is skipped and
    never becomes state.

    **Definitions.** ``b``, ``a``: best bid/ask price (``bid_px``, ``ask_px``); a book is
    *two-sided* if both are > 0. ``B``, ``A``: summed quantity of the top ``N =
    depth_levels`` levels of each side (fewer if the book carries fewer; a zero price ends a
    side), in 1/SCALE units. Returns ``r_i = ln(mid_i / mid_(i-1))`` are taken between
    consecutive two-sided valid books (one per book event, at that book's time).

    - ``mid`` = ``(b + a) // 2`` (int, 1/SCALE); 0 if the book is not two-sided.
    - ``volatility`` = ``sum r_i**2`` over the returns in the window: the realised variance
      of log mid returns over W (squared log return per window, not annualised); 0 if the
      window has no return (first tick).
    - ``momentum`` = ``sum w_i r_i / sum w_i`` over every return since the last reset,
      ``w_i = 2 ** (-(t - t_i) / momentum_half_life_ms)``: the EW mean per-event log return
      (dimensionless); 0 before the first return.
    - ``price_acceleration`` = momentum of this vector minus momentum of the symbol's
      previous vector (its change per book event); 0 on the first vector after a reset.
    - ``imbalance`` = ``(B - A) / (B + A)`` in [-1, 1]; 0 if both sides are empty.
    - ``weighted_imbalance`` = ``integral of imbalance(s) ds / (t - lo)`` over ``[lo, t]``,
      ``lo = max(t - W, time of the first book since the reset)``, each book's imbalance
      holding until the next book; the current ``imbalance`` when ``t == lo`` (first tick).
    - ``spread_bps`` = ``(a - b) / ((a + b) / 2) * 1e4`` (bps); 10000 if one-sided (a
      spread of at least the whole price: untradeable).
    - ``depth_ratio`` = ``max(B, 1) / max(A, 1)``: an empty side counts as one quantity
      unit (1e-8), so both empty give 1 and one empty side a very large/small finite ratio.
    - ``bid_pressure`` = ``sum q_i * exp(-d_i / pressure_decay_bps)`` over the top-N bids,
      ``q_i`` in base-asset units, ``d_i = (p_1 - p_i) / p_1 * 1e4`` bps behind the best
      bid: the depth near the touch, in base asset; 0 for an empty side.
      ``ask_pressure``: the same over the asks, ``d_i = (p_i - p_1) / p_1 * 1e4``.
    - ``vwap`` = ``sum px * qty / sum qty`` over the window's trades, rounded half up to
      an int price (1/SCALE; accumulated in float64, within one unit of the exact value);
      ``mid`` if the window has no trade.
    - ``trade_flow`` = ``(V_buy - V_sell) / (V_buy + V_sell)`` over the window's trades,
      a trade being a buy when its aggressor bought (``buyer_is_maker`` false); in [-1, 1],
      0 with no trade.
    - ``toxicity`` = VPIN: trades in arrival order fill volume buckets of ``V =
      vpin_bucket_volume`` (base asset; a trade straddling buckets is split);
      ``mean(|V_buy - V_sell| / V)`` over the last ``vpin_buckets`` completed buckets
      (all completed ones before there are that many), in [0, 1]; 0 before the first
      bucket completes.
    - ``volume_surge`` = ``(V_W / min(W, T)) / (V_L / min(L, T))``: the window's traded
      volume against the average volume per unit time over the last ``L =
      volume_surge_window_ms`` (1 = normal, 3 = three times the usual rate); ``T`` = time
      since the symbol's first venue timestamp (so the first minute compares like with
      like); 0 if no trade in ``L``; 1 if ``T == 0``.

    ``timestamp_ns``, ``book_update_id`` and ``ts_recv_ns`` are the book's
    ``ts_exchange_ns``, ``last_update_id`` and ``ts_recv_ns``. No value is NaN or inf.
    """

    __slots__ = ("symbol", "topic", "S", "BR", "TR", "vectors", "trades")

    def __init__(self, symbol: str, cfg: FeaturesConfig) -> None:
        self.symbol = symbol
        self.topic = f"feat.{symbol}"
        volume = cfg.vpin_bucket_volumes.get(symbol, cfg.vpin_bucket_volume)
        self.S, self.BR, self.TR = rolling.new_state(
            window_ns=cfg.feature_window_ms * 1_000_000,
            surge_window_ns=cfg.volume_surge_window_ms * 1_000_000,
            half_life_ns=cfg.momentum_half_life_ms * 1e6,
            depth=cfg.depth_levels,
            decay_bps=cfg.pressure_decay_bps,
            bucket_volume=round(volume * SCALE),
            buckets=cfg.vpin_buckets,
        )
        self.vectors = 0
        self.trades = 0

    def book(self, msg: BookTop) -> FeatureVector | int:
        """The vector after a valid book, or a bad-input code (< 0; nothing changed)."""
        S, BR = self.S, self.BR
        v = book_update(S, BR, self.TR, msg.bids, msg.asks, msg.bid_px, msg.ask_px,
                        msg.ts_exchange_ns)  # fmt: skip
        flag = v[0]
        if flag:
            if flag < 0:
                return int(flag)
            self.BR = rolling.grow(BR, *rolling.book_heads(S))
        self.vectors += 1
        return FeatureVector(
            self.symbol, msg.ts_exchange_ns, int(v[1]), v[2], v[3], v[4], v[5], v[6], v[7],
            v[8], v[9], int(v[10]), v[11], v[12], v[13], v[14], msg.last_update_id,
            msg.ts_recv_ns,
        )  # fmt: skip

    def trade(self, msg: Trade) -> int:
        """Fold one trade in; 0, or a bad-input code (< 0; nothing changed)."""
        rc = trade_update(self.S, self.TR, msg.px, msg.qty, msg.buyer_is_maker,
                          msg.ts_exchange_ns)  # fmt: skip
        if rc:
            if rc < 0:
                return rc
            self.TR = rolling.grow(self.TR, *rolling.trade_heads(self.S))
        self.trades += 1
        return 0

    def invalidate(self) -> None:
        """The book went invalid: book-derived state starts afresh with the next valid book."""
        rolling.reset_book(self.S)


_BAD_KINDS = {
    BAD_LEVELS: "malformed book levels",
    CROSSED: "crossed book marked valid",
    BAD_TRADE: "trade with a non-positive or out-of-range price or quantity",
}


class Features:
    """All symbols of one plugin instance: the ``md.book``/``md.trade`` handlers."""

    def __init__(self, ctx: PluginContext, cfg: FeaturesConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.engines: dict[str, FeatureEngine] = {s: FeatureEngine(s, cfg) for s in cfg.symbols}
        self._any = not cfg.symbols
        self._publish = ctx.publish
        self.bad: dict[str, int] = {}
        self.invalid_books = 0
        self._status_at = (time.monotonic(), 0)

    def _engine(self, symbol: str) -> FeatureEngine | None:
        """The symbol's engine; made on first sight when ``symbols`` is empty."""
        if not self._any:
            return None
        if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
            self._skip("bad symbol", symbol)
            return None
        eng = self.engines[symbol] = FeatureEngine(symbol, self.cfg)
        return eng

    def on_book(self, msg: BookTop) -> None:
        """Handler of ``md.book.``: one vector per valid book of a followed symbol."""
        eng = self.engines.get(msg.symbol) or self._engine(msg.symbol)
        if eng is None:
            return
        if not msg.valid:
            self.invalid_books += 1
            eng.invalidate()
            return
        try:
            out = eng.book(msg)
        except (OverflowError, TypeError, ValueError) as err:  # out-of-range ints (remote)
            self._skip(f"book the kernel refused ({type(err).__name__})", msg)
            return
        if type(out) is int:
            self._skip(_BAD_KINDS[out], msg)
            return
        self._publish(eng.topic, out)

    def on_trade(self, msg: Trade) -> None:
        """Handler of ``md.trade.``: trade-flow state of a followed symbol."""
        eng = self.engines.get(msg.symbol) or self._engine(msg.symbol)
        if eng is None:
            return
        try:
            rc = eng.trade(msg)
        except (OverflowError, TypeError, ValueError) as err:
            self._skip(f"trade the kernel refused ({type(err).__name__})", msg)
            return
        if rc:
            self._skip(_BAD_KINDS[rc], msg)

    def _skip(self, kind: str, sample: Any) -> None:
        """Count a bad input; log the first of each kind with a sample."""
        n = self.bad[kind] = self.bad.get(kind, 0) + 1
        if n == 1:
            self.ctx.log.warning("skipped %s: %.300r", kind, sample)

    def status(self) -> str:
        """Status-line fragment: vectors/s since the last call, symbols, bad inputs."""
        now = time.monotonic()
        total = sum(e.vectors for e in self.engines.values())
        then, before = self._status_at
        self._status_at = (now, total)
        rate = (total - before) / max(now - then, 1e-9)
        names = ", ".join(self.engines) or "no symbol yet"
        text = f"{rate:,.1f} vectors/s, {total:,} total ({names})"
        if self.bad:
            text += f", {sum(self.bad.values()):,} bad inputs skipped"
        return text


@hookimpl
def tickbus_config_type() -> type[FeaturesConfig]:
    return FeaturesConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Features:
    rolling.warmup()  # compile (or load) the numba kernels now, not on the first tick
    features = Features(ctx, ctx.config)
    ctx.subscribe("md.book.", features.on_book)
    ctx.subscribe("md.trade.", features.on_trade)
    return features


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return str(ctx.component.status())


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    comp: Features = ctx.component
    for sym, eng in comp.engines.items():
        ctx.log.info("%s: %d vectors, %d trades", sym, eng.vectors, eng.trades)
    if comp.bad:
        ctx.log.warning("bad inputs skipped: %s", comp.bad)
