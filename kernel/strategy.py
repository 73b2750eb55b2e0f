"""The strategy API: a strategy is one class - a typed config and callbacks named after
market and order events - turned into a plugin by :func:`strategy_plugin`.

::

    class Config(StrategyConfig):            # [plugins.<name>] table; `symbols` is inherited
        threshold: float = 0.3

    class MyStrategy(Strategy):
        Config = Config

        def on_book(self, book: BookTop) -> None:
            if book.valid and self.net_qty(book.symbol) == 0:
                self.buy(book.symbol, qty=self.to_qty(0.001), px=book.bid_px)

    plugin = strategy_plugin(MyStrategy)     # entry point: my_strategy = "my_pkg.mod:plugin"

The instance name (``[plugins.<name>]``) is the ``strategy_id`` on every signal and order,
so one class may run as several instances with different parameters. Every callback runs on
the strategy's lane thread, one message at a time: no locks. Orders go out on
``ord.request`` stamped with the ``ts_recv_ns`` of the message being handled (the tick that
caused them), so tick-to-trade is measured on every order. Time and timers come from the
kernel clock (recorded time in a backtest), never from ``time.time()``.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from tickbus.schemas import (
    SCALE,
    BookTop,
    ControlCommand,
    FeatureVector,
    Fill,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    Signal,
    StrategySnapshot,
    TimeInForce,
    Trade,
)

from .clock import Timer
from .context import PluginContext
from .errors import TickbusError
from .hookspecs import hookimpl

SYMBOL = re.compile(r"[A-Z0-9]{1,20}")
_FINAL = frozenset({"filled", "canceled", "expired", "rejected"})


class StrategyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings every strategy has; subclass it to add your own (with defaults)."""

    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT"])
    """Symbols the strategy trades (upper case, as on the bus)."""


class WorkingOrder(msgspec.Struct):
    """What the strategy knows of one of its orders (updated from ``exec.report``):
    ``status`` is the last update's, or "new" (sent), "canceling" (cancel sent),
    "replacing" (a cancel-replace sent)."""

    request: OrderRequest
    status: str = "new"
    filled_qty: int = 0
    leaves_qty: int = 0


ConfigT = TypeVar("ConfigT", bound=StrategyConfig)


