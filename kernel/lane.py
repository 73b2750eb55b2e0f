"""A lane: one thread, one asyncio event loop, one routing table.

Inside a lane, ``publish`` is a direct synchronous call of the lane's subscribers with the
same immutable Struct - no copy, no encode. A message leaves the lane (encoded, through the
router) only when someone outside the lane has subscribed to a prefix of its topic: other
lanes, other processes, or a sniffer on the tap. The lane learns that from the subscription
messages its XPUB socket receives, so an untapped hot lane never encodes.

Routing is compiled once per topic (prefix matching on the cold path) into a dict hit on
the hot path. Handlers that raise are logged and counted; they never kill the lane, and a
malformed frame arriving from outside is counted, logged once with a sample, and skipped.

A lane has three sockets: an XPUB into the router (other lanes, remote processes), an XPUB
into the tap proxy (sniffers only - so a tapped lane never gets its own messages back), and
a SUB from the router. Each XPUB tells the lane who subscribed what (see ``_interest``).
The wire format is one frame per message (kernel.router.frame): a multipart message costs
pyzmq ~3.4 us a side, a single frame ~0.5 us.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import zmq

from tickbus.schemas import Barrier, Codec, Heartbeat, Msg

from .router import SEP

if TYPE_CHECKING:
    from .router import ConnectionWatch, Connector

log = logging.getLogger("tickbus.lane")

Handler = Callable[[Any], None]
T = TypeVar("T")

BARRIER_TOPIC = "sys.barrier"
HEARTBEAT_TOPIC = "sys.heartbeat"
_BARRIER_B = BARRIER_TOPIC.encode()
_NOBLOCK = int(zmq.NOBLOCK)
_RECV_BATCH = 512  # frames handled per wake-up before yielding to the loop's other work
_POKE_S = 0.05  # re-check sockets: a ZeroMQ FD is edge-triggered and a send can eat an edge
MAX_ROUTES = 4096
"""Topics a lane compiles and caches, per direction. Topics are made from data (symbols)
and arrive from outside the process: past this many, a topic is routed without caching
(slower, bounded memory) and the overflow is counted and logged once."""
MAX_TOPIC_BYTES = 200


def _fd(sock: zmq.Socket) -> int:
    """The socket's notification file descriptor (edge-triggered, see _poke)."""
    return int(sock.getsockopt(zmq.FD))


def _ignore(*args: Any) -> None:
    """Stands in for a socket's send where there is no socket."""


class LaneDead(RuntimeError):
    """The lane's loop is not running: nothing can be called on it."""


class Route(msgspec.Struct, frozen=True, gc=False):
    """What one topic compiles to inside a lane."""

    count: list[int]  # messages published on the topic: [n], kept across recompiles
    handlers: tuple[Handler, ...]
    header: bytes  # topic + SEP + origin: the start of the frame
    out: bool  # to_bus or to_tap: the one test the untapped hot path pays
    to_bus: bool  # another lane or process wants the topic
    to_tap: bool  # a sniffer wants it


class LaneStats(msgspec.Struct):
    """Counters of one lane (read by metrics and tests; written only by the lane thread)."""

    sent: int = 0
    tapped: int = 0
    received: int = 0
    bad_frames: int = 0
    handler_errors: int = 0
    encode_errors: int = 0
    heartbeats: int = 0
    uncached_topics: int = 0


