"""The ``metrics`` plugin: a Prometheus endpoint (prometheus-client) for the engine and the
strategy, served from its own lane and an HTTP thread, loopback by default
(``http://127.0.0.1:9464/metrics``).

What it costs the hot lane: nothing per message for the bus figures - per-topic publish
counts and lane counters are the lanes' own plain integers, read by a custom collector at
scrape time (``ctx.bus_stats()``). Everything else is observed here, in the metrics lane,
from the messages the hot lane publishes anyway: orders, reports, fills, positions, risk
state, signals, feed status, heartbeats, the persistence plugin's ``persist.stats``; and
``md.book.<S>`` for book validity and age (``books = false`` turns that off: then no book
leaves its lane for this plugin's sake).

Latencies (histograms, seconds), from the timestamps the messages carry (the clock of the
process: recorded time in a replay, where they are the simulated latencies):

* ``tickbus_tick_to_trade_seconds``: the broker accepted the order (``exec.report``
  "accepted" ``ts_update_ns``) minus the receive time of the tick that caused it;
* ``tickbus_stage_latency_seconds{stage}``: ``decision`` (order made - tick received),
  ``risk`` (risk accepted - order made), ``fill`` (fill - its market event received).

A pair of timestamps from different clocks (monotonic vs epoch: more than an hour apart)
is not a latency: it is counted in ``tickbus_latency_skipped_total``, never observed.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from tickbus.kernel import PluginContext, TickbusError, hookimpl
from tickbus.schemas import (
    NOTIONAL_SCALE,
    SCALE,
    BookTop,
    FeedStatus,
    Fill,
    Heartbeat,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    OrderUpdate,
    Position,
    RiskState,
    Signal,
    SnapshotRequest,
)

LATENCY_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
COMMIT_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0)  # fmt: skip
MAX_LABELS = 256
"""Distinct values per label (symbols, strategies, rules come from the bus): past this the
value is reported as "other" - a flood of made-up symbols cannot blow up the registry."""
_SAME_CLOCK_NS = 3600 * 10**9
RISK_STATES = ("active", "reducing", "halted")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.metrics]``."""

    address: str = "127.0.0.1"
    """Where to listen; loopback by default (the endpoint has no authentication)."""
    port: int = 9464
    """0: any free port (logged, and shown in the status line)."""
    books: bool = True
    """Follow ``md.book.<S>`` (book validity, update age): each book then also goes to this
    plugin's lane - one encode per book in the lane that publishes it."""


