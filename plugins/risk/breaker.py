"""The circuit breaker: trips (the risk plugin then halts trading) on a loss, a drawdown, or too
many rejected orders in a window. Money in exact 1/NOTIONAL_SCALE ints, time on the kernel
clock. Pure state: the plugin feeds it and acts on what it returns."""

from __future__ import annotations

from collections import deque

from tickbus.schemas import NOTIONAL_SCALE, Position


def money(value: int) -> str:
    """1/NOTIONAL_SCALE ints as a decimal with 2 places (for reasons; never for arithmetic)."""
    sign = "-" if value < 0 else ""
    cents = (abs(value) * 100 + NOTIONAL_SCALE // 2) // NOTIONAL_SCALE
    return f"{sign}{cents // 100}.{cents % 100:02d}"


class CircuitBreaker:
    """``max_loss``/``max_drawdown`` in 1/NOTIONAL_SCALE units (0: off); ``max_rejects``
    within ``window_ns`` (0: off)."""

    __slots__ = (
        "max_loss", "max_drawdown", "max_rejects", "window_ns", "pnl", "total", "peak",
        "rejects", "restored", "base",
    )  # fmt: skip

    def __init__(self, max_loss: int, max_drawdown: int, max_rejects: int, window_ns: int) -> None:
        self.max_loss = max_loss
        self.max_drawdown = max_drawdown
        self.max_rejects = max_rejects
        self.window_ns = window_ns
        self.pnl: dict[str, int] = {}
        """Per symbol: realized + unrealized - fees of its latest position."""
        self.total = 0
        self.peak = 0
        """High-water mark of ``total`` (drawdown is measured from it)."""
        self.rejects: deque[int] = deque(maxlen=max(1, max_rejects))
        self.restored: dict[str, Position] = {}
        """Per symbol, the account restored at a restart, until this run's first position
        of the symbol says whether it carries that account on (see ``on_position``)."""
        self.base: dict[str, tuple[int, int]] = {}
        """Per symbol, a restored account this run's positions leave out: (realized - cost -
        fees, qty); its PnL at a mark ``m`` is ``first + qty * m``."""

    @property
    def drawdown(self) -> int:
        return self.peak - self.total

    def restore(self, pos: Position) -> None:
        """The account of a symbol as the previous run left it (realized + unrealized at its
        last mark - fees) is where the PnL starts: a loss made before the restart counts
        toward ``max_loss``. The drawdown's peak restarts at the restored total, as after an
        operator's resume: the previous run's peak is not persisted, and a made-up one (0, or
        the restored total when above) would halt a restart that an operator resumed earlier;
        ``max_loss`` still counts all of the loss. Not checked here (``check``, once every
        symbol is in: a partial total could trip on the way)."""
        pnl = pos.realized_pnl + pos.unrealized_pnl - pos.fees
        self.total += pnl - self.pnl.get(pos.symbol, 0)
        self.pnl[pos.symbol] = pnl
        self.peak = self.total
        self.restored[pos.symbol] = pos

    def on_position(self, pos: Position, qty: int) -> str:
        """Take a position update (``qty``: risk's own position in the symbol, counted from
        the restored one and this run's fills); a non-empty reason if the breaker trips.

        After a restart the broker's first position of a restored symbol either carries the
        restored account on (a broker that restored it: all of its fills, the same
        quantity as risk's) or starts from nothing (one that did not: only this run's
        fills). Then the restored part is added at every mark from now on - the PnL is
        linear in the fills (realized + unrealized - fees = cash flow + qty x mark - fees),
        so the sum is exact."""
        sym = pos.symbol
        pnl = pos.realized_pnl + pos.unrealized_pnl - pos.fees
        r = self.restored.pop(sym, None)
        if r is not None and not (pos.fills >= r.fills and pos.qty == qty):
            self.base[sym] = (r.realized_pnl - r.cost - r.fees, r.qty)
        base = self.base.get(sym)
        if base is not None:
            pnl += base[0] + base[1] * pos.mark_px
        self.total += pnl - self.pnl.get(sym, 0)
        self.pnl[sym] = pnl
        if self.total > self.peak:
            self.peak = self.total
        return self.check()

    def check(self) -> str:
        """A non-empty reason if the PnL now is beyond a limit."""
        if self.max_loss and -self.total >= self.max_loss:
            return f"loss {money(-self.total)} >= max_loss {money(self.max_loss)}"
        if self.max_drawdown and self.drawdown >= self.max_drawdown:
            return (
                f"drawdown {money(self.drawdown)} (peak {money(self.peak)}, now"
                f" {money(self.total)}) >= max_drawdown {money(self.max_drawdown)}"
            )
        return ""

    def on_reject(self, now_ns: int) -> str:
        """Count a rejected order; a non-empty reason if there were too many in the window."""
        if not self.max_rejects:
            return ""
        rejects = self.rejects
        rejects.append(now_ns)
        if len(rejects) >= self.max_rejects and now_ns - rejects[0] < self.window_ns:
            return (
                f"{len(rejects)} rejected orders within {(now_ns - rejects[0]) / 1e9:.3f} s"
                f" (max_rejects {self.max_rejects} per {self.window_ns / 1e9:g} s)"
            )
        return ""

    def reset(self) -> None:
        """An operator resumed trading: drawdown counts from now, the reject window restarts
        (a loss beyond max_loss trips again at the next position update)."""
        self.peak = self.total
        self.rejects.clear()
