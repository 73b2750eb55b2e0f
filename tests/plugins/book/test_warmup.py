"""warmup() of the order book and of the frame parser says what it is doing when numba's
cache is cold (a fresh machine compiles for ~15 s each), and nothing when it is warm."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tickbus.kernel import jit
from tickbus.plugins.binance import parse
from tickbus.plugins.book import orderbook

KERNELS = {
    "orderbook": lambda: [k for k, _ in orderbook._SIGNATURES],
    "parse": lambda: parse._KERNELS,
}
_CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tickbus.kernel import jit
from tickbus.plugins.binance import parse
from tickbus.plugins.book import orderbook
kernels = {{"orderbook": [k for k, _ in orderbook._SIGNATURES], "parse": parse._KERNELS}}
print("state", *jit.cache_state(kernels["{module}"]), flush=True)
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
    assert jit.cache_state(KERNELS[module]())[0] is False
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


def _without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    caps = "-dac_override,-dac_read_search,-fowner"
    if setpriv is None or subprocess.run([setpriv, f"--bounding-set={caps}", "true"]).returncode:
        pytest.skip("running as root without setpriv: cannot make a directory read-only")
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.mark.parametrize(
    ("source", "what"),
    [(orderbook.__file__, "order-book"), (parse.__file__, "frame-parser")],
    ids=["orderbook", "parse"],
)
def test_no_writable_cache_dir_compiles_instead_of_failing(
    tmp_path: Path, source: str, what: str
) -> None:
    """A read-only install (site-packages) and no writable home cache: numba has nowhere to
    cache. Before: ``njit(cache=True)`` raised at import and the plugin could not load; now
    the kernels compile on every start and warmup says why, first."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "kernels.py").write_text(Path(source).read_text())
    home = tmp_path / "home"
    home.mkdir()
    for d in (ro, home):
        d.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(ro), PYTHONDONTWRITEBYTECODE="1")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "import kernels\nkernels.warmup()\n"
    )
    proc = subprocess.Popen(
        [*_without_root_powers(), sys.executable, "-c", code],
        cwd=ro,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        proc.kill()
        _, err = proc.communicate(10)
    assert first.startswith(f"compiling {what} kernels (~"), (first, err[-2000:])
    assert "on every start" in first and "NUMBA_CACHE_DIR" in first
