"""Frame parser: exact against a Decimal-free reference on real frames, strict on bad input."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tickbus.kernel.fixed import to_fixed
from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import (
    FRAME_ERROR_KINDS,
    FrameError,
    FrameParser,
    _entry_point,
    _scan_depth,
    _scan_small,
    parse_fixed,
    parse_frame,
    parse_snapshot,
)
from tickbus.schemas import BookTicker, Codec, DepthDiff, DepthSnapshot, Trade

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
HFT = SHARED / "hftbacktest" / "examples"
CF = SHARED / "cryptofeed"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")

E_MS = 1_723_161_256_314  # a real event time (ms); venue times outside 2000..2100 are refused
T_MS = E_MS - 1


def at(frame: bytes) -> bytes:
    """``frame`` with ``@E``/``@T`` replaced by real event/transaction times (ms)."""
    return frame.replace(b"@E", b"%d" % E_MS).replace(b"@T", b"%d" % T_MS)


_codec = Codec()


def raises_kind(kind: str, fn: object, *args: object) -> FrameError:
    """Call ``fn(*args)``; it must raise FrameError of our own stable ``kind`` (never a
    library's wording)."""
    with pytest.raises(FrameError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.kind == kind, (info.value.kind, str(info.value))
    return info.value


@cache
def sample_frames() -> dict[str, list[bytes]]:
    """The shipped capture's raw payloads by kind: depth, trade, bookTicker, rest."""
    out: dict[str, list[bytes]] = {"depth": [], "trade": [], "bookTicker": [], "rest": []}
    for rec in read_capture(SAMPLE):
        kind = "rest" if rec.kind == "rest" else rec.stream.split("@")[1]  # type: ignore[union-attr]
        out[kind].append(rec.payload)
    return out


def view(b: bytes) -> list[list[int]]:
    return np.frombuffer(b, "<i8").reshape(-1, 2).tolist()


def ref_levels(levels: list[list[str]]) -> list[list[int]]:
    """Reference conversion: kernel.fixed.to_fixed (string arithmetic, no floats)."""
    return [[to_fixed(p), to_fixed(q)] for p, q in levels]


def check_against_reference(rec_payload: bytes, kind: str, symbol: str | None) -> None:
    """Parse one real payload and compare every field with an independent decode."""
    parser = FrameParser(64)  # tiny scratch: big frames exercise its growth
    if kind == "rest":
        body = json.loads(rec_payload)
        s = parser.parse_snapshot(rec_payload, symbol, 7)
        assert isinstance(s, DepthSnapshot)
        assert (s.last_update_id, s.ts_recv_ns) == (body["lastUpdateId"], 7)
        assert s.ts_exchange_ns == body.get("E", 0) * 1_000_000
        assert view(s.bids) == ref_levels(body["bids"])
        assert view(s.asks) == ref_levels(body["asks"])
        return
    d = json.loads(rec_payload)["data"]
    m = parser.parse(rec_payload, 11)
    assert m.ts_recv_ns == 11 and m.symbol == d["s"]
    if d.get("e") == "depthUpdate":
        assert isinstance(m, DepthDiff)
        assert (m.first_update_id, m.last_update_id) == (d["U"], d["u"])
        assert m.prev_update_id == d.get("pu", -1)
        assert m.ts_exchange_ns == d["E"] * 1_000_000
        assert view(m.bids) == ref_levels(d["b"]) and view(m.asks) == ref_levels(d["a"])
    elif d.get("e") in ("trade", "aggTrade"):
        assert isinstance(m, Trade)
        assert m.trade_id == (d["t"] if d["e"] == "trade" else d["a"])
        assert (m.px, m.qty) == (to_fixed(d["p"]), to_fixed(d["q"]))
        assert m.buyer_is_maker is d["m"] and m.ts_exchange_ns == d["T"] * 1_000_000
    else:
        assert isinstance(m, BookTicker)
        assert m.update_id == d["u"]
        assert (m.bid_px, m.bid_qty, m.ask_px, m.ask_qty) == tuple(
            to_fixed(d[k]) for k in ("b", "B", "a", "A")
        )
        assert m.ts_exchange_ns == d.get("E", 0) * 1_000_000


# ---------------------------------------------------------------- real frames


def test_every_sample_frame_matches_reference() -> None:
    frames = sample_frames()
    assert len(frames["depth"]) == 1795 and len(frames["rest"]) == 1
    for kind, payloads in frames.items():
        for p in payloads:
            check_against_reference(p, kind, "BTCUSDT")
    sizes = [len(d["b"]) + len(d["a"]) for d in (json.loads(p)["data"] for p in frames["depth"])]
    assert max(sizes) == 598  # the biggest real frame of the sample was covered


@needs_shared
@pytest.mark.parametrize(
    "path",
    [
        HFT / "usdm" / "btcusdt_20240808.gz",  # futures: pu, 2-3 decimals, T, E in ticker
        HFT / "cm" / "btcusd_perp_20240808.gz",  # COIN-M: ps, symbol in the REST body
        CF / "1312c062-2021-04-05" / "sample_data" / "BINANCE-b38f7c.0",  # aggTrade, 10 symbols
    ],
    ids=["usdm", "coinm", "cryptofeed-spot"],
)
def test_shared_frames_match_reference(path: Path) -> None:
    n = 0
    for i, rec in enumerate(read_capture(path)):
        if rec.kind == "ws" and "@kline" in rec.stream:  # type: ignore[operator]
            continue
        if rec.kind == "rest" or i % 3 == 0:  # every 3rd frame keeps the test quick
            check_against_reference(rec.payload, rec.kind, rec.symbol)
            n += 1
    assert n > 3000


def test_raw_payload_and_envelope_give_the_same_message() -> None:
    frames = sample_frames()
    for kind in ("depth", "trade", "bookTicker"):
        for p in frames[kind][:50]:
            raw = msgspec.json.encode(msgspec.json.decode(p)["data"])
            assert parse_frame(raw, 5) == parse_frame(p, 5)


def test_whitespace_and_key_order_do_not_matter() -> None:
    for p in sample_frames()["depth"][:100]:
        pretty = json.dumps(json.loads(p), indent=2, sort_keys=True).encode()
        assert parse_frame(pretty, 1) == parse_frame(p, 1)
    body = sample_frames()["rest"][0]
    pretty = json.dumps(json.loads(body), indent=1, sort_keys=True).encode()
    assert parse_snapshot(pretty, "btcusdt", 0) == parse_snapshot(body, "BTCUSDT", 0)


def test_snapshot_symbol_rules() -> None:
    body = sample_frames()["rest"][0]
    assert parse_snapshot(body, "BTCUSDT", 0).symbol == "BTCUSDT"
    raises_kind("symbol", parse_snapshot, body, None, 0)
    coinm = at(b'{"lastUpdateId":5,"E":@E,"T":@T,"symbol":"BTCUSD_PERP","pair":"BTCUSD",')
    coinm += b'"bids":[["61000.1","12"]],"asks":[]}'
    s = parse_snapshot(coinm, None, 3)
    assert (s.symbol, s.last_update_id, s.ts_exchange_ns) == ("BTCUSD_PERP", 5, E_MS * 10**6)
    assert view(s.bids) == [[6_100_010_000_000, 1_200_000_000]] and s.asks == b""


def test_big_synthetic_frame_from_real_levels() -> None:
    """The 1000+1000 real snapshot levels sent as one diff: scratch grows, values exact."""
    body = json.loads(sample_frames()["rest"][0])
    frame = json.dumps(
        {
            "e": "depthUpdate",
            "E": E_MS,
            "s": "BTCUSDT",
            "U": 1,
            "u": 2,
            "b": body["bids"] * 3,
            "a": body["asks"] * 3,
        }  # fmt: skip
    ).encode()
    m = FrameParser(16).parse(frame, 0)
    assert isinstance(m, DepthDiff)
    assert view(m.bids) == ref_levels(body["bids"] * 3)
    assert view(m.asks) == ref_levels(body["asks"] * 3)


# ---------------------------------------------------------------- exactness


EXACT = [
    ("0.00000001", 1),
    ("99999.99999999", 9_999_999_999_999),
    ("61837.63000000", 6_183_763_000_000),
    ("0.014", 1_400_000),
    ("1.000000000000", 100_000_000),  # >8 decimals but only zeros: exact, accepted
    ("0", 0),
    ("5.", 500_000_000),
    (".5", 50_000_000),
    ("000123.4", 12_340_000_000),
    ("92233720368.54775807", 2**63 - 1),  # the largest representable value
]

INEXACT_OR_INVALID = [
    "1.000000001", "0.123456789", "-1", "+1", "1e-5", "1E5", "NaN", "nan", "inf", "",
    ".", " 1", "1 ", "1.2.3", "0x10", "1,5", "١٢", "²", "92233720368.54775808",
    "100000000000", "1" * 30,
]  # fmt: skip


@pytest.mark.parametrize(("text", "value"), EXACT)
def test_exact_values_in_levels_and_scalars(text: str, value: int) -> None:
    assert parse_fixed(text) == value == to_fixed(text)
    frame = at(b'{"e":"depthUpdate","E":@E,"s":"X","U":1,"u":1,"b":[["1","%s"]],"a":[["%s","0"]]}')
    frame %= (text.encode(), text.encode())
    if value == 0:  # a zero price is refused, a zero qty is a delete
        raises_kind("zero_price", parse_frame, frame, 0)
        return
    m = parse_frame(frame, 0)
    assert isinstance(m, DepthDiff)
    assert view(m.bids) == [[100_000_000, value]] and view(m.asks) == [[value, 0]]
    t = parse_frame(
        at(b'{"e":"trade","E":@E,"s":"X","t":1,"p":"%s","q":"%s","T":@T,"m":true}')
        % (text.encode(), text.encode()),
        0,
    )
    assert isinstance(t, Trade) and (t.px, t.qty) == (value, value)


@pytest.mark.parametrize("text", INEXACT_OR_INVALID)
def test_inexact_or_invalid_numbers_refused_everywhere(text: str) -> None:
    enc = text.encode()
    with pytest.raises(FrameError):
        parse_fixed(text)
    frame = at(b'{"e":"depthUpdate","E":@E,"s":"X","U":1,"u":1,"b":[["1","%s"]],"a":[]}') % enc
    with pytest.raises(FrameError):
        parse_frame(frame, 0)
    tick = b'{"u":1,"s":"X","b":"%s","B":"1","a":"2","A":"1"}' % enc
    with pytest.raises(FrameError):
        parse_frame(tick, 0)


# ---------------------------------------------------------------- bad frames


def _real(kind: str, i: int = 0) -> bytes:
    return sample_frames()[kind][i]


def _depth(i: int = 1) -> bytes:
    return _real("depth", i)


DEPTH = b'{"e":"depthUpdate","E":@E,"s":"X","U":1,"u":1,'
TRADE = b'{"e":"trade","E":@E,"s":"X",'

BAD: list[tuple[str, bytes | None, str, str | None]] = [
    # (id, frame or None = built below, FrameError.kind, a fragment of *our* message or None:
    # never a library's wording, which changes between versions)
    ("empty", b"", "json", None),
    ("not-json", b"hello", "json", None),
    ("json-array", b"[1,2]", "json", None),
    ("unknown-event", b'{"e":"kline","E":@E,"s":"X"}', "event", "'kline'"),
    ("no-event-type", b'{"E":@E,"s":"X","u":3}', "event", None),
    ("event-type-not-str", b'{"e":5}', "json", None),
    ("data-not-object", b'{"stream":"x@depth","data":[1]}', "json", None),
    ("ids-reversed", b'{"e":"depthUpdate","E":@E,"s":"X","U":5,"u":4,"b":[],"a":[]}', "ids", None),
    ("b-not-array", DEPTH + b'"b":"x","a":[]}', "syntax", None),
    ("level-3-items", DEPTH + b'"b":[["1","2","3"]],"a":[]}', "syntax", None),
    ("level-numbers", DEPTH + b'"b":[[1.5,"2"]],"a":[]}', "number", None),
    ("level-not-pair", DEPTH + b'"b":["1"],"a":[]}', "syntax", None),
    ("dup-b", DEPTH + b'"b":[],"a":[],"b":[["1","1"]]}', "duplicate", None),
    ("trade-px-number", TRADE + b'"t":1,"p":1.5,"q":"1","T":@T,"m":true}', "json", None),
    ("trade-no-qty", TRADE + b'"t":1,"p":"1","T":@T,"m":true}', "missing", "'q'"),
    ("trade-no-id", TRADE + b'"p":"1","q":"1","T":@T,"m":true}', "missing", "'t'"),
    (
        "agg-id-str",
        b'{"e":"aggTrade","E":@E,"s":"X","a":"x","p":"1","q":"1","T":@T,"m":true}',
        "type",
        None,
    ),
    ("ticker-px-number", b'{"u":1,"s":"X","b":61837.63,"B":"1","a":"2","A":"1"}', "number", None),
    ("ticker-no-u", b'{"s":"X","b":"1","B":"1","a":"2","A":"1"}', "missing", "'u'"),
    ("not-utf8", TRADE.replace(b'"X"', b'"X\xff"') + b'"t":1,"p":"1","q":"1","T":@T,"m":true}',
     "json", None),
    ("missing-u", None, "missing", "'u'"),
    ("missing-a", None, "missing", "'a'"),
    ("negative-qty", None, "number", None),
    ("nine-decimals", None, "decimals", None),
    ("zero-price", None, "zero_price", None),
    ("truncated", None, "json", None),
    ("huge-price", None, "range", None),
]  # fmt: skip


def _build(name: str) -> bytes:
    """Faults injected into a real depth frame (first level of each side)."""
    f = _depth()
    d = json.loads(f)
    p0, q0 = d["data"]["b"][0]
    if name == "missing-u":
        return f.replace(b'"u":', b'"x":', 1)
    if name == "missing-a":
        return f.replace(b'"a":[', b'"z":[', 1)
    if name == "negative-qty":
        return f.replace(f'"{q0}"'.encode(), b'"-0.5"', 1)
    if name == "nine-decimals":
        return f.replace(f'"{p0}"'.encode(), f'"{p0}1"'.encode(), 1)
    if name == "zero-price":
        return f.replace(f'"{p0}"'.encode(), b'"0.00000000"', 1)
    if name == "truncated":
        return f[:-3]
    if name == "huge-price":
        return f.replace(f'"{p0}"'.encode(), b'"99999999999999.0"', 1)
    raise KeyError(name)


@pytest.mark.parametrize(("name", "frame", "kind", "ours"), BAD, ids=[b[0] for b in BAD])
def test_bad_frames_raise_frame_error_and_parser_survives(
    name: str, frame: bytes | None, kind: str, ours: str | None
) -> None:
    parser = FrameParser()
    good = _depth(7)
    expected = parser.parse(good, 1)
    bad = at(frame) if frame is not None else _build(name)
    err = raises_kind(kind, parser.parse, bad, 1)
    assert ours is None or ours in str(err)
    # nothing corrupted: the same parser (same scratch buffer) still parses exactly
    assert parser.parse(good, 1) == expected
    assert isinstance(err, ValueError) and err.kind in FRAME_ERROR_KINDS


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"bids":[],"asks":[]}', "json"),
        (b'{"lastUpdateId":1,"bids":[]}', "missing"),
        (b'{"lastUpdateId":-1,"bids":[],"asks":[]}', "ids"),
        (b'{"lastUpdateId":1,"bids":[["1","-1"]],"asks":[]}', "number"),
        (b'{"lastUpdateId":1,"bids":[],"asks":[["abc","1"]]}', "number"),
        (b"", "json"),
        (b'{"lastUpdateId":1,"symbol":"\xff","bids":[],"asks":[]}', "json"),
    ],
)
def test_bad_snapshots(body: bytes, kind: str) -> None:
    raises_kind(kind, parse_snapshot, body, "X", 0)


