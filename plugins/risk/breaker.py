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
        "rejects",
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

    @property
    def drawdown(self) -> int:
        return self.peak - self.total

    def on_position(self, pos: Position) -> str:
        """Take a position update; a non-empty reason if the breaker trips."""
        pnl = pos.realized_pnl + pos.unrealized_pnl - pos.fees
        self.total += pnl - self.pnl.get(pos.symbol, 0)
        self.pnl[pos.symbol] = pnl
        if self.total > self.peak:
            self.peak = self.total
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
