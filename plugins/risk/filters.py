"""Exchange conformance filters per symbol (tick size, lot size, min notional), as exact ints.

Read from a Binance ``exchangeInfo`` response (the bundled ones in ``data/``, or a file of your
own) and overridden per symbol from the config. Prices and quantities in 1/SCALE units, the
minimum notional in 1/NOTIONAL_SCALE units; 0 means "no such limit".
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from tickbus.kernel import TickbusError, to_fixed
from tickbus.schemas import SCALE

DATA = Path(__file__).resolve().parent / "data"
BUNDLED = {"spot": DATA / "exchangeinfo_spot.json", "usdm": DATA / "exchangeinfo_usdm.json"}

Amount = str | float | int
"""A decimal amount in a config: a string ("0.00001", exact) or a TOML number."""


class SymbolFilters(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.risk.filters.<SYMBOL>]``: overrides of one symbol's exchange filters, in
    units ("0.01"); a symbol absent from the exchangeInfo needs at least the first two."""

    tick_size: Amount | None = None
    step_size: Amount | None = None
    min_qty: Amount | None = None
    max_qty: Amount | None = None
    """0: no maximum."""
    min_price: Amount | None = None
    max_price: Amount | None = None
    """0: no maximum."""
    min_notional: Amount | None = None
    """Minimum price x quantity in the quote asset (a market order is valued at the mid)."""


class Filters(msgspec.Struct):
    """One symbol's filters as exact ints (prices/quantities 1/SCALE, notional 1/SCALE**2)."""

    tick: int
    step: int
    min_qty: int = 0
    max_qty: int = 0
    min_px: int = 0
    max_px: int = 0
    min_notional: int = 0


def units(value: Amount, key: str) -> int:
    """A decimal amount in units -> exact 1/SCALE int (TickbusError naming ``key`` if it is
    not a non-negative number with at most 8 decimals)."""
    if isinstance(value, bool):
        raise TickbusError(f"{key}: expected a number, got {value!r}")
    try:
        # repr keeps a float's shortest exact decimal (0.01, not 0.01000000000000000020816...)
        text = format(Decimal(value if isinstance(value, str) else repr(value)), "f")
        fixed = to_fixed(text)
    except (InvalidOperation, ValueError):
        raise TickbusError(
            f"{key}: {value!r} is not a decimal number with at most 8 decimals"
        ) from None
    if fixed < 0:
        raise TickbusError(f"{key}: must be >= 0 (got {value!r})")
    return fixed


class _Filter(msgspec.Struct):
    filterType: str  # noqa: N815 - Binance's field names
    tickSize: str = "0"  # noqa: N815
    minPrice: str = "0"  # noqa: N815
    maxPrice: str = "0"  # noqa: N815
    stepSize: str = "0"  # noqa: N815
    minQty: str = "0"  # noqa: N815
    maxQty: str = "0"  # noqa: N815
    minNotional: str = "0"  # noqa: N815
    notional: str = "0"  # USD-M spells MIN_NOTIONAL's value this way


class _Symbol(msgspec.Struct):
    symbol: str
    filters: list[_Filter]


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_Symbol]


def from_exchange_info(data: bytes, where: str) -> dict[str, Filters]:
    """Filters of every symbol in an exchangeInfo body (spot or USD-M); ``where`` names the
    file in errors."""
    try:
        info = msgspec.json.decode(data, type=_ExchangeInfo)
    except msgspec.DecodeError as err:
        raise TickbusError(f"{where}: not a Binance exchangeInfo response ({err})") from None
    out: dict[str, Filters] = {}
    for sym in info.symbols:
        f = Filters(0, 0)
        for flt in sym.filters:
            at = f"{where}: {sym.symbol} {flt.filterType}"
            if flt.filterType == "PRICE_FILTER":
                f.tick = units(flt.tickSize, at)
                f.min_px = units(flt.minPrice, at)
                f.max_px = units(flt.maxPrice, at)
            elif flt.filterType == "LOT_SIZE":
                f.step = units(flt.stepSize, at)
                f.min_qty = units(flt.minQty, at)
                f.max_qty = units(flt.maxQty, at)
            elif flt.filterType in ("MIN_NOTIONAL", "NOTIONAL"):
                text = flt.minNotional if flt.minNotional != "0" else flt.notional
                f.min_notional = units(text, at) * SCALE
        if f.tick > 0 and f.step > 0:  # a symbol without both cannot be checked: not tradable
            out[sym.symbol] = f
    return out


def load(
    market: str, filters_file: Path | None, overrides: dict[str, SymbolFilters], key: str
) -> dict[str, Filters]:
    """The filters of every tradable symbol: the bundled exchangeInfo of ``market`` (or
    ``filters_file``), then the config's overrides. ``key`` is the config key for errors."""
    path = filters_file or BUNDLED[market]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TickbusError(f"{key}.filters_file: cannot read {path}: {err.strerror}") from None
    table = from_exchange_info(data, str(path))
    for symbol, over in overrides.items():
        at = f"{key}.filters.{symbol}"
        base = table.get(symbol)
        vals: dict[str, Any] = msgspec.structs.asdict(base) if base else {}
        for name, attr in (
            ("tick_size", "tick"), ("step_size", "step"), ("min_qty", "min_qty"),
            ("max_qty", "max_qty"), ("min_price", "min_px"), ("max_price", "max_px"),
            ("min_notional", "min_notional"),
        ):  # fmt: skip
            value = getattr(over, name)
            if value is not None:
                vals[attr] = units(value, f"{at}.{name}")
                if attr == "min_notional":
                    vals[attr] *= SCALE
        if not vals.get("tick") or not vals.get("step"):
            raise TickbusError(f"{at}: tick_size and step_size must be set and > 0")
        table[symbol] = Filters(**vals)
    return table
