"""Capture readers/writer on real recorded Binance data (shipped sample + ../shared captures)."""

from __future__ import annotations

import gzip
import io
import json
import random
import threading
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from tickbus.plugins.binance.capture import (
    SAMPLE,
    CaptureError,
    CaptureWriter,
    Record,
    _gunzip,
    _line_chunks,
    _text_chunks,
    check_capture,
    check_symbols,
    read_capture,
    read_frames,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "binance"
HFT = SHARED / "hftbacktest" / "examples"
CF = SHARED / "cryptofeed"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def kinds(records: Iterable[Record]) -> Counter[str]:
    """Count records by stream type ('depth@100ms', 'trade', ...) and 'REST'."""
    c: Counter[str] = Counter()
    for r in records:
        c[r.stream.split("@", 1)[1] if r.stream else "REST"] += 1
    return c


def assert_non_decreasing(records: list[Record]) -> None:
    ts = [r.ts_ns for r in records]
    bad = [i for i in range(1, len(ts)) if ts[i] < ts[i - 1]]
    assert not bad, f"timestamps go backwards at records {bad[:5]}"


# ---------------------------------------------------------------- shipped sample


def test_sample_is_shipped_with_licence() -> None:
    assert SAMPLE.is_file()
    assert SAMPLE.stat().st_size < 1_000_000
    licence = (SAMPLE.parent / "LICENSE-hftbacktest").read_text()
    assert "MIT License" in licence and "nkaz001" in licence


def test_sample_counts_and_symbol() -> None:
    recs = list(read_capture(SAMPLE))
    assert len(recs) == 18_507
    assert kinds(recs) == {"depth@100ms": 1795, "trade": 3219, "bookTicker": 13492, "REST": 1}
    assert {r.symbol for r in recs} == {"BTCUSDT"}
    assert_non_decreasing(recs)
    rest = [i for i, r in enumerate(recs) if r.kind == "rest"]
    assert rest == [7]  # line 8 of the file
    snap = json.loads(recs[7].payload)
    assert snap["lastUpdateId"] == 50093239218
    assert len(snap["bids"]) == len(snap["asks"]) == 1000
    assert recs[7].stream is None
    assert 179.9 < (recs[-1].ts_ns - recs[0].ts_ns) / 1e9 < 180.0


def test_sample_payloads_are_byte_exact() -> None:
    with gzip.open(SAMPLE, "rb") as fh:
        lines = fh.read().splitlines()
    recs = list(read_capture(SAMPLE))
    assert len(lines) == len(recs)
    for line, rec in zip(lines, recs, strict=True):
        ts, payload = line.split(b" ", 1)
        assert rec.ts_ns == int(ts)
        assert rec.payload == payload
    first = recs[0]
    assert first.kind == "ws" and first.stream == "btcusdt@depth@100ms"
    assert first.payload.startswith(b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate"')


def test_sample_depth_chain_is_unbroken() -> None:
    prev_u = None
    for r in read_capture(SAMPLE):
        if r.stream == "btcusdt@depth@100ms":
            d = json.loads(r.payload)["data"]
            if prev_u is not None:
                assert d["U"] == prev_u + 1
            prev_u = d["u"]
    assert prev_u == 50093317200


# ---------------------------------------------------------------- real captures in ../shared


@needs_shared
def test_spot_btcusdt_two_days_merged() -> None:
    recs = list(read_capture(HFT / "spot/btcusdt_20240808.gz", HFT / "spot/btcusdt_20240809.gz"))
    # SOURCES.md §3.1: 6,495 depth events, 19,904 trades, 73,174 bookTicker, one snapshot
    assert kinds(recs) == {"depth@100ms": 6495, "trade": 19904, "bookTicker": 73174, "REST": 1}
    assert_non_decreasing(recs)
    assert {r.symbol for r in recs} == {"BTCUSDT"}
    depth = [json.loads(r.payload)["data"] for r in recs if r.stream == "btcusdt@depth@100ms"]
    assert depth[0]["U"] == 50093239189 and depth[-1]["u"] == 50093696318


@needs_shared
def test_merge_order_does_not_depend_on_argument_order() -> None:
    a, b = HFT / "spot/ethusdt_20240808.gz", HFT / "spot/ethusdt_20240809.gz"
    fwd = list(read_capture(a, b))
    rev = list(read_capture(b, a))
    assert fwd == rev  # the two files do not overlap in time
    assert kinds(fwd) == {"depth@100ms": 6470, "trade": 14515, "bookTicker": 58758, "REST": 1}
    assert [r.symbol for r in fwd if r.kind == "rest"] == ["ETHUSDT"]


@needs_shared
def test_2023_microsecond_file() -> None:
    path = HFT / "spot/btcusdt_20230405.dat.gz"
    recs = list(read_capture(path))
    assert kinds(recs) == {"depth@100ms": 3929, "trade": 3144, "bookTicker": 8015}
    with gzip.open(path, "rb") as fh:
        first_ts = int(fh.readline().split(b" ", 1)[0])
    assert len(str(first_ts)) == 16
    assert recs[0].ts_ns == first_ts * 1000


@needs_shared
def test_coin_m_snapshot_symbol() -> None:
    recs = list(read_capture(HFT / "cm/btcusd_perp_20240808.gz"))
    rest = [r for r in recs if r.kind == "rest"]
    assert len(rest) == 1 and rest[0].symbol == "BTCUSD_PERP"


@needs_shared
def test_cryptofeed_split_files_merged() -> None:
    d = CF / "3525dc8c-2021-04-17/sample_data"
    recs = list(read_capture(d / "BINANCE.ws.1.0", d / "BINANCE.http.0.0"))
    c = kinds(recs)
    assert (c["depth@100ms"], c["bookTicker"], c["aggTrade"], c["REST"]) == (614, 570, 24, 10)
    assert_non_decreasing(recs)
    rest_syms = {r.symbol for r in recs if r.kind == "rest"}
    ws_syms = {r.symbol for r in recs if r.kind == "ws"}
    assert len(rest_syms) == 10 and rest_syms == ws_syms
    # float seconds -> ns exactly at the µs: "1618677372.1768699" (the first ws frame)
    first_ws = next(r for r in recs if r.kind == "ws")
    assert first_ws.ts_ns == 1_618_677_372_176_870_000
    assert first_ws.stream == "busdtry@depth@100ms" and first_ws.symbol == "BUSDTRY"


@needs_shared
def test_cryptofeed_single_file() -> None:
    recs = list(read_capture(CF / "29970208-2021-04-04/sample_data/BINANCE-ee25be.0"))
    c = kinds(recs)
    assert (c["depth@100ms"], c["aggTrade"], c["kline_1m"], c["REST"]) == (2688, 1910, 118, 3)
    assert [r.symbol for r in recs if r.kind == "rest"] == ["DOTUSDT", "BTCUSDT", "ETHUSDT"]
    assert_non_decreasing(recs)


@needs_shared
def test_cryptofeed_exchange_info_has_no_symbol() -> None:
    recs = list(read_capture(CF / "master-ce58c2a0/sample_data/BINANCE.0"))
    assert len(recs) == 1  # the configuration: line is metadata, not a record
    assert recs[0].kind == "rest" and recs[0].symbol is None
    assert json.loads(recs[0].payload)["timezone"] == "UTC"


# ---------------------------------------------------------------- merge / streaming


def _hft_file(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))
    return path


WS = b'{"stream":"btcusdt@trade","data":{"e":"trade","t":%d}}'


def test_ties_keep_file_order(tmp_path: Path) -> None:
    a = _hft_file(tmp_path / "a.gz", [b"1723161253000000000 " + WS % 1])
    b = _hft_file(tmp_path / "b.gz", [b"1723161253000000000 " + WS % 2])
    assert [json.loads(r.payload)["data"]["t"] for r in read_capture(a, b)] == [1, 2]
    assert [json.loads(r.payload)["data"]["t"] for r in read_capture(b, a)] == [2, 1]


def test_reading_is_lazy(tmp_path: Path) -> None:
    # a corrupt last line must not stop the first record from being delivered
    good = [b"%d " % (1723161253000000000 + i) + WS % i for i in range(100)]
    path = _hft_file(tmp_path / "c.gz", [*good, b"1723161254000000000 {broken"])
    it = read_capture(path)
    assert next(it).ts_ns == 1723161253000000000
    with pytest.raises(CaptureError, match=r"c\.gz:101:"):
        list(it)


def test_rest_before_first_ws_gets_symbol_from_later_frame(tmp_path: Path) -> None:
    snap = b'{"lastUpdateId":5,"bids":[],"asks":[]}'
    path = _hft_file(
        tmp_path / "s.gz",
        [b"1723161253000000000 " + snap, b"1723161253000000001 " + WS % 7],
    )
    recs = list(read_capture(path))
    assert [(r.kind, r.symbol) for r in recs] == [("rest", "BTCUSDT"), ("ws", "BTCUSDT")]


def test_multi_symbol_hftbacktest_rest_is_ambiguous(tmp_path: Path) -> None:
    eth = b'{"stream":"ethusdt@trade","data":{"t":1}}'
    snap = b'{"lastUpdateId":5,"bids":[],"asks":[]}'
    path = _hft_file(
        tmp_path / "m.gz",
        [
            b"1723161253000000000 " + WS % 1,
            b"1723161253000000001 " + snap,
            b"1723161253000000002 " + eth,
        ],
    )
    with pytest.raises(CaptureError, match=r"m\.gz:3: .*several symbols.*line 2"):
        list(read_capture(path))


# ---------------------------------------------------------------- writer round trip


def test_writer_round_trip_on_sample(tmp_path: Path) -> None:
    original = list(read_capture(SAMPLE))
    out = tmp_path / "rt.gz"
    with CaptureWriter(out) as w:
        for r in original:
            (w.write_ws if r.kind == "ws" else w.write_rest)(r.ts_ns, r.payload)
    assert w.count == len(original)
    assert list(read_capture(out)) == original
    # and the bytes of the lines are the upstream bytes
    with gzip.open(out, "rb") as a, gzip.open(SAMPLE, "rb") as b:
        assert a.read() == b.read()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    env = WS % 1
    with CaptureWriter(tmp_path / "w.gz") as w:
        with pytest.raises(ValueError, match="combined-stream envelope"):
            w.write_ws(1723161253000000000, b'{"lastUpdateId":1}')
        with pytest.raises(ValueError, match="ws envelope"):
            w.write_rest(1723161253000000000, env)
        with pytest.raises(ValueError, match="19-digit"):
            w.write_ws(1723161253000000, env)  # µs, not ns
        with pytest.raises(ValueError, match="single line"):
            w.write_ws(1723161253000000000, env[:-1] + b"\n}")
        with pytest.raises(ValueError, match="not a JSON object"):
            w.write_rest(1723161253000000000, b'{"lastUpdateId":')
        with pytest.raises(TypeError):
            w.write_ws(1723161253000000000, env.decode())  # type: ignore[arg-type]
        w.write_ws(1723161253000000000, env)
    with pytest.raises(ValueError, match="closed"):
        w.write_ws(1723161253000000001, env)
    assert [r.payload for r in read_capture(tmp_path / "w.gz")] == [env]


def test_writer_flush_makes_a_readable_prefix(tmp_path: Path) -> None:
    out = tmp_path / "f.gz"
    w = CaptureWriter(out)
    w.write_ws(1723161253000000000, WS % 1)
    w.flush()
    # the gzip trailer is not written yet, but the flushed data decompresses
    with open(out, "rb") as raw:
        data = gzip.GzipFile(fileobj=raw).read1(1 << 16)
    assert data == b"1723161253000000000 " + WS % 1 + b"\n"
    w.close()
    w.close()  # idempotent


# ---------------------------------------------------------------- bad input


def test_corrupted_sample_line_names_file_and_line(tmp_path: Path) -> None:
    with gzip.open(SAMPLE, "rb") as fh:
        lines = fh.read().splitlines()
    lines[41] = lines[41][: len(lines[41]) // 2]  # truncate line 42's JSON
    bad = _hft_file(tmp_path / "bad.gz", lines)
    with pytest.raises(CaptureError, match=r"bad\.gz:42: invalid JSON") as ei:
        for _ in read_capture(bad):
            pass
    assert repr(lines[41][:20].decode())[1:-1] in str(ei.value)  # quotes a sample


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"hello world\n", r":1: not a recognised capture format"),
        (b"1723161253000000000 " + WS % 1 + b"\nnot a line\n", r":2: expected hftbacktest"),
        (b"123456 " + WS % 1 + b"\n", r":1: timestamp '123456' has 6 digits"),
        (b"1723161253000000000 [1,2]\n", r":1: invalid JSON"),
        (b'1723161253000000000 {"stream":"b\xfftc@trade","data":{}}\n', r":1: invalid JSON"),
        (b"1618677372.5: " + WS % 1 + b"\n\ngarbage\n", r":3: not a cryptofeed capture line"),
        (b'1618677372.5: {"stream":"x@trade"}\n', r":1: ws frame is not a combined-stream"),
        (b"1618677372.5: {oops}\n", r":1: invalid JSON"),
    ],
)
def test_bad_lines_raise(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"f\.txt" + pattern):
        list(read_capture(path))


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such capture file"):
        list(read_capture(tmp_path / "nope.gz"))
    with pytest.raises(ValueError, match="at least one path"):
        list(read_capture())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(SAMPLE.read_bytes()[:20_000])  # gzip stream ends early
    with pytest.raises(CaptureError, match="unreadable capture"):
        list(read_capture(cut))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n\n")
    assert list(read_capture(empty)) == []
    bad = tmp_path / "bad.gz"
    data = bytearray(SAMPLE.read_bytes())
    data[5000:5010] = b"\xff" * 10  # corrupt deflate data: zlib.error inside gzip
    bad.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="unreadable capture"):
        list(read_capture(bad))


