"""The kernel's router: XSUB/XPUB proxies running inside libzmq, without the GIL.

Wire format of every bus message (between lanes, processes and on the tap) - ONE frame::

    topic (UTF-8) | SEP (0x00) | 4-byte origin id of the publishing lane | msgpack message

Subscriptions are prefix matches on the frame, so they match the topic. One frame, because
pyzmq's multipart send/recv cost ~3.4 us a side against ~0.5 us for a single frame.

Three proxies, each in its own thread:

* the **bus**: lanes publish into its XSUB (``inproc``; remote processes over
  ``listen_pub``); its XPUB serves local lanes (``inproc``) with SNDHWM=0 - nothing is ever
  dropped (orders, fills, positions must arrive; a slow lane costs memory, not messages);
* the **remote subscribers** (``listen_sub``): a proxy of their own, fed losslessly by the
  bus, whose XPUB queues at most ``sub_hwm`` messages per subscriber and never drops
  silently (XPUB_NODROP): if a subscriber's queue stays full for ``sub_timeout_s`` the send
  times out, and every subscriber of the endpoints is disconnected with an error in the log
  - memory stays bounded and the loss is loud (a remote lane notices with
  :class:`ConnectionWatch`). Lanes of this process never wait for a remote process;
* the **tap**: lanes publish into it only what a sniffer asked for; its XPUB serves the tap
  endpoint with SNDHWM=``tap_hwm`` - a sniffer that cannot keep up loses messages, the engine
  never waits for it. Being separate, a tapped lane does not get its own messages back.

Who may do what (see systemd/README.md): the ipc socket files are created in a runtime
dir that one run owns (kernel.runtime), bound under a temporary name, given their mode, then
renamed into place - ``bus-pub``, ``bus-sub`` and ``tap-pub`` 0600 (owner only), the ``tap``
0660 (its group may sniff: a tap connection reaches only the tap proxy, never the bus). A
``tcp://`` endpoint uses CURVE (kernel.auth). Sockets that take frames from outside the
process refuse frames above ``max_msg_bytes`` and drop peers that stop answering
ZMTP heartbeats.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from . import runtime
from .auth import (
    Authorizer,
    CurveClient,
    apply_client,
    apply_server,
    is_loopback,
    load_client,
    load_server,
)
from .auth import needs_curve as _needs_curve
from .errors import TickbusError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("tickbus.router")

IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_INSTANCES = itertools.count(1)
SEP = b"\x00"
"""Ends the topic in a frame (topics never contain NUL)."""

TAP_MODE = 0o660
"""The tap: its group may connect (sniff); connecting needs write permission on the file."""
OWNER_MODE = 0o600
"""bus-pub, bus-sub, tap-pub: the owner only (they publish into, or read all of, the bus)."""
HEARTBEAT_IVL_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 10_000
"""A peer that answers no ZMTP ping for this long is dropped (a host gone without a FIN)."""
DEFAULT_MAX_MSG_BYTES = 16 * 1024 * 1024


def frame(topic: str, origin: bytes, body: bytes) -> bytes:
    """Build a wire frame (the lanes inline this on the hot path)."""
    return topic.encode() + SEP + origin + body


def split_frame(data: bytes) -> tuple[str, bytes, memoryview]:
    """(topic, origin, msgpack body) of a wire frame; ValueError if it is not one."""
    end = data.find(SEP)
    if end < 1 or len(data) < end + 6:
        raise ValueError("not a tickbus frame")
    return data[:end].decode(), data[end + 1 : end + 5], memoryview(data)[end + 5 :]


def _ipc_path(endpoint: str) -> str:
    return endpoint[len("ipc://") :]


def _fits(path: str) -> bool:
    return len(path.encode()) <= IPC_PATH_MAX


def _check_ipc_length(path: str, endpoint: str, what: str) -> None:
    if not _fits(path):
        raise TickbusError(
            f"cannot bind {what} {endpoint}: ipc path is longer than {IPC_PATH_MAX} bytes"
            " (use a shorter runtime_dir)"
        )


def remote_options(sock: zmq.Socket, max_msg_bytes: int) -> None:
    """Options of a socket whose binds/connects face other processes (they apply to later
    binds and connects only): a frame cap and ZMTP heartbeats."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


