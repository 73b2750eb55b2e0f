"""An orders-per-second token bucket on the kernel clock, in exact integers.

Kernel-clock time (recorded time in replay) makes the limit deterministic in a backtest.
Levels are kept in units of 1e-12 token (1e9 ns x 1e3 for rates in thousandths per second),
so refilling is an integer multiply: no float rounding drifts the limit.
"""

from __future__ import annotations

_TOKEN = 10**12  # one token; refill per ns = rate in milli-tokens per second


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; a take costs one token."""

    __slots__ = ("rate_milli", "cap", "level", "last_ns")

    def __init__(self, rate: float, burst: int, now_ns: int = 0) -> None:
        self.rate_milli = round(rate * 1000)
        self.cap = burst * _TOKEN
        self.level = self.cap  # start full: the first burst passes
        self.last_ns = now_ns

    def take(self, now_ns: int) -> bool:
        """Take a token at ``now_ns``; False (and nothing taken) if the bucket is empty."""
        dt = now_ns - self.last_ns
        if dt > 0:  # a clock step backwards refills nothing
            level = self.level + dt * self.rate_milli
            self.level = level if level < self.cap else self.cap
            self.last_ns = now_ns
        if self.level >= _TOKEN:
            self.level -= _TOKEN
            return True
        return False

    def tokens(self, now_ns: int) -> float:
        """Tokens available at ``now_ns`` (for status and rejection reasons)."""
        dt = max(0, now_ns - self.last_ns)
        return min(self.cap, self.level + dt * self.rate_milli) / _TOKEN
