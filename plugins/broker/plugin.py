"""The ``paper_broker`` plugin: orders risk let through are filled as the market would have
filled them, and the account's positions are kept exactly.

In: ``ord.accepted`` (``OrderAccepted``), ``ord.cancel`` (``OrderCancel``), ``md.book.<S>``
(``BookTop``), ``md.trade.<S>`` (``Trade``); at a restart, before its start, what the
persistence plugin restored (``restore.pos.<S>``, ``restore.order``, ``restore.report``,
``restore.done``; list ``after = ["persistence"]``, see :mod:`.restore`). Out:
``exec.report`` (``OrderUpdate``, every transition: accepted, partially_filled, filled,
canceled, expired, rejected), ``exec.fill`` (``Fill``), ``pos.<S>`` (``Position``: after
every fill, and marked to the mid at most every ``mark_interval_ms`` while open). See
:mod:`.engine` (latency, config), :mod:`.matching` (fill models), :mod:`.orders` (state
machine), :mod:`.positions` (exact accounting), :mod:`.restore` (restart).

Put it in the lane of the book and the strategies (a publish in a lane is a function call):
the broker then sees every book and trade exactly when the strategies do.
"""

from __future__ import annotations

from tickbus.kernel import PluginContext, ReplayClock, hookimpl
from tickbus.schemas import NOTIONAL_SCALE

from .engine import BrokerConfig, PaperBroker
from .matching import warmup


@hookimpl
def tickbus_config_type() -> type[BrokerConfig]:
    return BrokerConfig


@hookimpl
def tickbus_setup(ctx: PluginContext) -> PaperBroker:
    cfg: BrokerConfig = ctx.config
    cfg.validate(f"plugins.{ctx.name}")
    warmup()  # compile (or load) the scan kernel now, not on the first book
    broker = PaperBroker(
        cfg,
        publish=ctx.publish,
        clock=ctx.clock,
        call_at=ctx.call_at,
        log=ctx.log,
        live=not isinstance(ctx.clock, ReplayClock),
    )
    symbols = cfg.symbols or [""]
    for sym in symbols:
        ctx.subscribe(f"md.book.{sym}", broker.on_book)
        ctx.subscribe(f"md.trade.{sym}", broker.on_trade)
    ctx.subscribe("ord.accepted", broker.on_accepted)
    ctx.subscribe("ord.cancel", broker.on_cancel)
    ctx.subscribe("restore.pos.", broker.on_restore_pos)
    ctx.subscribe("restore.order", broker.on_restore_order)
    ctx.subscribe("restore.report", broker.on_restore_report)
    ctx.subscribe("restore.done", broker.on_restore_done)
    return broker


@hookimpl
def tickbus_start(ctx: PluginContext) -> None:
    ctx.component.start()


@hookimpl
def tickbus_stop(ctx: PluginContext) -> None:
    ctx.component.stop()


@hookimpl
def tickbus_status(ctx: PluginContext) -> str:
    return str(ctx.component.status())


@hookimpl
def tickbus_shutdown(ctx: PluginContext) -> None:
    broker: PaperBroker = ctx.component
    tot = broker.total()
    ctx.log.info(
        "%d orders, %d fills, %d working at the end; realized %.8f, unrealized %.8f, "
        "fees %.8f; rejected by kind %s; bad input %d",
        broker.stats["orders"], broker.stats["fills"], len(broker.working),
        tot.realized_pnl / NOTIONAL_SCALE, tot.unrealized_pnl / NOTIONAL_SCALE,
        tot.fees / NOTIONAL_SCALE, broker.reject_kinds, broker.stats["bad"],
    )  # fmt: skip