class _Binder:
    """Binds the router's endpoints: CURVE where required, ipc files owned and moded."""

    def __init__(
        self,
        *,
        server_keys: tuple[bytes, bytes] | None,
        plain_loopback: bool,
        check_dirs: bool,
    ) -> None:
        self.server_keys = server_keys
        self.plain_loopback = plain_loopback
        self.check_dirs = check_dirs
        self.owned: dict[str, tuple[int, int]] = {}
        """ipc socket files this process created: path -> (device, inode)."""
        self._lock = threading.Lock()
        self._seq = 0

    def bind(self, sock: zmq.Socket, endpoint: str, what: str, mode: int = OWNER_MODE) -> str:
        """Bind with a one-line, actionable error instead of a ZMQError traceback; return
        the endpoint as libzmq knows it (for ``unbind``)."""
        if _needs_curve(endpoint, self.plain_loopback):
            if self.server_keys is None:  # pragma: no cover - Router checks first
                raise TickbusError(f"{what}: {endpoint} needs CURVE keys")
            apply_server(sock, self.server_keys)
        else:
            sock.setsockopt(zmq.CURVE_SERVER, 0)  # back to the NULL mechanism
        if endpoint.startswith("ipc://"):
            return self._bind_ipc(sock, endpoint, what, mode)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as err:
            hint = ""
            if err.errno == zmq.EADDRINUSE:
                hint = " (is another tickbus running with the same runtime_dir or port?)"
            raise TickbusError(f"cannot bind {what} {endpoint}: {err.strerror}{hint}") from None
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) and last else endpoint

    def _bind_ipc(self, sock: zmq.Socket, endpoint: str, what: str, mode: int) -> str:
        path = _ipc_path(endpoint)
        _check_ipc_length(path, endpoint, what)
        parent = Path(path).parent
        runtime.ensure_private_dir(parent, check=self.check_dirs, what=f"directory of {what}")
        # libzmq deletes whatever is at the path before it binds: never let it touch a
        # socket another process still serves.
        if runtime.listener_at(path):
            raise TickbusError(
                f"cannot bind {what} {endpoint}: another process is listening there"
                " (is another tickbus running with the same runtime_dir?)"
            )
        # Bind a private name, set the mode, then rename into place: nobody can connect
        # with the wrong permissions in between, and a stale file is replaced atomically.
        with self._lock:
            self._seq += 1
            seq = self._seq
        # The path limit applies to the private name too: the shortest that fits, else (a
        # path within 2 bytes of the limit) the final name, guarded by the dir's mode only.
        names = (f".{os.getpid():x}.{seq}", f".{seq}")
        tmp = next((t for t in (str(parent / n) for n in names) if _fits(t)), path)
        try:
            sock.bind(f"ipc://{tmp}")
        except zmq.ZMQError as err:
            raise TickbusError(f"cannot bind {what} {endpoint}: {err.strerror}") from None
        try:
            os.chmod(tmp, mode)
            if tmp != path:
                os.rename(tmp, path)
        except OSError as err:
            sock.unbind(f"ipc://{tmp}")
            Path(tmp).unlink(missing_ok=True)
            raise TickbusError(f"cannot bind {what} {endpoint}: {err.strerror}") from None
        ident = runtime.file_id(path)
        if ident is not None:
            with self._lock:
                self.owned[path] = ident
        return f"ipc://{tmp}"

    def forget(self, endpoint: str) -> None:
        """Remove an ipc socket file we created (after unbinding it)."""
        if endpoint.startswith("ipc://"):
            path = _ipc_path(endpoint)
            with self._lock:
                ident = self.owned.pop(path, None)
            if ident is not None:
                runtime.unlink_if_same(path, ident)

    def remove_all(self) -> None:
        """Remove every ipc socket file we created that is still ours."""
        with self._lock:
            owned, self.owned = self.owned, {}
        for path, ident in owned.items():
            runtime.unlink_if_same(path, ident)


