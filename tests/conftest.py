"""Shared fixtures: short runtime dirs, an in-process kernel, the installed test plugins,
and a way to run the real ``tickbus`` command in a second process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "plugin_pkg" / "src"))

from tickbus.kernel import PluginContext, hookimpl  # noqa: E402
from tickbus.kernel.app import Kernel  # noqa: E402
from tickbus.kernel.config import parse_config  # noqa: E402


@pytest.fixture
def rt() -> Iterator[Path]:
    """A runtime dir with a short path (ipc socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_kernel(rt: Path) -> Iterator[Callable[..., Kernel]]:
    """Start an in-process kernel from a config dict; stopped at the end of the test."""
    from tickbus_testplugins import producer, recorder

    kernels: list[Kernel] = []

    def start(raw: dict[str, Any], extra: dict[str, object] | None = None) -> Kernel:
        raw = {**raw, "kernel": {"runtime_dir": str(rt), **raw.get("kernel", {})}}
        plugins = {"tb_producer": producer, "tb_recorder": recorder, **(extra or {})}
        k = Kernel(parse_config(raw, "test.toml"), extra_plugins=plugins)
        k.start()
        kernels.append(k)
        return k

    yield start
    for k in kernels:
        k.stop()


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugin_pkg really installed (pip, into a target dir) as a separate package."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target),
            str(ROOT / "tests" / "plugin_pkg"),
        ],
        check=True,
        cwd=tmp_path_factory.mktemp("build"),
    )  # fmt: skip
    return target


def tickbus_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a ``tickbus`` subprocess, with the test plugins' site if given."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    paths = [str(site)] if site else []
    paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def tickbus_cmd(*args: str) -> list[str]:
    """The real command line: the interpreter running the tests, module kernel.cli."""
    return [sys.executable, "-m", "tickbus.kernel.cli", *args]


class SimThread:
    """An ExchangeSim on its own event loop in a thread (the kernel has its own lanes)."""

    def __init__(self, data: list[Path] | None = None, **kwargs: Any) -> None:
        from tickbus.plugins.binance.capture import SAMPLE
        from tickbus.tools.exchange_sim import ExchangeSim

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = ExchangeSim(data or [SAMPLE], **kwargs)
        self.port = asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(30)

    @property
    def finished(self) -> bool:
        return self.sim.finished.is_set()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class book_collector:
    """Test plugin (registered in-process): keeps every md.book message it sees."""

    @staticmethod
    @hookimpl
    def tickbus_setup(ctx: PluginContext) -> list[Any]:
        books: list[Any] = []
        ctx.subscribe("md.book.", books.append)
        return books


def write_config(path: Path, text: str) -> Path:
    """Write a TOML config and return its path."""
    path.write_text(text)
    return path
