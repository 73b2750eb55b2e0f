"""The ``risk`` plugin: pre-trade risk between the strategies and the broker.

``ord.request`` -> every rule (rules.py) -> ``ord.accepted`` or ``ord.rejected`` (rule + reason
with the numbers); with ``risk_gateway`` set, an order that passed is also approved by the
external gateway (gateway.py) before it is accepted. It follows ``md.book`` (mids),
``exec.fill`` / ``exec.report`` (positions, working orders) and ``pos.`` (PnL, for the circuit
breaker), publishes ``risk.state`` on every change and every ``state_interval_s``, and answers
``ControlCommand`` on ``ctl.<instance>`` (``tickbus ctl``) with a ``ControlReply`` on
``ctl.reply``. Every handler runs on the plugin's lane thread: no lock; nothing on the order
path logs or touches a file.

Restart: it starts from what persistence restores (list ``after = ["persistence"]``): the
positions and the breaker's PnL (``restore.pos.<S>``), the working orders with their filled
and leaves quantity and their ids as used (``restore.order`` + ``restore.report``), then
``restore.done``. Each message is range-checked and applied whole or refused (one error line,
counted in the status); any that comes after this run's first checked order is refused.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import msgspec

from tickbus.kernel import PluginContext, TickbusError, hookimpl, runtime
from tickbus.schemas import (
    NOTIONAL_SCALE,
    SCALE,
    ControlCommand,
    ControlReply,
    OrderAccepted,
    OrderCancel,
    OrderRejected,
    OrderRequest,
    Position,
    RiskState,
    TradingState,
)

from . import filters as _filters
from . import restore as _restore
from .breaker import CircuitBreaker, money
from .gateway import GatewayClient
from .rules import BAD_INPUT, NOT_COUNTED, Limits, RiskEngine

COMMANDS = ("kill-switch", "status", "state")
MAX_OPEN_ORDERS_SHOWN = 1000
MAX_RESTORE_LOG_LINES = 100


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[plugins.risk]``; amounts in units (1.0 = one BTC / one USDT), converted once to
    exact integers."""

    market: Literal["spot", "usdm"] = "spot"
    """Which bundled exchangeInfo filters apply (BTCUSDT and ETHUSDT)."""
    max_position_size: float = 1.0
    """Per symbol: |position + working orders of one side + the order| may not exceed it."""
    max_order_size: float = 0.5
    max_notional_exposure: float = 100_000.0
    """Sum over symbols of the projected |position| x mid, in the quote asset."""
    max_orders_per_second: float = 10.0
    burst: int = 0
    """Token bucket capacity (orders that may go at once); 0: max(1, max_orders_per_second)."""
    price_band_bps: float = 100.0
    """A limit price further than this from the mid is rejected (0: off)."""
    filters_file: str = ""
    """A Binance exchangeInfo response to read the filters from instead of the bundled one."""
    filters: dict[str, _filters.SymbolFilters] = msgspec.field(default_factory=dict)
    """Per-symbol overrides (``[plugins.risk.filters.BTCUSDT] min_notional = "5"``)."""
    max_loss: float = 0.0
    """Halt when realized + unrealized - fees over all symbols falls to -max_loss (0: off)."""
    max_drawdown: float = 0.0
    """Halt when that PnL falls this far below its peak (0: off)."""
    max_rejects: int = 20
    reject_window_s: float = 1.0
    """Halt after ``max_rejects`` rejected orders within ``reject_window_s`` (0: off)."""
    cancel_on_kill: bool = True
    """Kill switch on: also cancel every working order."""
    flatten_on_kill: bool = False
    """Kill switch on: also close every position with a market order (cancels first)."""
    state_interval_s: float = 1.0
    """Publish ``risk.state`` this often (kernel clock) besides on every change; 0: only then."""
    dedup_window: int = 10_000
    """A client order id equal to one of the last this many (per strategy) is a duplicate
    (a strategy's ids never repeat: <id>-<run stamp>-<sequence>; 10,000 are 17 minutes at
    10 orders/s, and the cap keeps a long run's memory flat)."""
    risk_gateway: str = ""
    """``ipc://`` endpoint of an external risk gateway (schemas/risk_gateway.md); "": none."""
    gateway_timeout_ms: float = 20.0
    gateway_policy: Literal["fail_closed", "fail_open"] = "fail_closed"
    """Without a verdict (timeout, gateway down): reject, or pass with a warning."""
    check_gateway_dir: bool = True
    """The gateway's ipc socket must be in a directory only this user may write to (else
    someone could put their own gateway there, approving everything)."""


