"""Cut the first N seconds off an hftbacktest-format capture, keeping lines byte-exact.

Used to build tickbus's shipped sample (``plugins/binance/data/``)::

    python -m tickbus.tools.trim_capture \\
        ../shared/data/binance/hftbacktest/examples/spot/btcusdt_20240808.gz \\
        plugins/binance/data/btcusdt_spot_20240808_sample.gz --seconds 180

Lines are copied unchanged (bytes, line endings included) while their local timestamp is within
``--seconds`` of the first line's. The output is gzip with a zero mtime, so the same input always
gives the same bytes. By default the cut must contain a REST snapshot line, because a capture
without one cannot seed an order book.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

from tickbus.plugins.binance.capture import CaptureError, read_capture

_NS_PER_UNIT = {19: 1, 16: 1000}  # digits of the line timestamp -> ns multiplier


def trim(src: Path, dst: Path, seconds: float, *, require_rest: bool = True) -> int:
    """Copy the lines of ``src`` within ``seconds`` of its first line to gzip ``dst``.

    Returns the number of lines written. Raises :class:`CaptureError` on a line that is not
    ``<int> <json>`` or when ``require_rest`` and no REST snapshot line falls inside the cut.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    limit_ns = int(seconds * 1_000_000_000)
    first_ns: int | None = None
    n = 0
    saw_rest = False
    with open(src, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    fin_cm = gzip.open(src, "rb") if gzipped else open(src, "rb")
    with fin_cm as fin, open(dst, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
            for lineno, line in enumerate(fin, 1):
                head, sep, body = line.partition(b" ")
                if not sep or not head.isdigit() or len(head) not in _NS_PER_UNIT:
                    raise CaptureError(f"{src}:{lineno}: not an hftbacktest line: {line[:80]!r}")
                ts_ns = int(head) * _NS_PER_UNIT[len(head)]
                if first_ns is None:
                    first_ns = ts_ns
                # the source is time-ordered, so the first line past the limit ends the cut
                if ts_ns - first_ns >= limit_ns:
                    break
                saw_rest = saw_rest or not body.startswith(b'{"stream":')
                out.write(line)
                n += 1
    if require_rest and not saw_rest:
        dst.unlink()
        raise CaptureError(f"{src}: no REST snapshot line in the first {seconds} s")
    # read it back with the real reader: the sample must parse cleanly
    sum(1 for _ in read_capture(dst))
    return n


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(prog="trim_capture", description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="hftbacktest capture (.gz or plain)")
    ap.add_argument("dst", type=Path, help="output .gz")
    ap.add_argument("--seconds", type=float, default=180.0, help="length of the cut (default 180)")
    ap.add_argument(
        "--allow-no-rest", action="store_true", help="do not require a REST snapshot in the cut"
    )
    args = ap.parse_args(argv)
    try:
        n = trim(args.src, args.dst, args.seconds, require_rest=not args.allow_no_rest)
    except (OSError, CaptureError, ValueError) as exc:
        print(f"trim_capture: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {n} lines, {args.dst.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
