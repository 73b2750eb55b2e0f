"""The bundled exchange filters are Binance's (from real exchangeInfo responses), they fit the
2024 BTCUSDT/ETHUSDT data, and the config overrides them with exact values."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
import pytest

from tickbus.kernel import TickbusError, to_fixed
from tickbus.plugins.binance.capture import SAMPLE
from tickbus.plugins.risk import filters
from tickbus.schemas import SCALE

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
HFT = SHARED / "hftbacktest" / "examples"
CRYPTOFEED = SHARED / "cryptofeed" / "master-ce58c2a0" / "sample_data"


def test_bundled_values() -> None:
    spot = filters.load("spot", None, {}, "k")
    usdm = filters.load("usdm", None, {}, "k")
    assert set(spot) == set(usdm) == {"BTCUSDT", "ETHUSDT"}
    btc = spot["BTCUSDT"]
    assert (btc.tick, btc.step, btc.min_qty) == (to_fixed("0.01"), to_fixed("0.00001"), 1000)
    assert (btc.max_qty, btc.max_px) == (9000 * SCALE, 1_000_000 * SCALE)
    assert btc.min_notional == 10 * SCALE * SCALE
    assert spot["ETHUSDT"].step == to_fixed("0.0001")
    fut = usdm["BTCUSDT"]
    assert (fut.tick, fut.step, fut.min_qty, fut.min_px) == (
        to_fixed("0.01"), to_fixed("0.001"), to_fixed("0.001"), to_fixed("556.72")
    )  # fmt: skip
    assert fut.min_notional == 5 * SCALE * SCALE  # USD-M spells it "notional"


@pytest.mark.parametrize(
    "market, upstream",
    [("spot", CRYPTOFEED / "BINANCE.0"), ("usdm", CRYPTOFEED / "BINANCE_FUTURES.0")],
)
def test_bundled_filters_equal_the_real_capture(market: str, upstream: Path) -> None:
    if not upstream.exists():
        pytest.skip(f"{upstream} not present")
    line = next(ln for ln in upstream.open() if "exchangeInfo" in ln)
    body = line.split(" -> ", 1)[1].split(": ", 1)[1]
    full = filters.from_exchange_info(body.encode(), str(upstream))
    bundled = filters.load(market, None, {}, "k")
    assert {s: full[s] for s in bundled} == bundled
    # the bundled file keeps the two symbol objects exactly as Binance sent them
    ours = json.loads(filters.BUNDLED[market].read_text())["symbols"]
    theirs = [s for s in json.loads(body)["symbols"] if s["symbol"] in bundled]
    assert ours == theirs


def _conforming(path: Path, tick: int, step: int) -> tuple[int, int, int]:
    """(trades checked, trades off the grid, book prices off the tick grid)."""
    trades = bad = bad_px = 0
    with gzip.open(path, "rt") as f:
        for line in f:
            data = msgspec.json.decode(line.partition(" ")[2])
            data = data.get("data", data)
            if data.get("e") == "trade":
                trades += 1
                p, q = to_fixed(data["p"]), to_fixed(data["q"])
                bad += bool(p % tick or q % step)
            elif data.get("e") == "depthUpdate":
                bad_px += sum(bool(to_fixed(p) % tick) for p, _q in data["b"] + data["a"])
    return trades, bad, bad_px


@pytest.mark.parametrize(
    "market, path",
    [
        ("spot", SAMPLE),
        ("spot", HFT / "spot" / "btcusdt_20240808.gz"),
        ("usdm", HFT / "usdm" / "btcusdt_20240808.gz"),
        ("spot", HFT / "spot" / "ethusdt_20240808.gz"),
        ("usdm", HFT / "usdm" / "ethusdt_20240808.gz"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v.parent.name}/{v.name}",
)
def test_2024_data_is_on_the_bundled_grid(market: str, path: Path) -> None:
    """Every 2024 trade (price and quantity) and every book price fits the filters, so the
    2021 responses still describe these markets."""
    if not path.exists():
        pytest.skip(f"{path} not present")
    symbol = "ETHUSDT" if "eth" in path.name else "BTCUSDT"
    f = filters.load(market, None, {}, "k")[symbol]
    trades, bad, bad_px = _conforming(path, f.tick, f.step)
    assert trades > 1000
    assert (bad, bad_px) == (0, 0)


def test_overrides_and_new_symbols() -> None:
    over = {
        "BTCUSDT": filters.SymbolFilters(min_notional="5", tick_size=0.1),
        "SOLUSDT": filters.SymbolFilters(tick_size="0.01", step_size=0.001),
    }
    table = filters.load("spot", None, over, "plugins.risk")
    assert table["BTCUSDT"].min_notional == 5 * SCALE * SCALE
    assert table["BTCUSDT"].tick == to_fixed("0.1")
    assert table["BTCUSDT"].step == to_fixed("0.00001")  # the rest stays Binance's
    assert (table["SOLUSDT"].tick, table["SOLUSDT"].step) == (10**6, 10**5)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"SOLUSDT": filters.SymbolFilters(tick_size="0.01")}, "plugins.risk.filters.SOLUSDT"),
        (
            {"BTCUSDT": filters.SymbolFilters(step_size="0.000000001")},
            "plugins.risk.filters.BTCUSDT.step_size",
        ),
        ({"BTCUSDT": filters.SymbolFilters(min_qty=-1)}, "plugins.risk.filters.BTCUSDT.min_qty"),
        ({"BTCUSDT": filters.SymbolFilters(min_qty="1e-3x")}, "plugins.risk.filters.BTCUSDT"),
    ],
)
def test_bad_overrides_name_the_key(over: dict[str, filters.SymbolFilters], key: str) -> None:
    with pytest.raises(TickbusError) as err:
        filters.load("spot", None, over, "plugins.risk")
    assert str(err.value).startswith(key)


def test_a_filters_file_of_your_own(tmp_path: Path) -> None:
    info = {"symbols": [{"symbol": "XYZUSDT", "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": "0.5", "minPrice": "0", "maxPrice": "0"},
        {"filterType": "LOT_SIZE", "stepSize": "1", "minQty": "1", "maxQty": "0"},
        {"filterType": "NOTIONAL", "minNotional": "5.5"},
    ]}, {"symbol": "NOFILTERS", "filters": []}]}  # fmt: skip
    path = tmp_path / "info.json"
    path.write_text(json.dumps(info))
    table = filters.load("spot", path, {}, "k")
    assert list(table) == ["XYZUSDT"]  # a symbol without tick and step cannot be traded
    assert table["XYZUSDT"] == filters.Filters(
        SCALE // 2, SCALE, SCALE, 0, 0, 0, to_fixed("5.5") * SCALE
    )
    path.write_text("{not json")
    with pytest.raises(TickbusError, match="not a Binance exchangeInfo"):
        filters.load("spot", path, {}, "k")
    with pytest.raises(TickbusError, match="cannot read"):
        filters.load("spot", tmp_path / "missing.json", {}, "k")
