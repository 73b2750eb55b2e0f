"""Encoding and decoding of bus messages: msgpack, built once, reused.

A reused typed decoder costs ~0.5 us per message; a fresh ``msgspec.msgpack.decode(type=...)``
call ~5 us. msgspec encoders/decoders keep internal buffers, so each thread builds its own
:class:`Codec` (a lane owns one) instead of sharing a global.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

import msgspec

from .messages import BUILTIN_TYPES, Msg


class Codec:
    """A msgpack encoder and a decoder for the tagged union of ``types``.

    ``types`` defaults to the built-in messages; plugins' own message types are added by the
    kernel at start-up. ``decode`` raises ``msgspec.DecodeError`` (or its subclass
    ``ValidationError``) on a malformed or unknown frame."""

    __slots__ = ("types", "encode", "encode_into", "decode", "_untyped")

    def __init__(self, types: Iterable[type[Msg]] = BUILTIN_TYPES) -> None:
        self.types: tuple[type[Msg], ...] = tuple(dict.fromkeys(types))
        enc = msgspec.msgpack.Encoder()
        dec = msgspec.msgpack.Decoder(Union[self.types])  # type: ignore[valid-type]  # noqa: UP007
        self.encode = enc.encode
        self.encode_into = enc.encode_into
        self.decode = dec.decode
        self._untyped = msgspec.msgpack.Decoder()

    def encode_wide(self, msg: Msg) -> bytes:
        """``msg`` with its ints beyond 64 bits as decimal strings: the wire form of big
        :data:`~tickbus.schemas.messages.Money` values (the plain ``encode`` raises
        ``OverflowError`` on them). Decoded here once: a big int in any other field is an
        ``OverflowError`` still, never a frame the receiver would refuse."""
        data = self.encode(_widen(msgspec.to_builtins(msg)))
        try:
            self.decode(data)
        except msgspec.ValidationError as err:
            raise OverflowError(f"an int beyond 64 bits outside a money field ({err})") from None
        return data

    def decode_untyped(self, data: bytes | memoryview) -> Any:
        """Decode without a schema (a message of a type this process does not know)."""
        return self._untyped.decode(data)


def _widen(obj: Any) -> Any:
    if type(obj) is int and not -(2**63) <= obj < 2**64:
        return str(obj)
    if type(obj) is list:
        return [_widen(v) for v in obj]
    return obj
