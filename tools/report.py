"""``tickbus report [DB]``: a run's performance from the persistence database.

Prints, for one run (default: the latest): PnL per symbol and in total - realized (gross),
unrealized (at the last mark), fees, net (after fees) - exact, from the last position the
broker published; round trips (``trades``): count, win rate, average PnL after fees;
Sharpe; maximum drawdown; turnover; exposure; latency percentiles. ``--html FILE`` writes
one self-contained page (inline SVG and CSS, no script, nothing fetched) with the equity
curve, the drawdown, the position over time and the latency histogram; ``--json`` prints
the figures as JSON.

How the figures are computed:

* **equity** is the account's net PnL, ``realized + unrealized - fees`` summed over
  symbols, after every position the broker published (each fill, and marks in between);
  it starts at 0. Positions are ordered by their time, then their fill count (messages may
  reach the database out of order, never out of time).
* **Sharpe**: the equity is sampled every minute from the run's first position (the
  value of the equity strictly before each sample time; the last minute may be partial);
  Sharpe = mean / standard deviation (n - 1) of the per-minute changes, times
  sqrt(525,600) - minutes in a year, crypto trades around the clock. It is a Sharpe on
  PnL changes (there is no capital in the database): scale-free, like one on returns of a
  fixed capital. "n/a" with fewer than two minutes or no variation.
* **max drawdown**: the largest fall of the equity from its running peak (the peak starts
  at 0), over every equity point, in the quote asset.
* **win rate**: round trips with PnL after fees > 0, over all closed round trips.
* **turnover**: the sum of price x quantity of all fills. **exposure**: the gross position
  value sum(|qty| x mark) over time: its time-weighted average and its maximum, and the
  share of the time any position was open.
* **latency percentiles** (nearest rank) of: tick-to-trade (broker accepted - the causing
  tick's receive time), decision (order made - tick), risk (accepted - made), fill (fill -
  its market event). In a replay these are differences of recorded time (simulated).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sqlite3
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tickbus.kernel.errors import TickbusError
from tickbus.plugins.persistence.schema import DEFAULT_NAME, read_only
from tickbus.schemas import NOTIONAL_SCALE, SCALE

MINUTE_NS = 60 * 10**9
MINUTES_PER_YEAR = 525_600
PERCENTILES = (50, 90, 99)


def money(v: int) -> Decimal:
    """Exact money (1/NOTIONAL_SCALE units) as a Decimal of the quote asset."""
    return Decimal(v) / NOTIONAL_SCALE


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (not empty)."""
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


@dataclass
class Run:
    """What the report needs of one run, read from the database."""

    run_id: int
    clock: str
    started_ns: int
    stopped_ns: int | None
    exit_reason: str | None
    positions: list[tuple[str, int, int, int, int, int, int, int, int]] = field(
        default_factory=list)
    """(symbol, ts_update_ns, fills, qty, cost, realized, unrealized, fees, mark_px), in
    time order."""
    fills: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    """(symbol, side, px, qty, fee)."""
    trades: list[tuple[str, int, int]] = field(default_factory=list)
    """(symbol, closed_ns, pnl) of the closed round trips."""
    latency: dict[str, list[int]] = field(default_factory=dict)
    """Stage -> sorted latencies in ns."""


