"""The kernel's router: XSUB/XPUB proxies running inside libzmq, without the GIL.

Wire format of every bus message (between lanes, processes and on the tap) - ONE frame::

    topic (UTF-8) | SEP (0x00) | 4-byte origin id of the publishing lane | msgpack message

Subscriptions are prefix matches on the frame, so they match the topic. One frame, because
pyzmq's multipart send/recv cost ~3.4 us a side against ~0.5 us for a single frame.

Two proxies, each in its own thread:

* the **bus**: lanes publish into its XSUB (``inproc``; remote processes over
  ``listen_pub``); its XPUB serves local lanes (``inproc``) and remote subscribers
  (``listen_sub``) with SNDHWM=0 - nothing is ever dropped (orders, fills, positions must
  arrive; a slow consumer costs memory, not messages);
* the **tap**: lanes publish into it only what a sniffer asked for; its XPUB serves the tap
  endpoint with SNDHWM=``tap_hwm`` - a sniffer that cannot keep up loses messages, the engine
  never waits for it. Being separate, a tapped lane does not get its own messages back.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from .errors import TickbusError

IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SEP = b"\x00"
"""Ends the topic in a frame (topics never contain NUL)."""


def frame(topic: str, origin: bytes, body: bytes) -> bytes:
    """Build a wire frame (the lanes inline this on the hot path)."""
    return topic.encode() + SEP + origin + body


def split_frame(data: bytes) -> tuple[str, bytes, memoryview]:
    """(topic, origin, msgpack body) of a wire frame; ValueError if it is not one."""
    end = data.find(SEP)
    if end < 1 or len(data) < end + 6:
        raise ValueError("not a tickbus frame")
    return data[:end].decode(), data[end + 1 : end + 5], memoryview(data)[end + 5 :]


def bind(sock: zmq.Socket, endpoint: str, what: str) -> None:
    """Bind with a one-line, actionable error instead of a ZMQError traceback."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if len(path.encode()) > IPC_PATH_MAX:
            raise TickbusError(
                f"cannot bind {what} {endpoint}: ipc path is longer than {IPC_PATH_MAX} bytes"
                " (use a shorter runtime_dir)"
            )
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TickbusError(f"cannot bind {what} {endpoint}: {err.strerror}") from None
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        hint = ""
        if err.errno == zmq.EADDRINUSE:
            hint = " (is another tickbus running with the same runtime_dir or port?)"
        raise TickbusError(f"cannot bind {what} {endpoint}: {err.strerror}{hint}") from None


class _Proxy:
    """One XSUB -> XPUB proxy in a daemon thread, stopped through a control socket."""

    def __init__(self, ctx: zmq.Context, name: str) -> None:
        self.name = name
        self.xsub = ctx.socket(zmq.XSUB)
        self.xpub = ctx.socket(zmq.XPUB)
        for s in (self.xsub, self.xpub):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
        # Verbose: every (un)subscription reaches the lanes, which count interest per
        # prefix to decide whether a topic must leave the lane at all.
        self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._ctx = ctx
        self._ctrl_addr = f"inproc://{name}-ctrl"
        self._ctrl = ctx.socket(zmq.PAIR)
        self._ctrl.bind(self._ctrl_addr)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ctrl = self._ctx.socket(zmq.PAIR)
        ctrl.connect(self._ctrl_addr)

        def run() -> None:
            try:
                zmq.proxy_steerable(self.xsub, self.xpub, None, ctrl)
            except zmq.ContextTerminated:
                pass
            finally:
                ctrl.close(linger=0)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._ctrl.send(b"TERMINATE")
            self._thread.join(1.0)
            self._thread = None
        for s in (self.xsub, self.xpub, self._ctrl):
            s.close(linger=0)


class Router:
    """Hosts the bus of a process: binds every endpoint, then proxies in two threads."""

    def __init__(
        self,
        ctx: zmq.Context,
        process: str,
        listen_pub: list[str],
        listen_sub: list[str],
        tap: str,
        tap_hwm: int,
        listen_tap_pub: list[str] | None = None,
    ) -> None:
        self.pub_inproc = f"inproc://{process}.bus-pub"
        self.sub_inproc = f"inproc://{process}.bus-sub"
        self.tap_inproc = f"inproc://{process}.tap-pub" if tap else ""
        self.tap = tap
        self.bound: list[str] = []
        self._bus = _Proxy(ctx, f"{process}.router")
        self._tap: _Proxy | None = _Proxy(ctx, f"{process}.tap") if tap else None
        try:
            bind(self._bus.xsub, self.pub_inproc, "the bus")
            for ep in listen_pub:
                bind(self._bus.xsub, ep, "bus.listen_pub")
                self.bound.append(ep)
            bind(self._bus.xpub, self.sub_inproc, "the bus")
            for ep in listen_sub:
                bind(self._bus.xpub, ep, "bus.listen_sub")
                self.bound.append(ep)
            if self._tap is not None:
                bind(self._tap.xsub, self.tap_inproc, "the tap")
                for ep in listen_tap_pub or []:
                    bind(self._tap.xsub, ep, "bus.listen_tap_pub")
                    self.bound.append(ep)
                self._tap.xpub.setsockopt(zmq.SNDHWM, tap_hwm)
                bind(self._tap.xpub, tap, "bus.tap")
                self.bound.append(tap)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start proxying (libzmq releases the GIL while it runs)."""
        self._bus.start()
        if self._tap is not None:
            self._tap.start()

    def close(self) -> None:
        """Stop the proxies, close the sockets and remove ipc socket files."""
        self._bus.close()
        if self._tap is not None:
            self._tap.close()
        for ep in self.bound:
            if ep.startswith("ipc://"):
                Path(ep[len("ipc://") :]).unlink(missing_ok=True)
