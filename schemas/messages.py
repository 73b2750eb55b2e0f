"""Every message that crosses the tickbus bus.

Rules (msgspec schema evolution, see DESIGN.md "Messages"):

* every message derives from :class:`Msg`: frozen, ``gc=False``, tagged with its class
  name, encoded as a msgpack *array* (``array_like=True``) - about half the decode time of
  a map, at the price that fields are append-only: a new field goes at the end of its class
  and has a default;
* prices and quantities are exact fixed-point integers in units of ``1 / SCALE``
  (Binance quotes at most 8 decimals, so ``SCALE = 10**8`` represents every price and
  quantity it sends exactly); notionals (price x quantity) are in units of ``1 / SCALE**2``;
* every market message carries ``ts_exchange_ns`` (venue time) and ``ts_recv_ns`` (local
  monotonic receive time of the frame that caused it); every derived message carries the
  ``ts_recv_ns`` of the tick that caused it, so tick-to-trade latency is measured per order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

import msgspec

SCALE = 10**8
"""Fixed-point scale of prices and quantities: ``px_int = round(px * SCALE)``."""

NOTIONAL_SCALE = SCALE * SCALE
"""Scale of a price x quantity product (cost basis, PnL)."""

if TYPE_CHECKING:
    Money = int
else:
    Money = int | str
"""Money in 1/NOTIONAL_SCALE units: an ``int`` everywhere in Python. A notional above ~922
USDT exceeds msgpack's 64-bit ints, so on the wire such a value is its decimal string
(``Codec.encode_wide``), turned back into an exact ``int`` as the message is decoded."""

MONEY_DIGITS = 40
"""A money value on the wire has at most this many digits (|value| < 10**40 / 1e16)."""


def _money(msg: msgspec.Struct, *names: str) -> None:
    """``__post_init__`` of messages with money fields: wire strings back to exact ints
    (a malformed or absurd one is a ValueError, i.e. a msgspec.ValidationError)."""
    for name in names:
        v = getattr(msg, name)
        if type(v) is str:
            digits = v[1:] if v[:1] == "-" else v
            if not (digits.isdigit() and digits.isascii() and len(digits) <= MONEY_DIGITS):
                raise ValueError(f"{name}: not an integer of at most {MONEY_DIGITS} digits")
            msgspec.structs.force_setattr(msg, name, int(v))


Levels = Annotated[
    bytes,
    msgspec.Meta(
        description="packed little-endian int64 (price, qty) pairs in 1/SCALE units",
        extra={"packed_levels": True},
    ),
]
"""Book levels as packed ``<i8`` pairs: ``numpy.frombuffer(b, "<i8").reshape(-1, 2)``.

