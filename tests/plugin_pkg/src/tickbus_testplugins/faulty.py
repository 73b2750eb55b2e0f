"""A plugin that misbehaves on purpose, one way per setting: the kernel must contain each
(tests/kernel/test_hardening.py)."""

from __future__ import annotations

import asyncio
import time

import msgspec

from tickbus.kernel import PluginContext, hookimpl
from tickbus.schemas import Trade


class FaultyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    setup_s: float = 0.0
    """Block in set-up this long (a cold numba compile does)."""
    task_dies_after_s: float = -1.0
    """A spawned task raises this long after start (-1: never)."""
    exit_on: str = ""
    """Raise SystemExit in the handler of this topic prefix."""
    raise_on: str = ""
    """Raise ValueError in the handler of this topic prefix."""
    huge_on_start: str = ""
    """Publish, at start, a Trade whose price does not fit 64 bits on this topic."""
    flushed_file: str = ""
    """Write 'flushed' here in the shutdown hook."""
    stop_at_start: bool = False
    """Ask the process to stop from the start hook (a replay whose data ends at once)."""


@hookimpl
def tickbus_config_type() -> type[FaultyConfig]:
    return FaultyConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> dict[str, int]:
    cfg: FaultyConfig = ctx.config
    if cfg.setup_s:
        time.sleep(cfg.setup_s)  # noqa: ASYNC251 - blocking on purpose, like a compile
    state = {"seen": 0}

    def exit_now(msg: object) -> None:
        raise SystemExit(3)

    def fail(msg: object) -> None:
        raise ValueError("a handler bug")

    if cfg.exit_on:
        ctx.subscribe(cfg.exit_on, exit_now)
    if cfg.raise_on:
        ctx.subscribe(cfg.raise_on, fail)
    return state


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    cfg: FaultyConfig = ctx.config
    if cfg.stop_at_start:
        ctx.request_shutdown("all done already")
    if cfg.huge_on_start:
        ctx.publish(cfg.huge_on_start, Trade("BTCUSDT", 1, 2**70, 1, False, 0, 0))
    if cfg.task_dies_after_s >= 0:

        async def die() -> None:
            await asyncio.sleep(cfg.task_dies_after_s)
            raise RuntimeError("the reader's socket exploded")

        ctx.spawn(die(), name="reader")


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return "faulty, as designed"


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    if ctx.config.flushed_file:
        with open(ctx.config.flushed_file, "w") as f:
            f.write("flushed")