def test_timestamps_and_flags() -> None:
    spot_tick = parse_frame(_real("bookTicker"), 42)
    assert isinstance(spot_tick, BookTicker) and spot_tick.ts_exchange_ns == 0  # spot: no E
    fut_tick = parse_frame(
        at(
            b'{"e":"bookTicker","u":9,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.30",'
            b'"A":"2.510","T":@T,"E":@E}'
        ),
        42,
    )
    assert fut_tick == BookTicker(
        "BTCUSDT", 9, 6_180_020_000_000, 250_700_000, 6_180_030_000_000, 251_000_000,
        1_723_161_256_314_000_000, 42,
    )  # fmt: skip
    tr = parse_frame(_real("trade"), 1)
    d = json.loads(_real("trade"))["data"]
    assert isinstance(tr, Trade) and tr.ts_exchange_ns == d["T"] * 1_000_000 != d["E"] * 10**6
    fut_depth = parse_frame(
        at(
            b'{"e":"depthUpdate","E":@E,"T":@T,"s":"BTCUSDT","U":10,"u":20,"pu":9,'
            b'"b":[["58710.20","0.014"]],"a":[]}'
        ),
        0,
    )
    assert isinstance(fut_depth, DepthDiff)
    assert (fut_depth.prev_update_id, fut_depth.ts_exchange_ns) == (9, E_MS * 10**6)
    assert view(fut_depth.bids) == [[5_871_020_000_000, 1_400_000]]


