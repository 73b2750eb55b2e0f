"""Client of the external risk gateway (protocol: ``schemas/risk_gateway.md``).

A ZeroMQ DEALER socket connected to the gateway's ROUTER on ``ipc://``, driven by the lane's
own event loop through the socket's file descriptor (as kernel/lane.py does): a request is a
non-blocking send, the verdict arrives as a readable event, so the lane never waits and the
market data keeps flowing while an order waits for its verdict.

* every request has a timeout; a verdict that comes later is counted and ignored;
* ``ZMQ_IMMEDIATE``: while the gateway is down a send fails at once (no queueing of orders to
  a dead peer that would approve them minutes later), and the caller applies its policy;
* ZeroMQ reconnects by itself when the gateway comes back (every 100 ms at most 1 s apart);
  correlation ids are unique per run, so a stale verdict never matches a new request.

Timeouts run on the loop's monotonic clock, not the kernel clock: they bound a real wait on
another process, which recorded replay time says nothing about.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import msgspec
import zmq

from tickbus.schemas import OrderRequest, RiskCheckReply, RiskCheckRequest

_POKE_S = 0.01  # while requests wait: re-read the socket (its FD is edge-triggered)

Verdict = Callable[[OrderRequest, bool, str], None]
"""(order, approved, reason) of a verdict that arrived in time."""
NoVerdict = Callable[[OrderRequest, str], None]
"""(order, why) when there is no verdict: timeout or gateway unavailable."""


class GatewayStats(msgspec.Struct):
    sent: int = 0
    approved: int = 0
    rejected: int = 0
    timeouts: int = 0
    unavailable: int = 0
    late: int = 0
    bad_replies: int = 0
    rtt_last_us: float = 0.0
    rtt_max_us: float = 0.0


class GatewayClient:
    """One DEALER on ``loop``; ``on_verdict`` / ``on_none`` are called on the loop's thread."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop,
        on_verdict: Verdict,
        on_none: NoVerdict,
        log: logging.Logger,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.stats = GatewayStats()
        self._loop = loop
        self._on_verdict = on_verdict
        self._on_none = on_none
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[OrderRequest, asyncio.TimerHandle, int]] = {}
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(RiskCheckReply).decode
        self._bad_kinds: set[str] = set()
        self._poke: asyncio.TimerHandle | None = None
        self._zctx = zmq.Context(io_threads=1)
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            self._zctx.term()
            raise
        self._sock: zmq.Socket | None = sock
        self._fd = int(sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._drain)

    @property
    def pending(self) -> int:
        """Requests waiting for a verdict."""
        return len(self._pending)

    def ask(self, order: OrderRequest, position_qty: int, mid_px: int, ts_ns: int) -> str:
        """Send a request; "" if sent (a verdict or ``on_none`` follows), else why not."""
        sock = self._sock
        if sock is None:
            return "gateway client closed"
        corr = next(self._ids)
        body = self._encode(RiskCheckRequest(corr, order, position_qty, mid_px, ts_ns))
        try:
            sock.send(body, zmq.NOBLOCK)
        except zmq.Again:
            self.stats.unavailable += 1
            return f"gateway {self.endpoint} unavailable (not connected or its queue is full)"
        self.stats.sent += 1
        handle = self._loop.call_later(self.timeout_s, self._timeout, corr)
        self._pending[corr] = (order, handle, time.perf_counter_ns())
        if self._poke is None:
            self._poke = self._loop.call_later(_POKE_S, self._repoke)
        self._drain()  # a send can consume the FD's readable edge
        return ""

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed under us
                return
            try:
                rep = self._decode(data)
            except msgspec.DecodeError as err:
                self._bad("undecodable reply", f"{err}; sample {data[:60]!r}")
                continue
            entry = self._pending.pop(rep.correlation_id, None)
            if entry is None:
                self.stats.late += 1  # timed out already, or never ours
                continue
            order, handle, t0 = entry
            handle.cancel()
            rtt = (time.perf_counter_ns() - t0) / 1000
            self.stats.rtt_last_us = rtt
            self.stats.rtt_max_us = max(self.stats.rtt_max_us, rtt)
            if rep.approved:
                self.stats.approved += 1
            else:
                self.stats.rejected += 1
            self._on_verdict(order, rep.approved, rep.reason[:200])

    def _repoke(self) -> None:
        self._poke = None
        self._drain()
        if self._pending and self._sock is not None:
            self._poke = self._loop.call_later(_POKE_S, self._repoke)

    def _timeout(self, corr: int) -> None:
        self._drain()  # the verdict may be waiting unread
        entry = self._pending.pop(corr, None)
        if entry is None:
            return
        self.stats.timeouts += 1
        self._on_none(
            entry[0], f"no verdict from gateway {self.endpoint} within {self.timeout_s * 1e3:g} ms"
        )

    def _bad(self, kind: str, detail: str) -> None:
        self.stats.bad_replies += 1
        if kind not in self._bad_kinds:  # once per kind, with a sample
            self._bad_kinds.add(kind)
            self._log.warning("risk gateway: skipped an %s (%s)", kind, detail)

    def fail_pending(self) -> list[OrderRequest]:
        """Forget every waiting request (shutting down) and return their orders."""
        pending, self._pending = self._pending, {}
        for _order, handle, _t0 in pending.values():
            handle.cancel()
        return [order for order, _handle, _t0 in pending.values()]

    def close(self) -> None:
        """Stop reading and close the socket (pending requests are dropped: call
        :meth:`fail_pending` first)."""
        if self._sock is None:
            return
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, RuntimeError):  # the loop is already closed
            pass
        if self._poke is not None:
            self._poke.cancel()
        self._sock.close(linger=0)
        self._sock = None
        self._zctx.term()