@hookimpl
def tickbus_config_type() -> type[Config]:
    return Config


def _limits(cfg: Config, key: str) -> Limits:
    u = _filters.units
    if cfg.max_orders_per_second <= 0:
        raise TickbusError(f"{key}.max_orders_per_second: must be > 0")
    if cfg.burst < 0 or cfg.dedup_window < 1 or cfg.max_rejects < 0:
        raise TickbusError(f"{key}: burst and max_rejects must be >= 0, dedup_window >= 1")
    return Limits(
        max_position=u(cfg.max_position_size, f"{key}.max_position_size"),
        max_order=u(cfg.max_order_size, f"{key}.max_order_size"),
        max_notional=u(cfg.max_notional_exposure, f"{key}.max_notional_exposure") * SCALE,
        rate=cfg.max_orders_per_second,
        burst=cfg.burst or max(1, int(cfg.max_orders_per_second)),
        band_cbps=round(u(cfg.price_band_bps, f"{key}.price_band_bps") * 100 / SCALE),
        dedup_window=cfg.dedup_window,
    )


class Risk:
    """The plugin's component: the engine, the breaker, the gateway client, the bus."""

    def __init__(self, ctx: PluginContext, cfg: Config) -> None:
        key = f"plugins.{ctx.name}"
        self.ctx = ctx
        self.cfg = cfg
        self.log = ctx.log
        self.limits = _limits(cfg, key)
        path = ctx.resolve_path(cfg.filters_file) if cfg.filters_file else None
        table = _filters.load(cfg.market, path, cfg.filters, key)
        self.engine = RiskEngine(self.limits, table, ctx.clock.now_ns())
        if cfg.reject_window_s < 0 or cfg.gateway_timeout_ms <= 0 or cfg.state_interval_s < 0:
            raise TickbusError(
                f"{key}: reject_window_s and state_interval_s must be >= 0, gateway_timeout_ms > 0"
            )
        u = _filters.units
        self.breaker = CircuitBreaker(
            u(cfg.max_loss, f"{key}.max_loss") * SCALE,
            u(cfg.max_drawdown, f"{key}.max_drawdown") * SCALE,
            cfg.max_rejects if cfg.reject_window_s > 0 else 0,
            int(cfg.reject_window_s * 1e9),
        )
        if cfg.risk_gateway and not cfg.risk_gateway.startswith("ipc://"):
            # the protocol has no authentication of its own: a socket file's permissions are it
            raise TickbusError(f"{key}.risk_gateway: expected an ipc:// endpoint")
        self.gateway: GatewayClient | None = None
        self.positions: dict[str, Position] = {}
        self.fail_open_passes = 0
        self.bad_input = 0
        self._logged: set[str] = set()
        self._replies: OrderedDict[str, ControlReply] = OrderedDict()
        self._flat_seq = 0
        self._run = f"{time.time_ns() // 1_000_000 % 10**8:x}"
        self.restored = {"from_run": 0, "positions": 0, "orders": 0, "refused": 0, "done": 0}
        """What the restart restored (see ``on_restore_done``); ``refused``: messages."""
        self._held: OrderAccepted | None = None
        """A restored order waiting for its ``restore.report`` (the very next message)."""
        self._publish = ctx.publish
        self._now = ctx.clock.now_ns

    # ------------------------------------------------------------------ orders (hot path)

    def on_request(self, o: OrderRequest) -> None:
        if type(o) is not OrderRequest:
            self._bad_message("ord.request", o)
            return
        now = self._now()
        engine = self.engine
        verdict = engine.check(o, now)
        if verdict is not None:
            self.reject(o, verdict[0], verdict[1], now)
        elif self.gateway is None:
            engine.accept(o)
            self._publish("ord.accepted", OrderAccepted(o, now))
        else:
            engine.accept(o, pending=True)
            s = engine.syms[o.symbol]
            why = self.gateway.ask(o, s.pos, s.mid, now)
            if why:
                self._no_verdict(o, why)

    def reject(self, o: OrderRequest, rule: str, reason: str, now: int) -> None:
        self.engine.count_reject(rule)
        self._publish("ord.rejected", OrderRejected(o, rule, reason, now))
        if rule in BAD_INPUT and rule not in self._logged:
            self._logged.add(rule)  # bad input: logged once per kind, with a sample
            self.log.warning("rejected bad order input (%s: %s), logged once; sample %r",
                             rule, reason, o)  # fmt: skip
        if rule not in NOT_COUNTED:
            trip = self.breaker.on_reject(now)
            if trip:
                self.set_state("halted", f"circuit breaker: {trip}")

    # ------------------------------------------------------------------ gateway verdicts

    def _verdict(self, o: OrderRequest, approved: bool, reason: str) -> None:
        now = self._now()
        engine = self.engine
        if not approved:
            engine.withdraw(o)
            self.reject(o, "gateway", f"gateway: {reason or 'rejected'}", now)
        elif engine.kill_switch or engine.state == "halted":
            # switched off while the gateway was asked: the operator's word is the last one
            engine.withdraw(o)
            rule = "kill_switch" if engine.kill_switch else "halted"
            self.reject(o, rule, f"{rule.replace('_', ' ')} since the gateway was asked", now)
        elif engine.confirm(o):
            self._publish("ord.accepted", OrderAccepted(o, now))

    def _no_verdict(self, o: OrderRequest, why: str) -> None:
        if self.cfg.gateway_policy == "fail_open":
            self.fail_open_passes += 1
            if self.fail_open_passes == 1 or self.fail_open_passes % 1000 == 0:
                self.log.warning("gateway: %s; order passed anyway (fail_open, %d so far)",
                                 why, self.fail_open_passes)  # fmt: skip
            self._verdict(o, True, "")
        else:
            self.engine.withdraw(o)
            self.reject(o, "gateway", f"{why} (fail_closed)", self._now())

    # ------------------------------------------------------------------ state from the bus

    def on_position(self, pos: Position) -> None:
        if type(pos) is not Position:
            self._bad_message("pos.", pos)
            return
        if pos.symbol not in self.engine.syms:
            return  # the broker's "total" (a sum of the others), or nothing risk let through
        self.positions[pos.symbol] = pos
        trip = self.breaker.on_position(pos, self.engine.syms[pos.symbol].pos)
        if trip and self.engine.state != "halted":
            self.set_state("halted", f"circuit breaker: {trip}")

    def set_state(self, state: TradingState, reason: str) -> None:
        if self.engine.set_state(state, reason):
            self.log.warning("trading state %s: %s", state, reason)
            self.publish_state()

    def publish_state(self) -> None:
        e = self.engine
        self._publish(
            "risk.state",
            RiskState(e.state, e.kill_switch, e.reason, len(e.working), e.gross, self._now()),
        )

    def _tick(self) -> None:
        self.publish_state()
        self.ctx.call_later(self.cfg.state_interval_s, self._tick)

    def _bad_message(self, where: str, msg: Any) -> None:
        self.bad_input += 1
        kind = f"{where}:{type(msg).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            self.log.warning("skipped a %s on %s (logged once); sample %r",
                             type(msg).__name__, where, msg)  # fmt: skip

    # ------------------------------------------------------------------ restart

    def on_restore_pos(self, pos: Any) -> None:
        """``restore.pos.<S>``: the position (and the breaker's PnL) the previous run left."""
        if self._restore_closed("restore.pos", pos):
            return
        why = _restore.position_error(pos, self.engine.syms)
        if not why and (pos.symbol in self.positions or self.engine.syms[pos.symbol].pos):
            why = f"risk already has a position in {pos.symbol} (restored, or this run's)"
        if why:
            self._refuse("restore.pos", why, pos)
            return
        self.engine.restore_position(pos.symbol, pos.qty)
        self.positions[pos.symbol] = pos
        self.breaker.restore(pos)
        self.restored["positions"] += 1

    def on_restore_order(self, msg: Any) -> None:
        """``restore.order``: held until its ``restore.report`` (filled and leaves)."""
        if self._restore_closed("restore.order", msg):
            return
        self._drop_held()
        why = _restore.order_error(msg, self.engine.syms)
        if why:
            self._refuse("restore.order", why, msg)
        else:
            self._held = msg

    def on_restore_report(self, u: Any) -> None:
        """``restore.report``: the held order is working with these quantities."""
        if self._restore_closed("restore.report", u):
            return
        held, self._held = self._held, None
        if held is None:
            self._refuse("restore.report", "no valid restore.order came just before it", u)
            return
        o = held.order
        why = _restore.report_error(u, o)
        if not why and not self.engine.restore_order(o, u.filled_qty, u.leaves_qty):
            why = f"order id {o.strategy_id}/{o.client_order_id} is known already"
        if why:
            self._refuse("restore.order", why, held)
        else:
            self.restored["orders"] += 1

    def on_restore_done(self, msg: Any) -> None:
        """``restore.done`` (persistence's ``Restored``, read by field name): the restore is
        complete. What was restored is checked against what persistence says it sent, the
        breaker against the restored PnL (a loss beyond ``max_loss`` halts now); any later
        ``restore.*`` is refused."""
        if self._restore_closed("restore.done", msg):
            return
        why = _restore.done_error(msg)
        if why:
            self._refuse("restore.done", why, msg)
            return
        self._drop_held()
        r = self.restored
        r["done"] = 1
        r["from_run"] = msg.from_run
        if msg.from_run:
            self.log.info("restored from run %d: %d position(s), %d working order(s)",
                          msg.from_run, r["positions"], r["orders"])  # fmt: skip
        if (r["positions"], r["orders"]) != (msg.positions, msg.orders) or r["refused"]:
            self.log.error(
                "restore incomplete: %d of %d position(s) and %d of %d working order(s)"
                " applied, %d restored message(s) refused (logged above): risk's positions"
                " and working orders may be short of the account's", r["positions"],
                msg.positions, r["orders"], msg.orders, r["refused"],
            )  # fmt: skip
        trip = self.breaker.check()
        if trip and self.engine.state != "halted":
            self.set_state("halted", f"circuit breaker: {trip} (restored from run {msg.from_run})")
        else:
            self.publish_state()  # the restored working orders in risk.state

    def _restore_closed(self, where: str, msg: Any) -> bool:
        """Refuse a restore message that comes too late (True): after ``restore.done``, or
        once orders of this run were checked (a restored position or order would then
        overwrite or double what this run did)."""
        e = self.engine
        if self.restored["done"]:
            why = "the restore is done already"
        elif e.accepted or e.rejected or (self.gateway is not None and self.gateway.pending):
            why = (f"risk already checks this run's orders (list after = [\"persistence\"]"
                   f" in [plugins.{self.ctx.name}])")  # fmt: skip
        else:
            return False
        self._refuse(where, why, msg)
        return True

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._refuse("restore.order", "no restore.report came just after it", held)

    def _refuse(self, where: str, why: str, msg: Any) -> None:
        """One error line per refused restore message (the first ``MAX_RESTORE_LOG_LINES``),
        counted; nothing of it is applied."""
        n = self.restored["refused"] = self.restored["refused"] + 1
        if n <= MAX_RESTORE_LOG_LINES:
            self.log.error("refused a %s message: %s; nothing of it applied%s: %.300r", where, why,
                           "" if n < MAX_RESTORE_LOG_LINES else " (further ones counted only)",
                           msg)  # fmt: skip

    # ------------------------------------------------------------------ operator commands

    def on_control(self, cmd: ControlCommand) -> None:
        if type(cmd) is not ControlCommand:
            self._bad_message("ctl", cmd)
            return
        rid = cmd.request_id
        if not rid or len(rid) > 64 or len(cmd.args) > 8 or any(len(a) > 64 for a in cmd.args):
            self._bad_message("ctl (request id or args too long)", cmd)
            return
        cached = self._replies.get(rid)
        if cached is None:  # a retry of a command already done gets the same answer again
            ok, body = self._command(cmd.command, cmd.args)
            if not ok:
                self.bad_input += 1
                if "ctl refused" not in self._logged:
                    self._logged.add("ctl refused")
                    self.log.warning("refused a control command (%s), logged once; sample %r",
                                     body["error"], cmd)  # fmt: skip
            cached = ControlReply(rid, self.ctx.name, ok, json.dumps(body), self._now())
            self._replies[rid] = cached
            if len(self._replies) > 64:
                self._replies.popitem(last=False)
        self._publish("ctl.reply", cached)

    def _command(self, command: str, args: list[str]) -> tuple[bool, dict[str, Any]]:
        if command == "status":
            return True, self.status_body()
        if command == "kill-switch" and args and args[0] in ("on", "off"):
            opts = set(args[1:])
            unknown = opts - {"cancel", "no-cancel", "flatten", "no-flatten"}
            if unknown:
                return False, {"error": f"unknown kill-switch option(s) {sorted(unknown)}"}
            return True, self.kill(
                args[0] == "on",
                cancel=("cancel" in opts or self.cfg.cancel_on_kill) and "no-cancel" not in opts,
                flatten=("flatten" in opts or self.cfg.flatten_on_kill)
                and "no-flatten" not in opts,
            )
        if command == "state" and len(args) == 1 and args[0] in ("active", "reducing", "halted"):
            if args[0] == "active":
                self.breaker.reset()
            self.set_state(args[0], "operator")  # type: ignore[arg-type]
            return True, {"state": self.engine.state, "reason": self.engine.reason}
        if command in COMMANDS:
            usage = {
                "kill-switch": "kill-switch on|off [cancel|no-cancel] [flatten|no-flatten]",
                "state": "state active|reducing|halted",
            }
            return False, {"error": f"bad arguments {args!r}; usage: {usage.get(command)}"}
        return False, {"error": f"unknown command {command[:40]!r} (known: {', '.join(COMMANDS)})"}

    def kill(self, on: bool, *, cancel: bool, flatten: bool) -> dict[str, Any]:
        """Flip the kill switch; on: optionally cancel working orders and flatten."""
        e = self.engine
        changed = e.kill_switch != on
        e.kill_switch = on
        out: dict[str, Any] = {"kill_switch": on, "canceled": 0, "flatten": []}
        if changed:
            self.log.warning("kill switch %s (operator)", "on" if on else "off")
        if on and (cancel or flatten):
            out["canceled"] = self.cancel_all()
        if on and flatten:
            out["flatten"] = self.flatten()
        if changed:
            self.publish_state()
        return out

    def cancel_all(self) -> int:
        """Ask the broker to cancel every working order risk knows (not those still waiting
        for the gateway: the kill switch rejects them when their verdict comes)."""
        now = self._now()
        n = 0
        for w in list(self.engine.working.values()):
            if not w.pending and w.order.strategy_id != self.ctx.name:  # not our flattening
                o = w.order
                self._publish(
                    "ord.cancel", OrderCancel(o.client_order_id, o.strategy_id, o.symbol, now)
                )
                n += 1
        return n

    def flatten(self) -> list[dict[str, Any]]:
        """Close every position with a reduce-only market order through the broker (risk's
        own orders: accepted directly, tracked as working)."""
        out: list[dict[str, Any]] = []
        now = self._now()
        own = {w.order.symbol for w in self.engine.working.values()
               if w.order.strategy_id == self.ctx.name}  # fmt: skip
        for s in self.engine.syms.values():
            qty = abs(s.pos) - abs(s.pos) % s.step  # whole lots only
            if s.symbol in own:
                out.append({"symbol": s.symbol, "qty": s.pos, "skipped": "already flattening"})
                continue
            if not qty or qty < s.min_qty:
                if s.pos:
                    out.append({"symbol": s.symbol, "qty": s.pos, "skipped": "below one lot"})
                continue
            self._flat_seq += 1
            o = OrderRequest(
                f"{self.ctx.name}-flat-{self._run}-{self._flat_seq}", self.ctx.name, s.symbol,
                "sell" if s.pos > 0 else "buy", "market", "IOC", qty, 0, 0, True, "",
                self.ctx.clock.mono_ns(), now,
            )  # fmt: skip
            self.engine.accept(o)
            self._publish("ord.accepted", OrderAccepted(o, now))
            out.append({"symbol": s.symbol, "side": o.side, "qty": qty, "id": o.client_order_id})
        return out

    # ------------------------------------------------------------------ status

    def status_body(self) -> dict[str, Any]:
        """Everything ``tickbus ctl status`` shows, exact ints (see ``units``)."""
        e = self.engine
        positions = {}
        for sym, s in e.syms.items():
            p = self.positions.get(sym)
            if not (s.pos or s.open_buy or s.open_sell or p):
                continue
            positions[sym] = {
                "qty": s.pos, "working_buy": s.open_buy, "working_sell": s.open_sell,
                "mid": s.mid, "book_valid": s.valid, "exposure": s.exp,
                "cost": p.cost if p else 0, "realized_pnl": p.realized_pnl if p else 0,
                "unrealized_pnl": p.unrealized_pnl if p else 0, "fees": p.fees if p else 0,
                "mark_px": p.mark_px if p else 0, "fills": p.fills if p else 0,
            }  # fmt: skip
        orders = [
            {
                "client_order_id": w.order.client_order_id,
                "strategy_id": w.order.strategy_id,
                "symbol": w.order.symbol,
                "side": w.order.side,
                "type": w.order.order_type,
                "qty": w.order.qty,
                "leaves": w.leaves,
                "px": w.order.px,
                "pending_gateway": w.pending,
            }  # fmt: skip
            for w in list(e.working.values())[:MAX_OPEN_ORDERS_SHOWN]
        ]
        b = self.breaker
        body: dict[str, Any] = {
            "target": self.ctx.name,
            "state": e.state,
            "kill_switch": e.kill_switch,
            "reason": e.reason,
            "positions": positions,
            "open_orders": orders,
            "open_orders_total": len(e.working),
            "pnl": {"total": b.total, "peak": b.peak, "drawdown": b.drawdown},
            "gross_exposure": e.gross,
            "accepted": e.accepted,
            "rejected": dict(e.rejected),
            "restored": dict(self.restored),
            "limits": {
                "max_position_size": self.limits.max_position,
                "max_order_size": self.limits.max_order,
                "max_notional_exposure": self.limits.max_notional,
                "max_orders_per_second": self.limits.rate,
                "price_band_bps": self.limits.band_cbps / 100,
            },
            "units": {"qty_px": SCALE, "money": NOTIONAL_SCALE},
            "ts_ns": self._now(),
        }
        if self.gateway is not None:
            body["gateway"] = {
                "endpoint": self.gateway.endpoint, "policy": self.cfg.gateway_policy,
                "pending": self.gateway.pending, "fail_open_passes": self.fail_open_passes,
                **msgspec.structs.asdict(self.gateway.stats),
            }  # fmt: skip
        return body

    def status_line(self) -> str:
        e = self.engine
        rej = sum(e.rejected.values())
        top = ", ".join(f"{r} {n}" for r, n in sorted(e.rejected.items(), key=lambda x: -x[1])[:3])
        line = (
            f"{e.state}{', KILL SWITCH' if e.kill_switch else ''}; {e.accepted} accepted,"
            f" {rej} rejected{f' ({top})' if top else ''}; {len(e.working)} working;"
            f" gross {money(e.gross)}; pnl {money(self.breaker.total)}"
        )
        r = self.restored
        if r["from_run"] or r["refused"]:
            line += (f"; restored {r['positions']} position(s), {r['orders']} order(s)"
                     f" ({r['refused']} refused)")  # fmt: skip
        g = self.gateway
        if g is not None:
            line += f"; gateway {g.stats.sent} asked, {g.stats.timeouts} timeouts"
        return line


