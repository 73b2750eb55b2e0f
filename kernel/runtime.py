"""One owner per runtime directory, and ipc socket files that only their creator removes.

libzmq deletes whatever is at an ``ipc://`` path before it binds, so two runs sharing a
runtime dir would silently take over each other's sockets (and delete them on exit). A run
that binds ipc sockets in its runtime dir therefore:

* creates the dir 0700 and refuses one that another user owns, that group/others may write,
  or that lies below a directory someone else could rename it out of (``check_private_dir``);
* holds an exclusive ``flock`` on ``<dir>/lock`` for its whole life; the file names the
  holder (pid, process name, config), so a second run refuses with a one-line error naming
  the first (``RuntimeLock``);
* before binding any ipc path, refuses it if a process still accepts connections on it
  (``listener_at``); the router then binds a temporary name and renames it into place, and
  removes at exit only the file it created (same inode).

A lock on a file in the directory rather than on the directory: the file carries the
holder's identity, and ``flock`` is released by the kernel when the holder dies, so a
crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from .errors import TickbusError

LOCK_NAME = "lock"


def _mode(st: os.stat_result) -> str:
    return oct(stat.S_IMODE(st.st_mode))


def check_private_dir(path: Path, what: str = "runtime dir") -> None:
    """Refuse ``path`` unless it is a directory (not a symlink) owned by this user and not
    writable by group/others, and every directory above it is owned by this user or root
    and not writable by others unless sticky (like ``/tmp``): otherwise someone else could
    swap it, and our sockets, for their own."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise TickbusError(f"{what} {path}: {err.strerror}") from None
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise TickbusError(f"{what} {path} is a symlink; point the config at the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise TickbusError(f"{what} {path} is not a directory")
    hint = " (or set [kernel] check_runtime_dir = false if you set it up so on purpose)"
    if st.st_uid != me:
        raise TickbusError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {me}){hint}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TickbusError(f"{what} {path} is writable by group or others (mode {_mode(st)}){hint}")
    for parent in path.resolve().parents:
        pst = os.stat(parent)
        if pst.st_uid not in (me, 0):
            raise TickbusError(
                f"{what} {path}: {parent} above it belongs to uid {pst.st_uid}, who could"
                f" replace it{hint}"
            )
        if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
            raise TickbusError(
                f"{what} {path}: {parent} above it is writable by group or others"
                f" (mode {_mode(pst)}){hint}"
            )


def ensure_private_dir(path: Path, *, check: bool = True, what: str = "runtime dir") -> None:
    """Create ``path`` (and missing parents) with mode 0700, then check it (see
    ``check_private_dir``) unless ``check`` is off."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing directory
        except OSError as err:
            raise TickbusError(f"cannot create {what} {path}: {err.strerror}") from None
    if check:
        check_private_dir(path, what)


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 (tickbus 'paper', config /etc/tickbus/paper.toml)`` from a lock file."""
    if not holder:
        return "another process (it has not written its pid yet)"
    pid = holder.get("pid", "?")
    name = holder.get("name", "?")
    config = holder.get("config") or "?"
    return f"pid {pid} (tickbus {name!r}, config {config})"


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class RuntimeLock:
    """An exclusive ``flock`` on ``<dir>/lock``, held until :meth:`release` (or death)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path, name: str, config: str) -> RuntimeLock:
        """Take the lock or raise a one-line TickbusError naming the process holding it."""
        path = directory / LOCK_NAME
        try:
            # O_NOFOLLOW: never write through a symlink someone planted
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise TickbusError(f"cannot open the lock file {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise TickbusError(f"cannot lock {path}: {err.strerror}") from None
            raise TickbusError(
                f"runtime dir {directory} is in use by {describe_holder(holder)}: stop it, or"
                " give this run another [kernel] name or runtime_dir"
            ) from None
        me = {"pid": os.getpid(), "name": name, "config": config}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        return cls(directory, fd)

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: removing it would let a run
        that opened it just before lock a file nobody else can see)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None


def listener_at(path: str) -> bool:
    """True if a process accepts connections on the unix socket at ``path`` (or it cannot
    be told: permission denied), False if nothing is there or only a stale file is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise TickbusError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # a stale file: its process is gone
    except OSError:
        return True  # EACCES and the like: someone's socket we cannot judge; leave it
    finally:
        probe.close()
    return True


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of ``path`` itself, None if it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def unlink_if_same(path: str, ident: tuple[int, int]) -> bool:
    """Remove ``path`` only if it is still the file we created (another run may have
    replaced it since); True if removed."""
    if file_id(path) != ident:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
