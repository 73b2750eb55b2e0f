"""Exact fixed-point conversion between decimal strings and ``schemas.SCALE`` integers."""

from __future__ import annotations

from tickbus.schemas import SCALE

_DECIMALS = len(str(SCALE)) - 1


def to_fixed(text: str | bytes) -> int:
    """Parse a decimal string (``"67000.01000000"``) into an exact ``SCALE`` integer.

    Raises ``ValueError`` for anything that is not a plain non-exponent decimal or that has
    more than 8 significant decimals (which would not be exact)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    neg = text.startswith("-")
    whole, dot, frac = text.lstrip("+-").partition(".")
    if not (whole.isdigit() or (whole == "" and dot and frac)) or (frac and not frac.isdigit()):
        raise ValueError(f"not a decimal number: {text!r}")
    frac = frac.rstrip("0")
    if len(frac) > _DECIMALS:
        raise ValueError(f"{text!r} has more than {_DECIMALS} decimals")
    value = int(whole or "0") * SCALE + int(frac.ljust(_DECIMALS, "0") or "0")
    return -value if neg else value


def from_fixed(value: int) -> str:
    """Format a ``SCALE`` integer as a plain decimal string without trailing zeros."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), SCALE)
    text = f"{frac:0{_DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{text}" if text else f"{sign}{whole}"