@hookimpl
def tickbus_setup(ctx: PluginContext) -> Risk:
    risk = Risk(ctx, ctx.config)
    ctx.subscribe("ord.request", risk.on_request)
    ctx.subscribe("md.book.", risk.engine.on_book)
    ctx.subscribe("exec.fill", risk.engine.on_fill)
    ctx.subscribe("exec.report", risk.engine.on_update)
    ctx.subscribe("pos.", risk.on_position)
    ctx.subscribe("restore.pos.", risk.on_restore_pos)
    ctx.subscribe("restore.order", risk.on_restore_order)
    ctx.subscribe("restore.report", risk.on_restore_report)
    ctx.subscribe("restore.done", risk.on_restore_done)
    ctx.subscribe(f"ctl.{ctx.name}", risk.on_control)
    return risk


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    risk: Risk = ctx.component
    cfg = risk.cfg
    if cfg.risk_gateway:
        endpoint = cfg.risk_gateway.replace("{runtime_dir}", str(ctx.runtime_dir))
        if endpoint.startswith("ipc://"):
            try:
                runtime.ensure_private_dir(
                    Path(endpoint[len("ipc://") :]).parent,
                    check=cfg.check_gateway_dir,
                    what=f"plugins.{ctx.name}.risk_gateway: directory",
                )
            except TickbusError as err:  # point at this plugin's switch, not the kernel's
                raise TickbusError(
                    str(err).replace(
                        "[kernel] check_runtime_dir", f"[plugins.{ctx.name}] check_gateway_dir"
                    )
                ) from None
        try:
            risk.gateway = GatewayClient(
                endpoint, cfg.gateway_timeout_ms / 1e3, ctx.loop, risk._verdict,
                risk._no_verdict, ctx.log,
            )  # fmt: skip
        except Exception as err:  # zmq.ZMQError: a malformed endpoint
            raise TickbusError(f"plugins.{ctx.name}.risk_gateway: {err}") from None
    risk.publish_state()
    if cfg.state_interval_s:
        ctx.call_later(cfg.state_interval_s, risk._tick)


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    risk: Risk = ctx.component
    if risk.gateway is not None:  # whatever the policy: nothing new goes out at shutdown
        now = ctx.clock.now_ns()
        for o in risk.gateway.fail_pending():
            risk.engine.withdraw(o)
            risk.reject(o, "gateway", "shutting down before the gateway's verdict", now)


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    risk: Risk = ctx.component
    if risk.gateway is not None:
        risk.gateway.close()


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return ctx.component.status_line()
