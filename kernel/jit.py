"""numba's on-disk cache, for plugins with compiled kernels: can a source file cache, is the
cache cold, and a warm-up that says what it is doing (a cold compile takes tens of seconds
with no output otherwise)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any


def can_cache(probe: Callable[..., Any]) -> bool:
    """Whether numba finds a writable cache for ``probe``'s source file (numba picks a
    location per file): beside it (``__pycache__``), in ``NUMBA_CACHE_DIR`` or in the user's
    cache dir. With none (a read-only install and no writable home) ``njit(cache=True)``
    fails at import; pass ``cache=can_cache(...)`` so the kernels compile on every start
    instead, and :func:`warm` says so."""
    try:
        from numba.core.caching import FunctionCache

        FunctionCache(probe)
    except RuntimeError:  # "no locator available"
        return False
    except Exception:  # another numba: let njit(cache=True) decide
        return True
    return True


def cache_state(kernels: Iterable[Any]) -> tuple[bool | None, str]:
    """``(cold, cache dir)`` from numba's on-disk index of each kernel: cold when an index
    is missing, of another numba, or older than the source (numba then recompiles); None
    if this numba's cache internals are not the ones known here (then timing tells)."""
    cold = False
    where = "?"
    try:
        for kernel in kernels:
            cache_file = kernel._cache._cache_file
            where = str(cache_file._cache_path)
            cold = cold or not cache_file._load_index()
    except Exception:  # private numba API: any change means "do not know"
        return None, where
    return cold, where


def warm(
    log: logging.Logger,
    what: str,
    cold_s: int,
    source: str,
    cached: bool,
    kernels: Iterable[Any],
    exercise: Callable[[], None],
) -> float:
    """Run ``exercise`` (calls that compile, or load from the cache, every signature the
    hot path uses). On a cold cache say so first ("compiling <what> kernels (first run
    only, ~<cold_s> s)") and how long it took after; without a cache, warn. Seconds spent."""
    cold, where = cache_state(kernels)
    if not cached:
        log.warning(
            "compiling %s kernels (~%d s) on every start: numba finds no writable cache dir"
            " for %s (set NUMBA_CACHE_DIR to one)",
            what, cold_s, source,
        )  # fmt: skip
    elif cold:
        log.info("compiling %s kernels (first run only, ~%d s)", what, cold_s)
    t0 = time.perf_counter()
    exercise()
    took = time.perf_counter() - t0
    if cold or not cached or took > 2.0:  # a compile the index did not foresee shows in the time
        log.info("%s kernels compiled in %.1f s (numba cache: %s)", what, took,
                 where if cached else "none")  # fmt: skip
    return took
