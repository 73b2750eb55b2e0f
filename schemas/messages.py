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

from typing import Annotated, Literal, Union

import msgspec

SCALE = 10**8
"""Fixed-point scale of prices and quantities: ``px_int = round(px * SCALE)``."""

NOTIONAL_SCALE = SCALE * SCALE
"""Scale of a price x quantity product (cost basis, PnL)."""

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
OrderKind = Literal["limit", "market"]
TimeInForce = Literal["GTC", "IOC", "FOK", "GTX"]
Liquidity = Literal["maker", "taker"]
OrderStatus = Literal["new", "partially_filled", "filled", "canceled", "rejected", "expired"]


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


class Features(Msg):
    """Order-book and trade-flow features for one symbol, topic ``feat.<SYMBOL>``."""

    symbol: str
    values: dict[str, float]
    ts_exchange_ns: int
    ts_recv_ns: int


class Signal(Msg):
    """A strategy's view, topic ``sig.<SYMBOL>``.

    ``strength`` in [-1, 1] (positive: buy); ``target_qty`` is the signed position the
    strategy wants, in 1/SCALE units."""

    symbol: str
    strategy: str
    strength: float
    target_qty: int
    ts_exchange_ns: int
    ts_recv_ns: int


# --------------------------------------------------------------------------- orders


class OrderRequest(Msg):
    """An order a strategy wants, topic ``ord.request``; ``px`` is 0 for market orders."""

    client_order_id: str
    symbol: str
    side: Side
    kind: OrderKind
    px: int
    qty: int
    tif: TimeInForce
    strategy: str
    ts_recv_ns: int
    ts_created_ns: int


class OrderAccepted(Msg):
    """Risk let the order through, topic ``ord.accepted``."""

    order: OrderRequest
    ts_accepted_ns: int


class OrderRejected(Msg):
    """Risk (or the broker) refused the order, topic ``ord.rejected``."""

    order: OrderRequest
    reason: str
    ts_rejected_ns: int


class OrderCancel(Msg):
    """Cancel a resting order, topic ``ord.cancel``."""

    client_order_id: str
    symbol: str
    ts_recv_ns: int
    ts_created_ns: int


class Fill(Msg):
    """One execution, topic ``exec.fill``; ``fee`` in 1/SCALE units of the quote asset."""

    client_order_id: str
    fill_id: int
    symbol: str
    side: Side
    px: int
    qty: int
    fee: int
    liquidity: Liquidity
    ts_exchange_ns: int
    ts_recv_ns: int
    ts_fill_ns: int


class ExecReport(Msg):
    """Order state change, topic ``exec.report``."""

    client_order_id: str
    symbol: str
    status: OrderStatus
    filled_qty: int
    leaves_qty: int
    avg_px: int
    reason: str
    ts_recv_ns: int
    ts_report_ns: int


class Position(Msg):
    """Position after a fill, topic ``pos.<SYMBOL>``.

    ``qty`` signed (1/SCALE); ``cost`` and ``realized_pnl`` in 1/NOTIONAL_SCALE units of the
    quote asset, so sums over millions of fills stay exact."""

    symbol: str
    qty: int
    cost: int
    realized_pnl: int
    fees: int
    ts_recv_ns: int
    ts_update_ns: int


class RiskState(Msg):
    """Risk status, topic ``risk.state``; ``killed`` means no new order passes."""

    killed: bool
    reason: str
    open_orders: int
    gross_exposure: int
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
    Features,
    Signal,
    OrderRequest,
    OrderAccepted,
    OrderRejected,
    OrderCancel,
    Fill,
    ExecReport,
    Position,
    RiskState,
    Heartbeat,
    Shutdown,
    Barrier,
)
"""Every built-in message type; plugins may add their own (hook ``tickbus_message_types``)."""

AnyMsg = Union[BUILTIN_TYPES]  # type: ignore[valid-type]  # noqa: UP007
"""The tagged union of the built-in messages (msgspec needs a real ``Union`` object)."""
