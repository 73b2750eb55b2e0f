"""systemd readiness and watchdog notifications (sd_notify(3)), stdlib only.

Everything here is a silent no-op outside systemd, and a failed send is reported as ``False``,
never raised: the engine must keep trading even if the service manager went away.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STOPPING=1"``) to systemd.

    Several assignments may be joined with newlines in one call. The datagram goes to
    ``$NOTIFY_SOCKET``: a filesystem path, or ``@name`` for a Linux abstract socket.

    Returns True if the datagram was handed to the socket, False if ``$NOTIFY_SOCKET`` is
    unset, empty or not an AF_UNIX address, or if sending failed for any reason.
    """
    target = os.environ.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        address = "\0" + target[1:]  # abstract namespace: leading NUL instead of '@'
    elif target.startswith("/"):
        address = target
    else:
        return False  # unset, or a kind we do not speak (e.g. newer systemd's vsock:)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a wedged PID 1 with a full queue must not stall a lane.
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except (OSError, ValueError):  # ValueError: NUL in the path, or unencodable text
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Return how often to send ``WATCHDOG=1``, in seconds: half of the unit's ``WatchdogSec``.

    Read from ``$WATCHDOG_USEC`` (the full timeout, in microseconds). Returns None when the
    watchdog is off for this process: the variable is unset, not a positive integer, or
    ``$WATCHDOG_PID`` is set to a pid other than ours (it was meant for a parent process).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
        pid = os.environ.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    # Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping is not fatal.
    return usec / 2_000_000
