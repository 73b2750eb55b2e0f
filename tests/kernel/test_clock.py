"""Timers on the kernel clock: recorded time in replay (fired in timestamp order between
the data, deterministic), wall time live."""

from __future__ import annotations

import asyncio
import threading
import time

from tickbus.kernel import PluginContext, hookimpl
from tickbus.kernel.clock import LiveClock, ReplayClock


def in_loop(fn):
    """Run ``fn(loop)`` inside a running loop (timers fire directly on their own loop)."""
    loop = asyncio.new_event_loop()
    try:
        async def main():
            return fn(asyncio.get_running_loop())

        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_replay_timers_fire_in_time_order_at_their_own_time() -> None:
    clock = ReplayClock(1_000)
    fired: list[tuple[str, int]] = []

    def note(name: str) -> None:
        fired.append((name, clock.now_ns()))

    def run(loop) -> None:
        clock.schedule(5_000, note, ("e",), loop)
        clock.schedule(3_000, note, ("c1",), loop)
        clock.schedule(3_000, note, ("c2",), loop)  # same time: scheduling order
        late = clock.schedule(4_000, note, ("cancelled",), loop)
        late.cancel()
        clock.advance(2_999)
        assert fired == []
        clock.advance(4_500)
        assert fired == [("c1", 3_000), ("c2", 3_000)]
        assert clock.now_ns() == 4_500
        clock.advance(4_000)  # backwards: ignored, nothing fires
        clock.advance(5_000)
        assert fired[-1] == ("e", 5_000)

    in_loop(run)


def test_a_timer_scheduled_by_a_timer_fires_within_the_same_advance() -> None:
    clock = ReplayClock(0)
    fired: list[int] = []

    def run(loop) -> None:
        def first() -> None:
            fired.append(clock.now_ns())
            clock.schedule(clock.now_ns() + 10, lambda: fired.append(clock.now_ns()), (), loop)

        clock.schedule(100, first, (), loop)
        clock.advance(1_000)

    in_loop(run)
    assert fired == [100, 110]


def test_replay_is_deterministic() -> None:
    """The same data and timers twice give the identical interleaving."""

    def once() -> list[tuple[str, int]]:
        clock = ReplayClock(0)
        out: list[tuple[str, int]] = []

        def run(loop) -> None:
            def decay(i: int) -> None:
                out.append((f"timer{i}", clock.now_ns()))

            for i, ts in enumerate(range(0, 10_000, 7)):
                clock.advance(ts)
                out.append(("data", ts))
                if i % 3 == 0:
                    clock.schedule(ts + 25, decay, (i,), loop)

        in_loop(run)
        return out

    first = once()
    assert first == once()
    assert sum(1 for name, _ in first if name.startswith("timer")) > 400


def test_live_timer_fires_on_the_lane_after_the_delay(start_kernel) -> None:
    class timed:
        @staticmethod
        @hookimpl
        def tickbus_setup(ctx: PluginContext) -> dict:
            return {"fired": [], "thread": None}

        @staticmethod
        @hookimpl
        def tickbus_start(ctx: PluginContext) -> None:
            state = ctx.component
            t0 = time.monotonic()

            def fire(tag: str) -> None:
                state["fired"].append((tag, time.monotonic() - t0))
                state["thread"] = threading.current_thread().name

            ctx.call_later(0.15, fire, "later")
            ctx.call_at(ctx.clock.now_ns() + 50_000_000, fire, "at")
            ctx.call_later(0.1, fire, "never").cancel()

    assert isinstance(LiveClock().now_ns(), int)
    k = start_kernel({"lanes": {"x": {}}, "plugins": {"timed": {}}}, {"timed": timed})
    state = k.contexts["timed"].component
    deadline = time.monotonic() + 5
    while len(state["fired"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert [tag for tag, _ in state["fired"]] == ["at", "later"]
    assert state["fired"][0][1] >= 0.045 and state["fired"][1][1] >= 0.145
    assert state["thread"] == "lane-x"


def test_timers_set_before_the_data_count_from_its_first_timestamp() -> None:
    """A plugin's start-up call_later(1 s) on a replay clock still at 0 used to fire at
    1970 + 1 s - and a periodic timer re-armed once per second since the epoch."""
    clock = ReplayClock()
    fired: list[int] = []
    t0 = 1_723_075_200_000_000_000  # 2024-08-08, a recorded timestamp

    def run(loop) -> None:
        def periodic() -> None:
            fired.append(clock.now_ns())
            clock.schedule(clock.now_ns() + 1_000_000_000, periodic, (), loop)

        clock.schedule_in(1_000_000_000, periodic, (), loop)
        clock.advance(t0)
        assert fired == [], "nothing is due at the first recorded timestamp"
        clock.advance(t0 + 3_500_000_000)

    in_loop(run)
    assert fired == [t0 + 1_000_000_000, t0 + 2_000_000_000, t0 + 3_000_000_000]


def test_live_receive_stamps_and_wall_time_are_one_time_base() -> None:
    """A live order's wall-clock stamp minus its tick's receive stamp is a latency: the
    monotonic receive clock is shifted onto the epoch (report and metrics subtract them;
    on raw CLOCK_MONOTONIC the difference was ~56 years)."""
    clock = LiveClock()
    stamps = [clock.mono_ns() for _ in range(1000)]
    assert stamps == sorted(stamps)
    recv = clock.mono_ns()
    time.sleep(0.01)
    latency = clock.now_ns() - recv
    assert 9_000_000 <= latency < 1_000_000_000
