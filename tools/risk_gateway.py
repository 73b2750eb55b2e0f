"""``tickbus risk-gateway``: a reference risk gateway speaking the risk-gateway protocol.

A ZeroMQ ROUTER bound on ``--endpoint`` answers each ``RiskCheckRequest`` with a
``RiskCheckReply`` (schemas/risk_gateway.md) by a few configurable rules: a maximum order
quantity, a symbol allow-list, a delay before each answer and dropped requests (no answer)
- enough to exercise a client's approve / reject / timeout handling, for tests and local use::

    python -m tickbus.tools.risk_gateway --endpoint ipc:///tmp/gw --max-qty 0.5 \\
        --allow BTCUSDT --delay-ms 2 --drop-every 10

It prints one line on stderr when it listens, answers requests out of order when delays
differ (the correlation id matches them), and exits 0 on SIGTERM/SIGINT with a summary. A
malformed request is counted, logged once per kind with a sample, and not answered.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import msgspec
import zmq

from tickbus.kernel import runtime
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.fixed import from_fixed, to_fixed
from tickbus.kernel.router import IPC_PATH_MAX, OWNER_MODE
from tickbus.schemas import RiskCheckReply, RiskCheckRequest


class Rules(msgspec.Struct, frozen=True):
    """What the gateway approves."""

    max_qty: int = 0
    """Largest order quantity, 1/SCALE units (0: any)."""
    allow: frozenset[str] = frozenset()
    """Symbols allowed (empty: any)."""

    def verdict(self, req: RiskCheckRequest) -> tuple[bool, str]:
        o = req.order
        if self.allow and o.symbol not in self.allow:
            return False, f"symbol {o.symbol} not in the allow-list"
        if self.max_qty and o.qty > self.max_qty:
            return False, f"qty {from_fixed(o.qty)} > gateway max_qty {from_fixed(self.max_qty)}"
        return True, ""


class Gateway:
    """The ROUTER and its rules; :meth:`serve` runs until :meth:`stop`."""

    def __init__(
        self,
        endpoint: str,
        rules: Rules,
        delay_ms: float = 0.0,
        drop_every: int = 0,
        check_dir: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.rules = rules
        self.delay_ns = int(delay_ms * 1e6)
        self.drop_every = drop_every
        self.stats = {"requests": 0, "approved": 0, "rejected": 0, "dropped": 0, "bad": 0}
        self._bad_kinds: set[str] = set()
        self._running = True
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(RiskCheckRequest).decode
        self._zctx = zmq.Context(io_threads=1)
        self.sock = self._zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._file: tuple[str, tuple[int, int]] | None = None
        """The ipc socket file we created (path, device and inode), removed at close."""
        try:
            self._bind(check_dir)
        except BaseException:
            self.sock.close(linger=0)
            self._zctx.term()
            raise

    def _bind(self, check_dir: bool) -> None:
        """Bind; an ipc socket as the bus's are (kernel.runtime): in a private directory,
        never over a live listener, owner-only - whoever can connect may ask, and whoever
        could bind there instead would approve every order."""
        ep = self.endpoint
        if not ep.startswith("ipc://"):
            try:
                self.sock.bind(ep)
            except zmq.ZMQError as err:
                raise TickbusError(f"cannot bind {ep}: {err.strerror}") from None
            return
        path = ep[len("ipc://") :]
        if len(path.encode()) > IPC_PATH_MAX:
            raise TickbusError(f"cannot bind {ep}: ipc path longer than {IPC_PATH_MAX} bytes")
        runtime.ensure_private_dir(Path(path).parent, check=check_dir, what="gateway directory")
        if runtime.listener_at(path):
            raise TickbusError(f"cannot bind {ep}: another process is listening there")
        old = os.umask(0o177)  # the file is created 0600: nobody else connects in between
        try:
            self.sock.bind(ep)
        except zmq.ZMQError as err:
            raise TickbusError(f"cannot bind {ep}: {err.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, OWNER_MODE)
        ident = runtime.file_id(path)
        self._file = (path, ident) if ident is not None else None

    def stop(self) -> None:
        self._running = False

    def serve(self) -> None:
        """Answer requests until stopped (replies due later wait in a heap)."""
        due: list[tuple[int, int, bytes, bytes]] = []  # (when, seq, routing id, reply)
        seq = 0
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while self._running:
            wait_ms = 200.0
            if due:
                wait_ms = max(0.0, (due[0][0] - time.monotonic_ns()) / 1e6)
            if poller.poll(math.ceil(wait_ms)):
                for _ in range(1000):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = self._handle(frames)
                    if reply is not None:
                        seq += 1
                        heapq.heappush(
                            due, (time.monotonic_ns() + self.delay_ns, seq, frames[0], reply)
                        )
            now = time.monotonic_ns()
            while due and due[0][0] <= now:
                _when, _seq, ident, reply = heapq.heappop(due)
                try:
                    self.sock.send_multipart([ident, reply], zmq.NOBLOCK)
                except zmq.ZMQError:  # the client went away (ROUTER drops silently anyway)
                    pass

    def _handle(self, frames: list[bytes]) -> bytes | None:
        if len(frames) != 2:
            self._bad("wrong frame count", f"{len(frames)} frames, expected routing id + body")
            return None
        try:
            req = self._decode(frames[1])
        except msgspec.DecodeError as err:
            self._bad("undecodable request", f"{err}; sample {frames[1][:60]!r}")
            return None
        self.stats["requests"] += 1
        if self.drop_every and self.stats["requests"] % self.drop_every == 0:
            self.stats["dropped"] += 1
            return None
        ok, reason = self.rules.verdict(req)
        self.stats["approved" if ok else "rejected"] += 1
        return self._encode(RiskCheckReply(req.correlation_id, ok, reason, time.time_ns()))

    def _bad(self, kind: str, detail: str) -> None:
        self.stats["bad"] += 1
        if kind not in self._bad_kinds:
            self._bad_kinds.add(kind)
            print(f"risk-gateway: skipped a request: {kind} ({detail}); logged once",
                  file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        self.sock.close(linger=0)
        self._zctx.term()
        if self._file is not None:
            runtime.unlink_if_same(*self._file)  # only our own file, not a successor's


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``risk-gateway`` arguments to ``p``."""
    p.add_argument("--endpoint", required=True, help="where to bind, e.g. ipc:///tmp/gw")
    p.add_argument(
        "--max-qty", default="0", metavar="QTY", help="reject orders above this quantity (units)"
    )
    p.add_argument(
        "--allow", action="extend", nargs="+", default=[], metavar="SYMBOL",
        help="approve only these symbols (repeatable; default: any)",
    )  # fmt: skip
    p.add_argument(
        "--delay-ms", type=float, default=0.0, metavar="MS", help="answer each request this late"
    )
    p.add_argument(
        "--drop-every", type=int, default=0, metavar="N",
        help="do not answer every N-th request (1: none; 0: answer all)",
    )  # fmt: skip
    p.add_argument(
        "--no-check-dir", dest="check_dir", action="store_false",
        help="allow an ipc socket in a directory others may write to (e.g. /tmp)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    try:
        max_qty = to_fixed(args.max_qty)
    except ValueError:
        raise TickbusError(f"--max-qty: not a decimal quantity: {args.max_qty!r}") from None
    if max_qty < 0 or args.delay_ms < 0 or args.drop_every < 0:
        raise TickbusError("--max-qty, --delay-ms and --drop-every must be >= 0")
    rules = Rules(max_qty, frozenset(s.upper() for s in args.allow))
    gw = Gateway(args.endpoint, rules, args.delay_ms, args.drop_every, args.check_dir)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        gw.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"risk-gateway: listening on {args.endpoint}", file=sys.stderr, flush=True)
    try:
        gw.serve()
    finally:
        gw.close()
        summary = ", ".join(f"{k} {v}" for k, v in gw.stats.items())
        print(f"risk-gateway: stopped ({summary})", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.risk_gateway``."""
    p = argparse.ArgumentParser(prog="tickbus risk-gateway", description=__doc__.split("\n")[0])
    build_parser(p)
    try:
        return run(p.parse_args(argv))
    except TickbusError as err:
        print(f"tickbus risk-gateway: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