# ---------------------------------------------------------------- read_frames (the replay's reader)


def as_frames(records: Iterable[Record]) -> list[tuple[object, ...]]:
    return [(r.ts_ns, r.kind, r.symbol, r.payload) for r in records]


def test_read_frames_is_read_capture_on_the_sample() -> None:
    assert list(read_frames(SAMPLE)) == as_frames(read_capture(SAMPLE))


@needs_shared
@pytest.mark.parametrize(
    "paths",
    [
        ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
        ["spot/ethusdt_20240809.gz", "spot/btcusdt_20240809.gz", "spot/ethusdt_20240808.gz"],
        ["spot/btcusdt_20230405.dat.gz"],  # µs timestamps: every line takes the slow path
        ["usdm/btcusdt_20240808.gz"],
        ["cm/btcusd_perp_20240808.gz"],  # the REST body names its symbol
        [
            "../../cryptofeed/3525dc8c-2021-04-17/sample_data/BINANCE.ws.1.0",
            "../../cryptofeed/3525dc8c-2021-04-17/sample_data/BINANCE.http.0.0",
        ],
    ],  # fmt: skip
    ids=["spot-2-days", "3-interleaved", "2023-us", "usdm", "coinm", "cryptofeed"],
)
def test_read_frames_is_read_capture_on_real_captures(paths: list[str]) -> None:
    files = [HFT / p for p in paths]
    assert list(read_frames(*files)) == as_frames(read_capture(*files))


