"""``tickbus backtest``: the full pipeline on recorded data, as fast as the machine allows.

::

    tickbus backtest CONFIG [--data FILE ...] [--out DIR] [--set KEY=VALUE ...]
    tickbus backtest CONFIG --sweep KEY=V1,V2,... [--sweep KEY=...] [--jobs N]

One backtest is one in-process kernel built from CONFIG with the live plugins unchanged;
only the clock and the feed differ from a live run: ``[kernel] clock = "replay"`` is forced,
the (one) ``replay_feed`` instance plays at full speed (``speed = 0``, ``exit_at_end``) the
config's files or ``--data FILE ...``. The bus gets no external endpoints (no tap, no
``listen_*``/``join_*``: a backtest is a closed process, and runs side by side with others);
``[kernel] state_dir`` and every ``persistence`` instance's database go to ``--out``.

Into ``--out`` (default ``backtest-out/<config name>``) it writes, replacing what a previous
backtest wrote there:

* ``orders.jsonl``: every ``ord.request``, ``ord.accepted``, ``ord.rejected``,
  ``ord.cancel`` and ``exec.report``, one JSON object per line in the order the bus
  delivered them (``{"type": ..., <fields>}``, exact integer prices and quantities);
* ``fills.jsonl``: every ``exec.fill``;
* ``summary.json``: the report's figures.

Same config and data give byte-identical ``orders.jsonl`` and ``fills.jsonl``: time is the
recorded time (order ids too: their run stamp comes from the kernel clock), randomness is
seeded.

The report (stdout; ``--json`` for JSON) is ``tickbus report``'s (tools/report.py: PnL
realised / unrealised / after fees, round trips and their win rate, Sharpe, max drawdown,
turnover, exposure, latency percentiles), computed from the messages of the run itself - the
same figures with or without a ``persistence`` instance, whose database ``tickbus report``
reads - then the orders, and the engine's speed: frames replayed per second of the replay
phase, and the wall time of the whole backtest. The exit status is the kernel's: non-zero if
the run failed (bad frames skipped, a plugin died, stopped before the end of the data...),
2 for a bad command line or config. The replay starts after every other plugin, and the
stop waits (up to 120 s) for every lane to work off its backlog: the end of the data is no
SIGTERM.

``--set KEY=VALUE`` changes one setting: ``instance.key`` (``imbalance.imbalance_threshold``,
``risk.max_order_size``, ``persistence.enabled=false``; a plugin's name stands for all of its
instances) or a bare ``key`` for every strategy instance that has it.

``--sweep KEY=V1,V2,...`` (repeatable) runs the cartesian product of such settings, one
backtest process per combination, ``--jobs`` at a time (default: one per core), and
tabulates PnL, Sharpe, drawdown and trades per combination (``sweep.tsv`` and
``sweep.json`` in ``--out``, each run's own files in ``run-NNN/``). Values are TOML
(``0.3``, ``true``, ``"touch"``; a bare word is a string).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import logging
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from tickbus.kernel import PluginContext, StrategyConfig, TickbusError, hookimpl
from tickbus.kernel.config import Config, PluginEntry, load_config
from tickbus.kernel.errors import ConfigError
from tickbus.kernel.plugins import PluginManager
from tickbus.plugins.persistence.ledger import Ledger
from tickbus.schemas import Fill, Msg, OrderAccepted, OrderRequest, OrderUpdate, Position
from tickbus.tools import report

log = logging.getLogger("tickbus.backtest")

LOG_NAME = "backtest_log"
"""The instance (and plugin) name of the backtest's own recorder."""
OUTPUTS = ("orders.jsonl", "fills.jsonl", "summary.json")
_DB_SUFFIXES = ("", "-wal", "-shm")
_FLUSH = 10_000  # log messages kept before they are written
_STAGES = ("tick_to_trade", "decision", "risk", "fill")
_STOP_S = 120.0  # stop and drain budget of a backtest (live default: 0.8 s, for SIGTERM)


# --------------------------------------------------------------------------- the config