def runs(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every run: id, clock, started, stopped, exit reason, fills."""
    return conn.execute(
        "SELECT r.run_id, r.clock, r.started_ns, r.stopped_ns, r.exit_reason,"
        " (SELECT count(*) FROM fills f WHERE f.run_id = r.run_id) FROM runs r ORDER BY run_id"
    ).fetchall()


def load(conn: sqlite3.Connection, run_id: int | None = None) -> Run:
    """Run ``run_id`` (default: the latest) from an open database."""
    if run_id is None:
        row = conn.execute("SELECT MAX(run_id) FROM runs").fetchone()
        if row is None or row[0] is None:
            raise TickbusError("the database holds no run yet")
        run_id = int(row[0])
    head = conn.execute("SELECT clock, started_ns, stopped_ns, exit_reason FROM runs"
                        " WHERE run_id = ?", (run_id,)).fetchone()  # fmt: skip
    if head is None:
        raise TickbusError(f"no run {run_id} in the database (see --list)")
    r = Run(run_id, *head)
    r.positions = [
        (sym, ts, fills, qty, int(cost), int(real), int(unreal), int(fees), mark)
        for sym, ts, fills, qty, cost, real, unreal, fees, mark, _ in conn.execute(
            "SELECT symbol, ts_update_ns, fills, qty, cost, realized_pnl, unrealized_pnl, fees,"
            " mark_px, seq FROM positions WHERE run_id = ? AND symbol != 'total'"
            " ORDER BY ts_update_ns, fills, seq", (run_id,))
    ]  # fmt: skip
    r.fills = [(s, side, px, q, int(fee)) for s, side, px, q, fee in conn.execute(
        "SELECT symbol, side, px, qty, fee FROM fills WHERE run_id = ? ORDER BY seq",
        (run_id,))]  # fmt: skip
    r.trades = [(s, t, int(p)) for s, t, p in conn.execute(
        "SELECT symbol, closed_ns, pnl FROM trades WHERE run_id = ? ORDER BY seq", (run_id,))]
    # ts_recv_ns 0: an order a timer sent (no causing tick), outside tick latencies
    queries = {
        "tick_to_trade": "SELECT ts_update_ns - ts_recv_ns FROM order_updates"
                         " WHERE run_id = ? AND status = 'accepted' AND ts_recv_ns > 0",
        "decision": "SELECT ts_created_ns - ts_recv_ns FROM orders WHERE run_id = ?"
                    " AND ts_recv_ns > 0 AND tif != '' AND restored_qty = 0"
                    " AND reason NOT LIKE 'restored%'",
        "risk": "SELECT ts_accepted_ns - ts_created_ns FROM orders WHERE run_id = ?"
                " AND ts_accepted_ns IS NOT NULL AND tif != '' AND reason NOT LIKE 'restored%'",
        "fill": "SELECT ts_fill_ns - ts_recv_ns FROM fills"
                " WHERE run_id = ? AND ts_recv_ns > 0",
    }  # fmt: skip
    for stage, sql in queries.items():
        r.latency[stage] = sorted(v for (v,) in conn.execute(sql, (run_id,)) if v is not None)
    return r


# --------------------------------------------------------------------------- figures


def equity_curve(r: Run) -> list[tuple[int, int]]:
    """(time, net PnL of the account) after each position, starting from (first time, 0)."""
    net: dict[str, int] = {}
    total = 0
    out: list[tuple[int, int]] = []
    for sym, ts, _f, _q, _c, real, unreal, fees, _m in r.positions:
        if not out:
            out.append((ts, 0))
        v = real + unreal - fees
        total += v - net.get(sym, 0)
        net[sym] = v
        out.append((ts, total))
    return out


def sharpe(curve: list[tuple[int, int]]) -> tuple[float | None, int]:
    """(annualised Sharpe of the per-minute equity changes, number of changes)."""
    if len(curve) < 2:
        return None, 0
    t0, t_end = curve[0][0], curve[-1][0]
    samples = []
    i, value = 0, 0
    b = t0
    while True:
        while i < len(curve) and curve[i][0] < b:
            value = curve[i][1]
            i += 1
        samples.append(value)
        if b > t_end:
            break
        b += MINUTE_NS
    changes = [(b - a) / NOTIONAL_SCALE for a, b in zip(samples, samples[1:], strict=False)]
    if len(changes) < 2:
        return None, len(changes)
    mean = sum(changes) / len(changes)
    var = sum((c - mean) ** 2 for c in changes) / (len(changes) - 1)
    if var <= 0:
        return None, len(changes)
    return mean / math.sqrt(var) * math.sqrt(MINUTES_PER_YEAR), len(changes)


def drawdown(curve: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(time, peak - equity) with the peak starting at 0."""
    peak = 0
    out = []
    for ts, v in curve:
        peak = max(peak, v)
        out.append((ts, peak - v))
    return out


def exposure(r: Run) -> tuple[int, int, float]:
    """(time-weighted average gross exposure, maximum, share of time in the market); money
    in 1/NOTIONAL_SCALE units."""
    gross: dict[str, int] = {}
    points: list[tuple[int, int]] = []
    for sym, ts, _f, qty, _c, _r, _u, _fee, mark in r.positions:
        gross[sym] = abs(qty) * mark
        points.append((ts, sum(gross.values())))
    if len(points) < 2:
        return (points[0][1] if points else 0), (points[0][1] if points else 0), 0.0
    span = points[-1][0] - points[0][0]
    area = held = 0
    for (t, g), (t2, _) in zip(points, points[1:], strict=False):
        area += g * (t2 - t)
        held += (t2 - t) if g else 0
    top = max(g for _, g in points)
    return (area // span if span else top), top, (held / span if span else 0.0)


def figures(r: Run) -> dict[str, Any]:
    """Every figure of the report, exact where money (Decimal strings) is concerned."""
    last: dict[str, tuple[Any, ...]] = {}
    for p in r.positions:
        last[p[0]] = p
    per_symbol = {}
    tot = [0, 0, 0]
    for sym, p in sorted(last.items()):
        _, _, fills, qty, _cost, real, unreal, fees, mark = p
        per_symbol[sym] = {
            "position": str(Decimal(qty) / SCALE), "mark": str(Decimal(mark) / SCALE),
            "realized": str(money(real)), "unrealized": str(money(unreal)),
            "fees": str(money(fees)), "net": str(money(real + unreal - fees)), "fills": fills,
        }  # fmt: skip
        tot[0] += real
        tot[1] += unreal
        tot[2] += fees
    curve = equity_curve(r)
    dd = drawdown(curve)
    max_dd = max(dd, key=lambda x: x[1]) if dd else (0, 0)
    sr, n_changes = sharpe(curve)
    pnls = [p for _, _, p in r.trades]
    wins = sum(1 for p in pnls if p > 0)
    avg, top, held = exposure(r)
    lat = {
        stage: ({"count": len(v), **{f"p{p}_us": percentile(v, p) / 1e3 for p in PERCENTILES},
                 "max_us": v[-1] / 1e3} if v else {"count": 0})
        for stage, v in r.latency.items()
    }  # fmt: skip
    span = (curve[-1][0] - curve[0][0]) / 1e9 if len(curve) > 1 else 0.0
    return {
        "run": r.run_id, "clock": r.clock, "exit_reason": r.exit_reason,
        "killed": r.stopped_ns is None, "duration_s": span,
        "pnl": {"realized": str(money(tot[0])), "unrealized": str(money(tot[1])),
                "fees": str(money(tot[2])), "net": str(money(tot[0] + tot[1] - tot[2])),
                "realized_after_fees": str(money(tot[0] - tot[2]))},
        "symbols": per_symbol,
        "fills": len(r.fills),
        "trades": {"count": len(pnls), "wins": wins,
                   "win_rate": wins / len(pnls) if pnls else None,
                   "average_pnl": str(money(sum(pnls)) / len(pnls)) if pnls else None,
                   "best": str(money(max(pnls))) if pnls else None,
                   "worst": str(money(min(pnls))) if pnls else None},
        "sharpe": sr, "sharpe_minutes": n_changes,
        "max_drawdown": str(money(max_dd[1])), "max_drawdown_at_ns": max_dd[0],
        "turnover": str(money(sum(px * q for _, _, px, q, _ in r.fills))),
        "exposure": {"average": str(money(avg)), "max": str(money(top)),
                     "time_in_market": held},
        "latency": lat,
    }  # fmt: skip


def _q(v: str | None, places: int = 8) -> str:
    """A Decimal string for people: fixed places, exact digits kept in --json."""
    if v is None:
        return "n/a"
    return f"{Decimal(v):,.{places}f}"


def render_text(f: dict[str, Any]) -> str:
    """The report for a terminal."""
    t = f["trades"]
    win = f"{t['win_rate']:.1%}" if t["win_rate"] is not None else "n/a"
    sr = f"{f['sharpe']:.2f}" if f["sharpe"] is not None else "n/a"
    exp = f["exposure"]
    head = f"run {f['run']} ({f['clock']} clock, {f['duration_s']:.0f} s"
    head += ", killed" if f["killed"] else ""
    head += f", {f['exit_reason']})" if f["exit_reason"] else ")"
    rows = [
        ("PnL net (after fees)", _q(f["pnl"]["net"])),
        ("  realized (gross)", _q(f["pnl"]["realized"])),
        ("  unrealized", _q(f["pnl"]["unrealized"])),
        ("  fees", _q(f["pnl"]["fees"])),
        ("fills", str(f["fills"])),
        ("round trips", str(t["count"])),
        ("  win rate", win),
        ("  average PnL", _q(t["average_pnl"])),
        ("Sharpe (per-minute)", sr),
        ("max drawdown", _q(f["max_drawdown"])),
        ("turnover", _q(f["turnover"], 2)),
        ("exposure avg / max", f"{_q(exp['average'], 2)} / {_q(exp['max'], 2)}"),
        ("time in market", f"{exp['time_in_market']:.1%}"),
    ]
    lines = [head, ""] + [f"  {k:<22} {v:>22}" for k, v in rows]
    for sym, x in f["symbols"].items():
        lines.append(f"  {sym}: position {x['position']} @ {x['mark']}, net {_q(x['net'])},"
                     f" {x['fills']} fills")  # fmt: skip
    lines += ["", "  latency (us)           count       p50       p90       p99       max"]
    for stage, v in f["latency"].items():
        if v["count"]:
            cells = " ".join(f"{v[k]:>9.1f}" for k in ("p50_us", "p90_us", "p99_us", "max_us"))
            lines.append(f"    {stage:<18} {v['count']:>9} {cells}")
        else:
            lines.append(f"    {stage:<18} {0:>9}")
    if f["clock"] == "replay":
        lines.append("    (replay clock: recorded time, so these are the simulated latencies)")
    return "\n".join(lines) + "\n"


def _empty(title: str, w: int) -> str:
    return (f'<svg class="chart" width="{w}" height="60"><text x="10" y="30">'
            f"{html.escape(title)}: no data</text></svg>")  # fmt: skip


# --------------------------------------------------------------------------- HTML


def _svg_line(series: list[list[tuple[float, float]]], title: str, unit: str,
              *, step: bool = False, fill: bool = False,
              names: list[str] | None = None) -> str:  # fmt: skip
    """An inline SVG chart of one or more (x, y) series; x in seconds from the start."""
    w, h, ml, mr, mt, mb = 720, 220, 70, 10, 24, 28
    pts = [p for s in series for p in s]
    if not pts:
        return _empty(title, w)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, *(p[1] for p in pts)), max(0.0, *(p[1] for p in pts))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (w - ml - mr)

    def sy(y: float) -> float:
        return mt + (y1 - y) / (y1 - y0) * (h - mt - mb)

    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    out = [
        f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{ml}" y="16" class="t">{html.escape(title)} ({html.escape(unit)})</text>',
        f'<line x1="{ml}" y1="{sy(0):.1f}" x2="{w - mr}" y2="{sy(0):.1f}" class="zero"/>',
        f'<text x="{ml - 4}" y="{sy(y1) + 4:.1f}" class="a" text-anchor="end">{y1:.6g}</text>',
        f'<text x="{ml - 4}" y="{sy(y0) + 4:.1f}" class="a" text-anchor="end">{y0:.6g}</text>',
        f'<text x="{ml}" y="{h - 8}" class="a">{x0:.0f} s</text>',
        f'<text x="{w - mr}" y="{h - 8}" class="a" text-anchor="end">{x1:.0f} s</text>',
    ]
    for i, s in enumerate(series):
        coords = []
        prev_y = None
        for x, y in s:
            if step and prev_y is not None:
                coords.append(f"{sx(x):.1f},{sy(prev_y):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev_y = y
        color = colors[i % len(colors)]
        if fill and coords:
            area = [f"{sx(s[0][0]):.1f},{sy(0):.1f}", *coords, f"{sx(s[-1][0]):.1f},{sy(0):.1f}"]
            out.append(f'<polygon points="{" ".join(area)}" fill="{color}" fill-opacity="0.3"'
                       f' stroke="none"/>')  # fmt: skip
        out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{color}"'
                   f' stroke-width="1.5"/>')  # fmt: skip
        if names:
            out.append(f'<text x="{w - mr - 4}" y="{mt + 14 * (i + 1)}" class="a"'
                       f' text-anchor="end" fill="{color}">'
                       f"{html.escape(names[i])}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)


def _svg_histogram(values_ns: list[int], title: str) -> str:
    """Latency histogram, log-spaced bins in microseconds."""
    w, h, ml, mr, mt, mb = 720, 220, 50, 10, 24, 40
    if not values_ns:
        return _empty(title, w)
    edges = [0.0] + [10 ** (k / 4) for k in range(0, 29)]  # 1 us .. 10 s, 4 bins a decade
    counts = [0] * len(edges)
    for v in values_ns:
        us = v / 1e3
        k = 0
        while k + 1 < len(edges) and us >= edges[k + 1]:
            k += 1
        counts[k] += 1
    lo = next(i for i, c in enumerate(counts) if c)
    hi = max(i for i, c in enumerate(counts) if c) + 1
    edges = [*edges, edges[-1] * 10]
    counts, edges = counts[lo:hi], edges[lo:hi + 1]
    top = max(counts)
    bw = (w - ml - mr) / len(counts)
    out = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{ml}" y="16" class="t">{html.escape(title)} (count per bin, us)</text>']
    for i, c in enumerate(counts):
        bh = c / top * (h - mt - mb)
        x = ml + i * bw
        out.append(f'<rect x="{x:.1f}" y="{h - mb - bh:.1f}" width="{max(bw - 1, 1):.1f}"'
                   f' height="{bh:.1f}" class="bar"><title>{edges[i]:.3g}-{edges[i + 1]:.3g}'
                   f" us: {c}</title></rect>")  # fmt: skip
        if i % 2 == 0:
            out.append(f'<text x="{x:.1f}" y="{h - mb + 14}" class="a">{edges[i]:.3g}</text>')
    out.append(f'<text x="{ml - 4}" y="{mt + 10}" class="a" text-anchor="end">{top}</text>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(f: dict[str, Any], r: Run) -> str:
    """One self-contained page: the figures, then the four charts."""
    curve = equity_curve(r)
    t0 = curve[0][0] if curve else 0
    eq = [((t - t0) / 1e9, v / NOTIONAL_SCALE) for t, v in curve]
    dd = [((t - t0) / 1e9, -v / NOTIONAL_SCALE) for t, v in drawdown(curve)]
    pos: dict[str, list[tuple[float, float]]] = {}
    for sym, ts, _f, qty, *_ in r.positions:
        pos.setdefault(sym, []).append(((ts - t0) / 1e9, qty / SCALE))
    stage = "tick_to_trade" if r.latency.get("tick_to_trade") else "decision"
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in _table(f))  # fmt: skip
    style = ("body{font:14px sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
             "th{text-align:left;padding:2px 16px 2px 0;font-weight:normal;color:#555}"
             "td{text-align:right;font-family:monospace}.chart{display:block;margin:16px 0}"
             ".t{font-size:13px;fill:#222}.a{font-size:11px;fill:#666}.zero{stroke:#aaa;"
             "stroke-dasharray:3 3}.bar{fill:#1f77b4}")  # fmt: skip
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>tickbus report: run {f['run']}</title>", f"<style>{style}</style>", "</head>",
        "<body>", f"<h1>Run {f['run']} ({html.escape(f['clock'])} clock)</h1>",
        f"<table>{rows}</table>",
        _svg_line([eq], "Equity: net PnL after fees", "quote asset", step=True),
        _svg_line([dd], "Drawdown from the running peak", "quote asset", step=True, fill=True),
        _svg_line(list(pos.values()), "Position", "base asset", step=True, names=list(pos)),
        _svg_histogram(r.latency.get(stage, []), f"Latency: {stage.replace('_', ' ')}"),
        "</body>", "</html>", "",
    ])  # fmt: skip