def _frames_and_records(path: Path) -> tuple[object, object]:
    def run(fn: object) -> object:
        try:
            return list(fn(path))  # type: ignore[operator]
        except CaptureError as exc:
            return f"CaptureError: {exc}"

    return run(read_frames), run(read_capture)


def test_read_frames_symbol_inference_matches(tmp_path: Path) -> None:
    snap = b'{"lastUpdateId":5,"bids":[],"asks":[]}'
    bt = b'{"stream":"!bookTicker","data":{"u":1,"s":"ETHUSDT"}}'  # market-wide: no symbol
    cases = {
        "rest-first": [snap, WS % 7, WS % 8],
        "market-wide-then-rest": [bt, snap, bt, WS % 7, snap, WS % 8],
        "rest-only": [snap, snap],
        "ambiguous": [WS % 1, snap, b'{"stream":"ethusdt@trade","data":{"t":1}}'],
        "ambiguous-late-rest": [WS % 1, b'{"stream":"ethusdt@trade","data":{"t":1}}', snap],
    }
    for name, payloads in cases.items():
        lines = [b"%d " % (1723161253000000000 + i) + p for i, p in enumerate(payloads)]
        frames, records = _frames_and_records(_hft_file(tmp_path / f"{name}.gz", lines))
        if isinstance(records, str):
            assert frames == records, name  # the same file-level error, same line
        else:
            assert frames == as_frames(records), name  # type: ignore[arg-type]


