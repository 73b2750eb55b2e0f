"""``tickbus sniff``: print the messages flowing on a running bus, from another terminal.

Connects a SUB socket to the tap (lossy by design: a sniffer that cannot keep up loses
messages, never the engine) and subscribes to topic prefixes. Plain output is one line per
message with prices and quantities as decimals; ``--json`` prints one JSON object per line:
``{"topic": ..., "type": ..., <fields>}`` with exact integer prices (1/SCALE units) and book
levels as ``[[px, qty], ...]``.

A malformed message (not a tickbus frame, not msgpack, a known type with fields of the
wrong types, book levels that are not whole (price, qty) pairs) is skipped and counted: one
line on stderr for the first of each kind, and the counts at exit. A ``tcp://`` tap is
reached with CURVE (``--keys``, default: the config's ``[bus] curve_dir``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tickbus.kernel.config import Config, load_config, resolve_runtime_dir
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.fixed import from_fixed
from tickbus.kernel.router import Connector, split_frame
from tickbus.schemas import Codec, Msg

LEVEL_BYTES = 16  # one (price, qty) pair of little-endian int64


class BadMessage(ValueError):
    """A message that cannot be shown as what it claims to be; ``kind`` groups them."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


_packed_fields: dict[type, frozenset[str]] = {}


def _packed(cls: type[Msg]) -> frozenset[str]:
    """Names of ``Levels`` (packed int64 pairs) fields of a message type (cached)."""
    found = _packed_fields.get(cls)
    if found is None:
        names = set()
        for f in msgspec.structs.fields(cls):
            for meta in typing.get_args(f.type)[1:]:
                if isinstance(meta, msgspec.Meta) and (meta.extra or {}).get("packed_levels"):
                    names.add(f.name)
        found = _packed_fields[cls] = frozenset(names)
    return found


def unpack_levels(data: bytes) -> list[list[int]]:
    """``Levels`` bytes -> ``[[px, qty], ...]`` (exact integers); BadMessage if the bytes
    are not whole (price, qty) pairs."""
    if len(data) % LEVEL_BYTES:
        raise BadMessage("bad book levels", f"{len(data)} bytes is not a multiple of {LEVEL_BYTES}")
    ints = memoryview(data).cast("q") if sys.byteorder == "little" else None
    if ints is None:  # pragma: no cover - big-endian hosts
        import struct

        ints = struct.unpack(f"<{len(data) // 8}q", data)
    return [[ints[i], ints[i + 1]] for i in range(0, len(ints), 2)]


def to_record(msg: Msg) -> dict[str, Any]:
    """A message as a dict of builtins (nested messages too), levels unpacked."""
    packed = _packed(type(msg))
    out: dict[str, Any] = {}
    for name in msg.__struct_fields__:
        value = getattr(msg, name)
        if isinstance(value, Msg):
            value = {"type": type(value).__name__, **to_record(value)}
        elif name in packed:
            value = unpack_levels(value)
        out[name] = value
    return out


def _is_amount(name: str) -> bool:
    return name in ("px", "qty", "fee", "fees") or name.endswith(("_px", "_qty"))


def format_line(topic: str, msg: Msg) -> str:
    """One human-readable line: topic, type, fields; amounts as decimals."""
    parts = [topic, type(msg).__name__]
    for name, value in to_record(msg).items():
        if isinstance(value, int) and not isinstance(value, bool) and _is_amount(name):
            value = from_fixed(value)
        elif isinstance(value, list) and value and isinstance(value[0], list):
            shown = " ".join(f"{from_fixed(p)}@{from_fixed(q)}" for p, q in value[:3])
            value = f"[{shown}{' ...' if len(value) > 3 else ''}]({len(value)})"
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _config(given: str | None) -> Config | None:
    """``--config``, else ``$TICKBUS_CONFIG`` if set, else None."""
    path = given or os.environ.get("TICKBUS_CONFIG")
    return load_config(path) if path else None


def default_endpoint(config: str | None) -> str:
    """The tap of a config (``--config``, else ``$TICKBUS_CONFIG``), else the tap in the
    default runtime dir of a process named ``tickbus``."""
    cfg = _config(config)
    if cfg is not None:
        if not cfg.bus.tap:
            raise TickbusError(f"{cfg.path}: bus.tap: the config has no tap (it is empty)")
        return cfg.endpoint(cfg.bus.tap)
    return f"ipc://{resolve_runtime_dir()}/tap"


