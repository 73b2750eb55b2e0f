"""The kernel's router: one XSUB/XPUB proxy running inside libzmq, without the GIL.

Wire format of every bus message (between lanes, processes and on the tap)::

    frame 0: topic, UTF-8 (subscriptions are prefix matches on this frame only)
    frame 1: 4-byte origin id of the publishing lane + the msgpack-encoded message

Sockets and their high-water marks - decided per endpoint, as the ZeroMQ guide asks:

* lanes publish into the XSUB (``inproc``; remote processes over ``listen_pub``);
* the XPUB serves local lanes (``inproc``) and remote subscribers (``listen_sub``) with
  SNDHWM=0: nothing is ever dropped there (orders, fills, positions must arrive; a slow
  consumer costs memory, not messages);
* the same XPUB serves the tap with SNDHWM=``tap_hwm``: a sniffer that cannot keep up
  loses messages, the engine never waits for it. libzmq applies HWM options per
  bind, so one socket carries both policies.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from .errors import TickbusError

IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def inproc_endpoints(process: str) -> tuple[str, str]:
    """The in-process endpoints of a process's router: (publish side, subscribe side)."""
    return f"inproc://{process}.bus-pub", f"inproc://{process}.bus-sub"


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


class Router:
    """Hosts the bus of a process: binds every endpoint, then proxies in a thread."""

    def __init__(
        self,
        ctx: zmq.Context,
        process: str,
        listen_pub: list[str],
        listen_sub: list[str],
        tap: str,
        tap_hwm: int,
    ) -> None:
        self.pub_inproc, self.sub_inproc = inproc_endpoints(process)
        self._ctx = ctx
        self._xsub = ctx.socket(zmq.XSUB)
        self._xpub = ctx.socket(zmq.XPUB)
        self._ctrl_addr = f"inproc://{process}.router-ctrl"
        self._ctrl = ctx.socket(zmq.PAIR)
        self._thread: threading.Thread | None = None
        self.bound: list[str] = []
        try:
            for s in (self._xsub, self._xpub):
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, 0)
                s.setsockopt(zmq.RCVHWM, 0)
            # Verbose: every (un)subscription reaches the lanes, which count interest per
            # prefix to decide whether a topic must leave the lane at all.
            self._xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            bind(self._xsub, self.pub_inproc, "the bus")
            for ep in listen_pub:
                bind(self._xsub, ep, "bus.listen_pub")
                self.bound.append(ep)
            bind(self._xpub, self.sub_inproc, "the bus")
            for ep in listen_sub:
                bind(self._xpub, ep, "bus.listen_sub")
                self.bound.append(ep)
            if tap:
                self._xpub.setsockopt(zmq.SNDHWM, tap_hwm)
                bind(self._xpub, tap, "bus.tap")
                self.bound.append(tap)
            self._ctrl.bind(self._ctrl_addr)
        except BaseException:
            self.close()
            raise
        self.tap = tap

    def start(self) -> None:
        """Start proxying in a daemon thread (libzmq releases the GIL while it runs)."""
        ctrl = self._ctx.socket(zmq.PAIR)
        ctrl.connect(self._ctrl_addr)

        def run() -> None:
            try:
                zmq.proxy_steerable(self._xsub, self._xpub, None, ctrl)
            except zmq.ContextTerminated:
                pass
            finally:
                ctrl.close(linger=0)

        self._thread = threading.Thread(target=run, name="tickbus-router", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the proxy, close the sockets and remove ipc socket files."""
        if self._thread is not None:
            self._ctrl.send(b"TERMINATE")
            self._thread.join(1.0)
            self._thread = None
        for s in (self._xsub, self._xpub, self._ctrl):
            s.close(linger=0)
        for ep in self.bound:
            if ep.startswith("ipc://"):
                Path(ep[len("ipc://") :]).unlink(missing_ok=True)
