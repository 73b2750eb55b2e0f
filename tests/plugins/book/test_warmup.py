"""warmup() of the order book and of the frame parser says what it is doing when numba's
cache is cold (a fresh machine compiles for ~15 s each), and nothing when it is warm."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tickbus.plugins.binance import parse
from tickbus.plugins.book import orderbook

KERNELS = {
    "orderbook": lambda: [k for k, _ in orderbook._SIGNATURES],
    "parse": lambda: parse._KERNELS,
}
_CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tickbus.plugins.binance import parse
from tickbus.plugins.book import orderbook
kernels = {{"orderbook": [k for k, _ in orderbook._SIGNATURES], "parse": parse._KERNELS}}
print("state", *{module}._cache_state(kernels["{module}"]), flush=True)
{module}.warmup()
"""


@pytest.mark.parametrize(
    ("module", "what"), [("orderbook", "order-book"), ("parse", "frame-parser")]
)
def test_a_cold_cache_is_announced_before_the_compile(
    tmp_path: Path, module: str, what: str
) -> None:
    """The first line says a compile is coming (the test stops it there: the message is
    logged before the compile starts, and the compile takes ~15 s)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(module=module)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        state = proc.stdout.readline().split()
        first = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(10)
    assert state[:2] == ["state", "True"] and state[2].startswith(str(tmp_path))
    assert first.startswith(f"compiling {what} kernels (first run only, ~"), first


@pytest.mark.parametrize("module", ["orderbook", "parse"])
def test_a_warm_cache_is_silent(caplog: pytest.LogCaptureFixture, module: str) -> None:
    mod = orderbook if module == "orderbook" else parse
    mod.warmup()  # this process compiled or loaded them: the cache is warm now
    caplog.set_level(logging.INFO)
    assert mod._cache_state(KERNELS[module]())[0] is False
    mod.warmup(logging.getLogger("tickbus.test"))
    assert "compiling" not in caplog.text and "compiled in" not in caplog.text


def test_the_kernels_refuse_other_argument_types() -> None:
    """Compiled lazily now (not at import), they still refuse a float book buffer or float
    levels instead of compiling a specialisation that would truncate floats."""
    book = orderbook.OrderBook(16)
    floats = np.zeros((1, 2))
    with pytest.raises(TypeError):
        orderbook._apply(book._buf, floats, floats, 1)
    with pytest.raises(orderbook.BookError):
        book.apply_diff(floats, floats)
