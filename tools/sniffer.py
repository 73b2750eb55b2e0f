"""``tickbus sniff``: print the messages flowing on a running bus, from another terminal.

Connects a SUB socket to the tap (lossy by design: a sniffer that cannot keep up loses
messages, never the engine) and subscribes to topic prefixes. Plain output is one line per
message with prices and quantities as decimals; ``--json`` prints one JSON object per line:
``{"topic": ..., "type": ..., <fields>}`` with exact integer prices (1/SCALE units) and book
levels as ``[[px, qty], ...]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import typing
from typing import Any

import msgspec
import zmq

from tickbus.kernel.config import load_config, resolve_runtime_dir
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.fixed import from_fixed
from tickbus.kernel.router import split_frame
from tickbus.schemas import Codec, Msg

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
    """``Levels`` bytes -> ``[[px, qty], ...]`` (exact integers)."""
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


def default_endpoint(config: str | None) -> str:
    """The tap of the configured runtime dir (config file if given, else environment)."""
    if config:
        cfg = load_config(config)
        return cfg.endpoint(cfg.bus.tap)
    return f"ipc://{resolve_runtime_dir()}/tap"


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``sniff`` arguments to ``p``."""
    p.add_argument(
        "--endpoint", help="bus tap to connect to (default: the configured runtime dir's tap)"
    )
    p.add_argument("--config", help="take the runtime dir / tap from this config file")
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
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:]):
        print(f"tickbus sniff: waiting for {endpoint} (is tickbus running?)", file=sys.stderr)
    codec = Codec()
    enc = msgspec.json.Encoder()
    zctx = zmq.Context()
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as err:
        raise TickbusError(f"cannot connect to {endpoint}: {err.strerror}") from None
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
                topic, _origin, body = split_frame(data)
            except ValueError:
                print(f"tickbus sniff: skipped a malformed frame {data[:60]!r}", file=sys.stderr)
                continue
            try:
                msg = codec.decode(body)
            except msgspec.DecodeError:
                record = _untyped(codec, body)
                if args.json:
                    out.write(enc.encode({"topic": topic, **record}).decode() + "\n")
                else:
                    out.write(f"{topic} {record['type']} {record.get('fields')}\n")
            else:
                if args.json:
                    line = enc.encode(
                        {"topic": topic, "type": type(msg).__name__, **to_record(msg)}
                    )
                    out.write(line.decode() + "\n")
                else:
                    out.write(format_line(topic, msg) + "\n")
            out.flush()
            seen += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `tickbus sniff | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
    finally:
        sock.close(linger=0)
        zctx.term()
    return 0


def _untyped(codec: Codec, body: memoryview) -> dict[str, Any]:
    """A message of a type this process does not know (a plugin's own): show it raw."""
    try:
        raw = codec.decode_untyped(body)
    except msgspec.DecodeError:
        return {"type": "?", "fields": bytes(body[:64]).hex()}
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        return {"type": raw[0], "fields": raw[1:]}
    return {"type": "?", "fields": raw}


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.sniffer``."""
    p = argparse.ArgumentParser(prog="tickbus sniff", description=__doc__.split("\n")[0])
    build_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
