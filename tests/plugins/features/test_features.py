"""The features plugin: every feature against a from-scratch reference (features_reference.py)
on real captures replayed through replay_feed + book, degenerate cases, bad input, config."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from features_reference import FIELDS, Params, reference

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.plugins.features.plugin import FeatureEngine, FeaturesConfig
from tickbus.schemas import SCALE, BookTop, Codec, FeatureVector, Trade

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "binance"
SPOT = SHARED / "hftbacktest" / "examples" / "spot"

SMALL = {  # every window short, buckets small: the rings roll and VPIN skips buckets
    "feature_window_ms": 500,
    "depth_levels": 3,
    "momentum_half_life_ms": 150.0,
    "pressure_decay_bps": 0.1,
    "vpin_bucket_volume": 0.02,
    "vpin_buckets": 10,
    "volume_surge_window_ms": 5000,
}


def params(cfg: dict[str, Any]) -> Params:
    keys = {
        "feature_window_ms": "window_ms",
        "depth_levels": "depth",
        "momentum_half_life_ms": "half_life_ms",
        "pressure_decay_bps": "decay_bps",
        "vpin_bucket_volume": "bucket_volume",
        "vpin_buckets": "buckets",
        "volume_surge_window_ms": "surge_window_ms",
    }
    return Params(**{keys[k]: v for k, v in cfg.items() if k in keys})


class collector:
    """Test plugin: every md.book, md.trade and feat message, in delivery order."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        seen: list[Any] = []
        for prefix in ("md.book.", "md.trade.", "feat."):
            ctx.subscribe(prefix, seen.append)
        return seen


def replay(start_kernel, files: list[str] | None = None, **features: Any) -> tuple[list, Any]:
    """The capture through replay_feed -> book -> features, one lane; what was seen."""
    k = start_kernel(
        {
            "kernel": {"clock": "replay"},
            "plugins": {
                "book": {"depth": 20},
                "replay_feed": {
                    "exit_at_end": False, "speed": 0.0, **({"files": files} if files else {})
                },
                "features": features,
                "collector": {},
            },
        },
        extra={"collector": collector},
    )  # fmt: skip
    rep = k.contexts["replay_feed"].component
    end = time.monotonic() + 120
    while not rep.done:
        assert time.monotonic() < end, "replay did not finish"
        time.sleep(0.02)
    status = k.lanes["main"].call(k.manager.status, k.contexts["features"])
    assert k.stop()
    return k.contexts["collector"].component, status


def assert_close(got: FeatureVector | dict, want: dict[str, float], where: str) -> None:
    for f in FIELDS:
        g = getattr(got, f) if isinstance(got, FeatureVector) else got[f]
        w = want[f]
        if f in ("mid", "vwap"):
            assert type(g) is int, f"{where}: {f} is {type(g).__name__}"
            # vwap: float64 division vs the exact fraction may differ on a half unit
            assert abs(g - w) <= (1 if f == "vwap" else 0), f"{where}: {f} {g} != {w}"
        else:
            assert math.isfinite(g), f"{where}: {f} = {g}"
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-15), f"{where}: {f} {g} != {w}"


def check_replay(seen: list[Any], cfg: dict[str, Any]) -> list[FeatureVector]:
    """Every valid book got exactly one vector, equal to the reference, value by value."""
    inputs = [m for m in seen if isinstance(m, (BookTop, Trade))]
    vectors = [m for m in seen if isinstance(m, FeatureVector)]
    books = [m for m in inputs if isinstance(m, BookTop) and m.valid]
    assert len(vectors) == len(books) > 1000
    want = reference(inputs, params(cfg))
    for i, (v, b, r) in enumerate(zip(vectors, books, want, strict=True)):
        assert (v.symbol, v.timestamp_ns, v.book_update_id, v.ts_recv_ns) == (
            b.symbol, b.ts_exchange_ns, b.last_update_id, b.ts_recv_ns
        )  # fmt: skip
        assert_close(v, r, f"vector {i} (update {b.last_update_id})")
    return vectors


@pytest.mark.parametrize("cfg", [{}, SMALL], ids=["defaults", "short-windows"])
def test_every_feature_equals_the_reference_on_the_sample(start_kernel, cfg) -> None:
    seen, status = replay(start_kernel, **cfg)
    vectors = check_replay(seen, cfg)
    # the features that depend on history really moved (not stuck at a degenerate value)
    for f in ("volatility", "momentum", "price_acceleration", "trade_flow", "volume_surge"):
        assert len({getattr(v, f) for v in vectors}) > 100, f
    assert len({v.toxicity for v in vectors}) > 20  # changes once per completed bucket
    # vectors cross lanes and processes: they encode and decode to the same values
    codec = Codec()
    assert [codec.decode(codec.encode(v)) for v in vectors[:200]] == vectors[:200]
    assert "vectors/s" in status and "BTCUSDT" in status