def config_type(manager: PluginManager, plugin: str) -> Any:
    """The config Struct a loaded plugin declares (``tickbus_config_type``), or None."""
    hook = getattr(manager.pm.get_plugin(plugin), "tickbus_config_type", None)
    return hook() if callable(hook) else None


def strategy_instances(cfg: Config, manager: PluginManager) -> dict[str, type]:
    """Enabled instances whose plugin's config is a ``StrategyConfig``: their config types."""
    out = {}
    for name, entry in cfg.plugins.items():
        if entry.enabled:
            type_ = config_type(manager, entry.plugin)
            if isinstance(type_, type) and issubclass(type_, StrategyConfig):
                out[name] = type_
    return out


def _settings_of(type_: Any) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(type_)) if type_ is not None else ()


def resolve_key(cfg: Config, manager: PluginManager, key: str, flag: str) -> list[tuple[str, str]]:
    """``instance.setting``, ``plugin.setting`` or a strategy ``setting`` -> the
    (instance, setting) pairs it changes; TickbusError if it names nothing."""
    enabled = {n: e for n, e in cfg.plugins.items() if e.enabled}
    if "." in key:
        head, setting = key.split(".", 1)
        among = cfg.plugins if setting == "enabled" else enabled  # (re-)enabling one
        names = [head] if head in among else [n for n, e in among.items() if e.plugin == head]
        if setting == "enabled" and names:
            return [(n, setting) for n in names]
        if not names:
            raise TickbusError(
                f"{flag} {key}: no enabled plugin instance or plugin named {head!r}"
                f" (instances: {', '.join(enabled)})"
            )
        for name in names:
            known = _settings_of(config_type(manager, enabled[name].plugin))
            if setting not in known:
                raise TickbusError(
                    f"{flag} {key}: plugin instance {name!r} has no setting {setting!r}"
                    f" (settings: {', '.join(known) or 'none'})"
                )
        return [(n, setting) for n in names]
    strategies = strategy_instances(cfg, manager)
    found = [(n, key) for n, t in strategies.items() if key in _settings_of(t)]
    if not found:
        where = ", ".join(strategies) or "none in the config"
        raise TickbusError(
            f"{flag} {key}: no strategy instance has a setting {key!r} (strategies: {where};"
            " name other plugins' settings as instance.key)"
        )
    return found