def test_read_frames_makes_unreadable_lines_bad_frames(tmp_path: Path) -> None:
    with gzip.open(SAMPLE, "rb") as fh:
        lines = fh.read().splitlines()
    good = list(read_frames(SAMPLE))
    rest_line = next(i for i, line in enumerate(lines) if b"lastUpdateId" in line[:40])
    broken = {
        41: lines[41][: len(lines[41]) // 2],  # a ws line cut in half: passed on (not JSON-checked)
        60: b"17231612x4 " + lines[60].split(b" ", 1)[1],  # a bad timestamp
        61: lines[61].split(b" ", 1)[0],  # a timestamp alone
        62: b"123456 " + lines[62].split(b" ", 1)[1],  # 6 digits
        rest_line: lines[rest_line][:500],  # the REST body cut: not JSON
    }
    bad_lines = [broken.get(i, line) for i, line in enumerate(lines)]
    path = _hft_file(tmp_path / "bad.gz", bad_lines)
    with pytest.raises(CaptureError):
        list(read_capture(path))
    frames = list(read_frames(path))
    assert len(frames) == len(good)
    for i, (got, want) in enumerate(zip(frames, good, strict=True)):
        if i == 41:
            assert got == (*want[:3], broken[41][20:])  # the parser will reject it
        elif i in broken:
            ts, kind, why, line = got
            assert (kind, line) == ("bad", broken[i])
            last_good = max(j for j in range(i) if j == 41 or j not in broken)
            assert ts == good[last_good][0] and f"bad.gz:{i + 1}:" in str(why)
        else:
            assert got == want


def test_read_frames_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such capture file"):
        read_frames(tmp_path / "nope.gz")
    with pytest.raises(ValueError, match="at least one path"):
        read_frames()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(SAMPLE.read_bytes()[:20_000])  # gzip stream ends early
    with pytest.raises(CaptureError, match="unreadable capture"):
        list(read_frames(cut))
    bad = tmp_path / "bad.gz"
    data = bytearray(SAMPLE.read_bytes())
    data[5000:5010] = b"\xff" * 10  # corrupt deflate data
    bad.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="unreadable capture"):
        list(read_frames(bad))
    (tmp_path / "x.txt").write_bytes(b"hello world\n")
    with pytest.raises(CaptureError, match="not a recognised capture format"):
        list(read_frames(tmp_path / "x.txt"))
    (tmp_path / "empty.txt").write_bytes(b"\n\n")
    assert list(read_frames(tmp_path / "empty.txt")) == []


