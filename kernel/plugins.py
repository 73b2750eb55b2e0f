"""Plugin discovery and the typed wrapper over pluggy's hooks.

All wiring sits here: ``add_hookspecs``, entry-point loading (only the plugins the config
enables are imported), ``register``, ``check_pending``. The rest of the kernel calls the
typed methods of :class:`PluginManager`, never ``pm.hook`` loosely.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import msgspec
import pluggy

from tickbus.schemas import Msg

from . import hookspecs
from .config import Config, convert
from .context import PluginContext
from .errors import ConfigError, TickbusError

GROUP = "tickbus"


class Discovered(msgspec.Struct, frozen=True):
    """An entry point of the ``tickbus`` group (not imported)."""

    name: str
    value: str
    distribution: str


def discover() -> dict[str, Discovered]:
    """Every installed plugin, by entry point name, without importing any of them."""
    found: dict[str, Discovered] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        prev = found.get(ep.name)
        if prev is not None and prev.value != ep.value:
            raise TickbusError(
                f"plugin name {ep.name!r} is declared twice: {prev.value} ({prev.distribution})"
                f" and {ep.value} ({dist})"
            )
        found[ep.name] = Discovered(ep.name, ep.value, dist)
    return found


class PluginManager:
    """Loads the plugins a config enables and calls their hooks one instance at a time."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._callers: dict[tuple[str, str], Any] = {}

    def register(self, name: str, plugin: object) -> None:
        """Register an already imported plugin object (tests, embedding)."""
        if self.pm.get_plugin(name) is not None:
            return
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as err:
            raise TickbusError(f"plugin {name!r} is invalid: {err}") from None

    def load(self, config: Config, extra: dict[str, object] | None = None) -> None:
        """Import and register the plugins of every enabled instance in ``config``;
        ``extra`` maps names to plugin objects that need no entry point."""
        extra = extra or {}
        wanted = {e.plugin for e in config.plugins.values() if e.enabled}
        installed = discover()
        for entry in config.plugins.values():
            if entry.enabled and entry.plugin not in installed and entry.plugin not in extra:
                known = ", ".join(sorted(set(installed) | set(extra))) or "none"
                raise ConfigError(
                    config.path,
                    f"plugins.{entry.name}",
                    f"unknown plugin {entry.plugin!r} (installed: {known})",
                )
        for name in sorted(wanted):
            if name in extra:
                self.register(name, extra[name])
                continue
            ep = installed[name]
            try:
                obj = importlib.metadata.EntryPoint(name, ep.value, GROUP).load()
            except Exception as err:
                raise TickbusError(
                    f"plugin {name!r} ({ep.value}, from {ep.distribution}) failed to import:"
                    f" {type(err).__name__}: {err}"
                ) from err
            self.register(name, obj)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            raise TickbusError(f"plugin {err.plugin!r} is invalid: {err}") from None

    # ---------------------------------------------------------------- typed hooks

    def _caller(self, hook: str, plugin: str) -> Any:
        """A hook caller that reaches only ``plugin`` (built once, cold path)."""
        key = (hook, plugin)
        if key not in self._callers:
            target = self.pm.get_plugin(plugin)
            others = [p for p in self.pm.get_plugins() if p is not target]
            self._callers[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return self._callers[key]

    def validate_settings(self, config: Config, name: str) -> Any:
        """Validate the settings of instance ``name`` against its plugin's config type."""
        entry = config.plugins[name]
        type_ = self._caller("tickbus_config_type", entry.plugin)()
        key = f"plugins.{name}"
        if type_ is None:
            if entry.settings:
                bad = sorted(entry.settings)[0]
                raise ConfigError(
                    config.path,
                    f"{key}.{bad}",
                    f"unknown key (plugin {entry.plugin!r} has no settings)",
                )
            return None
        return convert(config.path, key, entry.settings, type_)

    def message_types(self) -> list[type[Msg]]:
        """Message types added by the loaded plugins."""
        types: list[type[Msg]] = []
        for group in self.pm.hook.tickbus_message_types():
            for t in group:
                if not (isinstance(t, type) and issubclass(t, Msg)):
                    raise TickbusError(f"tickbus_message_types returned {t!r}, not a schemas.Msg")
                types.append(t)
        return types

    def setup(self, ctx: PluginContext) -> Any:
        """``tickbus_setup`` of one instance; returns its component."""
        return self._caller("tickbus_setup", ctx.plugin)(ctx=ctx)

    def start(self, ctx: PluginContext) -> None:
        """``tickbus_start`` of one instance."""
        self._caller("tickbus_start", ctx.plugin)(ctx=ctx)

    def stop(self, ctx: PluginContext) -> None:
        """``tickbus_stop`` of one instance."""
        self._caller("tickbus_stop", ctx.plugin)(ctx=ctx)

    def shutdown(self, ctx: PluginContext) -> None:
        """``tickbus_shutdown`` of one instance."""
        self._caller("tickbus_shutdown", ctx.plugin)(ctx=ctx)

    def status(self, ctx: PluginContext) -> str | None:
        """``tickbus_status`` of one instance (its fragment of the status line)."""
        result: str | None = self._caller("tickbus_status", ctx.plugin)(ctx=ctx)
        return result

    def loaded(self) -> Sequence[str]:
        """Names of the registered plugins."""
        return [n for n, _ in self.pm.list_name_plugin()]
