"""``tickbus report``: the figures of a small known run, checked against a hand computation
(the run is written by the real persistence plugin in a kernel); the HTML page checked
structurally (no headless browser on the test machines: well-formed SVG, the four charts,
nothing external); bad databases are one line."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "persistence"))
from persistence_support import NO_ENDPOINTS, Feeder  # noqa: E402

from tickbus.kernel.app import Kernel  # noqa: E402
from tickbus.schemas import (  # noqa: E402
    NOTIONAL_SCALE,
    SCALE,
    Fill,
    OrderAccepted,
    OrderRequest,
    OrderUpdate,
    Position,
)

T0 = 1_723_000_000_000_000_000
S = 10**9  # one second in ns
N = NOTIONAL_SCALE


def pos(t: int, qty: int, cost: int, realized: int, mark: int, fees: int, fills: int) -> tuple[
        str, Position]:  # fmt: skip
    """A position at T0 + t s; prices and quantities in whole units, money in whole USDT."""
    unreal = qty * mark - cost
    return ("pos.BTCUSDT", Position("BTCUSDT", qty * SCALE, cost * N, realized * N, unreal * N,
                                    fees * N, mark * SCALE, fills, T0 + t * S, T0 + t * S))


def fill(t: int, side: str, px: int, qty: int, fee: int, i: int) -> tuple[str, Fill]:
    return ("exec.fill", Fill(f"o{i}", "s", "BTCUSDT", side, i, px * SCALE, qty * SCALE,  # type: ignore[arg-type]
                              fee * N, "taker", T0 + t * S, T0 + t * S, T0 + t * S))  # fmt: skip


def order(i: int, t2t_us: int) -> list[tuple[str, Any]]:
    o = OrderRequest(f"k{i}", "s", "BTCUSDT", "buy", "limit", "GTC", SCALE, 100 * SCALE, 0,
                     False, "", T0, T0 + 1000 * i)  # fmt: skip
    up = OrderUpdate(o.client_order_id, "s", "BTCUSDT", "buy", "limit", "accepted", o.px, o.qty,
                     0, o.qty, 0, "", T0, T0 + t2t_us * 1000)  # fmt: skip
    return [("ord.request", o), ("ord.accepted", OrderAccepted(o, T0 + 1000 * i + 500)),
            ("exec.report", up)]  # fmt: skip


# The known run (see the module docstring of tools/report.py for the definitions):
#   t=0    buy 1 @ 100, fee 1            net -1
#   t=30   mark 110                      net  9
#   t=90   sell 1 @ 105, fee 1           net  3   round trip +3 (realized 5, fees 2)
#   t=150  sell 2 @ 100, fee 2           net  1
#   t=200  mark 104                      net -7
#   t=250  buy 2 @ 103, fee 2            net -7   round trip -10 (realized -6, fees 4)
KNOWN = [
    fill(0, "buy", 100, 1, 1, 1), pos(0, 1, 100, 0, 100, 1, 1),
    pos(30, 1, 100, 0, 110, 1, 1),
    fill(90, "sell", 105, 1, 1, 2), pos(90, 0, 0, 5, 105, 2, 2),
    fill(150, "sell", 100, 2, 2, 3), pos(150, -2, -200, 5, 100, 4, 3),
    pos(200, -2, -200, 5, 104, 4, 3),
    fill(250, "buy", 103, 2, 2, 4), pos(250, 0, 0, -1, 103, 6, 4),
    *order(1, 10), *order(2, 40), *order(3, 20), *order(4, 30),
]  # fmt: skip


@pytest.fixture
def known_db(start_kernel: Callable[..., Kernel], tmp_path: Path) -> Path:
    db = tmp_path / "known.db"
    k = start_kernel({"bus": NO_ENDPOINTS, "plugins": {
        "persistence": {"path": str(db)}, "feeder": {"after": ["persistence"]}}},
        {"feeder": Feeder(KNOWN)})  # fmt: skip
    k.stop()
    return db


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tickbus.tools.report", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_figures_match_the_hand_computation(known_db: Path) -> None:
    out = report(str(known_db), "--json")
    assert out.returncode == 0, out.stderr
    f = json.loads(out.stdout)
    assert f["pnl"] == {"realized": "-1", "unrealized": "0", "fees": "6", "net": "-7",
                        "realized_after_fees": "-7"}  # fmt: skip
    assert f["fills"] == 4
    t = f["trades"]
    assert (t["count"], t["wins"], t["win_rate"]) == (2, 1, 0.5)
    assert t["average_pnl"] == "-3.5" and (t["best"], t["worst"]) == ("3", "-10")
    # per-minute equity (strictly before t = 0, 60, 120, 180, 240, 300 s): 0, 9, 3, 1, -7, -7
    # changes 9, -6, -2, -8, 0: mean -1.4, sample variance 175.2 / 4 = 43.8
    assert f["sharpe_minutes"] == 5
    assert f["sharpe"] == pytest.approx(-1.4 / math.sqrt(43.8) * math.sqrt(525_600))
    # peak 9 at t=30, trough -7 at t=200
    assert f["max_drawdown"] == "16" and f["max_drawdown_at_ns"] == T0 + 200 * S
    assert f["turnover"] == "611"  # 100 + 105 + 200 + 206
    # gross 100 (0-30 s), 110 (30-90), 0 (90-150), 200 (150-200), 208 (200-250)
    assert f["exposure"] == {"average": "120", "max": "208", "time_in_market": 190 / 250}
    lat = f["latency"]["tick_to_trade"]  # 10, 40, 20, 30 us: nearest rank
    assert (lat["count"], lat["p50_us"], lat["p90_us"], lat["p99_us"], lat["max_us"]) == (
        4, 20.0, 40.0, 40.0, 40.0)
    assert f["latency"]["risk"]["p50_us"] == 0.5  # accepted 500 ns after the order was made
    assert f["duration_s"] == 250


def test_the_text_report(known_db: Path) -> None:
    out = report(str(known_db))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for line in ("PnL net (after fees)", "win rate", "Sharpe (per-minute)", "max drawdown",
                 "turnover", "time in market", "tick_to_trade"):  # fmt: skip
        assert line in text
    assert re.search(r"PnL net \(after fees\)\s+-7\.00000000", text)
    assert re.search(r"win rate\s+50\.0%", text)
    assert re.search(r"max drawdown\s+16\.00000000", text)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def test_the_html_page_is_self_contained_with_four_charts(known_db: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    page = tmp_path / "r.html"
    out = report(str(known_db), "--html", str(page))
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    parser = _Page()
    parser.feed(text)
    assert text.startswith("<!DOCTYPE html>") and parser.tags.count("svg") == 4
    assert not {"script", "link", "img", "iframe", "object"} & set(parser.tags)
    assert not [a for a in parser.attrs if a[0] in ("src", "href")]
    assert "url(" not in text and "@import" not in text and "http" not in text
    svgs = re.findall(r"<svg.*?</svg>", text, re.S)
    charts = [ET.fromstring(s) for s in svgs]  # each is well-formed XML
    titles = [c.find("title").text for c in charts]  # type: ignore[union-attr]
    assert titles == ["Equity: net PnL after fees", "Drawdown from the running peak",
                      "Position", "Latency: tick to trade"]  # fmt: skip
    equity = charts[0].find("polyline").get("points").split()  # type: ignore[union-attr]
    assert len(equity) == 2 * 7 - 1  # 7 points (the start and six positions), as steps
    bars = charts[3].findall("rect")
    assert sum(int(b.find("title").text.rsplit(" ", 1)[1]) for b in bars) == 4  # type: ignore[union-attr]


def test_bad_databases_are_one_line(tmp_path: Path) -> None:
    missing = report(str(tmp_path / "nope.db"))
    garbage = tmp_path / "g.db"
    garbage.write_bytes(b"\x00garbage" * 1000)
    other = tmp_path / "o.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    for out in (missing, report(str(garbage)), report(str(other))):
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert out.stderr.startswith("tickbus: error: database ")
    assert garbage.read_bytes() == b"\x00garbage" * 1000


def test_list_and_run_selection(known_db: Path) -> None:
    out = report(str(known_db), "--list")
    assert out.returncode == 0 and re.match(r"\s+1\s+live\s+4 fills", out.stdout)
    assert report(str(known_db), "--run", "7").stderr.startswith("tickbus: error: no run 7")
