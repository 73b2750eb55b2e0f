"""The one clock of a tickbus process, and timers on it.

Live, it reads the system clocks and timers run on the lane's event loop. In replay/backtest
it is driven by the recorded timestamps (the replay feed calls :meth:`ReplayClock.advance`
before it publishes each recorded message): timers then fire inside ``advance``, in
timestamp order, *before* the message at that time is delivered - so a backtest is
deterministic, never waits on the wall clock, and runs the live code unchanged. Plugins
read time and schedule work only through ``ctx.clock`` / ``ctx.call_at`` /
``ctx.call_later``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer:
    """A scheduled call; :meth:`cancel` stops it (calling it twice is harmless)."""

    __slots__ = ("when_ns", "_fn", "_args", "_loop", "_handle", "cancelled")

    def __init__(
        self, when_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:  # fmt: skip
        self.when_ns = when_ns
        self._fn = fn
        self._args = args
        self._loop = loop
        self._handle: asyncio.Handle | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run (if it has not run yet)."""
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()

    def _run(self) -> None:
        if not self.cancelled:
            self.cancelled = True  # runs once
            self._fn(*self._args)

    def _fire(self) -> None:
        """Run on the timer's own lane: directly when that is the current thread's loop
        (replay in one lane: interleaved exactly with the data), else posted to it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._run()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._run)


class Clock(Protocol):
    """What plugins may ask of the clock."""

    def now_ns(self) -> int:
        """Wall-clock time, ns since the Unix epoch (recorded time in replay)."""
        ...

    def mono_ns(self) -> int:
        """Monotonic time for ``ts_recv_ns`` and latencies (recorded time in replay)."""
        ...

    def schedule(
        self, when_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """Run ``fn(*args)`` on ``loop`` when ``now_ns()`` reaches ``when_ns``."""
        ...

    def schedule_in(
        self, delay_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """Run ``fn(*args)`` on ``loop`` ``delay_ns`` of clock time from now."""
        ...


class LiveClock:
    """The system clocks; timers on the loop.

    ``now_ns`` is ``time.time_ns``. ``mono_ns`` (receive stamps, ``ts_recv_ns``) is
    ``time.monotonic_ns`` shifted onto the epoch once, at construction: it never jumps, and
    ``now_ns() - ts_recv_ns`` is a true latency (an order's wall-clock stamp minus its tick's
    receipt), off only by a step of the wall clock during the run (NTP slews both alike)."""

    __slots__ = ("_offset",)
    now_ns = staticmethod(time.time_ns)

    def __init__(self) -> None:
        self._offset = time.time_ns() - time.monotonic_ns()

    def mono_ns(self) -> int:
        """Monotonic nanoseconds on the epoch's scale."""
        return time.monotonic_ns() + self._offset

    def schedule_in(
        self, delay_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """A timer ``delay_ns`` from now."""
        return self.schedule(time.time_ns() + delay_ns, fn, args, loop)

    def schedule(
        self, when_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """A loop timer ``when_ns - now`` from now (at once if that is past)."""
        timer = Timer(when_ns, fn, args, loop)
        delay = max(0.0, (when_ns - time.time_ns()) / 1e9)

        def arm() -> None:
            timer._handle = loop.call_later(delay, timer._run)

        try:
            same = asyncio.get_running_loop() is loop
        except RuntimeError:
            same = False
        if same:
            arm()
        else:
            loop.call_soon_threadsafe(arm)
        return timer


class ReplayClock:
    """Time is whatever the replayed data says it is; it never goes backwards. Timers fire
    in (time, scheduling order) when :meth:`advance` passes them.

    Before the first recorded timestamp arrives the clock reads ``start_ns`` (0): a
    relative timer set then (a plugin's start-up ``call_later``) counts from the first
    recorded timestamp, not from 1970 - otherwise a periodic timer would fire once for every
    second since the epoch on the first message."""

    __slots__ = ("_ns", "_timers", "_seq", "_deferred")

    def __init__(self, start_ns: int = 0) -> None:
        self._ns = start_ns
        self._timers: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._deferred: list[tuple[int, Timer]] | None = []  # None once data has arrived

    def _start(self, ts_ns: int) -> None:
        """The first recorded time: relative timers set before it start counting now."""
        deferred, self._deferred = self._deferred or [], None
        for delay, timer in deferred:
            timer.when_ns = ts_ns + delay
            heapq.heappush(self._timers, (timer.when_ns, next(self._seq), timer))

    def advance(self, ts_ns: int) -> None:
        """Move time to ``ts_ns`` (ignored if it would go backwards), first running every
        timer due by then, each at its own time."""
        if ts_ns > self._ns:
            if self._deferred is not None:
                self._start(ts_ns)
            timers = self._timers
            while timers and timers[0][0] <= ts_ns:
                when, _, timer = heapq.heappop(timers)
                if not timer.cancelled:
                    self._ns = max(self._ns, when)
                    timer._fire()
            self._ns = ts_ns

    def now_ns(self) -> int:
        """The latest recorded timestamp seen."""
        return self._ns

    mono_ns = now_ns

    def schedule(
        self, when_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """Queue the timer; it fires when the data's time reaches ``when_ns`` (a time
        already past fires with the next advance). heapq's C calls are atomic under the
        GIL, so lanes may schedule while the replay lane advances - no lock."""
        timer = Timer(when_ns, fn, args, loop)
        heapq.heappush(self._timers, (when_ns, next(self._seq), timer))
        return timer

    def schedule_in(
        self, delay_ns: int, fn: Callable[..., Any], args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> Timer:  # fmt: skip
        """A timer ``delay_ns`` after now - after the first recorded timestamp if no data
        has arrived yet."""
        if self._deferred is None:
            return self.schedule(self._ns + delay_ns, fn, args, loop)
        timer = Timer(self._ns + delay_ns, fn, args, loop)
        self._deferred.append((delay_ns, timer))
        return timer

    @property
    def pending(self) -> int:
        """Timers queued and not yet fired (some may be cancelled)."""
        return len(self._timers)


def make_clock(kind: str) -> LiveClock | ReplayClock:
    """Build the clock named in ``[kernel] clock`` ("live" or "replay")."""
    return ReplayClock() if kind == "replay" else LiveClock()
