"""Top-of-book oracle on real recorded Binance data.

Every ``bookTicker`` carries the order-book update id ``u`` it reflects. Whenever our book,
rebuilt from the REST snapshot + diff stream through the real parser and :class:`BookSync`,
stands at exactly that id, its best bid/ask price **and** quantity must equal the ticker's.
The minimum comparison counts are those found by an independent Decimal rebuild
(``shared/data/binance/SOURCES.md`` §4) - fewer would mean events were silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.binance.parse import FrameParser
from tickbus.plugins.book.sync import Action, BookSync, Market
from tickbus.schemas import BookTicker, DepthDiff

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
HFT = SHARED / "hftbacktest" / "examples"
CF = SHARED / "cryptofeed" / "1312c062-2021-04-05" / "sample_data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


@dataclass
class OracleRun:
    """Outcome of one replay: comparisons against bookTicker and sync health per symbol."""

    comparisons: int = 0
    mismatches: list[tuple[str, int, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    crossed: int = 0
    invalid_at_compare: int = 0
    syncs: dict[str, BookSync] = field(default_factory=dict)
    frames: int = 0


def replay_oracle(market: Market, paths: list[Path]) -> OracleRun:
    """Replay ``paths`` as one stream, comparing the book with every bookTicker whose ``u``
    equals the book's update id (the ticker may come before or after the depth event)."""
    parser = FrameParser()
    run = OracleRun()
    tickers: dict[tuple[str, int], tuple[int, int, int, int]] = {}
    tops: dict[tuple[str, int], tuple[tuple[int, int, int, int], bool]] = {}
    for rec in read_capture(*paths):
        run.frames += 1
        if rec.kind == "rest":
            snap = parser.parse_snapshot(rec.payload, rec.symbol, rec.ts_ns)
            sync = run.syncs.setdefault(snap.symbol, BookSync(market, snap.symbol))
            assert sync.on_snapshot(snap) is Action.SYNCED, snap.symbol
            continue
        msg = parser.parse(rec.payload, rec.ts_ns)
        if type(msg) is DepthDiff:
            sync = run.syncs.get(msg.symbol) or run.syncs.setdefault(
                msg.symbol, BookSync(market, msg.symbol)
            )
            act = sync.on_diff(msg)
            assert act in (Action.APPLIED, Action.BUFFERED, Action.STALE), (msg, act)
            if act is Action.APPLIED:
                run.crossed += sync.book.crossed()
                tops[(msg.symbol, msg.last_update_id)] = (sync.book.best(), sync.valid)
        elif type(msg) is BookTicker:
            tickers[(msg.symbol, msg.update_id)] = (
                msg.bid_px,
                msg.bid_qty,
                msg.ask_px,
                msg.ask_qty,
            )
    for key in tops.keys() & tickers.keys():
        best, valid = tops[key]
        run.comparisons += 1
        run.invalid_at_compare += not valid
        if best != tickers[key]:
            run.mismatches.append((key[0], key[1], best, tickers[key]))
    return run


def check(run: OracleRun, min_comparisons: int, symbols: int) -> None:
    assert run.mismatches == [], run.mismatches[:5]
    assert run.comparisons >= min_comparisons
    assert run.crossed == 0
    assert run.invalid_at_compare == 0
    assert len(run.syncs) == symbols
    for sym, sync in run.syncs.items():
        st = sync.stats
        assert sync.valid, sym
        assert (st.syncs, st.gaps, st.resyncs, st.too_old) == (1, 0, 0, 0), (sym, st)
        assert st.applied > 0 and st.stale >= 1, (sym, st)  # the buffered events were aligned


def test_oracle_shipped_sample() -> None:
    """The sample shipped in the package (runs without ../shared)."""
    run = replay_oracle("spot", [SAMPLE])
    check(run, min_comparisons=299, symbols=1)
    st = run.syncs["BTCUSDT"].stats
    assert (st.applied, st.stale) == (1793, 2)  # 1,795 depth events, 2 older than L


SHARED_CASES = [
    # market, files (read as one stream), min comparisons (SOURCES.md §4), symbols
    ("spot", ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"], 1072, 1),
    ("spot", ["spot/ethusdt_20240808.gz", "spot/ethusdt_20240809.gz"], 1056, 1),
    ("usdm", ["usdm/btcusdt_20240808.gz"], 629, 1),
    ("usdm", ["usdm/ethusdt_20240808.gz"], 551, 1),  # first applied event has u == L
    ("spot", ["cf:BINANCE-b38f7c.0"], 1152, 10),
    ("usdm", ["cf:BINANCE_FUTURES-1125a2.0"], 214, 5),
]


def _path(name: str) -> Path:
    return CF / name[3:] if name.startswith("cf:") else HFT / name


@needs_shared
@pytest.mark.parametrize(
    ("market", "files", "min_cmp", "symbols"),
    SHARED_CASES,
    ids=[f"{c[0]}-{c[1][0].split('/')[-1].split('.')[0]}" for c in SHARED_CASES],
)
def test_oracle_shared_captures(
    market: Market, files: list[str], min_cmp: int, symbols: int
) -> None:
    """The full captures: ~100k frames each, every symbol, spot and USD-M rules."""
    run = replay_oracle(market, [_path(f) for f in files])
    check(run, min_cmp, symbols)


_WARM_PROBE = """
import json, time
t0 = time.perf_counter()
import numba
from tickbus.plugins.binance import parse as bp
from tickbus.plugins.binance.capture import SAMPLE, read_capture
from tickbus.plugins.book.sync import BookSync
from tickbus.plugins.book import orderbook as ob
ob.warmup()
bp.warmup()
t_ready = time.perf_counter() - t0
kernels = {
    f"{m.__name__}.{n}": d
    for m in (ob, bp)
    for n, d in vars(m).items()
    if isinstance(d, numba.core.registry.CPUDispatcher)
}
before = {k: len(d.signatures) for k, d in kernels.items()}
parser, sync = bp.FrameParser(), BookSync("spot")
for i, rec in enumerate(read_capture(SAMPLE)):
    if rec.kind == "rest":
        sync.on_snapshot(parser.parse_snapshot(rec.payload, rec.symbol, rec.ts_ns))
    elif "@depth" in rec.stream:
        sync.on_diff(parser.parse(rec.payload, rec.ts_ns))
        sync.book_top(20, 0, 0)
    if i > 3000:
        break
new = {k: len(d.signatures) - before[k] for k, d in kernels.items()}
misses = sum(sum(d.stats.cache_misses.values()) for d in kernels.values())
print(json.dumps({"new": {k: v for k, v in new.items() if v}, "misses": misses,
                  "kernels": len(kernels), "ready_s": t_ready}))
"""


def test_warm_start_compiles_nothing() -> None:
    """With a warm on-disk cache, ``warmup()`` loads every kernel and a replay afterwards
    compiles nothing new: the first real tick pays no JIT time (DESIGN: start <= 2 s)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs = []
    for _ in range(2):  # the first run fills the cache if this checkout never compiled
        out = subprocess.run(
            [sys.executable, "-c", _WARM_PROBE],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    warm = runs[-1]
    assert warm["kernels"] >= 10
    assert warm["new"] == {}, "kernels compiled after warmup(): add them to warmup()"
    assert warm["misses"] == 0, "kernels not loaded from the on-disk cache"
