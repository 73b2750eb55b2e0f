"""Test plugin: publishes numbered messages once started."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import SCALE, Fill, Trade


class ProducerConfig(msgspec.Struct, forbid_unknown_fields=True):
    topic: str = "md.trade.BTCUSDT"
    count: int = 1000
    """How many messages; 0 = until stopped."""
    kind: str = "trade"
    """"trade" or "fill"."""
    chunk: int = 1000
    """Messages per loop iteration, so the lane keeps serving its loop."""
    period_ms: float = 0.0
    """Pause between chunks (0: as fast as possible)."""
    shutdown_when_done: bool = False
    out: str = ""
    """Write how many messages were sent to this JSON file at shutdown."""


def make_msg(kind: str, i: int, now: int) -> Any:
    """Message number ``i`` (its id carries the sequence number)."""
    if kind == "fill":
        return Fill(
            client_order_id=f"c{i}",
            strategy_id="producer",
            symbol="BTCUSDT",
            side="buy",
            fill_id=i,
            px=67_000 * SCALE + i,
            qty=SCALE // 100,
            fee=1,
            liquidity="taker",
            ts_exchange_ns=now,
            ts_recv_ns=now,
            ts_fill_ns=now,
        )
    return Trade("BTCUSDT", i, 67_000 * SCALE + i, SCALE // 100, i % 2 == 0, now, now)


@hookimpl
def tickbus_config_type() -> type:
    return ProducerConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> dict[str, Any]:
    return {"sent": 0, "done": False}


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    cfg = ctx.config

    async def produce() -> None:
        state = ctx.component
        publish = ctx.publish
        i = 0
        while not cfg.count or i < cfg.count:
            now = time.time_ns()
            for _ in range(min(cfg.chunk, cfg.count - i) if cfg.count else cfg.chunk):
                publish(cfg.topic, make_msg(cfg.kind, i, now))
                i += 1
            state["sent"] = i
            await asyncio.sleep(cfg.period_ms / 1000)
        state["done"] = True
        if cfg.shutdown_when_done:
            ctx.request_shutdown(f"sent {i} messages")

    ctx.spawn(produce(), name="produce")


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    if ctx.config.out:
        with open(ctx.config.out, "w") as f:
            json.dump({"sent": ctx.component["sent"]}, f)