class Lane:
    """One thread with its own loop; see the module docstring."""

    def __init__(
        self,
        name: str,
        index: int,
        *,
        process: str,
        zctx: zmq.Context,
        pub_endpoint: str,
        sub_endpoint: str,
        tap_endpoint: str,
        codec_types: Iterable[type[Msg]],
        heartbeat_s: float,
        exact_interest: bool = True,
        cpu: int = -1,
        connector: Connector | None = None,
        watch: ConnectionWatch | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.instance = f"{process}/{os.getpid()}"  # barriers of this process only
        # Distinct per lane and per process, so a lane recognises its own messages coming
        # back from the router (it has already delivered them in-lane).
        self.origin = ((os.getpid() & 0xFFFFFF) << 8 | (index & 0xFF)).to_bytes(4, "big")
        self.stats = LaneStats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._main, name=f"lane-{name}", daemon=True)
        self.last_beat = time.monotonic()
        self._zctx = zctx
        self._pub_endpoint = pub_endpoint
        self._sub_endpoint = sub_endpoint
        self._tap_endpoint = tap_endpoint
        self._codec_types = tuple(codec_types)
        self._heartbeat_s = heartbeat_s
        self._exact = exact_interest
        self._cpu = cpu
        self._connector = connector  # remote lanes: CURVE, frame cap, heartbeats
        self._watch = watch  # remote lanes: report a lost connection to the host bus
        self._subs: list[tuple[str, Handler]] = []
        self._outbox: list[bytes] = []  # frames for other lanes, sent when a chain is done
        self._depth = 0  # publish calls in progress on this thread
        self._routes: dict[str, Route] = {}
        self._in_routes: dict[bytes, tuple[Handler, ...]] = {}
        self._interest: dict[bytes, int] = {}
        self._tap_interest: dict[bytes, int] = {}
        self._own: set[bytes] = set()
        self._expect: dict[bytes, int] = {}
        self._expect_fut: concurrent.futures.Future[None] | None = None
        self._barriers: defaultdict[int, int] = defaultdict(int)
        self._barrier_waiters: dict[int, concurrent.futures.Future[int]] = {}
        self._peers = 0
        self._failed_handlers: set[Any] = set()
        self._failed_encodes: set[str] = set()
        self.topic_counts: dict[str, list[int]] = {}
        """Messages published per topic (a one-element list, shared with its Route)."""
        self.on_death: Callable[[str], None] | None = None
        """Called (from the lane thread) when the lane's loop ends other than by stop_loop,
        or a handler raised a BaseException that is not an Exception (SystemExit...)."""
        self.dead = ""
        self._stopping = False
        self._bad_kinds: set[str] = set()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._seq = 0
        self._hb_handle: asyncio.TimerHandle | None = None
        self._xpub: zmq.Socket | None = None
        self._tap: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None

    # ------------------------------------------------------------------ thread & loop

    def start(self) -> None:
        """Start the thread, create its sockets; return when the loop runs."""
        self.thread.start()
        self._ready.wait(5.0)
        if self._start_error is not None:
            raise self._start_error
        if not self._ready.is_set():
            raise RuntimeError(f"lane {self.name} did not start")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            if self._cpu >= 0 and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(threading.get_native_id(), {self._cpu})
            self.codec = Codec(self._codec_types)
            self._encode = self.codec.encode
            self._decode = self.codec.decode
            xpub = self._xpub_socket(self._pub_endpoint, watched=True)
            self._tap = self._xpub_socket(self._tap_endpoint) if self._tap_endpoint else None
            sub = self._zctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)
            self._connect(sub, self._sub_endpoint, watched=True)
            self._xpub, self._sub = xpub, sub
            self._send = xpub.send
            # without a tap there is no tap interest, so the no-op is never called
            self._send_tap: Callable[..., Any] = self._tap.send if self._tap else _ignore
            loop.add_reader(_fd(sub), self._on_bus_readable)
            loop.add_reader(_fd(xpub), self._on_interest_readable)
            if self._tap is not None:
                loop.add_reader(_fd(self._tap), self._on_interest_readable)
            loop.call_later(_POKE_S, self._poke)
        except BaseException as err:  # reported to the starting thread
            self._start_error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
            if not self._stopping:  # pragma: no cover - only stop_loop stops the loop
                self._died("its loop stopped")
        except BaseException as err:  # a SystemExit in a task escapes run_forever
            self._died(f"{type(err).__name__}: {err}", err)
        finally:
            for sock in (self._xpub, self._tap, self._sub):
                if sock is not None:
                    try:
                        loop.remove_reader(_fd(sock))
                    except (zmq.ZMQError, ValueError):
                        pass
                    sock.close(linger=0)
            loop.close()

    def _xpub_socket(self, endpoint: str, watched: bool = False) -> zmq.Socket:
        sock = self._zctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # must-deliver: never drop, see kernel.router
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._connect(sock, endpoint, watched)
        return sock

    def _connect(self, sock: zmq.Socket, endpoint: str, watched: bool = False) -> None:
        """Connect to the local router (inproc), or to another process's bus through the
        Connector (CURVE on tcp, frame cap, heartbeats) with its connection watched."""
        if self._watch is not None and watched:
            self._watch.watch(sock, f"lane {self.name}")  # before connect: no event is lost
        if self._connector is not None:
            self._connector.connect(sock, endpoint)
        else:
            sock.connect(endpoint)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 5.0) -> T:
        """Run ``fn(*args)`` on the lane thread and return its result (from another thread)."""
        assert self.loop is not None
        if not self.alive:
            raise LaneDead(f"lane {self.name} is dead ({self.dead or 'not running'})")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args))
            except BaseException as err:
                fut.set_exception(err)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed in between
            raise LaneDead(f"lane {self.name} is dead ({self.dead or 'not running'})") from None
        return fut.result(timeout)

    def _died(self, why: str, err: BaseException | None = None) -> None:
        self.dead = why
        log.critical("lane %s died: %s", self.name, why, exc_info=err)
        if self.on_death is not None:
            self.on_death(f"lane {self.name} died: {why}")

    @property
    def alive(self) -> bool:
        """The lane's thread runs its loop."""
        return self.thread.is_alive() and not self.dead

    def stop_loop(self, timeout: float = 1.0) -> bool:
        """Stop the loop and join the thread; False if the lane did not end in time."""
        self._stopping = True
        if self.loop is not None and self.thread.is_alive() and not self.loop.is_closed():
            if self._hb_handle is not None:
                self.loop.call_soon_threadsafe(self._hb_handle.cancel)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        return not self.thread.is_alive()

    # ------------------------------------------------------------------ set-up (cold path)

    def subscribe(self, prefix: str, handler: Handler) -> None:
        """Deliver every message whose topic starts with ``prefix`` to ``handler``."""
        self._subs.append((prefix, handler))
        self._routes.clear()
        self._in_routes.clear()
        if self._sub is not None and self._own:  # lane already active: subscribe now
            self._subscribe_bus(prefix.encode())

    def bus_prefixes(self) -> set[bytes]:
        """Prefixes this lane subscribes on the router (its handlers' plus the barrier)."""
        return {p.encode() for p, _ in self._subs} | {_BARRIER_B}

    def activate(self, expected: dict[bytes, int], peers: int) -> concurrent.futures.Future[None]:
        """Subscribe on the router; the future resolves when this lane's XPUB has seen
        ``expected`` subscriptions (every local lane's), so no message is lost at start."""
        self._peers = peers
        self._expect = dict(expected)
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._expect_fut = fut
        for prefix in sorted(self.bus_prefixes()):
            self._subscribe_bus(prefix)
        self._check_expected()
        self._hb_handle = self.loop.call_later(0, self._beat) if self.loop else None
        return fut

    def _subscribe_bus(self, prefix: bytes) -> None:
        if prefix not in self._own:
            self._own.add(prefix)
            assert self._sub is not None
            self._sub.setsockopt(zmq.SUBSCRIBE, prefix)

    def _check_expected(self) -> None:
        fut = self._expect_fut
        if fut is None or fut.done():
            return
        if all(self._interest.get(p, 0) >= n for p, n in self._expect.items()):
            fut.set_result(None)

    # ------------------------------------------------------------------ hot path

    def publish(self, topic: str, msg: Msg) -> None:
        """Deliver ``msg`` to this lane's subscribers of ``topic`` now, and hand it to the
        router if anyone outside the lane wants it - once the chain of handler calls it is
        part of has returned, in publish order. Lane thread only."""
        route = self._routes.get(topic)
        if route is None:
            route = self._compile(topic)
        route.count[0] += 1
        if route.out:
            # queued first: a handler here may publish what this message causes, and other
            # lanes must receive the cause before its effects
            try:
                frame = route.header + self._encode(msg)
            except Exception as err:  # never the publisher's problem
                frame = self._encode_wide(route.header, topic, msg, err)
            if frame:
                if route.to_bus:
                    self._outbox.append(frame)
                    self.stats.sent += 1
                if route.to_tap:
                    self._send_tap(frame, 0, True)
                    self.stats.tapped += 1
        self._depth += 1
        for handler in route.handlers:
            try:
                handler(msg)
            except Exception:
                self._handler_failed(handler, topic)
            except BaseException as err:  # SystemExit... must not kill the lane silently
                self._handler_failed(handler, topic, err)
        self._depth -= 1
        if not self._depth and self._outbox:
            # the chain this message started is done: what it published goes out now, in
            # publish order (causes before effects). A send that wakes the router and the
            # subscriber costs 70-260 us on a busy 2-core machine: made inside the chain,
            # it delayed the tick's own order (persistence doubled tick-to-trade)
            out, self._outbox = self._outbox, []
            send = self._send
            for f in out:
                send(f, 0, True)

    @property
    def published(self) -> int:
        """Messages published in this lane (all topics)."""
        return sum(c[0] for c in self.topic_counts.values())

    def _compile(self, topic: str) -> Route:
        handlers = tuple(h for p, h in self._subs if topic.startswith(p))
        wire = topic.encode()
        to_bus = any(wire.startswith(p) and self._outside(p) for p in self._interest)
        to_tap = any(wire.startswith(p) for p in self._tap_interest)
        count = self.topic_counts.get(topic)
        if count is None:
            count = [0]
            if len(self.topic_counts) < MAX_ROUTES:
                self.topic_counts[topic] = count
        route = Route(count, handlers, wire + SEP + self.origin, to_bus or to_tap, to_bus, to_tap)
        if len(self._routes) < MAX_ROUTES:
            self._routes[topic] = route
        else:
            self._too_many_topics(topic)
        return route

    def _too_many_topics(self, topic: str) -> None:
        self.stats.uncached_topics += 1
        if self.stats.uncached_topics == 1:
            log.warning(
                "lane %s: more than %d distinct topics (e.g. %r); routing the rest uncached",
                self.name,
                MAX_ROUTES,
                topic[:60],
            )

    def _outside(self, prefix: bytes) -> bool:
        n = self._interest.get(prefix, 0)
        # Our own router subscription counts once; in exact mode (every lane of this
        # process subscribed after all XPUBs attached) the rest is outside interest.
        if self._exact and prefix in self._own:
            n -= 1
        return n > 0

    def _handler_failed(self, handler: Any, topic: str, fatal: BaseException | None = None) -> None:
        self.stats.handler_errors += 1
        key = getattr(handler, "__qualname__", repr(handler))
        if fatal is not None:
            # SystemExit/KeyboardInterrupt/GeneratorExit from a handler: contained here (the
            # lane goes on, stop and flush still run), but the process must not go on as if
            # nothing happened.
            log.critical(
                "lane %s: handler %s raised %s on %s; stopping the process",
                self.name, key, type(fatal).__name__, topic, exc_info=fatal,
            )  # fmt: skip
            if self.on_death is not None:
                self.on_death(f"lane {self.name}: handler {key} raised {type(fatal).__name__}")
            return
        if key not in self._failed_handlers:
            self._failed_handlers.add(key)
            log.exception("lane %s: handler %s failed on %s (logged once)", self.name, key, topic)

    def _encode_wide(self, header: bytes, topic: str, msg: Msg, err: Exception) -> bytes:
        """A money value beyond 64 bits goes as its decimal string; anything else that
        cannot be encoded is counted and logged (b"": not sent)."""
        if isinstance(err, OverflowError):
            try:
                return header + self.codec.encode_wide(msg)
            except Exception as again:
                err = again
        self._encode_failed(topic, msg, err)
        return b""

    def _encode_failed(self, topic: str, msg: Msg, err: Exception) -> None:
        self.stats.encode_errors += 1
        if topic not in self._failed_encodes:
            self._failed_encodes.add(topic)
            log.error(
                "lane %s: cannot encode a %s on %s for the bus (%s: %s); not sent outside the"
                " lane (logged once per topic); sample %r",
                self.name, type(msg).__name__, topic, type(err).__name__, err, msg,
            )  # fmt: skip

    # ------------------------------------------------------------------ from the router

    def _on_bus_readable(self) -> None:
        sock = self._sub
        if sock is None:
            return
        recv = sock.recv
        decode = self._decode
        origin = self.origin
        routes = self._in_routes
        for _ in range(_RECV_BATCH):
            try:
                frame = recv(_NOBLOCK, True)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            # (each part of a foreign multipart message arrives here as a frame of its own
            # and fails these checks - no RCVMORE query, which would cost ~1 us a message)
            end = frame.find(SEP)
            if end < 1 or len(frame) < end + 6:
                self._bad_frame("not a tickbus frame", frame)
                continue
            if frame.startswith(origin, end + 1):
                continue  # ours: already delivered in-lane
            wire_topic = frame[:end]
            try:
                msg = decode(memoryview(frame)[end + 5 :])
            except msgspec.DecodeError as err:
                self._bad_frame(f"undecodable: {err}", frame)
                continue
            self.stats.received += 1
            if wire_topic == _BARRIER_B:
                self._on_barrier(msg)
                continue
            handlers = routes.get(wire_topic)
            if handlers is None:
                handlers = self._compile_in(wire_topic)
                if handlers is None:
                    self._bad_frame("topic is not printable ASCII or too long", frame)
                    continue
            for handler in handlers:
                try:
                    handler(msg)
                except Exception:
                    self._handler_failed(handler, wire_topic.decode())
                except BaseException as err:
                    self._handler_failed(handler, wire_topic.decode(), err)
        # more frames may be waiting: let other callbacks run, then continue
        assert self.loop is not None
        self.loop.call_soon(self._on_bus_readable)

    def _compile_in(self, wire_topic: bytes) -> tuple[Handler, ...] | None:
        """Handlers of a topic that came from outside the lane; None if it is no topic
        (not printable ASCII, or too long). Cached up to MAX_ROUTES topics."""
        if len(wire_topic) > MAX_TOPIC_BYTES or not wire_topic.isascii():
            return None
        topic = wire_topic.decode()
        if not topic.isprintable():
            return None
        handlers = tuple(h for p, h in self._subs if topic.startswith(p))
        if len(self._in_routes) < MAX_ROUTES:
            self._in_routes[wire_topic] = handlers
        else:
            self._too_many_topics(topic)
        return handlers

    def _bad_frame(self, why: str, frame: bytes) -> None:
        self.stats.bad_frames += 1
        kind = why.split(":")[0]
        if kind not in self._bad_kinds:  # once per kind, with a sample
            self._bad_kinds.add(kind)
            log.warning(
                "lane %s: skipped a bad frame from the bus (%s); sample %r",
                self.name,
                why,
                frame[:80],
            )

    def _on_interest_readable(self) -> None:
        changed = self._read_interest(self._xpub, self._interest)
        if self._tap is not None:
            changed |= self._read_interest(self._tap, self._tap_interest)
        if changed:
            self._routes.clear()
            self._check_expected()

    @staticmethod
    def _read_interest(sock: zmq.Socket | None, counts: dict[bytes, int]) -> bool:
        """Apply the (un)subscriptions waiting on an XPUB to ``counts``; True if any."""
        changed = False
        while sock is not None:
            try:
                event = sock.recv(_NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                break
            if not event:
                continue
            prefix = event[1:]
            if event[0] == 1:
                counts[prefix] = counts.get(prefix, 0) + 1
            elif event[0] == 0:
                # libzmq forwards an unsubscription only when the last subscriber of the
                # prefix is gone, so the count drops to zero.
                counts.pop(prefix, None)
            changed = True
        return changed

    def _poke(self) -> None:
        self._on_interest_readable()
        self._on_bus_readable()
        assert self.loop is not None
        self.loop.call_later(_POKE_S, self._poke)

    # ------------------------------------------------------------------ heartbeat & drain

    def _beat(self) -> None:
        self.last_beat = time.monotonic()
        self._seq += 1
        self.stats.heartbeats += 1
        self.publish(HEARTBEAT_TOPIC, Heartbeat(self.process, self.name, self._seq, time.time_ns()))
        assert self.loop is not None
        self._hb_handle = self.loop.call_later(self._heartbeat_s, self._beat)

    def send_barrier(self, epoch: int) -> int:
        """Publish drain marker ``epoch`` to every lane; return messages sent so far."""
        body = self._encode(Barrier(self.instance, self.name, epoch))
        self._send(_BARRIER_B + SEP + self.origin + body, 0, True)
        return self.stats.sent

    def expect_barrier(self, epoch: int) -> concurrent.futures.Future[int]:
        """A future resolved when barrier ``epoch`` came from every other lane.
        Lane thread only (``lane.call``), so it cannot race the arrivals."""
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._barrier_waiters[epoch] = fut
        if self._peers == 0 or self._barriers.get(epoch, 0) >= self._peers:
            fut.set_result(epoch)
        return fut

    def _on_barrier(self, msg: Any) -> None:
        if not isinstance(msg, Barrier) or msg.process != self.instance:
            return
        self.stats.received -= 1  # markers are not traffic
        self._barriers[msg.epoch] += 1
        fut = self._barrier_waiters.get(msg.epoch)
        if fut is not None and self._barriers[msg.epoch] >= self._peers:
            del self._barrier_waiters[msg.epoch]
            self._barriers.pop(msg.epoch, None)
            if not fut.done():
                fut.set_result(msg.epoch)
