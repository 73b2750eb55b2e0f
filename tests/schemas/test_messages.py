"""Every message type: registered, documented, immutable, and round-trips exactly."""

from __future__ import annotations

import inspect
import typing

import msgspec
import pytest

from tickbus import schemas
from tickbus.schemas import BUILTIN_TYPES, SCALE, Codec, Msg
from tickbus.schemas import messages as m

ALL = [
    obj
    for obj in vars(m).values()
    if inspect.isclass(obj) and issubclass(obj, Msg) and obj is not Msg
]

SAMPLE_VALUES: dict[object, object] = {
    str: "BTCUSDT",
    int: 6_700_012_345_678,
    float: 0.25,
    bool: True,
    m.Money: 6_700_012_345_678,
    bytes: (67_000 * SCALE).to_bytes(8, "little") + SCALE.to_bytes(8, "little"),
}


def sample(cls: type[Msg]) -> Msg:
    """An instance with a plausible value in every field (nested messages too)."""
    kwargs = {}
    for f in msgspec.structs.fields(cls):
        t = f.type
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            t = typing.get_args(t)[0]
            origin = typing.get_origin(t)
        if origin is typing.Literal:
            kwargs[f.name] = typing.get_args(t)[0]
        elif origin is dict:
            kwargs[f.name] = {"imbalance": 0.5, "spread_bps": 1.25}
        elif origin is list:
            kwargs[f.name] = ["on", "flatten"]
        elif inspect.isclass(t) and issubclass(t, Msg):
            kwargs[f.name] = sample(t)
        else:
            kwargs[f.name] = SAMPLE_VALUES[t]
    return cls(**kwargs)


def test_every_message_type_is_in_the_union() -> None:
    assert set(ALL) == set(BUILTIN_TYPES)
    assert set(schemas.__all__) >= {t.__name__ for t in ALL}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_round_trip_and_struct_options(cls: type[Msg]) -> None:
    codec = Codec()
    msg = sample(cls)
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert msgspec.msgpack.decode(data)[0] == cls.__name__, "array_like with the tag first"
    cfg = cls.__struct_config__
    assert cfg.frozen and cfg.array_like and not cfg.gc and cfg.tag == cls.__name__
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} needs a docstring"
    with pytest.raises(AttributeError):
        setattr(msg, cls.__struct_fields__[0], None)


MARKET = {"DepthSnapshot", "DepthDiff", "Trade", "BookTicker", "BookTop", "Fill"}


@pytest.mark.parametrize("name", sorted(MARKET))
def test_market_messages_carry_both_timestamps(name: str) -> None:
    fields = getattr(schemas, name).__struct_fields__
    assert "ts_exchange_ns" in fields and "ts_recv_ns" in fields


DERIVED = ["FeatureVector", "Signal", "OrderRequest", "Fill", "OrderUpdate", "Position"]


@pytest.mark.parametrize("name", DERIVED)
def test_derived_messages_carry_the_tick_receive_time(name: str) -> None:
    """Tick-to-trade is measured on every order from the tick that caused it."""
    assert "ts_recv_ns" in getattr(schemas, name).__struct_fields__


FEATURES = (
    "volatility momentum imbalance weighted_imbalance spread_bps depth_ratio bid_pressure"
    " ask_pressure vwap trade_flow toxicity price_acceleration volume_surge mid timestamp_ns"
    " symbol"
).split()


def test_feature_vector_has_the_original_designs_field_names() -> None:
    assert set(FEATURES) <= set(schemas.FeatureVector.__struct_fields__)


def test_a_new_field_at_the_end_with_a_default_is_backward_compatible() -> None:
    """Schema evolution: an old reader decodes a newer message (and vice versa)."""

    class TradeV2(Msg, tag="Trade"):
        symbol: str
        trade_id: int
        px: int
        qty: int
        buyer_is_maker: bool
        ts_exchange_ns: int
        ts_recv_ns: int
        venue: str = "binance"

    new = msgspec.msgpack.encode(TradeV2("BTCUSDT", 1, 2, 3, False, 4, 5, "binance"))
    assert Codec().decode(new) == schemas.Trade("BTCUSDT", 1, 2, 3, False, 4, 5)
    old = Codec().encode(schemas.Trade("BTCUSDT", 1, 2, 3, False, 4, 5))
    assert msgspec.msgpack.decode(old, type=TradeV2).venue == "binance"


def test_decoder_rejects_bad_input() -> None:
    codec = Codec()
    for bad in (b"\xc1", msgspec.msgpack.encode(["Nope", 1]), msgspec.msgpack.encode(["Trade"])):
        with pytest.raises(msgspec.DecodeError):
            codec.decode(bad)


def test_plugin_types_extend_the_codec() -> None:
    class Custom(Msg):
        """A plugin's own message."""

        value: int

    codec = Codec((*BUILTIN_TYPES, Custom))
    assert codec.decode(codec.encode(Custom(3))) == Custom(3)
    with pytest.raises(msgspec.DecodeError):
        Codec().decode(codec.encode(Custom(3)))


BIG = 67_000 * SCALE * 2 * SCALE  # the cost basis of 2 BTC at 67,000: beyond 64 bits


def test_money_beyond_64_bits_crosses_the_wire_exactly() -> None:
    """A real-sized position's money (1e-16 units) does not fit msgpack's ints: it goes as
    its decimal string and comes back as the exact int (before, such a Position could not
    leave its lane: persistence in its own lane never saw it)."""
    codec = Codec()
    pos = m.Position("BTCUSDT", 2 * SCALE, BIG, -BIG, BIG // 7, 3 * BIG, 67_000 * SCALE, 2, 1, 2)
    with pytest.raises(OverflowError):
        codec.encode(pos)
    back = codec.decode(codec.encode_wide(pos))
    assert back == pos and type(back.cost) is int and back.realized_pnl == -BIG
    for msg in (m.RiskState("active", False, "", 1, BIG, 5),
                msgspec.structs.replace(sample(m.Fill), fee=-BIG)):  # fmt: skip
        assert codec.decode(codec.encode_wide(msg)) == msg


def test_a_big_int_outside_money_is_still_refused_at_the_sender() -> None:
    codec = Codec()
    trade = m.Trade("BTCUSDT", 2**64, SCALE, SCALE, True, 1, 2)
    with pytest.raises(OverflowError):
        codec.encode_wide(trade)


@pytest.mark.parametrize("wire", ["12x", "", "-", "1" * 41, "\u0661\u0662", " 12", "1e30"])
def test_a_malformed_money_string_is_a_bad_frame(wire: str) -> None:
    codec = Codec()
    data = msgspec.msgpack.encode(["RiskState", "active", False, "", 1, wire, 5])
    with pytest.raises(msgspec.ValidationError):
        codec.decode(data)