@pytest.mark.skipif(not SPOT.exists(), reason="../shared/data not present")
def test_every_feature_equals_the_reference_on_an_11_minute_capture(start_kernel) -> None:
    files = [str(SPOT / "ethusdt_20240808.gz"), str(SPOT / "ethusdt_20240809.gz")]
    seen, _ = replay(start_kernel, files, vpin_bucket_volumes={"ETHUSDT": 10.0})
    check_replay(seen, {"vpin_bucket_volume": 10.0})


# --------------------------------------------------------------------------- synthetic

PX = 60_000 * SCALE


def lv(*pairs: tuple[float, float]) -> bytes:
    return np.array([(round(p * SCALE), round(q * SCALE)) for p, q in pairs], dtype="<i8").tobytes()


def book(
    ts: int, bids: bytes, asks: bytes, valid: bool = True, uid: int = 1, recv: int = 0
) -> BookTop:
    b = np.frombuffer(bids, "<i8").reshape(-1, 2)
    a = np.frombuffer(asks, "<i8").reshape(-1, 2)
    bp, bq = (int(b[0, 0]), int(b[0, 1])) if len(b) else (0, 0)
    ap, aq = (int(a[0, 0]), int(a[0, 1])) if len(a) else (0, 0)
    return BookTop("BTCUSDT", uid, valid, bp, bq, ap, aq, bids, asks, ts, recv or ts)


def trade(ts: int, px: float, qty: float, buyer_is_maker: bool) -> Trade:
    return Trade("BTCUSDT", 1, round(px * SCALE), round(qty * SCALE), buyer_is_maker, ts, ts)


def run_engine(
    msgs: list[BookTop | Trade], cfg: dict[str, Any] | None = None
) -> tuple[list[FeatureVector], FeatureEngine]:
    """Feed ``msgs`` to one engine as the plugin does; the vectors of the valid books."""
    eng = FeatureEngine("BTCUSDT", msgspec.convert(cfg or {}, FeaturesConfig))
    out = []
    for m in msgs:
        if isinstance(m, Trade):
            assert eng.trade(m) == 0
        elif not m.valid:
            eng.invalidate()
        else:
            v = eng.book(m)
            assert isinstance(v, FeatureVector), v
            out.append(v)
    return out, eng


def check_engine(
    msgs: list[BookTop | Trade], cfg: dict[str, Any] | None = None
) -> list[FeatureVector]:
    vectors, _ = run_engine(msgs, cfg)
    want = reference(msgs, params(cfg or {}))
    assert len(vectors) == len(want)
    for i, (v, r) in enumerate(zip(vectors, want, strict=True)):
        assert_close(v, r, f"vector {i}")
    return vectors


S = 1_000_000_000  # one second in ns
BIDS = lv((60_000.0, 1.0), (59_999.9, 2.0))
ASKS = lv((60_000.1, 3.0), (60_000.2, 1.0))


def test_first_tick_without_trades() -> None:
    (v,) = check_engine([book(5 * S, BIDS, ASKS)])
    assert v.mid == (6_000_000_000_000 + 6_000_010_000_000) // 2
    assert (v.volatility, v.momentum, v.price_acceleration) == (0.0, 0.0, 0.0)
    assert v.imbalance == v.weighted_imbalance == (3 - 4) / 7
    assert v.vwap == v.mid  # no trade in the window
    assert (v.trade_flow, v.toxicity, v.volume_surge) == (0.0, 0.0, 0.0)
    assert v.depth_ratio == 3 / 4


def test_empty_sides() -> None:
    msgs = [
        trade(1 * S, 60_000.0, 0.5, False),
        book(1 * S, BIDS, ASKS),
        book(2 * S, b"", ASKS),  # no bids
        book(3 * S, BIDS, b""),  # no asks
        book(4 * S, b"", b""),  # nothing
        book(5 * S, BIDS, lv((60_001.0, 1.0))),  # two-sided again: no return spans the gap
    ]
    v = check_engine(msgs)
    no_bid, no_ask, empty, back = v[1:]
    assert (no_bid.mid, no_bid.spread_bps, no_bid.imbalance) == (0, 10_000.0, -1.0)
    assert no_bid.depth_ratio == 1 / (4 * SCALE) and no_bid.bid_pressure == 0.0
    assert (no_ask.mid, no_ask.imbalance, no_ask.ask_pressure) == (0, 1.0, 0.0)
    assert no_ask.depth_ratio == 3 * SCALE
    assert (empty.imbalance, empty.depth_ratio, empty.vwap) == (0.0, 1.0, 0)
    assert back.volatility == 0.0 and back.momentum == 0.0
    for x in v:
        assert all(math.isfinite(getattr(x, f)) for f in FIELDS)


