"""The tickbus plugin API: every hook a plugin may implement.

A plugin is a module (or any object) with ``@hookimpl`` functions, declared as an entry
point in the ``tickbus`` group of its distribution::

    [project.entry-points.tickbus]
    my_strategy = "my_package.strategy"

Config decides what loads: only instances listed (and enabled) in ``[plugins.<name>]`` are
imported. Hooks are called on the cold path only - discovery and lifecycle; messages reach a
plugin through the handlers it subscribes in :func:`tickbus_setup`, never through pluggy.

Lifecycle of every plugin instance, each call made on the instance's lane thread::

    tickbus_config_type   -> validate [plugins.<name>]            (main thread, at load)
    tickbus_setup(ctx)    -> subscribe handlers                    (all instances, then)
    tickbus_start(ctx)    -> begin producing (in dependency order)  -> READY
    tickbus_stop(ctx)     -> stop producing (reverse order); handlers still receive
    ... the kernel drains the bus until no lane has anything in flight ...
    tickbus_shutdown(ctx) -> flush and release (reverse order); no message arrives after

While running, ``tickbus_status(ctx)`` is asked every ``[kernel] status_interval_s`` for a
short fragment of the status line the kernel logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tickbus.schemas import Msg

    from .context import PluginContext

PROJECT = "tickbus"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- discovery


@hookspec(firstresult=True)
def tickbus_config_type() -> type[Any] | None:
    """Return the msgspec Struct type that validates this plugin's config table.

    Called once per plugin when its module is loaded. The table ``[plugins.<name>]`` minus
    the reserved keys (plugin, lane, enabled, after) is converted into this type; the
    validated value is ``ctx.config``. Declare it with ``forbid_unknown_fields=True`` so a
    mistyped key is an error. Return ``None`` (or do not implement the hook) for a plugin
    without settings: any key in its table is then an error."""


@hookspec
def tickbus_message_types() -> Sequence[type[Msg]]:
    """Return message types this plugin adds to the bus (subclasses of ``schemas.Msg``).

    Called once at start-up; every lane's decoder then knows them. Built-in messages need
    no declaration. Tag names must be unique across all plugins."""


# --------------------------------------------------------------------------- lifecycle


@hookspec(firstresult=True)
def tickbus_setup(ctx: PluginContext) -> Any:
    """Prepare the plugin instance described by ``ctx``; subscribe its handlers.

    Called once per instance on its lane thread, before any instance starts. Use
    ``ctx.subscribe(prefix, handler)`` here (subscriptions are compiled into the lane's
    routing table afterwards). Return the instance's runtime object (anything, or None);
    the kernel keeps it as ``ctx.component`` for the other hooks. Raise
    ``kernel.TickbusError`` for a problem the operator must fix."""


@hookspec
def tickbus_start(ctx: PluginContext) -> None:
    """Begin producing: open connections, start timers and tasks (``ctx.spawn``).

    Called once per instance on its lane thread, in dependency order (``after``), when
    every instance has been set up. The process reports READY when all have started."""


@hookspec
def tickbus_stop(ctx: PluginContext) -> None:
    """Stop producing on your own initiative: close connections, cancel timers.

    Called in reverse start order on SIGTERM/SIGINT or ``ctx.request_shutdown`` (after
    the latter, once what was in flight between lanes has been delivered). The
    instance's handlers keep receiving until the bus is drained, so a consumer must keep
    working (e.g. persistence keeps writing). Tasks made with ``ctx.spawn`` are
    cancelled right after this hook returns."""


@hookspec
def tickbus_shutdown(ctx: PluginContext) -> None:
    """Flush and release everything (commit the database, close files).

    Called in reverse start order once every instance is stopped and no lane has a
    message in flight; no message is delivered after it."""


# --------------------------------------------------------------------------- while running


@hookspec(firstresult=True)
def tickbus_status(ctx: PluginContext) -> str | None:
    """Return a short, human-readable fragment for the periodic status line, or None.

    Called every ``[kernel] status_interval_s`` (default 10 s) on the instance's lane
    thread, between messages, so it may read the plugin's state without a lock. Say what
    an operator must know at a glance: e.g. the book's "BTCUSDT valid @ 4180332 (lag 12 ms)",
    the feed's "connected, 312 frames/s, 0 bad", a replay's "41% of sample.gz, 2.1x".
    Keep it cheap and under ~100 characters; it is logged as ``<instance>: <fragment>``."""
