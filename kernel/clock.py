"""The one clock of a tickbus process.

Live, it reads the system clocks. In replay/backtest it is driven by the recorded timestamps
(the replay feed calls :meth:`ReplayClock.advance`), so a backtest is deterministic and runs
the live code unchanged. Plugins read time only through ``ctx.clock``.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What plugins may ask of the clock."""

    def now_ns(self) -> int:
        """Wall-clock time, ns since the Unix epoch (recorded time in replay)."""
        ...

    def mono_ns(self) -> int:
        """Monotonic time for ``ts_recv_ns`` and latencies (recorded time in replay)."""
        ...


class LiveClock:
    """The system clocks: ``time.time_ns`` and ``time.monotonic_ns``."""

    __slots__ = ()
    now_ns = staticmethod(time.time_ns)
    mono_ns = staticmethod(time.monotonic_ns)


class ReplayClock:
    """Time is whatever the replayed data says it is; it never goes backwards."""

    __slots__ = ("_ns",)

    def __init__(self, start_ns: int = 0) -> None:
        self._ns = start_ns

    def advance(self, ts_ns: int) -> None:
        """Move time to ``ts_ns`` (ignored if it would go backwards)."""
        if ts_ns > self._ns:
            self._ns = ts_ns

    def now_ns(self) -> int:
        """The latest recorded timestamp seen."""
        return self._ns

    mono_ns = now_ns


def make_clock(kind: str) -> LiveClock | ReplayClock:
    """Build the clock named in ``[kernel] clock`` ("live" or "replay")."""
    return ReplayClock() if kind == "replay" else LiveClock()
