"""A preallocated HDR-style latency histogram: log-linear buckets, O(1) record, percentiles.

Values are non-negative integers (nanoseconds). Below ``2 * S`` (``S = 2**precision`` sub-
buckets per octave, 128 by default) every value has its own bucket; above, each power of two
is cut into ``S`` equal buckets, so a value is known to within ``1/S`` of itself (0.8 % at
the default precision) from 1 ns to ``2**max_bits`` ns (2**45 ns: 9.8 hours) in 5,000
int64 counters (40 KB), allocated once. The sum and the maximum are kept exactly (the
minimum to within its bucket).

Recording is what a probe on the hot path pays: a ``bit_length``, a shift, one counter
bumped through a ``memoryview`` of the numpy array (a numpy scalar round trip costs three
times as much), the sum and the max; the count is the counters' sum, taken when read.
Percentiles report a bucket's highest value (clamped to the exact maximum): never below the
true value, at most ``1/S`` above it. Negative values (a clock
stepped back between the two stamps) and values beyond the range are counted apart
(``negative``, ``overflow``) and recorded as 0 / the top bucket, so nothing is lost
silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Histogram", "PERCENTILES", "summary_us"]

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


class Histogram:
    """Counts of values in log-linear buckets (see the module docstring)."""

    __slots__ = (
        "precision", "max_bits", "counts", "total", "max", "negative", "overflow", "_mv",
        "_sub", "_shift0", "_top", "_limit",
    )  # fmt: skip

    def __init__(self, precision: int = 7, max_bits: int = 45) -> None:
        if not 1 <= precision <= 16 or not precision + 2 <= max_bits <= 62:
            raise ValueError(f"bad histogram shape: precision {precision}, max_bits {max_bits}")
        self.precision = precision
        self.max_bits = max_bits
        self._sub = 1 << precision
        self._shift0 = precision + 1  # values below 2**(precision+1) are exact
        self._top = self._index((1 << max_bits) - 1)
        self._limit = (1 << max_bits) - 1
        self.counts = np.zeros(self._top + 1, np.int64)
        self._mv = memoryview(self.counts)  # type: ignore[arg-type]  # no numpy scalars
        self.total = 0
        self.max = 0
        self.negative = 0
        self.overflow = 0

    # ------------------------------------------------------------------ buckets

    def _index(self, v: int) -> int:
        shift = v.bit_length() - self._shift0
        if shift <= 0:
            return v
        return (shift << self.precision) + (v >> shift)

    def bucket_high(self, i: int) -> int:
        """The highest value that lands in bucket ``i``."""
        if i < 2 * self._sub:
            return i
        shift = i // self._sub - 1
        m = i - shift * self._sub
        return ((m + 1) << shift) - 1

    # ------------------------------------------------------------------ recording

    def record(self, v: int) -> None:
        """Count one value (ns)."""
        if v < 0 or v > self._limit:
            self._odd(v)
            return
        shift = v.bit_length() - self._shift0
        self._mv[v if shift <= 0 else (shift << self.precision) + (v >> shift)] += 1
        self.total += v
        if v > self.max:
            self.max = v

    def _odd(self, v: int) -> None:
        """A value outside the range: counted apart, recorded at the nearest end."""
        if v < 0:
            self.negative += 1
            self._mv[0] += 1
        else:
            self.overflow += 1
            self._mv[self._top] += 1
            self.total += self._limit
            self.max = self._limit

    def record_array(self, values: np.ndarray) -> None:
        """Count every value of an integer array (vectorised; same buckets as record)."""
        v = np.asarray(values, dtype=np.int64)
        if v.size == 0:
            return
        self.negative += int((v < 0).sum())
        self.overflow += int((v > self._limit).sum())
        v = np.clip(v, 0, self._limit)
        # bit_length of ints below 2**53 is frexp's exponent (exact in a double)
        bits = np.frexp(v.astype(np.float64))[1].astype(np.int64)
        shift = bits - self._shift0
        idx = np.where(shift <= 0, v, (shift << self.precision) + (v >> np.maximum(shift, 0)))
        np.add.at(self.counts, idx, 1)
        self.max = max(self.max, int(v.max()))
        self.total += int(v.sum())

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts (same shape) to this one."""
        if (other.precision, other.max_bits) != (self.precision, self.max_bits):
            raise ValueError("cannot merge histograms of different shapes")
        self.counts += other.counts
        self.max = max(self.max, other.max)
        self.total += other.total
        self.negative += other.negative
        self.overflow += other.overflow

    # ------------------------------------------------------------------ reading

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return int(self.counts.sum())

    @property
    def min(self) -> int:
        """The smallest value recorded, to within its bucket (its bucket's lowest value)."""
        nz = np.flatnonzero(self.counts)
        return self.bucket_high(int(nz[0]) - 1) + 1 if nz.size and nz[0] > 0 else 0

    def percentile(self, q: float) -> int:
        """The value at or below which ``q`` percent of the values lie (bucket's highest
        value, clamped to the exact max); 0 for an empty histogram."""
        cum = np.cumsum(self.counts)
        n = int(cum[-1])
        if n == 0:
            return 0
        if q >= 100.0:
            return self.max
        rank = max(1, int(np.ceil(q / 100.0 * n)))
        i = int(np.searchsorted(cum, rank))
        return min(self.bucket_high(i), self.max)

    @property
    def mean(self) -> float:
        """Arithmetic mean of the values (exact sum / count)."""
        n = self.count
        return self.total / n if n else 0.0

    def summary(self, scale: float = 1e-3) -> dict[str, Any]:
        """``n``, mean, p50/p90/p99/p99.9, min and max, times ``scale`` (default: ns -> µs)."""
        out: dict[str, Any] = {"n": self.count}
        if not out["n"]:
            return out
        out["mean"] = round(self.mean * scale, 3)
        out["min"] = round(self.min * scale, 3)
        for key, q in PERCENTILES:
            out[key] = round(self.percentile(q) * scale, 3)
        out["max"] = round(self.max * scale, 3)
        if self.negative:
            out["negative"] = self.negative
        if self.overflow:
            out["overflow"] = self.overflow
        return out

    # ------------------------------------------------------------------ (de)serialising

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (non-zero buckets only)."""
        nz = np.flatnonzero(self.counts)
        return {
            "precision": self.precision, "max_bits": self.max_bits, "count": self.count,
            "total": self.total, "max": self.max, "negative": self.negative,
            "overflow": self.overflow,
            "buckets": [[int(i), int(self.counts[i])] for i in nz],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        """The histogram :meth:`to_dict` described."""
        h = cls(int(d["precision"]), int(d["max_bits"]))
        for i, n in d["buckets"]:
            h.counts[int(i)] = int(n)
        if int(h.counts.sum()) != int(d["count"]):
            raise ValueError("histogram buckets do not add up to its count")
        h.total, h.max = int(d["total"]), int(d["max"])
        h.negative, h.overflow = int(d["negative"]), int(d["overflow"])
        return h


def summary_us(h: Histogram) -> dict[str, Any]:
    """The histogram's summary in microseconds."""
    return h.summary(1e-3)
