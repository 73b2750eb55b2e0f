"""Test plugin: records every message under ``prefix`` (``ids``: their sequence numbers)."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from tickbus.kernel import PluginContext, hookimpl


class RecorderConfig(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str
    slow_us: int = 0
    """A deliberately slow consumer: sleeps slow_us x 100 every 100 messages (sleeping
    releases the GIL, so the producer really gets ahead and a backlog builds up)."""
    out: str = ""
    """Write what was received to this JSON file at shutdown."""
    fail_every: int = 0
    """Raise in the handler for every n-th message (a buggy plugin)."""


@hookimpl
def tickbus_config_type() -> type:
    return RecorderConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> dict[str, Any]:
    cfg = ctx.config
    state: dict[str, Any] = {"ids": [], "objs": [], "types": set(), "after_shutdown": 0}
    state["shutdown_seen"] = False
    pause = cfg.slow_us * 100 / 1e6

    def on_msg(msg: Any) -> None:
        if state["shutdown_seen"]:
            state["after_shutdown"] += 1
        state["ids"].append(getattr(msg, "trade_id", getattr(msg, "fill_id", -1)))
        state["types"].add(type(msg).__name__)
        if len(state["objs"]) < 10:
            state["objs"].append(msg)
        if pause and len(state["ids"]) % 100 == 0:
            time.sleep(pause)
        if cfg.fail_every and len(state["ids"]) % cfg.fail_every == 0:
            raise ValueError(f"recorder fails on message {len(state['ids'])} (on purpose)")

    ctx.subscribe(cfg.prefix, on_msg)
    return state


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    ctx.component["at_stop"] = len(ctx.component["ids"])


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    state = ctx.component
    state["shutdown_seen"] = True
    if ctx.config.out:
        with open(ctx.config.out, "w") as f:
            json.dump({"ids": state["ids"], "types": sorted(state["types"])}, f)
