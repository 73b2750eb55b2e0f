"""Readers and a writer for recorded Binance market-data captures.

Three on-disk formats are understood (see ``shared/data/binance/SOURCES.md`` section 2):

* **hftbacktest** (gzip text): ``<local_ts> <raw json>`` per line; the timestamp is in ns
  (19 digits, 2024 files) or µs (16 digits, 2023 ``*.dat.gz`` files). WS frames are combined-stream
  envelopes, the REST depth snapshot is a bare ``{"lastUpdateId":...}`` body.
* **cryptofeed split** (plain text): ``<unix seconds float>: <json>`` WS lines after a
  ``<wss url> <-> <ts>`` header; HTTP files hold ``<url> -> <ts>: <json>`` lines;
  ``configuration: {...}`` lines are metadata.
* **cryptofeed single file**: the same line kinds interleaved in one file.

:func:`read_capture` turns any mix of these files into one time-ordered stream of :class:`Record`,
validating every line. :func:`read_frames` is the replay's fast variant: plain tuples, and the
JSON of hftbacktest ws lines is *not* validated (the frame parser does that), so an unreadable
line becomes a ``"bad"`` item instead of an error.
:class:`CaptureWriter` writes the hftbacktest 2024 format (the one a ``tickbus record`` tool emits).
"""

from __future__ import annotations

import functools
import gzip
import heapq
import itertools
import os
import queue
import re
import threading
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np
from numba import njit

from .parse import _literal

__all__ = [
    "SAMPLE",
    "SYMBOL_RE",
    "CaptureError",
    "CaptureWriter",
    "Frame",
    "Record",
    "check_capture",
    "check_symbols",
    "read_capture",
    "read_frames",
]

#: The small real capture shipped with tickbus (first ~3 minutes of hftbacktest's spot BTCUSDT
#: 2024-08-08 file, REST snapshot included) so a fresh clone can replay and test without ../shared.
SAMPLE = Path(__file__).parent / "data" / "btcusdt_spot_20240808_sample.gz"

_GZIP_MAGIC = b"\x1f\x8b"
_SAMPLE_LEN = 80  # bytes of a bad line quoted in error messages

# cryptofeed line shapes (SOURCES.md §2.3); bytes regexes so payloads stay byte-exact.
_CF_WS = re.compile(rb"^([0-9]+(?:\.[0-9]+)?): (\{.*)$", re.S)
_CF_REST = re.compile(rb"^(https?://\S+) -> ([0-9]+(?:\.[0-9]+)?): (.*)$", re.S)
_CF_HEADER = re.compile(rb"^wss?://\S+ <-> [0-9]+(?:\.[0-9]+)?$")
_CF_CONFIG = b"configuration: "
_HFT_LINE = re.compile(rb"^([0-9]+) (.*)$", re.S)


class CaptureError(ValueError):
    """A capture file (or a line in it) is not in any supported format."""


#: A Binance symbol as tickbus accepts it in a config and in a topic: upper-case letters,
#: digits and ``_`` (USD-M delivery ``BTCUSDT_250627``, COIN-M ``BTCUSD_PERP``), 1 to 20 long -
#: never a dot, NUL or anything else that would change a topic's meaning.
SYMBOL_RE = re.compile(r"[A-Z0-9_]{1,20}")


