"""What a plugin instance sees of the kernel: its config, its lane, the bus, the clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickbus.schemas import Msg

from .clock import Clock

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
        request_shutdown: Callable[[str], None],
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
        self.log = logging.getLogger(f"tickbus.{name}")
        self.component: Any = None
        """What ``tickbus_setup`` returned."""
        self.publish: Callable[[str, Msg], None] = lane.publish
        self._lane = lane
        self._request_shutdown = request_shutdown
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The lane's event loop (asyncio code of the plugin runs here)."""
        assert self._lane.loop is not None
        return self._lane.loop

    def subscribe(self, prefix: str, handler: Callable[[Any], None]) -> None:
        """Call ``handler(msg)`` for every message whose topic starts with ``prefix``,
        whichever lane or process published it. Call from ``tickbus_setup``."""
        self._lane.subscribe(prefix, handler)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task on the lane's loop; it is cancelled when the plugin stops.
        A task that dies with an exception is logged, never silently lost."""
        task = self.loop.create_task(coro, name=name or f"{self.name}-task")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def cancel_tasks(self) -> None:
        """Cancel every task made with :meth:`spawn` (done by the kernel after stop)."""
        for task in list(self._tasks):
            task.cancel()

    def request_shutdown(self, reason: str) -> None:
        """Ask the kernel to stop the whole process (e.g. a replay reached its end)."""
        self._request_shutdown(f"{self.name}: {reason}")
