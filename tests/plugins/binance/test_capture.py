"""Capture readers/writer on real recorded Binance data (shipped sample + ../shared captures)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from plugins.binance.capture import SAMPLE, CaptureError, CaptureWriter, Record, read_capture

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