def check_symbols(symbols: list[str], key: str) -> list[str]:
    """The configured ``symbols`` upper-cased, without duplicates; a ``ValueError`` naming the
    config ``key`` for one that is not a Binance symbol (see :data:`SYMBOL_RE`)."""
    out: list[str] = []
    for i, raw in enumerate(symbols):
        sym = raw.upper() if raw.isascii() else raw
        if not SYMBOL_RE.fullmatch(sym):
            raise ValueError(f"{key}[{i}]: {raw!r} is not a Binance symbol (1-20 of A-Z, 0-9, _)")
        if sym not in out:
            out.append(sym)
    return out


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded message, as received.

    ``ts_ns`` is the local receive time in ns; ``kind`` is ``"ws"`` for a stream frame and
    ``"rest"`` for a REST response body; ``stream`` is the combined-stream name (ws only);
    ``symbol`` is the upper-case symbol when known; ``payload`` is the exact recorded bytes
    (the ``{"stream":..,"data":..}`` envelope for ws, the raw body for rest).
    """

    ts_ns: int
    kind: Literal["ws", "rest"]
    stream: str | None
    symbol: str | None
    payload: bytes


class _Envelope(msgspec.Struct):
    """Just enough of a JSON object to classify it; decoding it also validates the JSON."""

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty = absent (Raw cannot sit in a union)
    symbol: str | None = None  # COIN-M REST snapshots carry their symbol


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _sample(line: bytes) -> str:
    text = line[:_SAMPLE_LEN].decode("utf-8", "replace")
    return repr(text + ("..." if len(line) > _SAMPLE_LEN else ""))


@functools.cache
def _symbol_of_stream(stream: str) -> str | None:
    # "btcusdt@depth@100ms" -> "BTCUSDT"; market-wide streams ("!bookTicker") have no symbol.
    head = stream.split("@", 1)[0]
    if not head or head.startswith("!"):
        return None
    return head.upper()


def _classify(payload: bytes) -> _Envelope:
    """Decode a JSON object just far enough to tell a ws envelope from a REST body."""
    try:
        return _envelope_decoder.decode(payload)
    except UnicodeDecodeError as exc:  # msgspec's error for a str field that is not UTF-8
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None


def _is_ws(env: _Envelope) -> bool:
    return env.stream is not None and len(env.data) > 0


def _seconds_to_ns(text: bytes) -> int:
    # cryptofeed writes Python float reprs (up to 7 decimals); the recorder clock is µs-precise,
    # so round to the µs exactly (Decimal, no binary float error) and scale to ns.
    try:
        us = (Decimal(text.decode("ascii")) * 1_000_000).to_integral_value(ROUND_HALF_EVEN)
    except InvalidOperation as exc:  # the regex makes this unreachable, kept as a guard
        raise ValueError(f"bad timestamp {text!r}") from exc
    return int(us) * 1000


def _open_lines(path: Path) -> IO[bytes]:
    """Open a capture file for binary line reading, transparently gunzipping."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _strip_eol(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    return raw


def _detect(path: Path, line: bytes, lineno: int) -> Literal["hft", "cf"]:
    if _HFT_LINE.match(line):
        return "hft"
    if (
        _CF_WS.match(line)
        or _CF_REST.match(line)
        or _CF_HEADER.match(line)
        or line.startswith(_CF_CONFIG)
    ):
        return "cf"
    raise CaptureError(
        f"{path}:{lineno}: not a recognised capture format "
        f"(hftbacktest '<int> <json>' or cryptofeed '<float>: <json>'): {_sample(line)}"
    )