class _Labels:
    """Bounded label values."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= MAX_LABELS:
            return "other"
        value = value[:64]
        self.seen.add(value)
        return value


class Metrics:
    """The registry, the handlers that update it, and the HTTP server."""

    def __init__(self, ctx: PluginContext, cfg: Config) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sym = _Labels()
        self.strat = _Labels()
        self.kind = _Labels()
        self.scrapes = 0
        self.server: Any = None
        self.port = 0
        self.heartbeats: dict[str, tuple[float, float]] = {}
        """lane -> (monotonic receive time, lag seconds) of its latest heartbeat."""
        self.book_seen: dict[str, float] = {}
        self._valid: dict[str, bool] = {}
        self._connected: dict[str, bool] = {}
        self.persistence: dict[str, Any] = {}
        """instance -> its latest PersistenceStats."""
        self.t2t = Histogram("tickbus_tick_to_trade_seconds", "Broker accepted the order minus"
                             " the causing tick's receive time", buckets=LATENCY_BUCKETS,
                             registry=r)  # fmt: skip
        self.stage = Histogram("tickbus_stage_latency_seconds", "Latency per stage: decision"
                               " (order made - tick), risk (accepted - made), fill (fill -"
                               " market event)", ["stage"], buckets=LATENCY_BUCKETS,
                               registry=r)  # fmt: skip
        self.skipped = Counter("tickbus_latency_skipped", "Timestamp pairs from different"
                               " clocks, not observed", registry=r)  # fmt: skip
        self.feed_up = Gauge("tickbus_feed_connected", "Feed connection up (1) or down (0)",
                             ["symbol"], registry=r)  # fmt: skip
        self.feed_downs = Counter("tickbus_feed_disconnects", "Feed disconnections",
                                  ["symbol"], registry=r)  # fmt: skip
        self.resyncs = Counter("tickbus_book_resyncs", "Snapshots the book asked for (gap,"
                               " crossed, start...)", ["symbol", "reason"], registry=r)  # fmt: skip
        self.book_valid = Gauge("tickbus_book_valid", "The local book is in sync (1)",
                                ["symbol"], registry=r)  # fmt: skip
        self.book_invalid = Counter("tickbus_book_invalidations", "Valid -> invalid book",
                                    ["symbol"], registry=r)  # fmt: skip
        self.orders = Counter("tickbus_orders", "Order requests", ["strategy", "symbol", "side"],
                              registry=r)  # fmt: skip
        self.accepted = Counter("tickbus_orders_accepted", "Orders risk let through",
                                ["strategy"], registry=r)  # fmt: skip
        self.rejections = Counter("tickbus_rejections", "Orders refused, by risk rule or"
                                  " broker kind", ["source", "rule"], registry=r)  # fmt: skip
        self.cancels = Counter("tickbus_cancels", "Cancel requests", ["strategy"], registry=r)
        self.updates = Counter("tickbus_order_updates", "Order transitions (exec.report)",
                               ["status"], registry=r)  # fmt: skip
        self.fills = Counter("tickbus_fills", "Executions", ["symbol", "side", "liquidity"],
                             registry=r)  # fmt: skip
        self.fill_qty = Counter("tickbus_fill_quantity", "Executed quantity (base asset)",
                                ["symbol", "side"], registry=r)  # fmt: skip
        self.fill_notional = Counter("tickbus_fill_notional", "Executed notional (quote"
                                     " asset)", ["symbol"], registry=r)  # fmt: skip
        self.pos_qty = Gauge("tickbus_position_quantity", "Signed position (base asset)",
                             ["symbol"], registry=r)  # fmt: skip
        self.pos_mark = Gauge("tickbus_position_mark_price", "Mark price of the position",
                              ["symbol"], registry=r)  # fmt: skip
        self.pnl = Gauge("tickbus_pnl", "PnL in the quote asset: realized (gross), unrealized,"
                         " fees, net (realized + unrealized - fees)", ["symbol", "kind"],
                         registry=r)  # fmt: skip
        self.risk_state = Gauge("tickbus_risk_state", "1 for risk's current trading state",
                                ["state"], registry=r)  # fmt: skip
        self.kill = Gauge("tickbus_risk_kill_switch", "Kill switch on (1)", registry=r)
        self.open_orders = Gauge("tickbus_risk_open_orders", "Working orders risk counts",
                                 registry=r)  # fmt: skip
        self.exposure = Gauge("tickbus_risk_gross_exposure", "Gross exposure (quote asset)",
                              registry=r)  # fmt: skip
        self.signals = Counter("tickbus_signals", "Signals (active: traded on; else"
                               " suppressed)", ["strategy", "symbol", "active"],
                               registry=r)  # fmt: skip
        self.commit = Histogram("tickbus_persistence_commit_seconds", "Database commit"
                                " latency", buckets=COMMIT_BUCKETS, registry=r)  # fmt: skip
        r.register(_BusCollector(self))

    # ------------------------------------------------------------------ handlers

    def _latency(self, hist: Any, ns: int) -> None:
        if 0 <= ns < _SAME_CLOCK_NS:
            hist.observe(ns / 1e9)
        else:
            self.skipped.inc()

    def on_order(self, msg: Any) -> None:
        t = type(msg)
        if t is OrderRequest:
            self.orders.labels(self.strat(msg.strategy_id), self.sym(msg.symbol), msg.side).inc()
            if msg.ts_recv_ns > 0:  # 0: a timer's order, caused by no tick
                self._latency(self.stage.labels("decision"), msg.ts_created_ns - msg.ts_recv_ns)
        elif t is OrderAccepted:
            o = msg.order
            self.accepted.labels(self.strat(o.strategy_id)).inc()
            self._latency(self.stage.labels("risk"), msg.ts_accepted_ns - o.ts_created_ns)
        elif t is OrderRejected:
            self.rejections.labels("risk", self.kind(msg.rule)).inc()
        elif t is OrderCancel:
            self.cancels.labels(self.strat(msg.strategy_id)).inc()

    def on_exec(self, msg: Any) -> None:
        t = type(msg)
        if t is OrderUpdate:
            self.updates.labels(msg.status).inc()
            if msg.status == "accepted" and msg.ts_recv_ns > 0:  # 0: caused by a timer
                self._latency(self.t2t, msg.ts_update_ns - msg.ts_recv_ns)
            elif msg.status == "rejected":
                self.rejections.labels("broker", self.kind(msg.reason.split(":")[0])).inc()
        elif t is Fill:
            sym = self.sym(msg.symbol)
            self.fills.labels(sym, msg.side, msg.liquidity).inc()
            self.fill_qty.labels(sym, msg.side).inc(msg.qty / SCALE)
            self.fill_notional.labels(sym).inc(msg.px * msg.qty / NOTIONAL_SCALE)
            if msg.ts_recv_ns > 0:
                self._latency(self.stage.labels("fill"), msg.ts_fill_ns - msg.ts_recv_ns)

    def on_position(self, p: Any) -> None:
        if type(p) is not Position:
            return
        sym = self.sym(p.symbol)
        self.pos_qty.labels(sym).set(p.qty / SCALE)
        self.pos_mark.labels(sym).set(p.mark_px / SCALE)
        for kind, v in (("realized", p.realized_pnl), ("unrealized", p.unrealized_pnl),
                        ("fees", p.fees),
                        ("net", p.realized_pnl + p.unrealized_pnl - p.fees)):  # fmt: skip
            self.pnl.labels(sym, kind).set(v / NOTIONAL_SCALE)

    def on_risk(self, s: Any) -> None:
        if type(s) is not RiskState:
            return
        for state in RISK_STATES:
            self.risk_state.labels(state).set(1 if s.state == state else 0)
        self.kill.set(1 if s.kill_switch else 0)
        self.open_orders.set(s.open_orders)
        self.exposure.set(s.gross_exposure / NOTIONAL_SCALE)

    def on_signal(self, s: Any) -> None:
        if type(s) is Signal:
            self.signals.labels(self.strat(s.strategy_id), self.sym(s.symbol),
                                "false" if s.suppressed else "true").inc()  # fmt: skip

    def on_feed(self, msg: Any) -> None:
        t = type(msg)
        if t is FeedStatus:
            sym = self.sym(msg.symbol)
            if not msg.connected and self._connected.get(sym):
                self.feed_downs.labels(sym).inc()
            self._connected[sym] = msg.connected
            self.feed_up.labels(sym).set(1 if msg.connected else 0)
        elif t is SnapshotRequest:
            self.resyncs.labels(self.sym(msg.symbol), self.kind(msg.reason.split(" ")[0])).inc()

    def on_book(self, b: Any) -> None:
        if type(b) is not BookTop:
            return
        sym = self.sym(b.symbol)
        was = self._valid.get(sym)
        if was is not b.valid:
            if was and not b.valid:
                self.book_invalid.labels(sym).inc()
            self._valid[sym] = b.valid
            self.book_valid.labels(sym).set(1 if b.valid else 0)
        self.book_seen[sym] = time.monotonic()

    def on_heartbeat(self, hb: Any) -> None:
        if type(hb) is Heartbeat and len(self.heartbeats) < MAX_LABELS:
            self.heartbeats[f"{hb.process}/{hb.lane}"] = (
                time.monotonic(), max(0.0, (time.time_ns() - hb.ts_ns) / 1e9))

    def on_persistence(self, st: Any) -> None:
        instance = getattr(st, "instance", None)
        if not isinstance(instance, str) or len(self.persistence) >= 16 and (
                instance not in self.persistence):  # fmt: skip
            return
        self.persistence[instance] = st
        for us in getattr(st, "commit_us", ())[:1024]:
            self.commit.observe(us / 1e6)

    # ------------------------------------------------------------------ server

    def start(self) -> None:
        cfg = self.cfg
        try:
            self.server, _ = start_http_server(cfg.port, cfg.address, registry=self.registry)
        except OSError as err:
            why = "address already in use" if err.errno == errno.EADDRINUSE else (
                err.strerror or str(err))  # fmt: skip
            raise TickbusError(f"plugins.{self.ctx.name}: cannot listen on {cfg.address}:"
                               f"{cfg.port}: {why}") from None  # fmt: skip
        self.port = self.server.server_address[1]
        self.ctx.log.info("Prometheus metrics on %s", self.url)

    @property
    def url(self) -> str:
        host = self.cfg.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _BusCollector(Collector):
    """Figures read at scrape time (HTTP thread): lane counters and per-topic publish
    counts from ``ctx.bus_stats()``, ages, persistence counters."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the families depend on the lanes and topics at scrape time
        (and the registry would otherwise call :meth:`collect` to learn them)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        m = self.m
        m.scrapes += 1
        stats = m.ctx.bus_stats()
        published = CounterMetricFamily("tickbus_messages_published", "Messages published,"
                                        " per lane and topic",
                                        labels=["lane", "topic"])  # fmt: skip
        lane_counters = {
            name: CounterMetricFamily(f"tickbus_lane_{name}", help_, labels=["lane"])
            for name, help_ in (
                ("sent", "Messages a lane sent to other lanes or processes"),
                ("received", "Messages a lane received from the bus"),
                ("bad_frames", "Malformed frames a lane skipped"),
                ("handler_errors", "Handler calls that raised"),
                ("encode_errors", "Messages that could not be encoded for the bus"),
            )
        }
        alive = GaugeMetricFamily("tickbus_lane_alive", "The lane's loop runs", labels=["lane"])
        for lane, row in stats.items():
            for topic, n in list(row.get("topics", {}).items()):
                published.add_metric([lane, topic], n)
            for name, fam in lane_counters.items():
                fam.add_metric([lane], row.get(name, 0))
            alive.add_metric([lane], 1 if row.get("alive") else 0)
        yield published
        yield from lane_counters.values()
        yield alive
        now = time.monotonic()
        age = GaugeMetricFamily("tickbus_lane_heartbeat_age_seconds", "Since the lane's latest"
                                " heartbeat reached the metrics lane", labels=["lane"])  # fmt: skip
        lag = GaugeMetricFamily("tickbus_lane_lag_seconds", "Latest heartbeat: received here"
                                " minus sent (the lane's and this lane's backlog)",
                                labels=["lane"])  # fmt: skip
        for lane, (seen, delay) in list(m.heartbeats.items()):
            age.add_metric([lane], now - seen)
            lag.add_metric([lane], delay)
        yield age
        yield lag
        book_age = GaugeMetricFamily("tickbus_book_update_age_seconds", "Since the symbol's"
                                     " latest md.book", labels=["symbol"])  # fmt: skip
        for sym, seen in list(m.book_seen.items()):
            book_age.add_metric([sym], now - seen)
        yield book_age
        yield from self._persistence()
        yield CounterMetricFamily("tickbus_metrics_scrapes", "Scrapes of this endpoint",
                                  value=m.scrapes)  # fmt: skip

    def _persistence(self) -> Iterator[Metric]:
        gauges = {name: GaugeMetricFamily(f"tickbus_persistence_{name}", help_,
                                          labels=["instance"])  # fmt: skip
                  for name, help_ in (
                      ("pending_rows", "Rows waiting for the next commit"),
                      ("backlog_messages", "Messages published, not yet handled by it"),
                      ("database_bytes", "Database file and WAL size"))}  # fmt: skip
        counters = {name: CounterMetricFamily(f"tickbus_persistence_{name}", help_,
                                              labels=["instance"])  # fmt: skip
                    for name, help_ in (
                        ("rows", "Rows committed"), ("commits", "Commits"),
                        ("retries", "Retries of failed commits"),
                        ("failures", "Failed commits (each retried, nothing dropped)"),
                        ("bad_rows", "Rows the database refused for their content"))}  # fmt: skip
        for inst, st in list(self.m.persistence.items()):
            for name, field in (("pending_rows", "pending"), ("backlog_messages", "backlog"),
                                ("database_bytes", "db_bytes")):  # fmt: skip
                gauges[name].add_metric([inst], getattr(st, field, 0))
            for name, field in (("rows", "rows"), ("commits", "commits"),
                                ("retries", "retries"), ("failures", "failures"),
                                ("bad_rows", "bad")):  # fmt: skip
                counters[name].add_metric([inst], getattr(st, field, 0))
        yield from gauges.values()
        yield from counters.values()


# --------------------------------------------------------------------------- hooks


@hookimpl
def tickbus_config_type() -> type[Config]:
    return Config


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Metrics:
    cfg: Config = ctx.config
    if not 0 <= cfg.port <= 65535:
        raise TickbusError(f"plugins.{ctx.name}.port: out of range ({cfg.port})")
    m = Metrics(ctx, cfg)
    ctx.subscribe("ord.", m.on_order)
    ctx.subscribe("exec.", m.on_exec)
    ctx.subscribe("pos.", m.on_position)
    ctx.subscribe("risk.", m.on_risk)
    ctx.subscribe("sig.", m.on_signal)
    ctx.subscribe("md.status.", m.on_feed)
    ctx.subscribe("md.resync.", m.on_feed)
    ctx.subscribe("sys.heartbeat", m.on_heartbeat)
    ctx.subscribe("persist.stats", m.on_persistence)
    if cfg.books:
        ctx.subscribe("md.book.", m.on_book)
    return m


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.component.start()


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    ctx.component.close()


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    m: Metrics = ctx.component
    return f"{m.url}, {m.scrapes} scrapes"