# ---------------------------------------------------------------- ids and times in range


def _with(frame: bytes, **fields: object) -> bytes:
    """A real frame with some event fields set (compact JSON, as Binance sends it)."""
    d = json.loads(frame)
    d["data"].update(fields)
    return json.dumps(d, separators=(",", ":")).encode()


_FUT = at(
    b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":@E,"T":@T,"s":"BTCUSDT",'
    b'"U":10,"u":20,"pu":9,"b":[["58710.20","0.014"]],"a":[]}}'
)
_AGG = at(
    b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":@E,"s":"BTCUSDT","a":5,'
    b'"p":"61837.63","q":"0.02","f":1,"l":2,"T":@T,"m":false}}'
)
_FUT_TICK = at(
    b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":9,"s":"BTCUSDT",'
    b'"b":"61800.20","B":"2.507","a":"61800.30","A":"2.510","T":@T,"E":@E}}'
)
_HUGE = 99999999999999999999999  # the reviewer's id: beyond int64, taken by msgspec's int
_OUT_OF_RANGE: list[tuple[str, str, dict[str, int], str]] = [
    ("depth", "u-huge", {"u": _HUGE}, "ids"),
    ("depth", "U-u-huge", {"U": _HUGE - 9, "u": _HUGE}, "ids"),
    ("depth", "u-2**63", {"u": 2**63}, "ids"),
    ("depth", "U-negative", {"U": -1}, "ids"),
    ("fut", "pu-negative", {"pu": -1}, "ids"),
    ("fut", "pu-huge", {"pu": _HUGE}, "ids"),
    ("depth", "E-zero", {"E": 0}, "time"),
    ("depth", "E-1999", {"E": 946_684_799_999}, "time"),
    ("depth", "E-2100", {"E": 4_102_444_800_000}, "time"),
    ("depth", "E-18-digits", {"E": 999_999_999_999_999_999}, "time"),  # fast path's widest
    ("depth", "E-huge", {"E": _HUGE}, "time"),  # x 1e6 would not fit int64
    ("depth", "E-negative", {"E": -1}, "time"),
    ("fut", "T-huge", {"T": _HUGE}, "time"),
    ("fut", "T-zero", {"T": 0}, "time"),
    ("trade", "T-huge", {"T": _HUGE}, "time"),
    ("trade", "T-18-digits", {"T": 999_999_999_999_999_999}, "time"),
    ("trade", "T-1", {"T": 1}, "time"),
    ("trade", "E-huge", {"E": _HUGE}, "time"),
    ("trade", "t-huge", {"t": _HUGE}, "ids"),
    ("trade", "t-negative", {"t": -1}, "ids"),
    ("agg", "a-huge", {"a": _HUGE}, "ids"),
    ("agg", "a-negative", {"a": -5}, "ids"),
    ("agg", "T-huge", {"T": _HUGE}, "time"),
    ("ticker", "u-huge", {"u": _HUGE}, "ids"),
    ("ticker", "u-negative", {"u": -1}, "ids"),
    ("fut-ticker", "E-huge", {"E": _HUGE}, "time"),
    ("fut-ticker", "T-negative", {"T": -1}, "time"),
]