class Skipped:
    """Malformed messages: counted per kind, the first of each kind reported with a
    sample, the counts reported at exit."""

    def __init__(self, err: Any = None) -> None:
        self.counts: dict[str, int] = {}
        self._err = err

    def add(self, kind: str, detail: str, sample: bytes) -> None:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n == 0:
            print(
                f"tickbus sniff: skipped a malformed message ({kind}: {detail});"
                f" sample {bytes(sample[:60])!r} (more of this kind are only counted)",
                file=self._err or sys.stderr,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.counts.items()))
        return f"tickbus sniff: skipped {self.total} malformed message(s) ({kinds})"


def render(
    data: bytes, codec: Codec, as_json: bool, enc: msgspec.json.Encoder | None = None
) -> str:
    """One output line for a wire frame; BadMessage if it is malformed."""
    try:
        topic, _origin, body = split_frame(data)
    except ValueError:
        raise BadMessage("not a tickbus frame", "no topic, origin and body") from None
    try:
        msg = codec.decode(body)
    except msgspec.DecodeError as err:
        record = _untyped(codec, body, err)
        if as_json:
            return _json(enc, {"topic": topic, **record})
        return f"{topic} {record['type']} {record.get('fields')}"
    try:
        if as_json:
            return _json(enc, {"topic": topic, "type": type(msg).__name__, **to_record(msg)})
        return format_line(topic, msg)
    except BadMessage:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise BadMessage("unprintable", f"{type(msg).__name__}: {err}") from None


def _json(enc: msgspec.json.Encoder | None, record: dict[str, Any]) -> str:
    try:
        return (enc or msgspec.json.Encoder()).encode(record).decode()
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as err:
        raise BadMessage("unprintable", f"{type(err).__name__}: {err}") from None


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``sniff`` arguments to ``p``."""
    p.add_argument(
        "--endpoint", help="bus tap to connect to (default: the configured runtime dir's tap)"
    )
    p.add_argument("--config", help="take the tap from this config file (default: $TICKBUS_CONFIG)")
    p.add_argument(
        "--keys",
        metavar="DIR",
        help="CURVE client keys for a tcp:// tap (default: the config's [bus] curve_dir)",
    )
    p.add_argument(
        "--topic",
        action="extend",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="topic prefixes, e.g. --topic md.book exec. (repeatable; default: everything)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="exit with status 1 if no message for S seconds",
    )


def run(args: argparse.Namespace) -> int:
    """Sniff until interrupted, ``--count`` messages, or ``--timeout`` of silence."""
    endpoint = args.endpoint or default_endpoint(args.config)
    cfg = _config(args.config)
    keys = Path(args.keys) if args.keys else None
    label = "--endpoint" if args.endpoint else "bus.tap"
    connector = Connector.for_endpoints(cfg, {label: endpoint}, keys)
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:]):
        print(f"tickbus sniff: waiting for {endpoint} (is tickbus running?)", file=sys.stderr)
    codec = Codec()
    enc = msgspec.json.Encoder()
    skipped = Skipped()
    zctx = zmq.Context()
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    try:
        connector.connect(sock, endpoint)
    except TickbusError:
        sock.close(linger=0)
        zctx.term()
        raise
    for prefix in args.topic or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    out = sys.stdout
    seen = 0
    last = time.monotonic()
    try:
        while not args.count or seen < args.count:
            if not sock.poll(200):
                if args.timeout and time.monotonic() - last > args.timeout:
                    print(f"tickbus sniff: no message for {args.timeout:g} s", file=sys.stderr)
                    return 1
                continue
            last = time.monotonic()
            data = sock.recv()
            try:
                line = render(data, codec, args.json, enc)
            except BadMessage as bad:
                skipped.add(bad.kind, bad.detail, data)
                continue
            out.write(line + "\n")
            out.flush()
            seen += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `tickbus sniff | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
    finally:
        sock.close(linger=0)
        zctx.term()
        if skipped.total:
            print(skipped.summary(), file=sys.stderr)
    return 0


def _untyped(codec: Codec, body: memoryview, err: msgspec.DecodeError) -> dict[str, Any]:
    """A message of a type this process does not know (a plugin's own): shown raw. One
    that is not msgpack, not a tagged array, or a known type whose fields do not match it
    is malformed (BadMessage)."""
    try:
        raw = codec.decode_untyped(body)
    except msgspec.DecodeError:
        raise BadMessage("not msgpack", str(err)) from None
    if not (isinstance(raw, list) and raw and isinstance(raw[0], str)):
        raise BadMessage("not a tagged message", f"decodes to {type(raw).__name__}")
    if raw[0] in _known_names(codec):
        raise BadMessage(f"wrong fields for {raw[0]}", str(err))
    return {"type": raw[0], "fields": raw[1:]}


def _known_names(codec: Codec) -> frozenset[str]:
    return frozenset(t.__name__ for t in codec.types)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.sniffer``."""
    p = argparse.ArgumentParser(prog="tickbus sniff", description=__doc__.split("\n")[0])
    build_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
