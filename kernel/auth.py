"""ZeroMQ CURVE for the bus's ``tcp://`` endpoints: key files, the ZAP handler, socket set-up.

A tcp endpoint is reachable by anyone who can reach the port, so every one of the bus
(``listen_*``, ``tap``, ``join_*``) uses CURVE: the traffic is encrypted, the client checks
the server's public key, and the server admits only the client public keys listed in its
``authorized/`` directory. Only loopback endpoints may go without, and only when
``[bus] plain_loopback = true`` says so (every local user can then reach them).

Key files (pyzmq's certificate format, so ``zmq.auth.load_certificate`` reads them), in the
CURVE dir (``[bus] curve_dir``, default ``<state_dir>/curve``)::

    server.key            the bus host's public key: give it to clients
    server.key_secret     its secret key (0600; never leaves the host)
    authorized/NAME.key   client public keys this host admits (read at every handshake)
    clients/NAME/         a client bundle made by ``tickbus keys client NAME``:
      server.key          copy the directory to the client host and point the client's
      client.key          ``[bus] curve_dir`` (or ``tickbus sniff --keys``) at it
      client.key_secret

A client process (``join_*``, the sniffer) reads ``server.key`` and ``client.key_secret``
from its CURVE dir.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, NamedTuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import TickbusError

log = logging.getLogger("tickbus.auth")

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
CLIENT_PUBLIC = "client.key"
CLIENT_SECRET = "client.key_secret"
AUTHORIZED = "authorized"
CLIENTS = "clients"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_LOOPBACK = re.compile(r"tcp://(127(\.\d{1,3}){3}|\[::1\]|::1):(\d+|\*)")


def is_tcp(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint."""
    return endpoint.startswith("tcp://")


def is_loopback(endpoint: str) -> bool:
    """True for ``tcp://127.x.x.x:PORT`` and ``tcp://[::1]:PORT`` (no names: a name could
    resolve to anything)."""
    return _LOOPBACK.fullmatch(endpoint) is not None


def needs_curve(endpoint: str, plain_loopback: bool) -> bool:
    """Whether ``endpoint`` must use CURVE (see the module docstring)."""
    return is_tcp(endpoint) and not (plain_loopback and is_loopback(endpoint))


class CurveClient(NamedTuple):
    """What a client socket needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes


def _write_key(path: Path, public: bytes, secret: bytes | None) -> None:
    """One certificate file; a secret one is created 0600 (never readable by others, not
    even for an instant)."""
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate (tickbus keys)",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS" if secret else "#   Give this to peers",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    if not secret:
        os.chmod(path, 0o644)


def _load(path: Path, *, secret: bool, hint: str) -> tuple[bytes, bytes | None]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TickbusError(f"no CURVE key {path} ({hint})") from None
    except OSError as err:
        raise TickbusError(f"cannot read CURVE key {path}: {err.strerror}") from None
    if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TickbusError(
            f"CURVE secret key {path} is readable by group or others"
            f" (mode {oct(stat.S_IMODE(st.st_mode))}): chmod 600 it"
        )
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise TickbusError(f"CURVE key {path} is not a key file: {err}") from None
    if secret and not sec:
        raise TickbusError(f"CURVE key {path} holds no secret key")
    return public, sec


def load_server(curve_dir: Path) -> tuple[bytes, bytes]:
    """The bus host's (public, secret) key; a one-line error naming the missing file."""
    public, secret = _load(
        curve_dir / SERVER_SECRET, secret=True, hint="create it with `tickbus keys init`"
    )
    assert secret is not None
    return public, secret


def load_client(curve_dir: Path) -> CurveClient:
    """A client's keys: the server's public key and its own pair."""
    hint = "copy a bundle made by `tickbus keys client NAME` on the bus host"
    server_public, _ = _load(curve_dir / SERVER_PUBLIC, secret=False, hint=hint)
    public, secret = _load(curve_dir / CLIENT_SECRET, secret=True, hint=hint)
    assert secret is not None
    return CurveClient(server_public, public, secret)


