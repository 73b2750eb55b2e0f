"""The bus inside one process: in-lane dispatch, cross-lane delivery, no loss, drain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.app import Kernel
from tickbus.kernel.router import split_frame
from tickbus.schemas import SCALE, Codec, Trade

N_ORDER = 20_000


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_in_lane_delivery_is_the_same_object_and_nothing_is_encoded(start_kernel) -> None:
    k: Kernel = start_kernel(
        {
            "plugins": {
                "tb_producer": {"count": 500},
                "tb_recorder": {"prefix": "md.trade."},
            }
        }
    )
    rec = k.contexts["tb_recorder"].component
    wait_for(lambda: len(rec["ids"]) == 500)
    assert rec["ids"] == list(range(500))
    lane = k.lanes["main"]
    assert lane.stats.sent == 0, "nobody outside the lane listens: nothing may be encoded"
    assert lane.stats.received == 0


def test_cross_lane_delivery_in_publish_order(start_kernel) -> None:
    k = start_kernel(
        {
            "lanes": {"hot": {}, "a": {}, "b": {}},
            "plugins": {
                "tb_producer": {"lane": "hot", "count": N_ORDER, "chunk": 500},
                "same": {"plugin": "tb_recorder", "lane": "hot", "prefix": "md.trade"},
                "ra": {"plugin": "tb_recorder", "lane": "a", "prefix": "md."},
                "rb": {"plugin": "tb_recorder", "lane": "b", "prefix": "md.trade.BTC"},
                "other": {"plugin": "tb_recorder", "lane": "b", "prefix": "md.book"},
            },
        }
    )
    comps = {n: k.contexts[n].component for n in ("same", "ra", "rb", "other")}
    wait_for(lambda: all(len(comps[n]["ids"]) == N_ORDER for n in ("same", "ra", "rb")))
    for n in ("same", "ra", "rb"):
        assert comps[n]["ids"] == list(range(N_ORDER)), f"{n}: order or count wrong"
    assert comps["other"]["ids"] == [], "prefix md.book must not receive md.trade"
    # in-lane subscriber got the very same objects, other lanes got decoded copies
    assert comps["same"]["objs"][0] is not comps["ra"]["objs"][0]
    assert comps["same"]["objs"][0] == comps["ra"]["objs"][0]
    assert k.lanes["hot"].stats.sent == N_ORDER


def test_must_deliver_messages_survive_a_slow_consumer_and_shutdown(start_kernel) -> None:
    n = 100_000
    k = start_kernel(
        {
            "lanes": {"hot": {}, "slow": {}},
            "plugins": {
                "tb_producer": {"lane": "hot", "count": n, "kind": "fill", "topic": "exec.fill"},
                "tb_recorder": {"lane": "slow", "prefix": "exec.", "slow_us": 30},
            },
        }
    )
    prod = k.contexts["tb_producer"].component
    rec = k.contexts["tb_recorder"].component
    wait_for(lambda: prod["done"], 30)
    backlog = n - len(rec["ids"])
    # the consumer really was slow: the default ZeroMQ high-water mark (1000) would drop
    assert backlog > 10_000, f"no backlog built up ({backlog}); the test proves nothing"
    assert k.stop(), "stop reported an overrun"
    assert rec["ids"] == list(range(n)), "a must-deliver message was lost or reordered"
    assert rec["after_shutdown"] == 0


def test_when_the_input_ends_a_lane_behind_sees_everything_before_it_is_stopped(
    start_kernel,
) -> None:
    """A replay that finished asks for the stop while a slower lane still works off its
    backlog: every message reaches that lane's plugin while it runs (a strategy in a lane
    of its own lost its last decisions when the stop hook overtook the backlog)."""
    n = 20_000
    k = start_kernel(
        {
            "lanes": {"hot": {}, "slow": {}},
            "plugins": {
                "tb_producer": {"lane": "hot", "count": n, "shutdown_when_done": True},
                "tb_recorder": {"lane": "slow", "prefix": "md.", "slow_us": 100},
            },
        }
    )
    rec = k.contexts["tb_recorder"].component
    assert k._stop_requested.wait(30), "the producer never asked for the stop"
    assert len(rec["ids"]) < n, "no backlog when the stop was asked: the test proves nothing"
    assert k.stop()
    assert rec["at_stop"] == n, "messages in flight reached the plugin only after its stop"
    assert rec["ids"] == list(range(n))


def test_default_hwm_would_have_dropped() -> None:
    """Control for the test above: the same burst through a PUB with the default HWM and
    a stalled subscriber loses messages, so 'nothing lost' is a real property."""
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = zctx.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.subscribe(b"")
    time.sleep(0.2)
    pad = bytes(252)  # a Fill's size: 100,000 of them overflow the kernel's TCP buffers too
    for i in range(100_000):
        pub.send_multipart([b"exec.fill", i.to_bytes(4, "little") + pad])
    got = 0
    while sub.poll(300):
        sub.recv_multipart()
        got += 1
    pub.close(0)
    sub.close(0)
    zctx.term()
    assert got < 100_000


def test_a_failing_handler_does_not_kill_the_lane(start_kernel) -> None:
    k = start_kernel(
        {
            "plugins": {
                "tb_producer": {"count": 1000},
                "bad": {"plugin": "tb_recorder", "prefix": "md.", "fail_every": 10},
                "good": {"plugin": "tb_recorder", "prefix": "md."},
            }
        }
    )
    good = k.contexts["good"].component
    wait_for(lambda: len(good["ids"]) == 1000)
    assert good["ids"] == list(range(1000))
    assert len(k.contexts["bad"].component["ids"]) == 1000
    assert k.lanes["main"].stats.handler_errors == 100


def test_malformed_frames_from_outside_are_skipped(start_kernel, rt: Path) -> None:
    k = start_kernel({"plugins": {"tb_recorder": {"prefix": "md."}}})
    rec = k.contexts["tb_recorder"].component
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.connect(f"ipc://{rt}/bus-pub")
    time.sleep(0.3)  # slow joiner: let the subscription reach this publisher
    good = Codec().encode(Trade("BTCUSDT", 7, 1 * SCALE, SCALE, False, 1, 2))
    origin = b"\x00\x00\x00\x01"
    head = b"md.trade.X\x00" + origin
    bad_frames = [
        [b"md.trade.X"],  # no separator
        [b"md.trade.X\x00\x01"],  # too short
        [head + b"\xc1\xc1\xc1"],  # not msgpack
        [head + msgspec.msgpack.encode(["NoSuchType", 1])],  # unknown tag
        [head + msgspec.msgpack.encode(["Trade", "BTCUSDT"])],  # fields missing
        [b"md.\xff\xfe\x00" + origin + good],  # topic not UTF-8
        [b"md.trade.X", head + good],  # a two-part message: each part is judged alone
    ]
    for frames in bad_frames:
        pub.send_multipart(frames)
    pub.send(head + good)
    # the two-part message: its first part is bad, its second a valid frame (id 7 too)
    wait_for(lambda: rec["ids"] == [7, 7], 5)
    assert k.lanes["main"].stats.bad_frames == len(bad_frames)
    assert k.lanes["main"].thread.is_alive()
    pub.close(0)
    zctx.term()


def test_a_tap_subscriber_switches_encoding_on(start_kernel, rt: Path) -> None:
    k = start_kernel({"plugins": {"tb_producer": {"count": 0, "chunk": 10, "period_ms": 5}}})
    lane = k.lanes["main"]
    time.sleep(0.2)
    assert lane.stats.sent == lane.stats.tapped == 0
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.connect(f"ipc://{rt}/tap")
    sub.subscribe(b"md.trade")
    assert sub.poll(3000), "the tap delivered nothing"
    topic, _, body = split_frame(sub.recv())
    assert topic == "md.trade.BTCUSDT"
    msg = Codec().decode(body)
    assert isinstance(msg, Trade) and msg.symbol == "BTCUSDT"
    wait_for(lambda: lane.stats.tapped > 0, 2)
    assert lane.stats.sent == 0, "the tap has its own path: nothing goes to the bus"
    assert lane.stats.received == 0, "a tapped lane must not get its own messages back"
    sub.close(0)
    zctx.term()


def test_a_plugin_after_one_in_another_lane_starts_once_its_start_messages_arrived(
    start_kernel,
) -> None:
    """``after`` across lanes: what the dependency published in its start hook (the
    persistence plugin's restore.*) has been handled in the dependent's lane before the
    dependent starts - a broker must not trade before its restored orders are back."""
    from tickbus_testplugins.producer import make_msg

    n = 5000

    class source:
        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            for i in range(n):
                ctx.publish("md.trade.BTCUSDT", make_msg("trade", i, i + 1))

    class sink:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> dict[str, Any]:
            state: dict[str, Any] = {"ids": [], "at_start": -1}
            ctx.subscribe(
                "md.trade.", lambda m: (time.sleep(1e-5), state["ids"].append(m.trade_id))
            )
            return state

        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            ctx.component["at_start"] = len(ctx.component["ids"])

    k = start_kernel(
        {
            "lanes": {"a": {}, "b": {}},
            "plugins": {
                "source": {"lane": "a"},
                "sink": {"lane": "b", "after": ["source"]},
            },
        },
        {"source": source, "sink": sink},
    )
    state = k.contexts["sink"].component
    assert state["at_start"] == n
    assert state["ids"] == list(range(n))