def _base(kind: str) -> bytes:
    return {
        "depth": _depth(3),
        "fut": _FUT,
        "trade": _real("trade"),
        "agg": _AGG,
        "ticker": _real("bookTicker"),
        "fut-ticker": _FUT_TICK,
    }[kind]


@pytest.mark.parametrize(
    ("base", "fields", "kind"),
    [(c[0], c[2], c[3]) for c in _OUT_OF_RANGE],
    ids=[f"{c[0]}-{c[1]}" for c in _OUT_OF_RANGE],
)
def test_ids_and_times_out_of_range_are_bad_frames(
    base: str, fields: dict[str, int], kind: str
) -> None:
    """An id outside 0..2**63-1 (or U > u), a venue time outside 2000..2100: a FrameError of
    kind ids/time on every path (fast kernels, msgspec, raw payload), never a message - a
    huge u would otherwise become the book's id and every real event would be "stale"."""
    parser = FrameParser(64)
    good = _base(base)
    expected = parser.parse(good, 1)
    bad = _with(good, **fields)
    raw = json.dumps(json.loads(bad)["data"], indent=1).encode()  # whitespace: msgspec path
    for frame in (bad, raw):
        raises_kind(kind, parser.parse, frame, 1)
        raises_kind(kind, parser._parse_general, frame, 1)
    assert parser.parse(good, 1) == expected  # the parser goes on


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"lastUpdateId": _HUGE}, "ids"),
        ({"lastUpdateId": 2**63}, "ids"),
        ({"E": _HUGE}, "time"),
        ({"E": 5}, "time"),
        ({"T": -1}, "time"),
    ],
)
def test_snapshot_ids_and_times_out_of_range(fields: dict[str, int], kind: str) -> None:
    body = json.loads(_real("rest"))
    body.update(fields)
    raises_kind(kind, parse_snapshot, json.dumps(body).encode(), "BTCUSDT", 0)