class Strategy(Generic[ConfigT]):
    """Base class of strategies: subclass it (``class Mine(Strategy[MyConfig])``), set
    ``Config``, override the callbacks you need. Callbacks receive the bus messages as they
    are (exact integer prices and quantities in 1/SCALE units; use :meth:`to_qty` /
    :meth:`to_px` to convert), for the configured symbols only."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, ctx: PluginContext, config: ConfigT) -> None:
        self.ctx = ctx
        self.config = config
        self.id = ctx.name
        """The strategy id: the plugin instance name."""
        self.log: logging.Logger = ctx.log
        self.symbols = tuple(config.symbols)
        self._wanted = frozenset(self.symbols)  # topics are prefixes: BTCUSD matches BTCUSDT
        self.books: dict[str, BookTop] = {}
        """Latest ``md.book`` per symbol."""
        self.positions: dict[str, Position] = {}
        """Latest account position per symbol (``pos.<SYMBOL>``, all strategies)."""
        self.orders: dict[str, WorkingOrder] = {}
        """This strategy's orders not yet finished, by client order id."""
        self.stats = {"orders": 0, "cancels": 0, "fills": 0, "rejects": 0, "signals": 0}
        self._net: dict[str, int] = dict.fromkeys(self.symbols, 0)
        self._publish = ctx.publish
        self._cause_ns = 0  # ts_recv_ns of the message being handled
        self._timers: dict[str, Timer] = {}
        # unique per run and strategy: instance, run stamp, sequence. The stamp comes from
        # the kernel clock at the first order, so a backtest gives the same ids every run.
        self._run = ""
        self._restart = ""  # "r<run>" after a restart: a replayed clock repeats its stamps
        self._seq = itertools.count(1)
        self._started = False  # market callbacks (and so orders) only once started
        self._restoring: OrderAccepted | None = None

    # ------------------------------------------------------------------ callbacks

    def on_start(self) -> None:
        """The engine is up: every plugin is set up and started before this one's orders
        can flow."""

    def on_book(self, book: BookTop) -> None:
        """A book of one of ``symbols`` changed (``md.book``). Check ``book.valid``."""

    def on_trade(self, trade: Trade) -> None:
        """A public trade of one of ``symbols`` (``md.trade``)."""

    def on_features(self, features: FeatureVector) -> None:
        """A feature vector of one of ``symbols`` (``feat``, from the features plugin)."""

    def on_fill(self, fill: Fill) -> None:
        """One of this strategy's orders was (partly) filled."""

    def on_order(self, update: OrderUpdate) -> None:
        """One of this strategy's orders changed state (accepted, partially_filled, filled,
        canceled, expired, rejected - by risk or by the broker; ``update.reason`` says why)."""

    def on_position(self, position: Position) -> None:
        """The account position of one of ``symbols`` changed (after a fill, or marked)."""

    def on_timer(self, name: str, payload: Any) -> None:
        """A timer set with :meth:`set_timer` fired (kernel clock)."""

    def on_stop(self) -> None:
        """The engine is stopping: no new order will be sent after this returns."""

    def snapshot(self) -> Any:
        """Your state for a restart, as JSON-able builtins (persistence asks every
        ``snapshot_interval_ms`` and at stop; None: nothing of your own to keep). Positions,
        working orders and the counters are restored by the base class."""
        return None

    def restore(self, state: Any) -> None:
        """A restart: ``state`` is what :meth:`snapshot` returned last (before
        :meth:`on_start`; positions and working orders are already back)."""

    def status(self) -> str:
        """A short fragment for the engine's status line."""
        s = self.stats
        pos = ", ".join(f"{sym} {self._net[sym] / SCALE:g}" for sym in self.symbols)
        return (
            f"{s['orders']} orders, {s['fills']} fills, {s['rejects']} rejects,"
            f" {len(self.orders)} working; net {pos}"
        )

    # ------------------------------------------------------------------ state

    def now_ns(self) -> int:
        """Kernel-clock time (recorded time in a backtest)."""
        return self.ctx.clock.now_ns()

    def net_qty(self, symbol: str) -> int:
        """This strategy's own signed position from its fills (1/SCALE units)."""
        return self._net.get(symbol, 0)

    def working(self, symbol: str) -> list[WorkingOrder]:
        """This strategy's unfinished orders in ``symbol``."""
        return [o for o in self.orders.values() if o.request.symbol == symbol]

    @staticmethod
    def to_qty(amount: float | str) -> int:
        """A quantity or price in units (``0.001``) to the bus's integer units."""
        return round(float(amount) * SCALE)

    to_px = to_qty

    # ------------------------------------------------------------------ actions

    def order_id(self) -> str:
        """A new client order id, unique per run and strategy: ``<id>-<stamp>-<n>``, the
        stamp from the kernel clock at the first order (ms, base 36; after a restart
        followed by ``r<database run id>``: a restarted replay repeats its clock)."""
        if not self._run:
            self._run = _base36(self.ctx.clock.now_ns() // 1_000_000 % 36**8) + self._restart
        return f"{self.id}-{self._run}-{next(self._seq)}"

    def submit(
        self,
        symbol: str,
        side: Side,
        qty: int,
        *,
        px: int = 0,
        order_type: OrderType = "limit",
        tif: TimeInForce = "GTC",
        expire_at_ns: int = 0,
        reduce_only: bool = False,
        replaces: str = "",
    ) -> str:
        """Send an order request (risk, then the broker) and return its client order id.
        ``qty`` and ``px`` in 1/SCALE units; ``px`` 0 for a market order."""
        if qty <= 0:
            raise ValueError(f"order quantity must be > 0 (got {qty})")
        if order_type != "market" and px <= 0:
            raise ValueError(f"a {order_type} order needs a price > 0 (got {px})")
        cid = self.order_id()
        req = OrderRequest(
            cid, self.id, symbol, side, order_type, tif, qty, px, expire_at_ns, reduce_only,
            replaces, self._cause_ns, self.ctx.clock.now_ns(),
        )  # fmt: skip
        self.orders[cid] = WorkingOrder(req, "new", 0, qty)
        if replaces in self.orders:
            self.orders[replaces].status = "replacing"
        self.stats["orders"] += 1
        self._publish("ord.request", req)
        return cid

    def buy(self, symbol: str, qty: int, px: int = 0, **kw: Any) -> str:
        """A buy order: limit at ``px``, or market when ``px`` is 0."""
        kw.setdefault("order_type", "limit" if px else "market")
        return self.submit(symbol, "buy", qty, px=px, **kw)

    def sell(self, symbol: str, qty: int, px: int = 0, **kw: Any) -> str:
        """A sell order: limit at ``px``, or market when ``px`` is 0."""
        kw.setdefault("order_type", "limit" if px else "market")
        return self.submit(symbol, "sell", qty, px=px, **kw)

    def cancel(self, client_order_id: str) -> bool:
        """Ask the broker to cancel a working order; False if it is not one of ours."""
        order = self.orders.get(client_order_id)
        if order is None:
            return False
        self.stats["cancels"] += 1
        order.status = "canceling"
        self._publish(
            "ord.cancel",
            OrderCancel(client_order_id, self.id, order.request.symbol, self.ctx.clock.now_ns()),
        )
        return True

    def cancel_all(self, symbol: str | None = None) -> int:
        """Cancel every working order (of ``symbol``); how many were asked."""
        ids = [c for c, o in self.orders.items() if symbol in (None, o.request.symbol)]
        return sum(self.cancel(c) for c in ids)

    def replace(
        self, client_order_id: str, *, qty: int | None = None, px: int | None = None
    ) -> str:
        """Cancel-replace a working order with a new quantity and/or price; the new id."""
        old = self.orders[client_order_id].request
        return self.submit(
            old.symbol, old.side, old.qty if qty is None else qty,
            px=old.px if px is None else px, order_type=old.order_type, tif=old.tif,
            expire_at_ns=old.expire_at_ns, reduce_only=old.reduce_only, replaces=client_order_id,
        )  # fmt: skip

    def signal(
        self, symbol: str, direction: int, strength: float, confidence: float,
        holding_period_ms: int, suppressed: str = "",
    ) -> Signal:  # fmt: skip
        """Publish this strategy's view on ``sig.<SYMBOL>`` (``suppressed``: why not acted on)."""
        sig = Signal(
            symbol, self.id, direction, strength, confidence, holding_period_ms, suppressed,
            self.ctx.clock.now_ns(), self._cause_ns,
        )  # fmt: skip
        self.stats["signals"] += 1
        self._publish(f"sig.{symbol}", sig)
        return sig

    def set_timer(
        self, name: str, delay_s: float = 0.0, payload: Any = None, *, at_ns: int = 0
    ) -> None:
        """Call :meth:`on_timer` (name, payload) after ``delay_s`` of kernel-clock time, or
        at kernel-clock time ``at_ns`` (at once if past); setting a timer of the same name
        again replaces it."""
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        ctx = self.ctx
        self._timers[name] = (
            ctx.call_at(at_ns, self._fire, name, payload)
            if at_ns
            else ctx.call_later(delay_s, self._fire, name, payload)
        )

    def cancel_timer(self, name: str) -> None:
        """Forget timer ``name`` (no-op if it is not set)."""
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------------ dispatch

    def _fire(self, name: str, payload: Any) -> None:
        self._timers.pop(name, None)
        self._cause_ns = 0  # an order from a timer was caused by no tick: no tick-to-trade
        self.on_timer(name, payload)

    def _book(self, book: BookTop) -> None:
        if book.symbol not in self._wanted or not self._started:
            return
        self.books[book.symbol] = book
        self._cause_ns = book.ts_recv_ns
        self.on_book(book)

    def _trade(self, trade: Trade) -> None:
        if trade.symbol not in self._wanted or not self._started:
            return
        self._cause_ns = trade.ts_recv_ns
        self.on_trade(trade)

    def _features(self, features: FeatureVector) -> None:
        if features.symbol not in self._wanted or not self._started:
            return
        self._cause_ns = features.ts_recv_ns
        self.on_features(features)

    def _position(self, position: Position) -> None:
        if position.symbol not in self._wanted:
            return
        self.positions[position.symbol] = position
        self.on_position(position)

    def _fill(self, fill: Fill) -> None:
        if fill.strategy_id != self.id:
            return
        self.stats["fills"] += 1
        self._net[fill.symbol] = self._net.get(fill.symbol, 0) + (
            fill.qty if fill.side == "buy" else -fill.qty
        )
        self._cause_ns = fill.ts_recv_ns
        self.on_fill(fill)

    def _update(self, update: OrderUpdate) -> None:
        if update.strategy_id != self.id:
            return
        order = self.orders.get(update.client_order_id)
        if order is not None:
            order.status = update.status
            order.filled_qty = update.filled_qty
            order.leaves_qty = update.leaves_qty
            if update.status in _FINAL:
                del self.orders[update.client_order_id]
        if update.status == "rejected":
            self.stats["rejects"] += 1
        self.on_order(update)

    def _rejected(self, rej: OrderRejected) -> None:
        """Risk's rejection, delivered to :meth:`on_order` as a ``rejected`` update."""
        o = rej.order
        if o.strategy_id != self.id:
            return
        self._update(
            OrderUpdate(
                o.client_order_id, o.strategy_id, o.symbol, o.side, o.order_type, "rejected",
                o.px, o.qty, 0, 0, 0, f"{rej.rule}: {rej.reason}", o.ts_recv_ns,
                rej.ts_rejected_ns,
            )
        )  # fmt: skip

    # ------------------------------------------------------------------ restart

    def _snapshot_asked(self, cmd: ControlCommand) -> None:
        if cmd.command == "snapshot":
            self._snap()

    def _snap(self) -> None:
        try:
            state = json.dumps(
                {"stats": self.stats, "state": self.snapshot()}, separators=(",", ":")
            )
        except (TypeError, ValueError) as err:
            self.log.error("snapshot not JSON-able, not saved: %s", err)
            return
        self._publish(f"snap.{self.id}", StrategySnapshot(self.id, state, self.now_ns()))

    def _restore_net(self, pos: Position) -> None:
        if not isinstance(pos, Position) or self._late("position"):
            return
        if pos.symbol in self._net:  # a symbol no longer configured is not ours to trade
            self._net[pos.symbol] = pos.qty

    def _restore_order(self, accepted: OrderAccepted) -> None:
        self._restoring = accepted if isinstance(accepted, OrderAccepted) else None

    def _restore_report(self, update: OrderUpdate) -> None:
        accepted, self._restoring = self._restoring, None
        if update.strategy_id != self.id or self._late("order"):
            return
        req = accepted.order if accepted is not None else None
        if (
            req is None
            or req.client_order_id != update.client_order_id
            or update.status in _FINAL
            or not 0 <= update.filled_qty
            or not 0 < update.leaves_qty <= req.qty
        ):
            self.log.error("restored order refused (not a working order of ours): %s", update)
            return
        self.orders[req.client_order_id] = WorkingOrder(
            req, update.status, update.filled_qty, update.leaves_qty
        )

    def _restore_snapshot(self, snap: StrategySnapshot) -> None:
        if snap.strategy_id != self.id or self._late("snapshot"):
            return
        try:
            saved = json.loads(snap.state)
            stats, state = saved["stats"], saved["state"]
            counts = {k: int(stats[k]) for k in self.stats if k in stats}
        except (ValueError, TypeError, KeyError) as err:
            self.log.error("restored snapshot refused (not this strategy's format: %s)", err)
            return
        self.stats.update(counts)
        self.restore(state)

    def _restore_done(self, done: Any) -> None:
        from_run = getattr(done, "from_run", None)
        if self._started and not from_run:
            return  # nothing was restored: its coming late changed nothing
        if self._late("done"):
            return
        run: object = getattr(done, "run_id", None)
        if from_run and isinstance(run, int) and run > 0:
            self._restart = f"r{_base36(run)}"
        net = ", ".join(f"{sym} {q / SCALE:g}" for sym, q in self._net.items())
        self.log.info("restored from run %s: net %s, %d working order(s)", from_run, net,
                      len(self.orders))  # fmt: skip

    def _late(self, what: str) -> bool:
        """Restored state after the start would race live orders: refused, loudly."""
        if self._started:
            self.log.error("restored %s after the start refused: list after ="
                           ' ["persistence"] in this strategy\'s table', what)  # fmt: skip
        return self._started

    def _subscribe(self, ctx: PluginContext) -> None:
        ctx.subscribe("ctl.snapshot", self._snapshot_asked)
        ctx.subscribe(f"restore.net.{self.id}.", self._restore_net)
        ctx.subscribe("restore.order", self._restore_order)
        ctx.subscribe("restore.report", self._restore_report)
        ctx.subscribe(f"restore.snap.{self.id}", self._restore_snapshot)
        ctx.subscribe("restore.done", self._restore_done)
        for sym in self.symbols:
            ctx.subscribe(f"md.book.{sym}", self._book)
            ctx.subscribe(f"md.trade.{sym}", self._trade)
            ctx.subscribe(f"feat.{sym}", self._features)
            ctx.subscribe(f"pos.{sym}", self._position)
        ctx.subscribe("exec.fill", self._fill)
        ctx.subscribe("exec.report", self._update)
        ctx.subscribe("ord.rejected", self._rejected)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


class _StrategyPlugin:
    """The pluggy plugin object that runs instances of one Strategy class."""

    def __init__(self, cls: type[Strategy[Any]]) -> None:
        self.cls = cls

    @hookimpl
    def tickbus_config_type(self) -> type[StrategyConfig]:
        return self.cls.Config

    @hookimpl
    def tickbus_setup(self, ctx: PluginContext) -> Strategy[Any]:
        cfg = ctx.config
        bad = [s for s in cfg.symbols if not SYMBOL.fullmatch(s)]
        if bad or not cfg.symbols:
            raise TickbusError(
                f"symbols must be 1 to 20 upper-case letters or digits each (got {bad or '[]'})"
            )
        strategy = self.cls(ctx, cfg)
        strategy._subscribe(ctx)
        return strategy

    @hookimpl
    def tickbus_start(self, ctx: PluginContext) -> None:
        ctx.component._started = True
        ctx.component.on_start()

    @hookimpl
    def tickbus_stop(self, ctx: PluginContext) -> None:
        strategy: Strategy[Any] = ctx.component
        strategy.on_stop()
        strategy._snap()  # the state at the stop: a restart picks up exactly here
        for name in list(strategy._timers):
            strategy.cancel_timer(name)
        strategy._publish = _closed(strategy.log)

    @hookimpl
    def tickbus_status(self, ctx: PluginContext) -> str:
        return ctx.component.status()


def _closed(log: logging.Logger) -> Callable[[str, Any], None]:
    def publish(topic: str, msg: Any) -> None:
        log.warning("not sent after stop: %s on %s", type(msg).__name__, topic)

    return publish


def strategy_plugin(cls: type[Strategy[Any]]) -> Any:
    """The plugin object for a Strategy class: point an entry point of the ``tickbus`` group
    at it (``my_strategy = "my_pkg.module:plugin"``)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"strategy_plugin needs a Strategy subclass, not {cls!r}")
    return _StrategyPlugin(cls)