def _table(f: dict[str, Any]) -> list[tuple[str, str]]:
    t = f["trades"]
    lat = f["latency"].get("tick_to_trade", {})
    return [
        ("net PnL after fees", _q(f["pnl"]["net"])),
        ("realized (gross)", _q(f["pnl"]["realized"])),
        ("unrealized", _q(f["pnl"]["unrealized"])),
        ("fees", _q(f["pnl"]["fees"])),
        ("fills", str(f["fills"])),
        ("round trips", str(t["count"])),
        ("win rate", f"{t['win_rate']:.1%}" if t["win_rate"] is not None else "n/a"),
        ("average trade PnL", _q(t["average_pnl"])),
        ("Sharpe (per-minute, annualised)", f"{f['sharpe']:.2f}" if f["sharpe"] is not None
         else "n/a"),
        ("max drawdown", _q(f["max_drawdown"])),
        ("turnover", _q(f["turnover"], 2)),
        ("exposure average / max", f"{_q(f['exposure']['average'], 2)} / "
                                   f"{_q(f['exposure']['max'], 2)}"),
        ("time in market", f"{f['exposure']['time_in_market']:.1%}"),
        ("tick-to-trade p50 / p99 (us)", f"{lat['p50_us']:.1f} / {lat['p99_us']:.1f}"
         if lat.get("count") else "n/a"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- CLI


def default_database(config: str | None) -> Path:
    """The persistence plugin's database of ``config`` (its ``path`` or
    ``<state_dir>/tickbus.db``), else the default state dir's."""
    import os

    from tickbus.kernel.config import load_config, parse_config

    path = config or os.environ.get("TICKBUS_CONFIG")
    cfg = load_config(path) if path else parse_config({})
    for entry in cfg.plugins.values():
        if entry.plugin == "persistence" and entry.settings.get("path"):
            p = Path(str(entry.settings["path"])).expanduser()
            return p if p.is_absolute() else Path(cfg.path).resolve().parent / p
    return cfg.state_dir / DEFAULT_NAME


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``report`` arguments to ``p``."""
    p.add_argument("db", nargs="?", help="the persistence database (default: the config's)")
    p.add_argument("--config",
                   help="take the database from this config (default: $TICKBUS_CONFIG)")
    p.add_argument("--run", type=int, metavar="ID", help="which run (default: the latest)")
    p.add_argument("--list", action="store_true", help="list the runs in the database")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the report (and write the page)."""
    path = Path(args.db) if args.db else default_database(args.config)
    conn = read_only(path)
    try:
        if args.list:
            for rid, clock, _start, stop, reason, n in runs(conn):
                state = reason or ("killed or running" if stop is None else "")
                print(f"{rid:>5}  {clock:<6}  {n:>8} fills  {state}")
            return 0
        r = load(conn, args.run)
    finally:
        conn.close()
    f = figures(r)
    print(json.dumps(f, indent=2) if args.json else render_text(f), end="")
    if args.json:
        print()
    if args.html:
        out = Path(args.html)
        try:
            out.write_text(render_html(f, r))
        except OSError as err:
            raise TickbusError(f"--html {out}: {err.strerror}") from None
        print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.report``."""
    p = argparse.ArgumentParser(prog="tickbus report", description=__doc__.split("\n")[0])
    build_parser(p)
    try:
        return run(p.parse_args(argv))
    except TickbusError as err:
        print(f"tickbus: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