def test_ids_and_times_at_the_edges_are_accepted_and_encode() -> None:
    """The extremes that are valid: ids 0 and 2**63-1, times 2000-01-01 and just before
    2100; their messages encode for the bus (E x 1e6 never overflows)."""
    parser = FrameParser()
    for fields in (
        {"U": 0, "u": 0},
        {"U": 1, "u": 2**63 - 1},  # 19 digits: the msgspec path
        {"U": 10**17, "u": 10**18 - 1},  # 18 digits: the fast path
        {"E": 946_684_800_000},
        {"E": 4_102_444_799_999},
    ):
        m = parser.parse(_with(_depth(3), **fields), 1)
        assert isinstance(m, DepthDiff)
        assert (m.first_update_id, m.last_update_id) == (
            fields.get("U", m.first_update_id),
            fields.get("u", m.last_update_id),
        )
        assert m.ts_exchange_ns < 2**63 and _codec.decode(_codec.encode(m)) == m
    t = parser.parse(_with(_real("trade"), T=4_102_444_799_999, t=2**63 - 1), 1)
    assert isinstance(t, Trade) and _codec.decode(_codec.encode(t)) == t


# ---------------------------------------------------------------- depth fast path


def _outcome(fn: object, frame: bytes) -> object:
    """``("ok", msg)``, ``("err",)`` for FrameError, or None when the fast path declined.
    Every message accepted also encodes for the bus (no field beyond int64)."""
    try:
        msg = fn(frame, 1)  # type: ignore[operator]
    except FrameError:
        return ("err",)
    if msg is None:
        return None
    _codec.encode(msg)
    return ("ok", msg)


