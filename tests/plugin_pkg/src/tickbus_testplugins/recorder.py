"""Test plugin: records every message under ``prefix`` (``ids``: their sequence numbers)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from kernel import PluginContext, hookimpl


class RecorderConfig(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str = "md."
    slow_us: int = 0
    """A deliberately slow consumer: sleeps slow_us x 100 every 100 messages (sleeping
    releases the GIL, so the producer really gets ahead and a backlog builds up)."""


@hookimpl
def tickbus_config_type() -> type:
    return RecorderConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> dict[str, Any]:
    state: dict[str, Any] = {"ids": [], "types": set(), "shutdown_seen": 0, "after_shutdown": 0}
    pause = ctx.config.slow_us * 100 / 1e6

    def on_msg(msg: Any) -> None:
        if state["shutdown_seen"]:
            state["after_shutdown"] += 1
        state["ids"].append(getattr(msg, "trade_id", getattr(msg, "fill_id", -1)))
        state["types"].add(type(msg).__name__)
        if pause and len(state["ids"]) % 100 == 0:
            time.sleep(pause)

    ctx.subscribe(ctx.config.prefix, on_msg)
    return state


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    ctx.component["shutdown_seen"] = 1
