"""warmup() says what it is doing when numba's cache is cold, and nothing when it is warm."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tickbus.plugins.book import orderbook

_CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tickbus.plugins.book.orderbook import _SIGNATURES, _cache_state, warmup
print("state", *_cache_state([k for k, _ in _SIGNATURES]), flush=True)
warmup()
"""


def test_a_cold_cache_is_announced_before_the_compile(tmp_path: Path) -> None:
    """A fresh machine compiles for ~15 s: the first line says so (then the test stops the
    compile; the message is logged before it starts)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        state = proc.stdout.readline().split()
        first = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(10)
    assert state[:2] == ["state", "True"] and state[2].startswith(str(tmp_path))
    assert first.startswith("compiling order-book kernels (first run only, ~"), first


def test_a_warm_cache_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    orderbook.warmup()  # this process compiled or loaded them: the cache is warm now
    caplog.set_level(logging.INFO)
    assert orderbook._cache_state([k for k, _ in orderbook._SIGNATURES])[0] is False
    orderbook.warmup(logging.getLogger("tickbus.book"))
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