class _Proxy:
    """One XSUB -> XPUB proxy in a daemon thread, stopped through a control socket."""

    def __init__(self, ctx: zmq.Context, name: str, *, xpub_hwm: int = 0) -> None:
        self.name = name
        self.xsub = ctx.socket(zmq.XSUB)
        self.xpub = ctx.socket(zmq.XPUB)
        for s in (self.xsub, self.xpub):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
        self.xpub.setsockopt(zmq.SNDHWM, xpub_hwm)
        # Verbose: every (un)subscription reaches the XSUB, which counts them per prefix and
        # tells the lanes when the last subscriber of a prefix is gone; the lanes count
        # interest per prefix to decide whether a topic must leave the lane at all.
        self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._ctx = ctx
        # unique per instance: libzmq frees an inproc name only some time after close, so a
        # router started right after another one closed (tests, restarts) must not reuse it
        self._ctrl_addr = f"inproc://{name}-ctrl-{next(_INSTANCES)}"
        self._ctrl = ctx.socket(zmq.PAIR)
        self._ctrl.bind(self._ctrl_addr)
        self._thread: threading.Thread | None = None
        self.join_timeout_s = 1.0

    def start(self) -> None:
        ctrl = self._ctx.socket(zmq.PAIR)
        ctrl.connect(self._ctrl_addr)

        def run() -> None:
            try:
                self._serve(ctrl)
            finally:
                ctrl.close(linger=0)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def _serve(self, ctrl: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, ctrl)
        except zmq.ContextTerminated:
            pass

    def close(self) -> None:
        if self._thread is not None:
            self._ctrl.send(b"TERMINATE")
            self._thread.join(self.join_timeout_s)
            self._thread = None
        for s in (self.xsub, self.xpub, self._ctrl):
            s.close(linger=0)


class _SubRelay(_Proxy):
    """The remote subscribers' proxy: bounded per subscriber, loud when one falls behind.

    Its XSUB is one more (lossless, inproc) subscriber of the bus; its XPUB has
    SNDHWM=``hwm`` per remote subscriber and XPUB_NODROP, so when a subscriber's queue is
    full the proxy's send blocks, and after ``timeout_s`` fails with EAGAIN (libzmq says
    nothing else: an XPUB at its high-water mark otherwise drops silently, and it cannot
    tell which peer is slow nor disconnect one peer). Then every listen_sub endpoint is
    unbound - which disconnects its subscribers - logged as an error, and bound again.
    The message in hand at that moment is lost for the remote subscribers only."""

    def __init__(
        self,
        ctx: zmq.Context,
        name: str,
        source: str,
        *,
        hwm: int,
        timeout_s: float,
        max_msg_bytes: int,
    ) -> None:
        super().__init__(ctx, name, xpub_hwm=hwm)
        self.xpub.setsockopt(zmq.XPUB_NODROP, 1)
        self.xpub.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
        remote_options(self.xpub, max_msg_bytes)
        self.xsub.connect(source)
        self.hwm = hwm
        self.timeout_s = timeout_s
        self.join_timeout_s = timeout_s + 1.0  # a blocked send ends within timeout_s
        self.disconnects = 0
        self.endpoints: list[str] = []
        self._bound: list[str] = []
        self._binder: _Binder | None = None
        self._closing = threading.Event()

    def bind_all(self, binder: _Binder, endpoints: Iterable[str]) -> list[str]:
        self._binder = binder
        for ep in endpoints:
            self._bound.append(binder.bind(self.xpub, ep, "bus.listen_sub"))
            self.endpoints.append(ep)
        return self.endpoints

    def _serve(self, ctrl: zmq.Socket) -> None:
        while True:
            try:
                zmq.proxy_steerable(self.xsub, self.xpub, None, ctrl)
                return
            except zmq.Again:
                self._cut()
            except zmq.ContextTerminated:
                return

    def _cut(self) -> None:
        """Disconnect every remote subscriber (the only way libzmq offers to drop the slow
        one), loudly, and take new connections again."""
        self.disconnects += 1
        log.error(
            "bus.listen_sub: a remote subscriber had %d messages queued and took none for"
            " %.3g s: disconnecting every subscriber of %s (they lose messages; a joined"
            " tickbus process stops with an error)",
            self.hwm,
            self.timeout_s,
            ", ".join(self.endpoints),
        )
        assert self._binder is not None
        for bound, ep in zip(self._bound, self.endpoints, strict=True):
            try:
                self.xpub.unbind(bound)
            except zmq.ZMQError:
                pass
            self._binder.forget(ep)
        self._bound = []
        if self._closing.is_set():
            return
        for ep in self.endpoints:
            for attempt in range(50):  # a tcp listener is closed asynchronously
                try:
                    self._bound.append(self._binder.bind(self.xpub, ep, "bus.listen_sub"))
                    break
                except TickbusError as err:
                    if attempt == 49:
                        log.error("bus.listen_sub: cannot listen again: %s", err)
                    else:
                        time.sleep(0.02)

    def close(self) -> None:
        self._closing.set()
        super().close()


