"""``tickbus sniff`` on malformed messages: skipped, counted, reported once per kind."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from conftest import tickbus_cmd, tickbus_env
from tickbus.schemas import SCALE, BookTop, Codec, Trade
from tickbus.tools.sniffer import BadMessage, format_line, render

ORIGIN = b"\x00\x00\x00\x09"


def wire(topic: str, body: bytes) -> bytes:
    return topic.encode() + b"\x00" + ORIGIN + body


def trade(i: int) -> bytes:
    return wire(
        "md.trade.BTCUSDT", Codec().encode(Trade("BTCUSDT", i, 2 * SCALE, SCALE, True, 1, 2))
    )


def book(levels: bytes) -> bytes:
    top = BookTop("BTCUSDT", 5, True, 1, 1, 2, 1, levels, levels, 1, 2)
    return wire("md.book.BTCUSDT", Codec().encode(top))


BAD = {
    "bad book levels": book(b"\x01" * 17),  # not whole 16-byte (price, qty) pairs
    "not a tickbus frame": b"no separator at all",
    "not msgpack": wire("md.trade.BTCUSDT", b"\xc1\xc1"),
    "wrong fields for Trade": wire(
        "md.trade.BTCUSDT",
        msgspec.msgpack.encode(["Trade", "BTCUSDT", "seven", 1, 1, True, 1, 2]),
    ),
    "unprintable": wire(
        "plug.x", msgspec.msgpack.encode(["PluginMsg", msgspec.msgpack.Ext(5, b"\x00")])
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_render_names_the_kind_of_a_malformed_message(kind: str) -> None:
    with pytest.raises(BadMessage) as err:
        render(BAD[kind], Codec(), as_json=True)
    assert err.value.kind == kind


def test_render_shows_good_and_unknown_messages() -> None:
    levels = (10 * SCALE).to_bytes(8, "little") + (3 * SCALE).to_bytes(8, "little")
    assert "bids=[10@3](1)" in render(book(levels), Codec(), as_json=False)
    record = json.loads(render(book(levels), Codec(), as_json=True))
    assert record["bids"] == [[10 * SCALE, 3 * SCALE]]
    plugin = wire("plug.x", msgspec.msgpack.encode(["PluginMsg", 1, "a"]))
    assert render(plugin, Codec(), as_json=False) == "plug.x PluginMsg [1, 'a']"
    assert format_line("md.trade.BTCUSDT", Trade("BTCUSDT", 1, SCALE, SCALE, True, 1, 2))


PUBLISHER = r"""
import sys, time, zmq
endpoint, frames = sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2:]]
ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.setsockopt(zmq.LINGER, 2000)
pub.bind(endpoint)
print("bound", flush=True)
if not pub.poll(20000):   # the sniffer's subscription
    sys.exit("nobody subscribed")
pub.recv()
for f in frames:
    pub.send(f)
time.sleep(3)
"""


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tbsn", dir="/tmp") as d:
        yield Path(d)


def test_sniff_skips_and_counts_bad_messages_from_another_process(sock_dir: Path) -> None:
    endpoint = f"ipc://{sock_dir}/tap"
    frames = [trade(0)]
    for i, bad in enumerate(BAD.values(), start=1):
        frames += [bad, trade(i)]
    frames += [BAD["bad book levels"], BAD["not msgpack"], trade(99)]  # counted, not re-reported
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, endpoint, *(f.hex() for f in frames)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert publisher.stdout is not None and publisher.stdout.readline() == "bound\n"
        out = subprocess.run(
            tickbus_cmd("sniff", "--endpoint", endpoint, "--json", "--count", "7"),
            env=tickbus_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        publisher.kill()
        publisher.wait(10)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    ids = [json.loads(line)["trade_id"] for line in out.stdout.splitlines()]
    assert ids == [0, 1, 2, 3, 4, 5, 99]
    reports = [ln for ln in out.stderr.splitlines() if "skipped a malformed message" in ln]
    assert len(reports) == len(BAD)  # one line per kind
    for kind in BAD:
        assert sum(f"({kind}:" in ln for ln in reports) == 1, kind
    summary = out.stderr.splitlines()[-1]
    assert summary.startswith("tickbus sniff: skipped 7 malformed message(s)")
    assert "bad book levels: 2" in summary and "not msgpack: 2" in summary