Packed bytes cost nothing to pass in-lane, encode as one msgpack bin, and are viewed by
numpy without a copy - a list of tuples would cost ~0.1 us per level each way."""

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "post_only"]
TimeInForce = Literal["GTC", "IOC", "FOK", "GTD"]
Liquidity = Literal["maker", "taker"]
OrderStatus = Literal[
    "new", "accepted", "partially_filled", "filled", "canceled", "expired", "rejected"
]
TradingState = Literal["active", "reducing", "halted"]


class Msg(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    """Base of every bus message; the tag (first array element) is the class name."""


# --------------------------------------------------------------------------- market data


class DepthSnapshot(Msg):
    """A full order book snapshot (REST ``/depth``), topic ``md.depth.<SYMBOL>``."""

    symbol: str
    last_update_id: int
    bids: Levels
    asks: Levels
    ts_exchange_ns: int
    ts_recv_ns: int


class DepthDiff(Msg):
    """One diff-depth event: absolute quantities per price, qty 0 deletes the level.

    ``prev_update_id`` is futures' ``pu`` (-1 on spot, where continuity is
    ``first_update_id == previous last_update_id + 1``). Topic ``md.depth.<SYMBOL>``."""

    symbol: str
    first_update_id: int
    last_update_id: int
    prev_update_id: int
    bids: Levels
    asks: Levels
    ts_exchange_ns: int
    ts_recv_ns: int


class Trade(Msg):
    """One public trade, topic ``md.trade.<SYMBOL>``.

    ``buyer_is_maker`` true means the aggressor sold."""

    symbol: str
    trade_id: int
    px: int
    qty: int
    buyer_is_maker: bool
    ts_exchange_ns: int
    ts_recv_ns: int


class BookTicker(Msg):
    """Best bid/ask as the venue reports it, topic ``md.ticker.<SYMBOL>``."""

    symbol: str
    update_id: int
    bid_px: int
    bid_qty: int
    ask_px: int
    ask_qty: int
    ts_exchange_ns: int
    ts_recv_ns: int


class BookTop(Msg):
    """The local order book after an update, topic ``md.book.<SYMBOL>``.

    ``valid`` is false while the book is not in sync with the venue (before the snapshot,
    after a sequence gap until resynced, or crossed); nothing may trade on an invalid book.
    ``bids``/``asks`` hold the configured top-N levels, best first; ``0`` prices mean empty."""

    symbol: str
    last_update_id: int
    valid: bool
    bid_px: int
    bid_qty: int
    ask_px: int
    ask_qty: int
    bids: Levels
    asks: Levels
    ts_exchange_ns: int
    ts_recv_ns: int


class SnapshotRequest(Msg):
    """The book of ``symbol`` needs a fresh snapshot (start, sequence gap, crossed book),
    topic ``md.resync.<SYMBOL>``; the feed answers with a ``DepthSnapshot``."""

    symbol: str
    reason: str
    ts_ns: int


class FeedStatus(Msg):
    """The feed's connection for ``symbol`` went up or down, topic ``md.status.<SYMBOL>``.

    A book must not be trusted across a disconnect: events may have been missed."""

    symbol: str
    connected: bool
    reason: str
    ts_ns: int


# --------------------------------------------------------------------------- derived


class FeatureVector(Msg):
    """Order-book and trade-flow features of one symbol after a valid book event, topic
    ``feat.<SYMBOL>``. Field names are the original design's; each is defined (formula,
    window, units) by the ``features`` plugin (plugins/features) and the README. Ratios and
    rates are floats (never NaN or inf on the bus); ``mid`` and ``vwap`` are prices in
    1/SCALE units like every price on the bus."""

    symbol: str
    timestamp_ns: int
    """Venue time of the book event (``ts_exchange_ns``)."""
    mid: int
    volatility: float
    momentum: float
    imbalance: float
    weighted_imbalance: float
    spread_bps: float
    depth_ratio: float
    bid_pressure: float
    ask_pressure: float
    vwap: int
    trade_flow: float
    toxicity: float
    price_acceleration: float
    volume_surge: float
    book_update_id: int
    """``last_update_id`` of the book the vector was computed on."""
    ts_recv_ns: int
    """Receive time of the frame that caused it (tick-to-trade starts here)."""


class Signal(Msg):
    """A strategy's view of one symbol, topic ``sig.<SYMBOL>``.

    ``direction`` +1 buy / -1 sell / 0 none; ``strength`` in [-1, 1] (signed, after decay);
    ``confidence`` in [0, 1]. A signal that did not pass the strategy's own filters is still
    published, with ``suppressed`` saying why (e.g. "confidence 0.41 < min_confidence 0.70");
    an active signal has ``suppressed == ""``."""

    symbol: str
    strategy_id: str
    direction: int
    strength: float
    confidence: float
    holding_period_ms: int
    suppressed: str
    timestamp_ns: int
    """Clock time of the decision."""
    ts_recv_ns: int


# --------------------------------------------------------------------------- orders


class OrderRequest(Msg):
    """An order a strategy wants, topic ``ord.request`` (risk decides, then the broker).

    ``px`` is 0 for market orders. ``order_type``: "market", "limit", or "post_only" (a
    limit order rejected if it would take liquidity). ``tif``: GTC, IOC, FOK, or GTD (expires
    at ``expire_at_ns`` on the kernel clock). ``replaces``: a cancel-replace - the broker
    cancels that working order of the same strategy and places this one (risk counts only
    the new one). ``client_order_id`` is unique per run and strategy (see ``order_id``)."""

    client_order_id: str
    strategy_id: str
    symbol: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    qty: int
    px: int
    expire_at_ns: int
    reduce_only: bool
    replaces: str
    ts_recv_ns: int
    """Receive time of the tick that caused the order."""
    ts_created_ns: int
    """Clock time when the strategy made it."""


class OrderAccepted(Msg):
    """Risk let the order through, topic ``ord.accepted`` (the broker's input)."""

    order: OrderRequest
    ts_accepted_ns: int


class OrderRejected(Msg):
    """Risk (or the broker) refused an order, topic ``ord.rejected``.

    ``rule`` names the check ("max_order_size", "kill_switch", "tick_size", ...; stable,
    for counting), ``reason`` says it with the numbers ("qty 0.6 > max_order_size 0.5")."""

    order: OrderRequest
    rule: str
    reason: str
    ts_rejected_ns: int


class OrderCancel(Msg):
    """Cancel a working order, topic ``ord.cancel`` (straight to the broker: a cancel only
    ever reduces risk). An unknown or finished order is answered with a ``rejected``
    ``OrderUpdate`` whose reason says so."""

    client_order_id: str
    strategy_id: str
    symbol: str
    ts_created_ns: int


class Fill(Msg):
    """One execution, topic ``exec.fill``.

    ``fee`` is in 1/NOTIONAL_SCALE units of the quote asset (exact; negative for a rebate);
    ``ts_exchange_ns``/``ts_recv_ns`` are those of the market event that filled it."""

    client_order_id: str
    strategy_id: str
    symbol: str
    side: Side
    fill_id: int
    px: int
    qty: int
    fee: Money
    liquidity: Liquidity
    ts_exchange_ns: int
    ts_recv_ns: int
    ts_fill_ns: int

    def __post_init__(self) -> None:
        _money(self, "fee")


class OrderUpdate(Msg):
    """Every transition of an order's life, topic ``exec.report``.

    Legal transitions only: new -> accepted -> partially_filled* -> filled | canceled |
    expired; new -> rejected; accepted -> canceled | expired | rejected. ``avg_px`` is the
    average fill price (1/SCALE, rounded half up); ``reason`` says why for canceled, expired
    and rejected."""

    client_order_id: str
    strategy_id: str
    symbol: str
    side: Side
    order_type: OrderType
    status: OrderStatus
    px: int
    qty: int
    filled_qty: int
    leaves_qty: int
    avg_px: int
    reason: str
    ts_recv_ns: int
    ts_update_ns: int


class Position(Msg):
    """A symbol's position after a fill or a mark, topic ``pos.<SYMBOL>``.

    ``qty`` signed (1/SCALE). Money in 1/NOTIONAL_SCALE units of the quote asset, exact:
    ``cost`` is the signed cost basis of the open quantity (qty x average entry price),
    ``realized_pnl`` is gross of fees, ``fees`` the sum paid, ``unrealized_pnl`` the open
    quantity marked at ``mark_px`` (the mid). Invariant, exact at every step:
    realized + unrealized - fees == (cash flow of all fills) + qty x mark - fees."""

    symbol: str
    qty: int
    cost: Money
    realized_pnl: Money
    unrealized_pnl: Money
    fees: Money
    mark_px: int
    fills: int
    ts_recv_ns: int
    ts_update_ns: int

    def __post_init__(self) -> None:
        _money(self, "cost", "realized_pnl", "unrealized_pnl", "fees")


class RiskState(Msg):
    """Trading state, topic ``risk.state``, published on every change and periodically.

    ``state``: "active", "reducing" (only position-reducing orders pass) or "halted";
    ``kill_switch``: no new order passes at all."""

    state: TradingState
    kill_switch: bool
    reason: str
    open_orders: int
    gross_exposure: Money
    """Sum over symbols of |position + working orders| x mid, 1/NOTIONAL_SCALE units."""
    ts_ns: int

    def __post_init__(self) -> None:
        _money(self, "gross_exposure")


class ControlCommand(Msg):
    """An operator's command (``tickbus ctl``), topic ``ctl.<target>`` (e.g. ``ctl.risk``).

    ``command`` and ``args`` are validated by the target; an unknown command is answered with
    ``ok=False``. Arrives through the owner-only publish endpoint, never the tap."""

    request_id: str
    command: str
    args: list[str]
    ts_ns: int


class ControlReply(Msg):
    """The answer to a ``ControlCommand``, topic ``ctl.reply``; ``body`` is JSON text."""

    request_id: str
    target: str
    ok: bool
    body: str
    ts_ns: int


class RiskCheckRequest(Msg):
    """Risk gateway protocol (schemas/risk_gateway.md): ask the external gateway about an
    order. ``correlation_id`` is echoed in the reply."""

    correlation_id: int
    order: OrderRequest
    position_qty: int
    mid_px: int
    ts_ns: int


class RiskCheckReply(Msg):
    """Risk gateway protocol: the gateway's verdict on one ``RiskCheckRequest``."""

    correlation_id: int
    approved: bool
    reason: str
    ts_ns: int


class StrategySnapshot(Msg):
    """A strategy's state for persistence and recovery, topic ``snap.<strategy_id>``;
    ``state`` is JSON text chosen by the strategy."""

    strategy_id: str
    state: str
    ts_ns: int


# --------------------------------------------------------------------------- system


class Heartbeat(Msg):
    """A lane is alive, topic ``sys.heartbeat``."""

    process: str
    lane: str
    seq: int
    ts_ns: int


class Shutdown(Msg):
    """The kernel is stopping, topic ``sys.shutdown``."""

    process: str
    reason: str
    ts_ns: int


class Barrier(Msg):
    """Kernel-internal drain marker, topic ``sys.barrier``: a lane that has received
    ``epoch`` from every other lane has handled everything they sent before it."""

    process: str
    lane: str
    epoch: int


BUILTIN_TYPES: tuple[type[Msg], ...] = (
    DepthSnapshot,
    DepthDiff,
    Trade,
    BookTicker,
    BookTop,
    SnapshotRequest,
    FeedStatus,
    FeatureVector,
    Signal,
    OrderRequest,
    OrderAccepted,
    OrderRejected,
    OrderCancel,
    Fill,
    OrderUpdate,
    Position,
    RiskState,
    ControlCommand,
    ControlReply,
    RiskCheckRequest,
    RiskCheckReply,
    StrategySnapshot,
    Heartbeat,
    Shutdown,
    Barrier,
)
"""Every built-in message type; plugins may add their own (hook ``tickbus_message_types``)."""

AnyMsg = Union[BUILTIN_TYPES]  # type: ignore[valid-type]  # noqa: UP007
"""The tagged union of the built-in messages (msgspec needs a real ``Union`` object)."""