def parse_value(text: str) -> Any:
    """A TOML value (``0.3``, ``true``, ``"touch"``, ``[1, 2]``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_values(text: str) -> list[Any]:
    """``V1,V2,...`` of ``--sweep``: a TOML array's items, else comma-separated values."""
    try:
        values = tomllib.loads(f"v = [{text}]")["v"]
    except tomllib.TOMLDecodeError:
        values = [parse_value(v.strip()) for v in text.split(",")]
    return list(values)


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise TickbusError(f"{flag} {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def with_settings(cfg: Config, changes: dict[str, dict[str, Any]]) -> Config:
    """``cfg`` with instance settings replaced (``{instance: {setting: value}}``; the
    reserved ``enabled`` switches the instance itself)."""
    plugins = dict(cfg.plugins)
    for name, new in changes.items():
        e = plugins[name]
        settings = {k: v for k, v in new.items() if k != "enabled"}
        plugins[name] = msgspec.structs.replace(
            e, settings={**e.settings, **settings}, enabled=new.get("enabled", e.enabled)
        )
    return msgspec.structs.replace(cfg, plugins=plugins)


def apply_sets(
    cfg: Config, manager: PluginManager, sets: Sequence[tuple[str, Any]], flag: str = "--set"
) -> Config:
    """Apply ``(key, value)`` settings and validate the instances they touch (a value of
    the wrong type is a one-line error naming the flag)."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in sets:
        for name, setting in resolve_key(cfg, manager, key, flag):
            if setting == "enabled" and not isinstance(value, bool):
                raise TickbusError(f"{flag}: plugins.{name}.enabled: expected true or false")
            changes.setdefault(name, {})[setting] = value
    out = with_settings(cfg, changes)
    manager.load(out)  # the plugin of an instance enabled here
    for name in changes:
        if out.plugins[name].enabled:
            try:
                manager.validate_settings(out, name)
            except ConfigError as err:
                raise TickbusError(f"{flag}: {err.key}: {err.problem}") from None
    return out


def backtest_config(cfg: Config, data: Sequence[str], out: Path) -> tuple[Config, str]:
    """The config of a backtest run (see the module docstring) and its replay instance."""
    replays = [n for n, e in cfg.plugins.items() if e.enabled and e.plugin == "replay_feed"]
    if len(replays) != 1:
        raise ConfigError(
            cfg.path, "plugins",
            f"a backtest needs exactly one enabled replay_feed instance (found {len(replays)})",
        )  # fmt: skip
    replay = replays[0]
    new: dict[str, Any] = {"speed": 0.0, "exit_at_end": True}
    if data:
        new["files"] = [str(Path(f).resolve()) for f in data]
    changes: dict[str, dict[str, Any]] = {replay: new}
    for name, e in cfg.plugins.items():
        if e.enabled and e.plugin == "persistence":
            changes[name] = {"path": str(out.resolve() / f"{name}.db")}
        elif e.enabled and e.plugin == "metrics":
            changes[name] = {"port": 0}  # any free port: runs side by side, and with live ones
    cfg = with_settings(cfg, changes)
    # The replay starts after every other instance: a short capture can be over before a
    # slow start hook (a database opening) returns, and a stop requested during start-up
    # skips the drain and the flush.
    others = tuple(n for n, e in cfg.plugins.items()
                   if e.enabled and n != replay and replay not in e.after)  # fmt: skip
    entry = cfg.plugins[replay]
    plugins = dict(cfg.plugins)
    plugins[replay] = msgspec.structs.replace(entry, after=(*entry.after, *others))
    cfg = msgspec.structs.replace(cfg, plugins=plugins)
    # the end of the data is no emergency: every lane works off its backlog, however long
    kernel = msgspec.structs.replace(
        cfg.kernel, clock="replay", state_dir=str(out.resolve()),
        stop_timeout_s=max(cfg.kernel.stop_timeout_s, _STOP_S),
        drain_timeout_s=max(cfg.kernel.drain_timeout_s, _STOP_S),
    )  # fmt: skip
    bus = msgspec.structs.replace(
        cfg.bus, tap="", listen_pub=[], listen_sub=[], listen_tap_pub=[], join_pub="",
        join_sub="", join_tap="",
    )  # fmt: skip
    # the recorder first: in a lane, handlers run in subscription order, so it logs each
    # order request before what it causes (accepted, fills...)
    lane = next(
        (e.lane for e in cfg.plugins.values() if e.enabled and e.plugin == "paper_broker"),
        cfg.plugins[replay].lane,
    )
    plugins = {LOG_NAME: PluginEntry(LOG_NAME, LOG_NAME, lane, True, (), {}), **cfg.plugins}
    return msgspec.structs.replace(cfg, kernel=kernel, bus=bus, plugins=plugins), replay


# --------------------------------------------------------------------------- the recorder


class Records:
    """Messages as JSON-lines records: ``{"type": ..., <fields>}``, nested messages as
    objects (the sniffer's ``--json`` layout, built from msgspec's array form: ~5x faster)."""

    def __init__(self) -> None:
        self.enc = msgspec.json.Encoder()
        self._keys: dict[type, tuple[tuple[str, ...], tuple[int, ...]]] = {}

    def _layout(self, cls: type) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Record keys of a message type, and where its nested messages are."""
        found = self._keys.get(cls)
        if found is None:
            fields = msgspec.structs.fields(cls)
            nested = tuple(i + 1 for i, f in enumerate(fields)
                           if isinstance(f.type, type) and issubclass(f.type, Msg))  # fmt: skip
            found = self._keys[cls] = (("type", *(f.name for f in fields)), nested)
        return found

    def record(self, msg: Msg) -> dict[str, Any]:
        keys, nested = self._layout(type(msg))
        values = msgspec.to_builtins(msg)  # array_like: [tag, field, ...]
        for i in nested:
            values[i] = self.record(getattr(msg, keys[i]))
        return dict(zip(keys, values, strict=True))

    def lines(self, msgs: Sequence[Msg]) -> bytes:
        return b"".join(self.enc.encode(self.record(m)) + b"\n" for m in msgs)


class RunLog:
    """The recorder's component: the order and fill logs, and what the report needs (the
    positions, fills, round trips and latencies, as ``tickbus report`` reads them from the
    database). Messages are kept as they come - an append: the hot lane pays nothing more -
    and written ``_FLUSH`` at a time."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.files = {
            "orders": open(out / "orders.jsonl", "wb"),  # noqa: SIM115 - closed at shutdown
            "fills": open(out / "fills.jsonl", "wb"),  # noqa: SIM115
        }
        self.pending: dict[str, list[Msg]] = {"orders": [], "fills": []}
        self.positions: list[Position] = []
        self.records = Records()
        self.counts: dict[str, int] = {}
        self.fills: list[tuple[str, str, int, int, int]] = []
        self.latency: dict[str, list[int]] = {s: [] for s in _STAGES}
        self.t_start = self.t_end = 0.0
        orders, fills = self.pending["orders"], self.pending["fills"]

        def on_order(msg: Msg, _add: Callable[[Msg], None] = orders.append) -> None:
            _add(msg)
            if len(orders) >= _FLUSH:
                self.flush("orders")

        def on_fill(msg: Msg, _add: Callable[[Msg], None] = fills.append) -> None:
            _add(msg)
            if len(fills) >= _FLUSH:
                self.flush("fills")

        self.on_order, self.on_fill = on_order, on_fill
        self.on_position = self.positions.append

    def flush(self, which: str) -> None:
        msgs = self.pending[which]
        lat = self.latency
        for m in msgs:
            name = type(m).__name__
            self.counts[name] = self.counts.get(name, 0) + 1
            # the stages as tools/report.py measures them from the database
            if isinstance(m, Fill):
                self.fills.append((m.symbol, m.side, m.px, m.qty, m.fee))
                if m.ts_recv_ns > 0:  # 0: a timer's order, caused by no tick
                    lat["fill"].append(m.ts_fill_ns - m.ts_recv_ns)
            elif isinstance(m, OrderUpdate):
                if m.status == "accepted" and m.ts_recv_ns > 0:
                    lat["tick_to_trade"].append(m.ts_update_ns - m.ts_recv_ns)
            elif isinstance(m, OrderRequest):
                if m.ts_recv_ns > 0:
                    lat["decision"].append(m.ts_created_ns - m.ts_recv_ns)
            elif isinstance(m, OrderAccepted):
                lat["risk"].append(m.ts_accepted_ns - m.order.ts_created_ns)
        self.files[which].write(self.records.lines(msgs))
        msgs.clear()

    def close(self) -> None:
        for which, f in self.files.items():
            self.flush(which)
            f.close()

    def report_run(self, exit_reason: str) -> report.Run:
        """This run as :mod:`tickbus.tools.report` would load it from the database."""
        # the database's order: time, then fill count (tools/report.py)
        pos = sorted((p for p in self.positions if p.symbol != "total"),
                     key=lambda p: (p.ts_update_ns, p.fills))  # fmt: skip
        ledger = Ledger()  # round trips as the persistence plugin books them
        trades = []
        for p in pos:
            row = ledger.on_position(p)
            if row is not None:
                trades.append((row[0], row[3], int(row[-1])))
        r = report.Run(1, "replay", pos[0].ts_update_ns if pos else 0,
                       pos[-1].ts_update_ns if pos else 0, exit_reason)  # fmt: skip
        r.positions = [(p.symbol, p.ts_update_ns, p.fills, p.qty, p.cost, p.realized_pnl,
                        p.unrealized_pnl, p.fees, p.mark_px) for p in pos]  # fmt: skip
        r.fills = self.fills
        r.trades = trades
        r.latency = {s: sorted(v) for s, v in self.latency.items()}
        return r


class Recorder:
    """The backtest's own plugin (registered in-process as ``backtest_log``)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> RunLog:
        rec = RunLog(self.out)
        for topic in ("ord.request", "ord.accepted", "ord.rejected", "ord.cancel", "exec.report"):
            ctx.subscribe(topic, rec.on_order)
        ctx.subscribe("exec.fill", rec.on_fill)
        ctx.subscribe("pos.", rec.on_position)
        return rec

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        ctx.component.t_start = time.perf_counter()  # first to start: before the replay

    @hookimpl
    def tickbus_stop(self, ctx: PluginContext) -> None:
        ctx.component.t_end = time.perf_counter()

    @hookimpl
    def tickbus_shutdown(self, ctx: PluginContext) -> None:
        ctx.component.close()


# --------------------------------------------------------------------------- the report


class Summary(msgspec.Struct, forbid_unknown_fields=True):
    """What one backtest reports (``summary.json``)."""

    config: str
    data: list[str]
    settings: dict[str, Any]
    exit_status: int
    failures: list[str]
    orders: int
    rejected: int
    """Order requests risk refused."""
    frames: int
    replay_s: float
    """Wall time of the replay phase (first plugin started -> data exhausted)."""
    frames_per_s: float
    wall_s: float
    """Wall time of the whole backtest (load, set-up, replay, drain, report)."""
    recorded_s: float
    """Recorded time the data spans."""
    databases: list[str]
    """The persistence databases of the run (``tickbus report DB`` reads them)."""
    report: dict[str, Any]
    """The figures of ``tickbus report --json`` (tools/report.py), computed from the
    messages of the run itself: PnL, round trips, win rate, Sharpe, drawdown, turnover,
    exposure, latency percentiles (money as exact decimal strings)."""


def format_summary(s: Summary) -> str:
    """The report as text: ``tickbus report``'s, then the backtest's own lines."""
    lines = [
        f"backtest {s.config}" + (f" on {', '.join(Path(d).name for d in s.data)}" if s.data
                                  else ""),  # fmt: skip
        *(f"  setting   {k} = {v!r}" for k, v in s.settings.items()),
        f"  orders    {s.orders} ({s.rejected} rejected by risk)",
        f"  speed     {s.frames:,} frames in {s.replay_s:.3f} s: {s.frames_per_s:,.0f} frames/s"
        f" ({s.recorded_s / s.replay_s if s.replay_s else 0:,.0f}x real time);"
        f" wall {s.wall_s:.2f} s",
        *(f"  database  {d} (tickbus report {d} --html FILE)" for d in s.databases),
    ]
    if s.exit_status:
        lines.append(f"  FAILED    exit status {s.exit_status}: {'; '.join(s.failures)}")
    return report.render_text(s.report) + "\n" + "\n".join(lines)


# --------------------------------------------------------------------------- one backtest


def _clear_outputs(out: Path, cfg: Config) -> None:
    """Remove what an earlier backtest wrote into ``out`` (only those files)."""
    names = list(OUTPUTS)
    for name, e in cfg.plugins.items():
        if e.enabled and e.plugin == "persistence":
            names += [f"{name}.db{s}" for s in _DB_SUFFIXES]
    for name in names:
        (out / name).unlink(missing_ok=True)


def run_one(args: argparse.Namespace, t0: float) -> int:
    from tickbus.kernel.app import Kernel
    from tickbus.kernel.cli import log_level

    out = Path(args.out or Path("backtest-out") / Path(args.config).stem)
    base = load_config(args.config)
    manager = PluginManager()
    manager.load(base)
    sets = [split_assignment(s, "--set") for s in args.set]
    parsed = [(k, parse_value(v)) for k, v in sets]
    cfg = apply_sets(base, manager, parsed)
    cfg, replay = backtest_config(cfg, args.data or [], out)
    level = "warning" if args.quiet else log_level(cfg.kernel.log_level)
    logging.getLogger().setLevel(level.upper())
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out, cfg)
    kernel = Kernel(cfg, extra_plugins={LOG_NAME: Recorder(out)})
    rc = kernel.run()
    ctx = kernel.contexts.get(LOG_NAME)
    rec: RunLog | None = ctx.component if ctx is not None else None
    if rec is None:  # stopped before set-up (a signal during start)
        return rc or 1
    failures = list(dict.fromkeys(kernel.failures))
    if not rec.t_end:  # stopped during start-up: no stop, drain or flush happened
        failures.append("the run stopped before every plugin had started: results incomplete")
        rc = rc or 1
    replay_c = kernel.contexts[replay].component
    if not replay_c.done:  # Ctrl-C, SIGTERM: the figures cover part of the data only
        failures.append(f"stopped before the end of the data ({kernel.shutdown_reason})")
        rc = rc or 1
    first_ts = getattr(replay_c, "_status_at", (0, 0, 0))[2]
    replay_s = max(rec.t_end - rec.t_start, 1e-9) if rec.t_start else 0.0
    summary = Summary(
        config=args.config, data=[str(f) for f in replay_c.files], settings=dict(parsed),
        exit_status=rc, failures=failures,
        orders=rec.counts.get("OrderRequest", 0), rejected=rec.counts.get("OrderRejected", 0),
        frames=replay_c.frames, replay_s=round(replay_s, 6),
        frames_per_s=round(replay_c.frames / replay_s) if replay_s else 0.0,
        wall_s=round(time.perf_counter() - t0, 6),
        recorded_s=round((replay_c.last_ts - first_ts) / 1e9, 3) if first_ts else 0.0,
        databases=[e.settings["path"] for e in cfg.plugins.values()
                   if e.enabled and e.plugin == "persistence"],
        report=report.figures(rec.report_run(kernel.shutdown_reason)),
    )  # fmt: skip
    (out / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    print(msgspec.json.encode(summary).decode() if args.json else format_summary(summary))
    return rc


# --------------------------------------------------------------------------- the sweep


def _child_cmd(args: argparse.Namespace, out: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "tickbus.tools.backtest", args.config, "--out", str(out),
           "--quiet"]  # fmt: skip
    if args.data:
        cmd += ["--data", *[str(Path(f).resolve()) for f in args.data]]
    for s in [*args.set, *sets]:
        cmd += ["--set", s]
    return cmd


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v) if isinstance(v, list | dict | bool) else repr(v)