_PALETTE = b'{}[]",:0123456789.-+eE tfnul\\x\xff\n'
_EXTRA = [
    b'"x":{"y":[1,2.5e3,{"z":null}],"w":"v","t":true},',
    b'"u":5,',  # duplicate key: msgspec keeps the last
    b'"b":[],',  # duplicate level array
    b'"pu":null,',
    b'"E":"1",',
    b'"B":"1.0",',  # another event's field
    b'"e":"trade",',
    b'"s":"BTC\\u0055SDT",',
    b'"M":false,',
    b'"ps":"BTCUSD",',
    b'"T":1.0,',
    b"  ",
    b'"u":99999999999999999999,',  # ids beyond int64: the msgspec path must refuse them
    b'"U":9223372036854775808,',
    b'"U":-1,',  # negative ids: the fast path must refuse them
    b'"pu":-2,',
    b'"E":0,',  # venue times outside 2000..2100
    b'"E":999999999999999999,',
    b'"T":4102444800000,',
    b'"T":946684800000,',  # 2000-01-01: the first accepted ms
]


def _mutate(rng: random.Random, f: bytes) -> bytes:
    k = rng.randrange(7)
    i = rng.randrange(len(f) or 1)
    if k == 0:
        return f[:i] + f[i + 1 :]
    if k == 1:
        return f[:i] + bytes([rng.choice(_PALETTE)]) + f[i:]
    if k == 2:
        return f[:i] + bytes([rng.choice(_PALETTE)]) + f[i + 1 :]
    if k == 3:
        return f[:i]
    if k == 4:  # a field inserted right after an object opens (envelope or data)
        at = [j + 1 for j, c in enumerate(f) if c == ord("{")] or [0]
        j = rng.choice(at)
        return f[:j] + rng.choice(_EXTRA) + f[j:]
    if k == 5:  # same content, other key order and spacing
        try:
            d = json.loads(f)
            assert isinstance(d, dict)
        except (ValueError, AssertionError):
            return f[:i]
        obj = d.get("data", d) if isinstance(d.get("data"), dict) else d
        keys = list(obj)
        rng.shuffle(keys)
        shuffled = {key: obj[key] for key in keys}
        if "data" in d:
            d["data"] = shuffled
        else:
            d = shuffled
        return json.dumps(d, indent=rng.choice([None, 1])).encode()
    return f.replace(b'"', b"'", 1) if rng.random() < 0.5 else f + b" x"