def test_a_return_never_spans_an_invalid_book() -> None:
    msgs = [
        book(1 * S, BIDS, ASKS),
        book(1 * S + 100, BIDS, lv((60_000.3, 1.0))),
        book(1 * S + 200, b"", b"", valid=False),
        book(1 * S + 300, lv((70_000.0, 1.0)), lv((70_000.1, 1.0))),
    ]
    before, after = check_engine(msgs)[1:]
    assert before.volatility > 0 and before.momentum > 0
    assert (after.volatility, after.momentum, after.price_acceleration) == (0.0, 0.0, 0.0)
    assert after.weighted_imbalance == after.imbalance  # its history starts afresh too


def random_stream(seed: int, books: int, trades: int, span_s: float) -> list[BookTop | Trade]:
    """A random walk with every awkward case: equal and out-of-order timestamps, a book
    without venue time, one-sided and invalid books, bursts of trades larger than a bucket."""
    rng = random.Random(seed)
    times = sorted(rng.randrange(1, int(span_s * S)) + 10 * S for _ in range(books + trades))
    kinds = ["b"] * books + ["t"] * trades
    rng.shuffle(kinds)
    mid = 60_000.0
    out: list[BookTop | Trade] = []
    for i, (t, kind) in enumerate(zip(times, kinds, strict=True)):
        if rng.random() < 0.05 and out:
            t = out[-1].ts_exchange_ns  # same time as the last event
        if kind == "t":
            ts = t - rng.randrange(0, 5_000_000)  # trade time a few ms behind
            qty = rng.choice([0.001, 0.01, 0.2, 3.7])
            out.append(trade(ts, mid + rng.choice([-0.05, 0.05]), qty, rng.random() < 0.5))
            continue
        mid = max(100.0, mid + rng.choice([-0.1, 0.0, 0.0, 0.1]) * rng.randrange(1, 4))
        bids = lv(*[(mid - 0.05 - 0.1 * k, rng.randrange(1, 500) / 100) for k in range(8)])
        asks = lv(*[(mid + 0.05 + 0.1 * k, rng.randrange(1, 500) / 100) for k in range(8)])
        r = rng.random()
        if r < 0.01:
            out.append(book(t, b"", b"", valid=False, uid=-1))
        elif r < 0.02:
            out.append(book(t, b"", asks, uid=i))
        elif r < 0.025:
            out.append(book(0, bids, asks, uid=i))  # synced from a snapshot: no venue time
        else:
            out.append(book(t, bids, asks, uid=i))
    return out


@pytest.mark.parametrize("cfg", [{}, SMALL], ids=["defaults", "short-windows"])
def test_random_streams_equal_the_reference_and_rings_grow(cfg) -> None:
    # ~200 books in a 1 s window, 6,000 trades in 60 s: both rings start smaller and grow
    msgs = random_stream(seed=7, books=3000, trades=6000, span_s=15)
    vectors = check_engine(msgs, cfg)
    assert len(vectors) > 2500
    fresh = FeatureEngine("BTCUSDT", msgspec.convert(cfg, FeaturesConfig))
    _, eng = run_engine(msgs, cfg)
    if not cfg:
        assert len(eng.BR) > len(fresh.BR) and len(eng.TR) > len(fresh.TR)


def test_running_sums_do_not_drift() -> None:
    """A huge term leaves the window while small ones stay: plain float sums would keep
    its rounding error (volatility off by ~1e-17 absolute on a ~1e-16 value, VWAP off by
    many units); the compensated sums give the from-scratch values."""
    msgs: list[BookTop | Trade] = [trade(1 * S, 60_000.0, 0.001, False)]  # VWAP anchor
    msgs.append(trade(1 * S, 90_000.0, 50_000.0, False))  # 5e12 units, 3e12 off the anchor
    msgs.append(book(1 * S, lv((60_000.0, 1.0)), lv((60_000.01, 1.0))))
    msgs.append(book(1 * S + 1, lv((120_000.0, 1.0)), lv((120_000.01, 1.0))))  # r = ln 2
    msgs.append(book(1 * S + 2, lv((60_000.0, 1.0)), lv((60_000.01, 1.0))))
    t = 1 * S + 3
    for k in range(400):
        t += 5_000_000
        msgs.append(trade(t, 60_000.0 + 0.01 * (k % 7), 0.00001 * (1 + k % 3), k % 2 == 0))
        px = 60_000.0 + 0.01 * (k % 2)
        msgs.append(book(t, lv((px, 1.0)), lv((px + 0.01, 1.0))))
    vectors = check_engine(msgs)
    late = vectors[-1]  # 200 returns of +-0.01 in the window, the 90,000 trade long gone
    assert late.volatility == pytest.approx(200 * math.log(60_000.015 / 60_000.005) ** 2)
    assert 60_000 * SCALE < late.vwap < 60_000.06 * SCALE