def _hft_record(path: Path, lineno: int, line: bytes) -> Record:
    ts_b, _, payload = line.partition(b" ")
    if not ts_b.isdigit() or not payload:
        raise CaptureError(
            f"{path}:{lineno}: expected hftbacktest line '<int> <json>': {_sample(line)}"
        )
    if len(ts_b) == 19:
        ts_ns = int(ts_b)
    elif len(ts_b) == 16:  # 2023 *.dat.gz recorder wrote microseconds
        ts_ns = int(ts_b) * 1000
    else:
        raise CaptureError(
            f"{path}:{lineno}: timestamp {ts_b.decode()!r} has {len(ts_b)} digits; "
            f"expected 19 (ns) or 16 (µs): {_sample(line)}"
        )
    try:
        env = _classify(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CaptureError(f"{path}:{lineno}: invalid JSON ({exc}): {_sample(line)}") from None
    if _is_ws(env):
        return Record(ts_ns, "ws", env.stream, _symbol_of_stream(env.stream), payload)
    # A REST body; its symbol (if not in the body) is filled in from the file's ws streams.
    return Record(ts_ns, "rest", None, env.symbol.upper() if env.symbol else None, payload)


def _read_hft(path: Path, lines: Iterator[tuple[int, bytes]]) -> Iterator[Record]:
    """hftbacktest lines -> records; REST lines get the file's (single) ws symbol."""
    ws_symbols: set[str] = set()
    pending: list[tuple[int, Record]] = []  # REST lines seen before the first ws frame
    unnamed_rest: int | None = None  # line of a REST record whose symbol we inferred

    def check_single(lineno: int) -> None:
        if len(ws_symbols) > 1 and unnamed_rest is not None:
            raise CaptureError(
                f"{path}:{lineno}: hftbacktest file has several symbols "
                f"({', '.join(sorted(ws_symbols))}) so the REST snapshot at line "
                f"{unnamed_rest} cannot be attributed to one"
            )

    for lineno, line in lines:
        rec = _hft_record(path, lineno, line)
        if rec.kind == "ws":
            if rec.symbol is not None:
                ws_symbols.add(rec.symbol)
                check_single(lineno)
            if pending:
                sym = next(iter(ws_symbols), None)
                for _, p in pending:
                    yield Record(p.ts_ns, p.kind, p.stream, sym, p.payload)
                pending.clear()
            yield rec
        elif rec.symbol is not None:
            yield rec
        else:
            unnamed_rest = lineno
            check_single(lineno)
            if ws_symbols:
                yield Record(rec.ts_ns, rec.kind, rec.stream, next(iter(ws_symbols)), rec.payload)
            else:
                pending.append((lineno, rec))
    # A file of REST lines only: nothing to infer the symbol from.
    for _, p in pending:
        yield p


def _read_cf(path: Path, lines: Iterator[tuple[int, bytes]]) -> Iterator[Record]:
    """cryptofeed lines -> records; header and configuration lines carry no message."""
    for lineno, line in lines:
        m = _CF_WS.match(line)
        if m is not None:
            payload = m.group(2)
            try:
                env = _classify(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise CaptureError(
                    f"{path}:{lineno}: invalid JSON ({exc}): {_sample(line)}"
                ) from None
            if not _is_ws(env):
                raise CaptureError(
                    f"{path}:{lineno}: ws frame is not a combined-stream envelope: {_sample(line)}"
                )
            yield Record(
                _seconds_to_ns(m.group(1)),
                "ws",
                env.stream,
                _symbol_of_stream(env.stream),
                payload,
            )
            continue
        m = _CF_REST.match(line)
        if m is not None:
            url, payload = m.group(1).decode("ascii", "replace"), m.group(3)
            try:
                _classify(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise CaptureError(
                    f"{path}:{lineno}: invalid JSON ({exc}): {_sample(line)}"
                ) from None
            syms = parse_qs(urlsplit(url).query).get("symbol")
            yield Record(
                _seconds_to_ns(m.group(2)),
                "rest",
                None,
                syms[0].upper() if syms else None,
                payload,
            )
            continue
        if _CF_HEADER.match(line) or line.startswith(_CF_CONFIG):
            continue
        raise CaptureError(f"{path}:{lineno}: not a cryptofeed capture line: {_sample(line)}")


Piece = tuple[bytes, int, int, bool]
"""Whole lines of a capture's text: ``(buffer, start, end, final)``: ``buffer[start:end]``
ends in ``\\n``, or (``final``) is a last line without one."""


def _text_chunks(path: Path, fh: IO[bytes] | _ReadAhead | _Counted) -> Iterator[Piece]:
    """The file's text as :data:`Piece` s, in the buffers it is read in (~1 MiB, or the
    read-ahead's chunks): no big copies - a line cut by a buffer boundary is joined on its
    own. A readline() per line costs ~3 us through gzip."""
    rest = b""
    try:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            start = 0
            if rest:
                nl = chunk.find(b"\n")
                if nl < 0:  # no line ends yet
                    rest += chunk
                    continue
                line = rest + chunk[: nl + 1]
                yield line, 0, len(line), False
                start = nl + 1
            end = chunk.rfind(b"\n") + 1
            if end > start:
                yield chunk, start, end, False
                rest = chunk[end:]
            else:
                rest = chunk[start:]
    except (OSError, EOFError, zlib.error) as exc:  # truncated / corrupt gzip
        raise CaptureError(f"{path}: unreadable capture: {exc}") from exc
    if rest:
        yield rest, 0, len(rest), True


def _lines(piece: Piece) -> list[bytes]:
    """The lines of a :data:`Piece` without their EOL (``\\n`` or ``\\r\\n``); a last line
    without ``\\n`` is kept as it is."""
    buf, start, end, final = piece
    text = buf[start:end] if start or end < len(buf) else buf
    if final:
        return [text]
    lines = text.split(b"\n")
    lines.pop()  # after the last \n
    if b"\r" in text:
        lines = [raw[:-1] if raw.endswith(b"\r") else raw for raw in lines]
    return lines


def _line_chunks(pieces: Iterator[Piece]) -> Iterator[tuple[int, list[bytes]]]:
    """``(number of the first line, lines)`` per piece of text, blank lines included."""
    lineno = 1
    for piece in pieces:
        lines = _lines(piece)
        yield lineno, lines
        lineno += len(lines)


def _numbered(chunks: Iterator[tuple[int, list[bytes]]]) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their numbers."""
    for base, lines in chunks:
        for lineno, raw in enumerate(lines, base):
            if raw and not raw.isspace():  # blank lines (file tails) carry nothing
                yield lineno, raw


def _gunzip(raw: IO[bytes], block: int = 1 << 18, most: int = 4 << 20) -> Iterator[bytes]:
    """Decompress a gzip file (several members and zero padding allowed, as ``gzip`` reads
    them) in big blocks, so that zlib, which releases the GIL, does long stretches of work
    per call. Raises ``EOFError`` for a truncated file and ``gzip.BadGzipFile`` for corrupt
    data, like ``gzip.GzipFile``; at most ``most`` bytes per chunk."""
    d = zlib.decompressobj(31)
    started = False  # bytes of the current member seen
    members = 0
    while True:
        data = raw.read(block)
        if not data:
            if started:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            return
        while data:
            if not started:
                if members:
                    data = data.lstrip(b"\x00")  # padding between / after members
                    if not data:
                        break
                started = True
            try:
                out = d.decompress(data, most)
                while d.unconsumed_tail and not d.eof:  # at the end, the rest is unused_data
                    if out:
                        yield out
                    out = d.decompress(d.unconsumed_tail, most)
            except zlib.error as exc:
                raise gzip.BadGzipFile(f"corrupt gzip data: {exc}") from None
            if out:
                yield out
            data = b""
            if d.eof:  # a member ended: what follows is padding or another member
                data = d.unused_data
                d = zlib.decompressobj(31)
                started = False
                members += 1


Meter = tuple[list[int], int]
"""Where a reader counts the bytes it read from the disk: ``(counts, index)`` ->
``counts[index]`` (one slot per file)."""


class _Counted:
    """A binary file that adds the size of every read to its :data:`Meter` slot."""

    __slots__ = ("_f", "_counts", "_i")

    def __init__(self, f: IO[bytes], meter: Meter) -> None:
        self._f = f
        self._counts, self._i = meter

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._counts[self._i] += len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReadAhead:
    """A gzip capture decompressed ahead in a thread of its own: ``read()`` returns the next
    chunk. zlib releases the GIL while it inflates (a third of the replay's time otherwise),
    so this runs beside the replay on another core; big blocks keep the thread's own GIL
    needs - and so its interference with the replay - to a few dozen per file.
    ``close()`` stops the thread and closes the file. ``meter``: set, when ``read()`` hands
    out a chunk, to the bytes of the file read to make it (so it runs ahead of what the
    reader has seen by one 256 KiB block at most, not by the whole queue)."""

    def __init__(self, path: Path, ahead: int = 4, meter: Meter | None = None) -> None:
        self._read_so_far = [0]  # the worker's count; the meter shows the reader's
        self._raw = _Counted(open(path, "rb"), (self._read_so_far, 0))
        self._meter = meter
        self._queue: queue.Queue[tuple[bytes, int] | BaseException] = queue.Queue(ahead)
        self._stop = False
        self._eof = False
        self._thread = threading.Thread(target=self._work, name=f"read {path.name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for chunk in _gunzip(self._raw):
                if self._stop:
                    return
                self._put((chunk, self._read_so_far[0]))
            self._put((b"", self._read_so_far[0]))
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: tuple[bytes, int] | BaseException) -> None:
        while not self._stop:
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        """The next chunk (``size`` is ignored), ``b""`` at the end."""
        if self._eof:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        chunk, done = item
        if self._meter is not None:
            counts, i = self._meter
            counts[i] = done
        if not chunk:
            self._eof = True
        return chunk

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._raw.close()

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(
    path: Path, read_ahead: bool = False, meter: Meter | None = None
) -> tuple[IO[bytes] | _ReadAhead | _Counted, str | None, Iterator[Piece]]:
    """Open a capture and detect its format on the first non-blank line: ``(file, "hft" |
    "cf" | None for a file without one, all its text (see :func:`_text_chunks`))``. The
    caller closes the file. ``read_ahead``: decompress a gzip file in a thread (``meter``
    counts the bytes read from the disk; it needs ``read_ahead``)."""
    try:
        fh: IO[bytes] | _ReadAhead | _Counted = _open_lines(path)
        if read_ahead and isinstance(fh, gzip.GzipFile):
            fh.close()
            fh = _ReadAhead(path, meter=meter)
        elif meter is not None:
            assert read_ahead, "a meter counts what the read-ahead or a plain file reads"
            fh = _Counted(fh, meter)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot open capture: {exc}") from exc
    try:
        pieces = _text_chunks(path, fh)
        seen: list[Piece] = []
        lineno = 1
        for piece in pieces:
            seen.append(piece)
            buf, pos, end, final = piece
            while pos < end:
                nl = end if final else buf.index(b"\n", pos)
                raw = buf[pos:nl]
                if not final and raw.endswith(b"\r"):
                    raw = raw[:-1]
                if raw and not raw.isspace():
                    return fh, _detect(path, raw, lineno), itertools.chain(seen, pieces)
                lineno += 1
                pos = nl + 1
    except BaseException:
        fh.close()
        raise
    return fh, None, iter(())


def _read_file(path: Path) -> Iterator[Record]:
    """Records of one file, in file order (format auto-detected on the first non-blank line)."""
    fh, fmt, pieces = _open(path)
    with fh:
        if fmt is not None:
            reader = _read_hft if fmt == "hft" else _read_cf
            yield from reader(path, _numbered(_line_chunks(pieces)))


def check_capture(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CaptureError` (naming the file) unless ``path`` is a capture that can be
    read: it exists, opens, decompresses and its first line is in a known format. Reads only
    the first chunk (a truncated end is found by the reader, at the end)."""
    (f,) = _capture_files((path,), "check_capture")
    fh, fmt, _ = _open(f)
    fh.close()
    if fmt is None:
        raise CaptureError(f"{f}: empty capture (no records)")


def _capture_files(paths: tuple[str | os.PathLike[str], ...], caller: str) -> list[Path]:
    """The paths as files that exist, or the reader's error."""
    if not paths:
        raise ValueError(f"{caller}() needs at least one path")
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise CaptureError(f"{f}: no such capture file")
    return files


def read_capture(*paths: str | os.PathLike[str]) -> Iterator[Record]:
    """Stream the records of one or more capture files, merged in timestamp order.

    Each file's format is auto-detected (gzip or plain; hftbacktest or cryptofeed). Files are
    read lazily and merged with a heap, so memory stays small; equal timestamps keep the order
    of ``paths``. A line in no known format raises :class:`CaptureError` naming file and line.
    """
    files = _capture_files(paths, "read_capture")
    if len(files) == 1:
        yield from _read_file(files[0])
        return
    # heapq.merge is stable across inputs: ties come out in argument order.
    yield from heapq.merge(*(_read_file(f) for f in files), key=lambda r: r.ts_ns)


Frame = tuple[int, str, str | None, bytes]
"""An item of :func:`read_frames`: ``(ts_ns, kind, symbol, payload)``.

``kind`` ``"ws"`` / ``"rest"``: ``symbol`` and ``payload`` as in :class:`Record`. ``"bad"``: a
line the reader could not read; ``symbol`` says why (file, line, reason), ``payload`` is the
line, ``ts_ns`` the time of the file's previous good line (0 before the first one)."""

_WS_HEAD = b' {"stream":"'  # what follows a 19-digit timestamp on an hftbacktest ws line
_TS_LEN = 19
_STREAM_AT = _TS_LEN + len(_WS_HEAD)
_MAX_STREAMS = 4096  # a per-file cache of stream -> symbol; garbage streams cannot grow it


_ROWS = 4096  # lines per call of the line kernel
_KERNEL_STREAMS = 64  # streams the line kernel knows; lines of others take the Python path


@njit(cache=True, nogil=True)  # a moment for the read-ahead threads to take the GIL
def _scan_hft(
    text: bytes, pos: int, n: int, rows: np.ndarray, names: np.ndarray, ends: np.ndarray
) -> tuple[int, int]:
    """The hot path of :func:`_frames_file` for a run of lines: from ``pos`` (a line start
    in ``text``, whose lines up to ``n`` all end in ``\\n``), each line ``<19 digits>
    {"stream":"<name>"...`` with a first digit below 9 (no int64 overflow), ``<name>`` the
    ``i``-th of the known streams (``names[ends[i - 1]:ends[i]]``) and no ``\\r`` before its
    ``\\n`` becomes a row ``(ts, payload start, payload end, i)`` - a column of ``rows``.
    Stops at the first other line, or when ``rows`` is full: returns ``(rows written, where
    it stopped)``."""
    buf = np.frombuffer(text, dtype=np.uint8)
    cap = rows.shape[1]
    known = ends.shape[0]
    k = 0
    while k < cap and pos < n:
        nl = pos
        while nl < n and buf[nl] != 10:
            nl += 1
        if nl >= n or nl - pos < 32 or buf[nl - 1] == 13 or not 48 <= buf[pos] <= 56:
            break
        ts = 0
        q = pos
        while q < pos + 19 and 48 <= buf[q] <= 57:
            ts = ts * 10 + (np.int64(buf[q]) - 48)
            q += 1
        if q < pos + 19 or _literal(buf, q, nl, b' {"stream":"') < 0:
            break
        s = pos + 31
        e = s
        while e < nl and buf[e] != 34:
            e += 1
        if e >= nl:
            break
        found = -1
        start = 0
        for i in range(known):
            if ends[i] - start == e - s:
                j = 0
                while j < e - s and names[start + j] == buf[s + j]:
                    j += 1
                if j == e - s:
                    found = i
                    break
            start = ends[i]
        if found < 0:
            break
        rows[0, k] = ts
        rows[1, k] = pos + 20
        rows[2, k] = nl
        rows[3, k] = found
        k += 1
        pos = nl + 1
    return k, pos


def _frames_file(path: Path, meter: Meter | None = None) -> Generator[Frame, None, None]:
    """Frames of one file, in file order: hftbacktest lines like :func:`_read_hft` but without
    validating ws JSON; cryptofeed lines with the validating reader (small, old captures).

    A line ``<19 digits> {"stream":"<name>"...`` whose stream name was seen before costs a few
    slices: its symbol comes from a per-file cache (and runs of such lines are found by a
    compiled kernel, :func:`_scan_hft`). Every other line (first line of a stream, REST
    bodies, µs timestamps, anything odd) takes the validating path, whose errors become
    ``"bad"`` frames. Only the file-level errors of :func:`read_capture` remain errors:
    unreadable gzip, and a REST snapshot that several symbols make ambiguous."""
    fh, fmt, pieces = _open(path, read_ahead=True, meter=meter)
    with fh:
        if fmt == "cf":
            for r in _read_cf(path, _numbered(_line_chunks(pieces))):
                yield r.ts_ns, r.kind, r.symbol, r.payload
            return
        if fmt is None:
            return
        streams: dict[bytes, str | None] = {}  # stream name bytes -> symbol (ws lines seen)
        # the first _KERNEL_STREAMS of them, for _scan_hft
        names: list[bytes] = []
        syms: list[str | None] = []
        table = (np.frombuffer(b"", dtype=np.uint8), np.zeros(0, dtype=np.int64))
        ws_symbols: set[str] = set()
        pending: list[Frame] = []  # REST lines seen before the first ws frame
        unnamed_rest: int | None = None  # line of a REST record whose symbol we inferred
        ts = 0
        head, at, n_ts = _WS_HEAD, _STREAM_AT, _TS_LEN
        miss: Any = streams  # a sentinel no symbol can be

        def check_single(lineno: int) -> None:
            if len(ws_symbols) > 1 and unnamed_rest is not None:
                raise CaptureError(
                    f"{path}:{lineno}: hftbacktest file has several symbols "
                    f"({', '.join(sorted(ws_symbols))}) so the REST snapshot at line "
                    f"{unnamed_rest} cannot be attributed to one"
                )

        def learn(key: bytes | None, symbol: str | None) -> None:
            """Cache a stream's symbol (None: forget them all)."""
            nonlocal table
            if key is None:
                streams.clear()
                names.clear()
                syms.clear()
            elif len(streams) < _MAX_STREAMS:
                streams[key] = symbol
                if len(names) >= _KERNEL_STREAMS:
                    return
                names.append(key)
                syms.append(symbol)
            else:
                return
            ends = list(itertools.accumulate(len(k) for k in names))
            table = (
                np.frombuffer(b"".join(names), dtype=np.uint8),
                np.array(ends, dtype=np.int64),
            )

        def one_line(lineno: int, raw: bytes) -> Iterator[Frame]:
            """One line the kernel did not take."""
            nonlocal ts, unnamed_rest
            # ---- a ws line of a known stream the kernel could not read (\r, 16 digits...)
            if raw.startswith(head, n_ts):
                end = raw.find(b'"', at)
                sym = streams.get(raw[at:end], miss) if end > 0 else miss
                if sym is not miss and (digits := raw[:n_ts]).isdigit():
                    ts = int(digits)
                    yield ts, "ws", sym, raw[n_ts + 1 :]
                    return
            # ---- everything else: the validating path
            if not raw or raw.isspace():
                return
            try:
                rec = _hft_record(path, lineno, raw)
            except CaptureError as err:
                yield ts, "bad", str(err), raw
                return
            ts = rec.ts_ns
            if rec.kind == "ws":
                assert rec.stream is not None
                key = rec.stream.encode()
                if (
                    raw.startswith(head, n_ts)
                    and raw.find(b'"', at) == at + len(key)
                    and raw.startswith(key, at)
                ):
                    learn(key, rec.symbol)  # the fast paths read this stream alike
                if rec.symbol is not None and rec.symbol not in ws_symbols:
                    ws_symbols.add(rec.symbol)
                    check_single(lineno)
                if pending:
                    sym = next(iter(ws_symbols), None)
                    for p in pending:
                        yield p[0], p[1], sym, p[3]
                    pending.clear()
                yield ts, "ws", rec.symbol, rec.payload
            elif rec.symbol is not None:
                yield ts, "rest", rec.symbol, rec.payload
            else:
                unnamed_rest = lineno
                check_single(lineno)
                if ws_symbols:
                    yield ts, "rest", next(iter(ws_symbols)), rec.payload
                else:
                    pending.append((ts, "rest", None, rec.payload))
                    learn(None, None)  # so that the next ws line comes here and flushes

        rows = np.zeros((4, _ROWS), dtype=np.int64)
        lineno = 1
        for text, pos, size, final in pieces:
            if final:  # a last line without \n: exactly as the validating reader sees it
                yield from one_line(lineno, text)
                break
            while pos < size:
                k, pos = _scan_hft(text, pos, size, rows, *table)
                if k:
                    for t, a, b, i in zip(*rows[:, :k].tolist(), strict=True):
                        yield t, "ws", syms[i], text[a:b]
                    ts = t
                    lineno += k
                    if k == _ROWS:
                        continue
                if pos < size:
                    nl = text.index(b"\n", pos)
                    raw = text[pos:nl]
                    yield from one_line(lineno, raw[:-1] if raw.endswith(b"\r") else raw)
                    lineno += 1
                    pos = nl + 1
        # A file of REST lines only: nothing to infer the symbol from.
        yield from pending


def _merge(its: list[Generator[Frame, None, None]]) -> Generator[Frame, None, None]:
    """Merge time-ordered streams by ``ts_ns``, exactly as ``heapq.merge`` would; ties keep
    the order of ``its``. Closes them all when it ends or is closed.

    Gallops: after taking an item it keeps taking from the same stream while that stays
    before the others' next item, so captures that follow each other (one file per day)
    merge at almost no cost per item."""
    try:
        heap: list[tuple[int, int, Frame, Iterator[Frame]]] = []
        for order, gen in enumerate(its):
            for item in gen:
                heap.append((item[0], order, item, gen))
                break
        heapq.heapify(heap)
        while len(heap) > 1:
            _, order, item, it = heapq.heappop(heap)
            bound, bound_order = heap[0][0], heap[0][1]
            yield item
            for item in it:
                ts = item[0]
                if ts < bound or (ts == bound and order < bound_order):
                    yield item
                else:
                    heapq.heappush(heap, (ts, order, item, it))
                    break
        if heap:
            yield heap[0][2]
            yield from heap[0][3]
    finally:
        for gen in its:  # stops their read-ahead threads now, not when collected
            gen.close()


def read_frames(
    *paths: str | os.PathLike[str], read_bytes: list[int] | None = None
) -> Generator[Frame, None, None]:
    """The replay's reader: like :func:`read_capture`, but yields :data:`Frame` tuples and
    does not validate the JSON of hftbacktest ws lines (the frame parser validates every
    frame anyway). A line it cannot read - a bad timestamp, a REST body that is not JSON -
    becomes a ``"bad"`` frame instead of an error, so the replay can count and skip it.
    Errors that concern a whole file still raise :class:`CaptureError`: missing, unreadable
    (truncated gzip), no known format on its first line, an ambiguous REST snapshot.
    cryptofeed files are read with the validating reader. Unlike :func:`read_capture`, the
    paths are checked when it is called; the files are opened on the first ``next()``.

    Speed: each gzip file is decompressed ahead in a thread of its own (zlib releases the
    GIL; :class:`_ReadAhead`), runs of lines of known streams are cut by a compiled kernel
    (:func:`_scan_hft`) straight from the decompressed buffers, and files that follow each
    other merge without a heap operation per line. Close the generator (or exhaust it) to
    stop the threads at once.

    ``read_bytes`` (progress): a list with one slot per path, where the readers keep the
    bytes of each file read so far (as on disk, so compressed; up to 1 MiB of a plain file
    or one 256 KiB block of a gzip file ahead of what was yielded): ``sum(read_bytes)``
    against the files' sizes."""
    files = _capture_files(paths, "read_frames")
    if read_bytes is not None and len(read_bytes) != len(files):
        raise ValueError("read_bytes needs one slot per path")
    meters = [None if read_bytes is None else (read_bytes, i) for i in range(len(files))]
    if len(files) == 1:
        return _frames_file(files[0], meters[0])
    return _merge([_frames_file(f, m) for f, m in zip(files, meters, strict=True)])


class CaptureWriter:
    """Write a capture in hftbacktest 2024 format: gzip, ``<local_ns> <raw json>`` per line.

    Use as a context manager (or call :meth:`close`). ``write_ws`` takes a combined-stream
    envelope exactly as received; ``write_rest`` takes a raw REST body (a JSON object). Both are
    validated so that whatever is written reads back with :func:`read_capture`.
    """

    def __init__(self, path: str | os.PathLike[str], *, compresslevel: int = 6) -> None:
        self.path = Path(path)
        # mtime=0 keeps the gzip header deterministic (same input -> same bytes).
        self._raw = open(self.path, "wb")
        self._gz: gzip.GzipFile | None = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=compresslevel, mtime=0
        )
        self.count = 0

    def _write(self, ts_ns: int, payload: bytes, want_ws: bool) -> None:
        if self._gz is None:
            raise ValueError(f"{self.path}: CaptureWriter is closed")
        if isinstance(ts_ns, bool) or not isinstance(ts_ns, int):
            raise TypeError(f"ts_ns must be int nanoseconds, got {type(ts_ns).__name__}")
        if not 10**18 <= ts_ns < 10**19:
            # the reader tells ns from µs by digit count, so only 19-digit ns round-trip
            raise ValueError(f"ts_ns={ts_ns} is not a 19-digit epoch time in ns")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        if b"\n" in payload or b"\r" in payload:
            raise ValueError("payload must be a single line (no CR/LF)")
        try:
            env = _classify(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"payload is not a JSON object: {exc}: {_sample(payload)}") from None
        is_ws = _is_ws(env)
        if want_ws and not is_ws:
            raise ValueError(
                f'write_ws needs a combined-stream envelope {{"stream":..,"data":..}}: '
                f"{_sample(payload)}"
            )
        if not want_ws and is_ws:
            raise ValueError(f"write_rest got a ws envelope: {_sample(payload)}")
        self._gz.write(b"%d %s\n" % (ts_ns, payload))
        self.count += 1

    def write_ws(self, ts_ns: int, payload: bytes) -> None:
        """Append a WS frame (combined-stream envelope) received at ``ts_ns``."""
        self._write(ts_ns, payload, True)

    def write_rest(self, ts_ns: int, payload: bytes) -> None:
        """Append a REST response body (e.g. a depth snapshot) received at ``ts_ns``."""
        self._write(ts_ns, payload, False)

    def flush(self) -> None:
        """Push buffered data to the OS (a readable gzip prefix survives a crash)."""
        if self._gz is not None:
            self._gz.flush()
            self._raw.flush()

    def close(self) -> None:
        """Finish the gzip stream and close the file; idempotent."""
        if self._gz is not None:
            try:
                self._gz.close()
            finally:
                self._gz = None
                self._raw.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