def run_sweep(args: argparse.Namespace) -> int:
    base = load_config(args.config)
    manager = PluginManager()
    manager.load(base)
    fixed = [split_assignment(s, "--set") for s in args.set]
    base = apply_sets(base, manager, [(k, parse_value(v)) for k, v in fixed])
    axes: list[tuple[str, list[Any]]] = []
    for text in args.sweep:
        key, values = split_assignment(text, "--sweep")
        vals = parse_values(values)
        if not vals:
            raise TickbusError(f"--sweep {text!r}: no values")
        resolve_key(base, manager, key, "--sweep")
        for v in vals:  # a value of the wrong type: one line, before any run
            apply_sets(base, manager, [(key, v)], f"--sweep {key}={_fmt_value(v)}")
        axes.append((key, vals))
    combos = list(itertools.product(*(vals for _, vals in axes)))
    out = Path(args.out or Path("backtest-out") / f"{Path(args.config).stem}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or os.cpu_count() or 1
    keys = [k for k, _ in axes]

    def one(i: int, combo: tuple[Any, ...]) -> dict[str, Any]:
        run_dir = out / f"run-{i:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        sets = [f"{k}={_fmt_value(v) if not isinstance(v, str) else json.dumps(v)}"
                for k, v in zip(keys, combo, strict=True)]  # fmt: skip
        (run_dir / "summary.json").unlink(missing_ok=True)
        with open(run_dir / "backtest.log", "wb") as err, open(run_dir / "report.txt", "wb") as so:
            rc = subprocess.run(_child_cmd(args, run_dir, sets), stdout=so, stderr=err).returncode
        row: dict[str, Any] = {"run": run_dir.name, "settings": dict(zip(keys, combo, strict=True)),
                               "exit_status": rc}  # fmt: skip
        try:
            row["summary"] = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            row["summary"] = None
        if rc:
            lines = (run_dir / "backtest.log").read_text(errors="replace").strip().splitlines()
            row["error"] = lines[-1] if lines else f"exit status {rc}"
        return row

    bar = _bar(len(combos)) if sys.stderr.isatty() else None
    rows: list[dict[str, Any]] = [{} for _ in combos]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, i, c): i for i, c in enumerate(combos, 1)}
        for fut in concurrent.futures.as_completed(futures):
            rows[futures[fut] - 1] = fut.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    table = sweep_table(keys, rows)
    (out / "sweep.tsv").write_text(
        "\n".join("\t".join(c.strip() for c in r) for r in table) + "\n"
    )
    (out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        cells = zip(r, widths, strict=True)
        print("  ".join(c.rjust(w) if j >= len(keys) else c.ljust(w)
                        for j, (c, w) in enumerate(cells)).rstrip())  # fmt: skip
    print(f"{len(rows)} backtests, {jobs} at a time; each run's logs and report in {out}/run-NNN")
    return 1 if any(r["exit_status"] for r in rows) else 0


def sweep_table(keys: list[str], rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header and one line per combination: its settings, then the figures (or the error)."""
    head = [*keys, "net PnL", "realised", "fees", "Sharpe", "max DD", "trades", "win %",
            "fills", "frames/s", "status"]  # fmt: skip
    table = [head]
    for r in rows:
        cells = [_fmt_value(r["settings"][k]) for k in keys]
        s = r.get("summary")
        if s is None:
            table.append([*cells, *["-"] * 9, f"failed: {r.get('error', '')}"])
            continue
        f = s["report"]
        pnl, trades = f["pnl"], f["trades"]
        win = trades["win_rate"]
        table.append([
            *cells, f"{Decimal(pnl['net']):+.4f}", f"{Decimal(pnl['realized']):+.4f}",
            f"{Decimal(pnl['fees']):.4f}", "n/a" if f["sharpe"] is None else f"{f['sharpe']:.2f}",
            f"{Decimal(f['max_drawdown']):.4f}", str(trades["count"]),
            "n/a" if win is None else f"{100 * win:.1f}", str(f["fills"]),
            f"{s['frames_per_s']:,.0f}",
            "ok" if not r["exit_status"] else f"failed: {r.get('error', '')}",
        ])  # fmt: skip
    return table


def _bar(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="sweep", unit="run", file=sys.stderr)
    except Exception:  # a terminal tqdm cannot draw on must not stop the sweep
        return None


# --------------------------------------------------------------------------- command line


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``backtest`` arguments to ``p``."""
    p.add_argument("config", help="TOML config with one replay_feed instance")
    p.add_argument("--data", nargs="+", action="extend", metavar="FILE",
                   help="capture files to replay instead of the config's (merged in time order)")
    p.add_argument("--out", metavar="DIR",
                   help="where logs, summary (and databases) go (default: backtest-out/NAME)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a setting: instance.key, or a strategy setting for every"
                   " strategy that has it (repeatable)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="run every combination of these settings in parallel (repeatable)")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="sweep: backtests at a time (default: one per core)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    # fmt: skip


def run(args: argparse.Namespace) -> int:
    """One backtest, or a sweep of them."""
    t0 = time.perf_counter()
    if args.jobs < 0:
        raise TickbusError("--jobs: must be >= 0 (0: one per core)")
    if args.sweep:
        return run_sweep(args)
    rc = run_one(args, t0)
    # As `tickbus run`: every plugin has flushed, every lane has ended, the report is out.
    # Tearing the interpreter down module by module (numba/LLVM) would add ~0.4 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.backtest``."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    p = argparse.ArgumentParser(prog="tickbus backtest", description=__doc__.split("\n")[0])
    build_parser(p)
    try:
        return run(p.parse_args(argv))
    except TickbusError as err:
        print(f"tickbus backtest: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
