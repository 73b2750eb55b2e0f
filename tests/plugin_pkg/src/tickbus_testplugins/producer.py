"""Test plugin: publishes ``count`` numbered messages once started."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from kernel import PluginContext, hookimpl
from schemas import SCALE, Fill, Trade


class ProducerConfig(msgspec.Struct, forbid_unknown_fields=True):
    topic: str = "md.trade.BTCUSDT"
    count: int = 1000
    kind: str = "trade"  # or "fill"
    chunk: int = 1000  # messages per loop iteration, so the lane keeps serving its loop


def make_msg(kind: str, i: int, now: int) -> Any:
    """Message number ``i`` (its id carries the sequence number)."""
    if kind == "fill":
        return Fill(
            f"c{i}",
            i,
            "BTCUSDT",
            "buy",
            67_000 * SCALE + i,
            SCALE // 100,
            1,
            "taker",
            now,
            now,
            now,
        )
    return Trade("BTCUSDT", i, 67_000 * SCALE + i, SCALE // 100, i % 2 == 0, now, now)


@hookimpl
def tickbus_config_type() -> type:
    return ProducerConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> dict[str, Any]:
    return {"sent": 0, "done": asyncio.Event()}


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    cfg = ctx.config

    async def produce() -> None:
        state = ctx.component
        publish = ctx.publish
        now = time.time_ns()
        for i in range(cfg.count):
            publish(cfg.topic, make_msg(cfg.kind, i, now))
            state["sent"] = i + 1
            if (i + 1) % cfg.chunk == 0:
                await asyncio.sleep(0)
        state["done"].set()

    ctx.spawn(produce(), name="produce")