def test_check_capture_reads_only_the_head_and_names_the_file(tmp_path: Path) -> None:
    check_capture(SAMPLE)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(SAMPLE.read_bytes()[:200_000])
    check_capture(cut)  # a truncated end is the reader's to find, at the end
    (tmp_path / "x.txt").write_bytes(b"hello world\n")
    (tmp_path / "blank.txt").write_bytes(b"\n\n")
    (tmp_path / "empty.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "not.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    (tmp_path / "dir.gz").mkdir()
    for name in ["nope.gz", "x.txt", "blank.txt", "empty.gz", "not.gz", "dir.gz"]:
        with pytest.raises(CaptureError) as err:
            check_capture(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}:"), err.value


def test_check_symbols() -> None:
    ok = ["btcusdt", "BTCUSDT", "ETHUSDT", "BTCUSD_PERP", "BTCUSDT_250627", "1000PEPEUSDT"]
    assert check_symbols(ok, "k") == ok[1:]  # upper-cased, duplicates dropped
    for bad in ["BTC-USDT", "BTC.USDT", "", "A" * 21, "BTC\x00", "ß", "BTC USDT", "md.#"]:
        with pytest.raises(ValueError, match=r"^plugins\.x\.symbols\[1\]: "):
            check_symbols(["ETHUSDT", bad], "plugins.x.symbols")


def test_read_frames_reports_the_bytes_it_read(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    read = [0, 0]
    it = read_frames(SAMPLE, plain, read_bytes=read)
    next(it)
    # what was read is what the reader has seen, not what the read-ahead thread has fetched
    assert 0 < read[0] <= 256 * 1024 and 0 < read[1] <= 1 << 20
    frames = 1 + sum(1 for _ in it)
    assert frames == 2 * len(list(read_frames(SAMPLE)))
    assert read == [SAMPLE.stat().st_size, plain.stat().st_size]
    with pytest.raises(ValueError, match="one slot per path"):
        read_frames(SAMPLE, read_bytes=[0, 0])


def test_read_frames_crlf_and_blank_lines(tmp_path: Path) -> None:
    lines = [b"%d " % (1723161253000000000 + i) + WS % i for i in range(5)]
    path = tmp_path / "crlf.gz"
    path.write_bytes(
        gzip.compress(b"\r\n".join(lines[:3]) + b"\r\n\r\n  \n" + b"\n".join(lines[3:]))
    )
    assert list(read_frames(path)) == as_frames(read_capture(path))
    assert [f[3] for f in read_frames(path)] == [WS % i for i in range(5)]


def test_read_frames_ties_keep_file_order(tmp_path: Path) -> None:
    a = _hft_file(tmp_path / "a.gz", [b"1723161253000000000 " + WS % 1])
    b = _hft_file(tmp_path / "b.gz", [b"1723161253000000000 " + WS % 2])
    assert [json.loads(f[3])["data"]["t"] for f in read_frames(a, b)] == [1, 2]
    assert [json.loads(f[3])["data"]["t"] for f in read_frames(b, a)] == [2, 1]


def test_read_frames_merge_is_heapq_merge(tmp_path: Path) -> None:
    """Interleaved, tied and even unsorted inputs come out as heapq.merge orders them."""
    rng = random.Random(5)
    files = []
    for k in range(3):
        ts = [1723161253000000000 + rng.randrange(40) for _ in range(60)]
        if k < 2:
            ts.sort()  # the third file is out of order: the merge must still agree
        lines = [b"%d " % t + WS % (k * 1000 + i) for i, t in enumerate(ts)]
        files.append(_hft_file(tmp_path / f"{k}.gz", lines))
    for order in ([0, 1, 2], [2, 0, 1], [1, 2]):
        paths = [files[i] for i in order]
        assert list(read_frames(*paths)) == as_frames(read_capture(*paths))


def test_read_frames_stops_its_reader_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    it = read_frames(SAMPLE, SAMPLE)
    next(it)
    assert threading.active_count() > before  # decompressing ahead
    it.close()
    assert threading.active_count() == before
    for _ in read_frames(SAMPLE):
        pass
    assert threading.active_count() == before


def test_gunzip_reads_what_gzip_reads() -> None:
    rng = random.Random(3)
    data = bytes(rng.randrange(256) for _ in range(3000)) + b"abc" * 5000
    one = gzip.compress(data)
    cases = [one, one + one, one + b"\0" * 9, one + b"\0" + one, one[:-4], one + one[:6], b""]
    for _ in range(60):
        flipped = bytearray(one)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))

    def outcome(fn: object) -> object:
        try:
            return fn()  # type: ignore[operator]
        except (OSError, EOFError, zlib.error):
            return "error"

    for case in cases:
        want = outcome(lambda c=case: gzip.GzipFile(fileobj=io.BytesIO(c)).read())
        for block, most in ((1 << 18, 4 << 20), (7, 100), (1000, 5)):
            got = outcome(lambda c=case, b=block, m=most: b"".join(_gunzip(io.BytesIO(c), b, m)))
            assert got == want