def _server_keys(
    endpoints: dict[str, list[str]], curve_dir: Path, plain_loopback: bool
) -> tuple[bytes, bytes] | None:
    """The server key pair if an endpoint (``{config key: [endpoints]}``) needs CURVE, else
    None; a one-line error naming the config key and the missing key file."""
    for key, eps in endpoints.items():
        for ep in eps:
            if _needs_curve(ep, plain_loopback):
                try:
                    return load_server(curve_dir)
                except TickbusError as err:
                    extra = ""
                    if is_loopback(ep):
                        extra = "; or set bus.plain_loopback = true (lets every local user in)"
                    raise TickbusError(f"{key}: {ep} needs CURVE keys: {err}{extra}") from None
    return None


class Router:
    """Hosts the bus of a process: binds every endpoint, then proxies in three threads.

    Build it with :meth:`from_config` (which also takes the runtime-dir lock and starts
    the CURVE handler); :meth:`close` undoes all of it."""

    def __init__(
        self,
        ctx: zmq.Context,
        process: str,
        listen_pub: list[str],
        listen_sub: list[str],
        tap: str,
        tap_hwm: int,
        listen_tap_pub: list[str] | None = None,
        *,
        curve_dir: Path | None = None,
        plain_loopback: bool = False,
        max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
        sub_hwm: int = 100_000,
        sub_timeout_s: float = 2.0,
        check_dirs: bool = True,
        lock: runtime.RuntimeLock | None = None,
    ) -> None:
        n = next(_INSTANCES)  # unique inproc names (see _Proxy)
        self.pub_inproc = f"inproc://{process}.bus-pub.{n}"
        self.sub_inproc = f"inproc://{process}.bus-sub.{n}"
        self.tap_inproc = f"inproc://{process}.tap-pub.{n}" if tap else ""
        self.tap = tap
        self.bound: list[str] = []
        self._lock = lock
        self._auth: Authorizer | None = None
        self._relay: _SubRelay | None = None
        self._tap: _Proxy | None = None
        self._bus = _Proxy(ctx, f"{process}.router")
        self._binder = _Binder(
            server_keys=None, plain_loopback=plain_loopback, check_dirs=check_dirs
        )
        try:
            remote = {
                "bus.listen_pub": listen_pub,
                "bus.listen_sub": listen_sub,
                "bus.tap": [tap] if tap else [],
                "bus.listen_tap_pub": (listen_tap_pub or []) if tap else [],
            }
            where = (curve_dir or Path("state/curve")).absolute()
            self._binder.server_keys = _server_keys(remote, where, plain_loopback)
            if self._binder.server_keys is not None:
                self._auth = Authorizer(ctx, where)  # before the first CURVE bind
            bind = self._binder.bind
            remote_options(self._bus.xsub, max_msg_bytes)
            bind(self._bus.xsub, self.pub_inproc, "the bus")
            for ep in listen_pub:
                bind(self._bus.xsub, ep, "bus.listen_pub")
                self.bound.append(ep)
            bind(self._bus.xpub, self.sub_inproc, "the bus")
            if listen_sub:
                self._relay = _SubRelay(
                    ctx,
                    f"{process}.remote-subs",
                    self.sub_inproc,
                    hwm=sub_hwm,
                    timeout_s=sub_timeout_s,
                    max_msg_bytes=max_msg_bytes,
                )
                self.bound += self._relay.bind_all(self._binder, listen_sub)
            if tap:
                self._tap = _Proxy(ctx, f"{process}.tap", xpub_hwm=tap_hwm)
                remote_options(self._tap.xsub, max_msg_bytes)
                bind(self._tap.xsub, self.tap_inproc, "the tap")
                for ep in listen_tap_pub or []:
                    bind(self._tap.xsub, ep, "bus.listen_tap_pub")
                    self.bound.append(ep)
                # subscriptions come in from sniffers: capped like any frame from outside
                remote_options(self._tap.xpub, max_msg_bytes)
                bind(self._tap.xpub, tap, "bus.tap", TAP_MODE)
                self.bound.append(tap)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, ctx: zmq.Context, cfg: Config) -> Router:
        """The router a config describes. If it binds ipc sockets in the runtime dir, the
        dir is created 0700, checked, and locked for this process (a one-line error names
        the process that holds it)."""
        bus = cfg.bus
        tap = cfg.endpoint(bus.tap) if bus.tap else ""
        listen_pub = [cfg.endpoint(e) for e in bus.listen_pub]
        listen_sub = [cfg.endpoint(e) for e in bus.listen_sub]
        listen_tap_pub = [cfg.endpoint(e) for e in bus.listen_tap_pub] if tap else []
        rt = cfg.runtime_dir
        inside = [
            ep
            for ep in (tap, *listen_pub, *listen_sub, *listen_tap_pub)
            if ep.startswith("ipc://") and Path(_ipc_path(ep)).parent == rt
        ]
        remote = {
            "bus.listen_pub": listen_pub,
            "bus.listen_sub": listen_sub,
            "bus.tap": [tap] if tap else [],
            "bus.listen_tap_pub": listen_tap_pub,
        }
        _server_keys(remote, cfg.curve_dir.absolute(), bus.plain_loopback)  # before the lock
        lock = None
        if inside:
            for ep in inside:  # say "too long" before creating anything
                _check_ipc_length(_ipc_path(ep), ep, "the bus")
            runtime.ensure_private_dir(rt, check=cfg.kernel.check_runtime_dir)
            config = str(Path(cfg.path).resolve()) if cfg.path != "<config>" else cfg.path
            lock = runtime.RuntimeLock.acquire(rt, cfg.kernel.name, config)
        try:
            return cls(
                ctx,
                cfg.kernel.name,
                listen_pub,
                listen_sub,
                tap,
                bus.tap_hwm,
                listen_tap_pub,
                curve_dir=cfg.curve_dir,
                plain_loopback=bus.plain_loopback,
                max_msg_bytes=bus.max_msg_bytes,
                sub_hwm=bus.sub_hwm,
                sub_timeout_s=bus.sub_timeout_s,
                check_dirs=cfg.kernel.check_runtime_dir,
                lock=lock,
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @property
    def remote_disconnects(self) -> int:
        """How often remote subscribers were cut off for falling behind."""
        return self._relay.disconnects if self._relay else 0

    @property
    def auth_denied(self) -> int:
        """CURVE handshakes refused (unknown client key)."""
        return self._auth.denied if self._auth else 0

    def start(self) -> None:
        """Start proxying (libzmq releases the GIL while it runs)."""
        self._bus.start()
        if self._relay is not None:
            self._relay.start()
        if self._tap is not None:
            self._tap.start()

    def close(self) -> None:
        """Stop the proxies, close the sockets, remove the ipc socket files this process
        created (only those), stop the CURVE handler, release the runtime-dir lock."""
        if self._relay is not None:
            self._relay.close()
        self._bus.close()
        if self._tap is not None:
            self._tap.close()
        self._binder.remove_all()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class Connector:
    """How this process's sockets connect to another process's bus (remote lanes with
    ``join_*``, the sniffer): CURVE client keys on tcp, and on anything but ``inproc`` a
    frame cap and heartbeats (it takes frames from outside the process)."""

    def __init__(
        self,
        *,
        curve: CurveClient | None = None,
        plain_loopback: bool = False,
        max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
        keys_hint: str = "",
    ) -> None:
        self.curve = curve
        self.plain_loopback = plain_loopback
        self.max_msg_bytes = max_msg_bytes
        self._hint = keys_hint

    @classmethod
    def from_config(cls, cfg: Config, curve_dir: Path | None = None) -> Connector:
        """For the ``join_*`` endpoints of ``cfg``: loads the client keys if one needs
        CURVE, else a one-line error naming the config key and the missing file."""
        bus = cfg.bus
        eps = {
            f"bus.{k}": cfg.endpoint(getattr(bus, k)) for k in ("join_pub", "join_sub", "join_tap")
        }
        return cls.for_endpoints(cfg, {k: v for k, v in eps.items() if v}, curve_dir)

    @classmethod
    def for_endpoints(
        cls, cfg: Config | None, endpoints: dict[str, str], curve_dir: Path | None = None
    ) -> Connector:
        """For the given ``{config key: endpoint}``; ``curve_dir`` overrides the config's."""
        plain = cfg.bus.plain_loopback if cfg else False
        max_msg = cfg.bus.max_msg_bytes if cfg else DEFAULT_MAX_MSG_BYTES
        where = curve_dir or (cfg.curve_dir if cfg else None)
        curve = None
        for key, ep in endpoints.items():
            if _needs_curve(ep, plain):
                if where is None:
                    raise TickbusError(f"{key}: {ep} needs CURVE keys (--keys DIR)")
                try:
                    curve = load_client(where.absolute())
                except TickbusError as err:
                    raise TickbusError(f"{key}: {ep} needs CURVE keys: {err}") from None
                break
        return cls(curve=curve, plain_loopback=plain, max_msg_bytes=max_msg)

    def connect(self, sock: zmq.Socket, endpoint: str) -> None:
        """``sock.connect(endpoint)`` with the options that endpoint needs."""
        if not endpoint.startswith("inproc://"):
            remote_options(sock, self.max_msg_bytes)
            if _needs_curve(endpoint, self.plain_loopback):
                if self.curve is None:
                    raise TickbusError(f"{endpoint} needs CURVE keys")
                apply_client(sock, self.curve)
            else:
                sock.setsockopt(zmq.CURVE_SERVER, 0)  # the NULL mechanism
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as err:
            raise TickbusError(f"cannot connect to {endpoint}: {err.strerror}") from None


class ConnectionWatch:
    """Calls ``on_lost(reason)`` when a connection that had completed its handshake drops.

    For remote lanes (``join_*``): the host cuts off a subscriber that fell behind, or
    went away - from then on messages are lost, and a process that promised lossless
    delivery must not carry on as if nothing happened. ``watch`` is called on the thread
    that owns the socket (it only starts libzmq's monitor); one thread reads every
    monitor."""

    def __init__(self, ctx: zmq.Context, on_lost: Callable[[str], None]) -> None:
        self._ctx = ctx
        self._on_lost = on_lost
        self._new: list[tuple[zmq.Socket, str]] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="connection-watch", daemon=True)
        self._thread.start()

    def watch(self, sock: zmq.Socket, what: str) -> None:
        """Report when ``sock`` loses a connection. Call on the socket's own thread, before
        it connects (libzmq drops monitor events nobody reads yet)."""
        with self._guard:
            self._seq += 1
            addr = f"inproc://tickbus-watch-{id(self)}-{self._seq}"
            sock.monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            pair = self._ctx.socket(zmq.PAIR)
            pair.setsockopt(zmq.LINGER, 0)
            pair.connect(addr)  # now, so no event is missed; read by the watch thread
            self._new.append((pair, what))

    def _run(self) -> None:
        poller = zmq.Poller()
        socks: dict[zmq.Socket, str] = {}
        up: set[tuple[zmq.Socket, bytes]] = set()
        try:
            while not self._stop.is_set():
                with self._guard:
                    new, self._new = self._new, []
                for pair, what in new:
                    poller.register(pair, zmq.POLLIN)
                    socks[pair] = what
                for pair, _ in poller.poll(100):
                    event, endpoint = self._event(pair)
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        up.add((pair, endpoint))
                    elif event == zmq.EVENT_DISCONNECTED and (pair, endpoint) in up:
                        up.discard((pair, endpoint))
                        self._on_lost(
                            f"{socks[pair]}: lost the connection to {endpoint.decode()}"
                            " (messages may have been lost)"
                        )
        except zmq.ContextTerminated:
            pass
        finally:
            with self._guard:
                pending = [pair for pair, _ in self._new]
            for pair in [*socks, *pending]:
                pair.close(linger=0)

    @staticmethod
    def _event(pair: zmq.Socket) -> tuple[int, bytes]:
        parts = pair.recv_multipart()
        event = int.from_bytes(parts[0][:2], "little") if parts and len(parts[0]) >= 2 else 0
        return event, parts[1] if len(parts) > 1 else b""

    def close(self) -> None:
        """Stop reading (before the sockets and the context are closed)."""
        self._stop.set()
        self._thread.join(1.0)
