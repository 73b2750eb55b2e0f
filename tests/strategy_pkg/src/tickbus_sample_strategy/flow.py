"""A trade-flow strategy, written the way a user writes one: against ``tickbus.kernel``'s
public strategy API only (``Strategy``, ``StrategyConfig``, ``strategy_plugin``).

It keeps the signed volume of the last ``window`` public trades (aggressor buys +, sells -).
When that flow leans one way by at least ``threshold`` of the volume, and it is flat with no
order of its own out on a valid book, it joins the touch in that direction; ``hold_ms`` later (a
timer on the kernel clock, so a backtest is deterministic) it cancels what is still working
and closes any position at market. With ``orders_out`` it writes one JSON line per order it
asked for when the engine stops.

Enable it::

    [plugins.flow]
    plugin = "sample_flow"
    symbols = ["BTCUSDT"]
    threshold = 0.6
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from tickbus.kernel import PluginContext, Strategy, StrategyConfig, TickbusError, strategy_plugin
from tickbus.schemas import BookTop, Fill, Trade


class FlowConfig(StrategyConfig, frozen=True):
    """``[plugins.<name>]`` of ``sample_flow`` (plus ``symbols``)."""

    window: int = 50
    """Trades in the rolling window."""
    threshold: float = 0.6
    """|buy volume - sell volume| / volume over the window that triggers an order."""
    qty: float = 0.001
    """Order size, base asset."""
    hold_ms: float = 2000.0
    """How long an order or a position is kept (kernel clock)."""
    orders_out: str = ""
    """Write the orders asked for to this JSON-lines file at stop (relative to the config)."""


class TradeFlow(Strategy[FlowConfig]):
    """Joins the touch in the direction of the recent aggressor flow."""

    Config = FlowConfig  # validates [plugins.<name>]; self.config is a FlowConfig

    def __init__(self, ctx: PluginContext, config: FlowConfig) -> None:
        super().__init__(ctx, config)
        if config.window < 1 or not 0 < config.threshold <= 1 or config.qty <= 0:
            # one line, naming the setting: tickbus shows it and exits with status 2
            raise TickbusError(f"plugins.{ctx.name}: needs window >= 1, 0 < threshold <= 1"
                               " and qty > 0")  # fmt: skip
        self.window: dict[str, deque[int]] = {s: deque() for s in self.symbols}
        self.flow = dict.fromkeys(self.symbols, 0)  # running sums: O(1) per trade
        self.volume = dict.fromkeys(self.symbols, 0)
        self.size = self.to_qty(config.qty)
        self.asked: list[dict[str, Any]] = []
        self.busy: set[str] = set()
        """Symbols with an order out, until its hold time is over."""

    def on_trade(self, trade: Trade) -> None:
        sym = trade.symbol
        signed = -trade.qty if trade.buyer_is_maker else trade.qty
        win = self.window[sym]
        win.append(signed)
        self.flow[sym] += signed
        self.volume[sym] += trade.qty
        if len(win) > self.config.window:
            old = win.popleft()
            self.flow[sym] -= old
            self.volume[sym] -= abs(old)
        book = self.books.get(sym)
        if (
            len(win) < self.config.window
            or book is None
            or not book.valid
            or self.net_qty(sym)
            or sym in self.busy
        ):
            return
        lean = self.flow[sym] / self.volume[sym]
        if abs(lean) >= self.config.threshold:
            self.enter(book, "buy" if lean > 0 else "sell")

    def enter(self, book: BookTop, side: str) -> None:
        px = book.bid_px if side == "buy" else book.ask_px
        if side == "buy":
            cid = self.buy(book.symbol, self.size, px=px)
        else:
            cid = self.sell(book.symbol, self.size, px=px)
        self.asked.append({"id": cid, "side": side, "qty": self.size, "px": px})
        self.busy.add(book.symbol)
        self.set_timer(f"done.{book.symbol}", self.config.hold_ms / 1000, book.symbol)

    def on_timer(self, name: str, payload: Any) -> None:
        sym: str = payload
        self.busy.discard(sym)
        self.cancel_all(sym)  # asks the broker; done once it confirms (exec.report)
        pos = self.net_qty(sym)
        if pos:
            cid = self.sell(sym, pos) if pos > 0 else self.buy(sym, -pos)
            self.asked.append({"id": cid, "side": "close", "qty": abs(pos), "px": 0})

    def on_fill(self, fill: Fill) -> None:
        self.log.info("filled %s %d @ %d", fill.side, fill.qty, fill.px)

    def on_stop(self) -> None:
        out = self.config.orders_out
        if out:
            with open(self.ctx.resolve_path(out), "w") as f:
                f.writelines(json.dumps(a) + "\n" for a in self.asked)


plugin = strategy_plugin(TradeFlow)
