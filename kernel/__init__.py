"""tickbus kernel: bus, lanes, plugin manager and hookspecs, config, clock, lifecycle, CLI.

Plugins import from here (and from ``schemas``) only::

    from tickbus.kernel import hookimpl, PluginContext, TickbusError
"""

from .clock import Clock, LiveClock, ReplayClock, Timer
from .context import PluginContext
from .errors import ConfigError, TickbusError
from .fixed import from_fixed, to_fixed
from .hookspecs import hookimpl
from .strategy import Strategy, StrategyConfig, strategy_plugin

__all__ = [
    "Clock",
    "ConfigError",
    "LiveClock",
    "PluginContext",
    "ReplayClock",
    "Strategy",
    "StrategyConfig",
    "TickbusError",
    "Timer",
    "from_fixed",
    "hookimpl",
    "strategy_plugin",
    "to_fixed",
]