def test_depth_fast_path_agrees_with_msgspec_path() -> None:
    """The one-pass depth kernel and the msgspec path give the same message or both raise,
    on real frames and on thousands of mutations of them; real frames take the fast path."""
    rng = random.Random(11)
    spot = sample_frames()["depth"][:300]
    futures = [
        json.dumps(
            {
                "e": "depthUpdate",
                "E": 1723161256299,
                "T": 1723161256298,
                "s": "BTCUSDT",
                "U": 10 + i,
                "u": 20 + i,
                "pu": 9 + i,
                "b": [["58710.20", "0.014"], ["61496.50", "0.010"]],
                "a": [["61800.30", "2.5"]],
            }
        ).encode()  # fmt: skip
        for i in range(20)
    ]
    raw = [json.dumps(json.loads(f)["data"], separators=(",", ":")).encode() for f in spot[:50]]
    parser = FrameParser(64)
    for f in spot + futures + raw:
        fast = _outcome(parser._depth_fast, f)
        assert fast is not None and fast == _outcome(parser._parse_general, f)
    declined = agreed = 0
    for _ in range(6000):
        f = _mutate(rng, rng.choice(spot + futures + raw))
        fast = _outcome(parser._depth_fast, f)
        if fast is None:
            declined += 1
            continue
        assert fast == _outcome(parser._parse_general, f), f
        agreed += 1
    assert agreed > 2000 and declined > 500  # both branches really exercised


# ---------------------------------------------------------------- ticker / trade fast path

_SMALL_EXTRA = [
    b'"e":"bookTicker",',
    at(b'"E":@E,'),
    b'"E":0,',  # a venue time before 2000
    b'"b":"1.00000000",',  # duplicate price: the general path refuses it
    b'"M":true,',
    b'"s":"ETHUSDT",',
    b'"x":[1,{"y":null}],',
]


def _small_mutations(rng: random.Random, f: bytes) -> bytes:
    """Faults a ticker/trade fast path could get wrong: numbers, keys, escapes, spacing."""
    k = rng.randrange(12)
    if k < 5:
        return _mutate(rng, f)
    if k == 5:  # one character of a value changed to a digit, sign, dot, letter or quote
        quotes = [j for j, c in enumerate(f) if c == ord('"')]
        j = rng.choice(quotes) + rng.randrange(1, 4)
        return f[:j] + bytes([rng.choice(b'0123456789.-+eE "\\x')]) + f[j + 1 :]
    if k == 6:  # a longer / shorter number
        d = json.loads(f)["data"]
        key = rng.choice([key for key, v in d.items() if isinstance(v, str) and key != "s"])
        v = d[key]
        v = rng.choice(
            [
                v + "0",
                v + "1",
                v[:-1],
                "0" + v,
                v.replace(".", ""),
                v + ".0",
                "9" * rng.randrange(8, 14) + "." + v.split(".")[-1],
                ".5",
                "5.",
            ]
        )
        return f.replace(f'"{key}":"{d[key]}"'.encode(), f'"{key}":"{v}"'.encode(), 1)
    if k == 7:  # an integer field: bigger, zero-padded, negative, float, string, null
        d = json.loads(f)["data"]
        key = rng.choice([key for key, v in d.items() if type(v) is int])
        v = rng.choice(["0", "00", "-1", "1.0", "1e3", '"1"', "null", "9" * 19, "9" * 18, "007"])
        return f.replace(f'"{key}":{d[key]}'.encode(), f'"{key}":{v}'.encode(), 1)
    if k == 8:  # an escape in a string: same text for msgspec, not for a byte matcher
        return f.replace(b"BTCUSDT", rng.choice([b"BTC\\u0055SDT", b"BTC\\/USDT", b"\\u00e9"]), 1)
    if k == 9:  # whitespace somewhere between tokens
        at = [j + 1 for j, c in enumerate(f) if c in b",:{"]
        j = rng.choice(at)
        return f[:j] + rng.choice([b" ", b"\n", b"\t"]) + f[j:]
    if k == 10:  # a field inserted in the data object or the envelope
        j = f.index(b'"data":{') + 8 if rng.random() < 0.7 else 1
        return f[:j] + rng.choice(_SMALL_EXTRA) + f[j:]
    d = json.loads(f)  # booleans, a dropped field
    data = d["data"]
    key = rng.choice(list(data))
    if isinstance(data[key], bool) and rng.random() < 0.5:
        data[key] = rng.choice([None, 1, "true", not data[key]])
    else:
        del data[key]
    return json.dumps(d, separators=(",", ":")).encode()