class _Pieces(io.BytesIO):
    """A file whose reads return random small pieces."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        super().__init__(data)
        self.rng = rng

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self.rng.choice([1, 2, 3, 7, 50, 1000]))


def test_text_pieces_split_lines_like_a_plain_split(tmp_path: Path) -> None:
    rng = random.Random(9)
    for _ in range(300):
        parts = [rng.choice([b"", b"a", b"bb\r", b"  ", b"x" * rng.randrange(200), b"\r"])
                 for _ in range(rng.randrange(12))]  # fmt: skip
        data = b"\n".join(parts) + rng.choice([b"", b"\n", b"\r\n", b"tail", b"tail\r"])
        want = data.split(b"\n")
        tail = want.pop()
        want = [line[:-1] if line.endswith(b"\r") else line for line in want]
        if tail:
            want.append(tail)  # a last line without \n is kept as it is (\r included)
        got: list[bytes] = []
        lineno = 1
        for base, lines in _line_chunks(_text_chunks(tmp_path, _Pieces(data, rng))):
            assert base == lineno
            got += lines
            lineno += len(lines)
        assert got == want, data


def test_read_frames_odd_lines_match_read_capture(tmp_path: Path) -> None:
    """Lines the line kernel leaves to Python: streams beyond its table, timestamps
    starting with 9 (int64 overflow guard) or of 16 digits, CRLF, a last line without \\n."""
    lines = []
    for i in range(300):
        stream = b"s%03d@trade" % (i % 80)  # 80 streams: more than the kernel knows
        ts = b"%d" % (1723161253000000000 + i)
        if i % 7 == 3:
            ts = b"9" + ts[1:]  # > int64 max is not a problem for Python ints
        if i % 11 == 5:
            ts = ts[:16]  # µs
        line = ts + b' {"stream":"' + stream + b'","data":{"e":"trade","t":%d}}' % i
        lines.append(line + (b"\r" if i % 13 == 2 else b""))
    for end in (b"\n", b"", b"\r"):
        path = tmp_path / "odd.gz"
        path.write_bytes(gzip.compress(b"\n".join(lines) + end))
        frames = list(read_frames(path))
        assert len(frames) == 300
        assert frames == as_frames(read_capture(path))