def apply_server(sock: zmq.Socket, keys: tuple[bytes, bytes]) -> None:
    """Make the socket's later binds CURVE servers (options apply to later binds only)."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
    sock.setsockopt(zmq.CURVE_SERVER, 1)


def apply_client(sock: zmq.Socket, keys: CurveClient) -> None:
    """Make the socket's later connects CURVE clients of ``keys.server_public``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class _AuthorizedKeys:
    """The ZAP callback: admits the public keys in ``authorized/``, re-read when the
    directory changes (a key added or revoked applies to the next connection)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.denied = 0
        self._stamp: int | None = None
        self._keys: dict[bytes, Any] = {}
        self._logged: set[bytes] = set()

    def _reload(self) -> None:
        try:
            stamp = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._stamp, self._keys = None, {}
            return
        if stamp != self._stamp:
            self._keys = zmq.auth.load_certificates(self.directory)
            self._stamp = stamp

    def callback(self, domain: str, key: bytes) -> bool:
        self._reload()
        if key in self._keys:
            return True
        self.denied += 1
        if key not in self._logged:  # once per key: a scanner must not flood the log
            self._logged.add(key)
            log.warning(
                "CURVE: refused a client with key %s (not in %s; `tickbus keys authorize`)",
                key.decode(errors="replace"),
                self.directory,
            )
        return False


class Authorizer:
    """The ZAP handler of one ZeroMQ context: every CURVE server socket of the context asks
    it whether a client's key is admitted. Start it before the first CURVE bind."""

    def __init__(self, zctx: zmq.Context, curve_dir: Path) -> None:
        self.keys = _AuthorizedKeys(curve_dir / AUTHORIZED)
        self._auth = ThreadAuthenticator(zctx, log=logging.getLogger("tickbus.auth.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self.keys)

    @property
    def denied(self) -> int:
        """Handshakes refused so far."""
        return self.keys.denied

    def stop(self) -> None:
        """Stop the handler thread (before the context is terminated)."""
        self._auth.stop()


# ----------------------------------------------------------------------- tickbus keys


def _check_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise TickbusError(f"key name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def init_server(curve_dir: Path, *, force: bool = False) -> Path:
    """Create the bus host's key pair; refuse to replace one unless ``force`` (every
    client would have to get the new public key)."""
    secret = curve_dir / SERVER_SECRET
    if secret.exists() and not force:
        raise TickbusError(f"{secret} exists (use --force to replace it and re-key every client)")
    _private_dir(curve_dir)
    _private_dir(curve_dir / AUTHORIZED)
    for name in (SERVER_SECRET, SERVER_PUBLIC):
        (curve_dir / name).unlink(missing_ok=True)
    public, secret_key = zmq.curve_keypair()
    _write_key(curve_dir / SERVER_SECRET, public, secret_key)
    _write_key(curve_dir / SERVER_PUBLIC, public, None)
    return curve_dir / SERVER_PUBLIC


def new_client(curve_dir: Path, name: str) -> Path:
    """Create a client key pair as a bundle ``clients/NAME/`` (with the server's public
    key) and admit its public key; return the bundle's directory."""
    _check_name(name)
    server_public, _ = load_server(curve_dir)
    bundle = curve_dir / CLIENTS / name
    if bundle.exists() or (curve_dir / AUTHORIZED / f"{name}.key").exists():
        raise TickbusError(f"a client named {name!r} exists (revoke it first)")
    _private_dir(bundle)
    public, secret = zmq.curve_keypair()
    _write_key(bundle / CLIENT_SECRET, public, secret)
    _write_key(bundle / CLIENT_PUBLIC, public, None)
    _write_key(bundle / SERVER_PUBLIC, server_public, None)
    _private_dir(curve_dir / AUTHORIZED)
    _write_key(curve_dir / AUTHORIZED / f"{name}.key", public, None)
    return bundle


def authorize(curve_dir: Path, public_file: Path, name: str) -> Path:
    """Admit the public key in ``public_file`` (made elsewhere) under ``name``."""
    _check_name(name)
    public, secret = _load(public_file, secret=False, hint="give the client's .key file")
    if secret:
        raise TickbusError(f"{public_file} holds a secret key: give the public .key file")
    target = curve_dir / AUTHORIZED / f"{name}.key"
    if target.exists():
        raise TickbusError(f"a client named {name!r} is already authorized")
    _private_dir(curve_dir / AUTHORIZED)
    _write_key(target, public, None)
    return target


def revoke(curve_dir: Path, name: str) -> None:
    """Stop admitting client ``name`` (new connections; restart the bus to cut existing
    ones) and delete its bundle if this host made it."""
    _check_name(name)
    target = curve_dir / AUTHORIZED / f"{name}.key"
    if not target.exists():
        raise TickbusError(f"no authorized client named {name!r} in {target.parent}")
    target.unlink()
    shutil.rmtree(curve_dir / CLIENTS / name, ignore_errors=True)


def listing(curve_dir: Path) -> list[str]:
    """Lines describing the server key and every authorized client key."""
    lines = [f"CURVE dir {curve_dir}"]
    try:
        public, _ = load_server(curve_dir)
        lines.append(f"server    {public.decode()}")
    except TickbusError as err:
        lines.append(f"server    - ({err})")
    authorized = curve_dir / AUTHORIZED
    files = sorted(authorized.glob("*.key")) if authorized.is_dir() else []
    for f in files:
        try:
            key, _ = zmq.auth.load_certificate(f)
            lines.append(f"client    {key.decode()}  {f.stem}")
        except (OSError, ValueError):
            lines.append(f"client    ?  {f.stem} (unreadable: {f})")
    if not files:
        lines.append("client    - (none authorized: `tickbus keys client NAME`)")
    return lines