def test_vpin_skips_buckets_inside_one_huge_trade() -> None:
    msgs: list[BookTop | Trade] = [trade(S, 60_000.0, 0.3, True)]
    msgs.append(trade(S + 1, 60_000.0, 1000.0, False))  # 1,000 buckets of pure buying
    msgs.append(book(S + 2, BIDS, ASKS))
    msgs.append(trade(S + 3, 60_000.0, 25.5, True))  # 25 selling buckets out of the last 50
    msgs.append(book(S + 4, BIDS, ASKS))
    first, second = check_engine(msgs)
    assert first.toxicity == 1.0
    # 0.7 sold into the open bucket (0.3 bought): |0.3 - 0.7|, then 24 all-sell buckets,
    # and the 25 most recent all-buy ones
    assert second.toxicity == pytest.approx((0.4 + 24 + 25) / 50)


# --------------------------------------------------------------------------- the plugin


def publish_all(k: Any, msgs: list[Any]) -> None:
    lane = k.lanes["main"]
    for m in msgs:
        topic = ("md.book." if isinstance(m, BookTop) else "md.trade.") + m.symbol
        lane.call(lane.publish, topic, m)


def test_an_invalid_book_gives_no_vector_and_bad_input_is_skipped(start_kernel) -> None:
    k = start_kernel({"plugins": {"features": {"symbols": ["BTCUSDT"]}, "collector": {}}},
                     extra={"collector": collector})  # fmt: skip
    good = [trade(S, 60_000.0, 0.5, False), book(S, BIDS, ASKS, uid=1)]
    bad = [
        book(S + 1, b"", b"", valid=False, uid=-1),  # invalid: no vector
        BookTop("BTCUSDT", 3, True, PX, SCALE, PX + 1, SCALE, BIDS[:-1], ASKS, S, S),  # 31 B
        book(S + 3, ASKS, BIDS, uid=4),  # crossed but marked valid
        trade(S + 4, 60_000.0, 0.0, True),  # zero quantity
        Trade("BTCUSDT", 9, PX, 1 << 70, True, S, S),  # does not fit in int64
    ]
    after = [book(S + 7, BIDS, ASKS, uid=8)]
    eth = BookTop("ETHUSDT", 1, True, 2, 1, 3, 1, lv((2.0, 1.0)), lv((3.0, 1.0)), S, S)
    publish_all(k, [*good, *bad, eth, *after])  # ETHUSDT: not followed
    feats = [m for m in k.contexts["collector"].component if isinstance(m, FeatureVector)]
    assert [v.book_update_id for v in feats] == [1, 8]
    comp = k.contexts["features"].component
    assert comp.invalid_books == 1
    assert sum(comp.bad.values()) == 4 and len(comp.bad) == 4, comp.bad
    # the bad input never became state: the vector after it is the one without it
    want = reference([good[0], good[1], bad[0], after[0]], Params())
    assert_close(feats[-1], want[-1], "after bad input")


def test_symbols_filter_and_any_symbol(start_kernel) -> None:
    k = start_kernel({"plugins": {"features": {}, "collector": {}}}, extra={"collector": collector})
    eth = BookTop("ETHUSDT", 1, True, 2, 1, 3, 1, lv((2.0, 1.0)), lv((3.0, 1.0)), S, S)
    lower = BookTop("btc", 1, True, 2, 1, 3, 1, lv((2.0, 1.0)), lv((3.0, 1.0)), S, S)
    publish_all(k, [book(S, BIDS, ASKS), eth, lower])
    feats = [m for m in k.contexts["collector"].component if isinstance(m, FeatureVector)]
    assert [v.symbol for v in feats] == ["BTCUSDT", "ETHUSDT"]
    assert k.contexts["features"].component.bad == {"bad symbol": 1}


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"symbols": ["btc/usdt"]}, "symbols"),
        ({"volume_surge_window_ms": 1000}, "volume_surge_window_ms"),
        ({"depth_levels": 0}, "depth_levels"),
        ({"momentum_half_life_ms": float("nan")}, "momentum_half_life_ms"),
        ({"vpin_bucket_volume": 1e-9}, "vpin_bucket_volume"),
        ({"vpin_bucket_volumes": {"ETHUSDT": -1.0}}, "vpin_bucket_volumes.ETHUSDT"),
        ({"window": 5}, "window"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_key(start_kernel, cfg, key) -> None:
    with pytest.raises(TickbusError) as err:
        start_kernel({"plugins": {"features": cfg}})
    text = str(err.value)
    assert "\n" not in text and "plugins.features" in text and key in text