def test_ticker_trade_fast_path_agrees_with_msgspec_path() -> None:
    """A canonical bookTicker / trade frame takes the fast path; on it and on thousands of
    mutations, parse() gives exactly what the general msgspec path gives, or both raise."""
    rng = random.Random(7)
    frames = sample_frames()
    real = frames["bookTicker"][:400] + frames["trade"][:400]
    parser = FrameParser(64)
    for f in real:
        assert _scan_small(f)[0] in (1, 2)  # the fast path takes it
        assert parser.parse(f, 3) == parser._parse_general(f, 3)
    for f in frames["depth"][:20] + frames["rest"]:
        assert _scan_small(f)[0] == 0
    fast = declined = errors = 0
    for _ in range(8000):
        f = _small_mutations(rng, rng.choice(real))
        taken = _scan_small(f)[0] != 0
        fast += taken
        declined += not taken
        got = _outcome(parser.parse, f)
        errors += got == ("err",)
        assert got == _outcome(parser._parse_general, f), f
        assert not (taken and got == ("err",)), f  # the fast path never accepts a bad frame
    assert fast > 1000 and declined > 4000 and errors > 1500  # all branches exercised


def test_ticker_trade_fast_path_edges() -> None:
    parser = FrameParser()
    tick = (
        b'{"stream":"btcusdt@bookTicker","data":{"u":%s,"s":"%s","b":"%s","B":"1.5",'
        b'"a":"61837.64000000","A":"0"}}'
    )
    for u, sym, b in [
        (b"0", b"BTCUSDT", b"0.00000001"),
        (b"999999999999999999", b"", b"92233720368.54775807"),  # 18 digits, int64 max
        (b"1", b"X", b"000123.4"),  # leading zeros in a price are fine
        (b"1", b"X", b"1.000000000000"),  # >8 decimals, only zeros: exact
        (b"1", b"X", b"5."),
        (b"1", b"X", b".5"),
    ]:
        f = tick % (u, sym, b)
        assert _scan_small(f)[0] == 1, f
        assert parser.parse(f, 1) == parser._parse_general(f, 1)
    for u, b, kind in [
        (b"1", b"92233720368.54775808", "range"),
        (b"1", b"1.000000001", "decimals"),
        (b"1", b"-1.0", "number"),
        (b"1", b"", "number"),
    ]:
        f = tick % (u, b"X", b)
        assert _scan_small(f)[0] == 0
        raises_kind(kind, parser.parse, f, 1)
    # spot trade without the "M" flag, futures trade/ticker shapes: exact either way
    trade = at(
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":@E,"s":"BTCUSDT","t":5,'
        b'"p":"61837.63","q":"0.02","T":@T,"m":false}}'
    )
    assert _scan_small(trade)[0] == 2
    assert parser.parse(trade, 1) == Trade("BTCUSDT", 5, 6_183_763_000_000, 2_000_000, False,
                                           T_MS * 10**6, 1)  # fmt: skip
    fut = b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":9,"s":"BTCUSDT",'
    fut += b'"b":"61800.20","B":"2.507","a":"61800.30","A":"2.510","T":@T,"E":@E}}'
    assert _scan_small(at(fut))[0] == 0
    assert parser.parse(at(fut), 1).ts_exchange_ns == E_MS * 10**6  # type: ignore[union-attr]


def test_compiled_entry_points_are_the_kernels() -> None:
    frame = sample_frames()["bookTicker"][0]
    assert _entry_point(_scan_small, frame)(frame) == _scan_small(frame)
    depth = sample_frames()["depth"][3]
    out_a, out_b = np.zeros(8000, dtype=np.int64), np.zeros(8000, dtype=np.int64)
    entry = _entry_point(_scan_depth, depth, out_a)
    assert entry(depth, out_a) == _scan_depth(depth, out_b) > 0
    assert (out_a == out_b).all()
