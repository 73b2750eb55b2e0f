"""What a plugin instance sees of the kernel: its config, its lane, the bus, the clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickbus.schemas import Msg

from .clock import Clock, Timer

if TYPE_CHECKING:
    from .lane import Lane


class PluginContext:
    """Handed to every hook of one plugin instance.

    ``publish`` is the lane's own publish function (no indirection on the hot path); call
    it from the lane thread only - from elsewhere use ``loop.call_soon_threadsafe``."""

    def __init__(
        self,
        *,
        name: str,
        plugin: str,
        config: Any,
        lane: Lane,
        clock: Clock,
        process: str,
        runtime_dir: Path,
        state_dir: Path,
        request_shutdown: Callable[[str, bool], None],
        report_failure: Callable[[str], None] | None = None,
        config_dir: Path | None = None,
        bus_stats: Callable[[], dict[str, dict[str, Any]]] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.name = name
        """Instance name: the ``[plugins.<name>]`` table."""
        self.plugin = plugin
        """Entry point name of the plugin this instance runs."""
        self.config = config
        """The validated config (the plugin's ``tickbus_config_type``), or None."""
        self.lane_name = lane.name
        self.clock = clock
        self.process = process
        self.runtime_dir = runtime_dir
        self.state_dir = state_dir
        self.config_dir = config_dir or Path.cwd()
        """Directory of the config file: relative paths in a config resolve against it."""
        self.config_path = config_path
        """The config file this process runs (None: a config built in memory)."""
        self.log = logging.getLogger(f"tickbus.{name}")
        self.component: Any = None
        """What ``tickbus_setup`` returned."""
        self.publish: Callable[[str, Msg], None] = lane.publish
        self._lane = lane
        self._request_shutdown = request_shutdown
        self._report_failure = report_failure or (lambda what: None)
        self.bus_stats: Callable[[], dict[str, dict[str, Any]]] = bus_stats or dict
        """Counters of every lane of the process, by lane name (for metrics and status):
        ``published`` per topic (``topics``), ``sent``, ``received``, ``bad_frames``,
        ``handler_errors``, ``encode_errors``, ``alive``. Cheap; call from any thread."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[Timer] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The lane's event loop (asyncio code of the plugin runs here)."""
        assert self._lane.loop is not None
        return self._lane.loop

    def subscribe(self, prefix: str, handler: Callable[[Any], None]) -> None:
        """Call ``handler(msg)`` for every message whose topic starts with ``prefix``,
        whichever lane or process published it. Call from ``tickbus_setup``."""
        self._lane.subscribe(prefix, handler)

    def resolve_path(self, path: str | Path) -> Path:
        """``path`` with ``~`` expanded, relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.config_dir / p

    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` on this lane when the kernel clock reaches ``when_ns`` (ns since
        the epoch: wall time live, recorded time in replay - where timers fire in timestamp
        order between the recorded messages, so a backtest is deterministic). Returns a
        :class:`~tickbus.kernel.clock.Timer` (``.cancel()``). Call from the lane thread."""
        return self._keep(self.clock.schedule(when_ns, fn, args, self.loop))

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` after ``delay_s`` seconds of kernel-clock time. In replay, a
        timer set before the first recorded message counts from that message's time."""
        return self._keep(self.clock.schedule_in(int(delay_s * 1e9), fn, args, self.loop))

    def _keep(self, timer: Timer) -> Timer:
        timers = self._timers
        if len(timers) > 256:  # keep only the live ones: bounded, no per-fire cost
            timers[:] = [t for t in timers if not t.cancelled]
        timers.append(timer)
        return timer

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task on the lane's loop; it is cancelled when the plugin stops.

        A task is part of the plugin's health: one that dies with an exception is logged
        with its traceback and stops the whole process with a non-zero exit status - a
        process is never left half alive (e.g. a feed whose reader died while its lane
        still heartbeats). A task that must survive errors catches them itself and retries
        (with backoff); one that simply returns has finished its work."""
        task = self.loop.create_task(coro, name=name or f"{self.name}-task")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self.log.error("task %s died", task.get_name(), exc_info=err)
            self._request_shutdown(
                f"{self.name}: task {task.get_name()} died: {type(err).__name__}: {err}", True
            )

    @property
    def tasks(self) -> int:
        """How many of this instance's tasks are running."""
        return len(self._tasks)

    def cancel_tasks(self) -> None:
        """Cancel every task made with :meth:`spawn` and every timer not yet fired (done by
        the kernel after stop)."""
        for task in list(self._tasks):
            task.cancel()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def request_shutdown(self, reason: str, *, failed: bool = False) -> None:
        """Ask the kernel to stop the whole process (e.g. a replay reached its end).
        ``failed``: the run did not do its job (input lost, unreadable data), so the
        process exits with a non-zero status."""
        self._request_shutdown(f"{self.name}: {reason}", failed)

    def report_failure(self, what: str) -> None:
        """Record that this run lost something or hit an error it recovered from (it goes
        on); the process then exits non-zero at its end, and the reason is logged."""
        self._report_failure(f"{self.name}: {what}")
