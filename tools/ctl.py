"""``tickbus ctl``: operator commands to a running tickbus process, over its bus.

::

    tickbus ctl kill-switch on [--cancel/--no-cancel] [--flatten/--no-flatten]
    tickbus ctl kill-switch off
    tickbus ctl state active|reducing|halted
    tickbus ctl status [--json]

Each sends one ``ControlCommand`` on ``ctl.<target>`` (default ``ctl.risk``) into the running
process through its owner-only publish endpoint (``[bus] listen_pub``; the tap is read-only)
and waits for the ``ControlReply`` on ``ctl.reply`` (subscribed at ``[bus] listen_sub``). The
endpoints come from ``--config`` (or ``$TICKBUS_CONFIG``) as ``tickbus run`` resolves them,
or from ``--pub``/``--sub``.

It waits until the target has subscribed (so a command is never sent into the void), then
repeats the command with the same request id until the reply comes: the target answers a
repeated request id from its cache, so a command is carried out once. Exit status: 0 when
the target says ok, 1 when it refuses or does not answer within ``--timeout``, 2 for usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import zmq

from tickbus.kernel.config import Config, load_config, parse_config
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.fixed import from_fixed
from tickbus.kernel.router import Connector, frame, split_frame
from tickbus.schemas import NOTIONAL_SCALE, ControlCommand, ControlReply

_RESEND_S = 0.5
_ORIGIN = ((os.getpid() & 0xFFFFFF) << 8 | 0xFF).to_bytes(4, "big")  # never a lane's own


def endpoints(config: str | None) -> tuple[str, str, Connector]:
    """(publish, subscribe) endpoints of the bus a config's process hosts or joins, and
    how to connect to them (CURVE keys for tcp)."""
    path = config or os.environ.get("TICKBUS_CONFIG")
    cfg: Config = load_config(path) if path else parse_config({})
    bus = cfg.bus
    if bus.join_pub:  # its lanes are remote lanes of another process: talk to that bus
        eps = {
            "bus.join_pub": cfg.endpoint(bus.join_pub),
            "bus.join_sub": cfg.endpoint(bus.join_sub),
        }
    elif bus.listen_pub and bus.listen_sub:
        eps = {
            "bus.listen_pub": cfg.endpoint(bus.listen_pub[0]),
            "bus.listen_sub": cfg.endpoint(bus.listen_sub[0]),
        }
    else:
        raise TickbusError(
            f"{cfg.path}: bus.listen_pub/listen_sub are empty: nothing outside the process"
            " can publish into its bus (use --pub/--sub)"
        )
    pub_ep, sub_ep = eps.values()
    return pub_ep, sub_ep, Connector.for_endpoints(cfg, eps)


class CtlError(Exception):
    """The command could not be delivered or answered (exit status 1)."""


def send_command(
    pub_ep: str,
    sub_ep: str,
    target: str,
    command: str,
    args: list[str],
    timeout: float,
    connector: Connector | None = None,
) -> ControlReply:
    """Send one command and return the target's reply."""
    connector = connector or Connector.for_endpoints(None, {"--pub": pub_ep, "--sub": sub_ep})
    for ep in (pub_ep, sub_ep):
        if ep.startswith("ipc://") and not os.path.exists(ep[len("ipc://") :]):
            raise CtlError(f"no bus at {ep} (is tickbus running? --config FILE)")
    topic = f"ctl.{target}"
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    pub = zctx.socket(zmq.XPUB)  # an XPUB learns who subscribed: the target's presence
    try:
        for sock in (sub, pub):
            sock.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"ctl.reply")
        connector.connect(sub, sub_ep)
        connector.connect(pub, pub_ep)
        deadline = time.monotonic() + timeout
        _wait_for_subscriber(pub, topic, deadline, pub_ep)
        rid = uuid.uuid4().hex[:16]
        body = msgspec.msgpack.encode(ControlCommand(rid, command, args, time.time_ns()))
        data = frame(topic, _ORIGIN, body)
        decode = msgspec.msgpack.Decoder(ControlReply).decode
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise CtlError(f"no reply from {target!r} within {timeout:g} s")
            if now >= next_send:
                pub.send(data)
                next_send = now + _RESEND_S
            if not sub.poll(max(1, int((min(deadline, next_send) - now) * 1000))):
                continue
            try:
                _topic, _origin, raw = split_frame(sub.recv())
                reply = decode(raw)
            except (ValueError, msgspec.DecodeError):
                continue  # not a reply we can read: not ours
            if reply.request_id == rid:
                return reply
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        zctx.term()


def _wait_for_subscriber(pub: zmq.Socket, topic: str, deadline: float, ep: str) -> None:
    want = topic.encode()
    while time.monotonic() < deadline:
        if pub.poll(50):
            event = pub.recv()
            if event[:1] == b"\x01" and want.startswith(event[1:]):
                return
    raise CtlError(
        f"nothing subscribes to {topic} at {ep}: is the {topic[4:]!r} plugin enabled"
        " in the running process?"
    )


# --------------------------------------------------------------------------- output


def _money(value: int) -> str:
    return f"{Decimal(value) / NOTIONAL_SCALE:.4f}"


def format_status(body: dict[str, Any]) -> str:
    """The status reply as a few readable lines (amounts as decimals)."""
    lines = [
        f"{body['target']}: {body['state'].upper()}"
        + (f" ({body['reason']})" if body["reason"] else "")
        + f", kill switch {'ON' if body['kill_switch'] else 'off'}"
    ]
    head = ("SYMBOL", "QTY", "WORKING BUY", "WORKING SELL", "MID", "REALIZED", "UNREALIZED",
            "FEES", "PNL")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for sym, p in body["positions"].items():
        pnl = p["realized_pnl"] + p["unrealized_pnl"] - p["fees"]
        rows.append((
            sym, from_fixed(p["qty"]), from_fixed(p["working_buy"]),
            from_fixed(p["working_sell"]), from_fixed(p["mid"]), _money(p["realized_pnl"]),
            _money(p["unrealized_pnl"]), _money(p["fees"]), _money(pnl),
        ))  # fmt: skip
    lines.append("positions:" if len(rows) > 1 else "positions: none")
    if len(rows) > 1:
        lines += _table(rows)
    orders = body["open_orders"]
    total = body["open_orders_total"]
    lines.append(f"open orders: {total}" + (f" (first {len(orders)} shown)" if total > len(orders)
                                           else ""))  # fmt: skip
    if orders:
        rows = [("ID", "STRATEGY", "SYMBOL", "SIDE", "TYPE", "QTY", "LEAVES", "PX")]
        for o in orders:
            rows.append((
                o["client_order_id"] + (" (gateway)" if o["pending_gateway"] else ""),
                o["strategy_id"], o["symbol"], o["side"], o["type"], from_fixed(o["qty"]),
                from_fixed(o["leaves"]), from_fixed(o["px"]) if o["px"] else "market",
            ))  # fmt: skip
        lines += _table(rows)
    pnl = body["pnl"]
    lines.append(
        f"pnl: {_money(pnl['total'])} (peak {_money(pnl['peak'])}, drawdown"
        f" {_money(pnl['drawdown'])}); gross exposure {_money(body['gross_exposure'])}"
    )
    rejected = body["rejected"]
    detail = ", ".join(f"{r} {n}" for r, n in sorted(rejected.items(), key=lambda x: -x[1]))
    lines.append(
        f"orders: {body['accepted']} accepted, {sum(rejected.values())} rejected"
        + (f" ({detail})" if detail else "")
    )
    if "gateway" in body:
        g = body["gateway"]
        lines.append(
            f"gateway {g['endpoint']} ({g['policy']}): {g['sent']} asked, {g['approved']}"
            f" approved, {g['rejected']} rejected, {g['timeouts']} timeouts,"
            f" {g['unavailable']} unavailable, {g['fail_open_passes']} passed without verdict"
        )
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


# --------------------------------------------------------------------------- command line


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ctl`` sub-commands to ``p``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="the running process's config (default: $TICKBUS_CONFIG"
                        " or the built-in defaults)")  # fmt: skip
    common.add_argument("--pub", metavar="ENDPOINT", help="publish endpoint (its listen_pub)")
    common.add_argument("--sub", metavar="ENDPOINT", help="subscribe endpoint (its listen_sub)")
    common.add_argument("--target", default="risk", help="plugin instance (default: risk)")
    common.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="give up after S seconds (default 5)")  # fmt: skip
    sub = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    ks = sub.add_parser("kill-switch", parents=[common], help="stop (on) or allow (off) orders")
    ks.add_argument("mode", choices=["on", "off"])
    ks.add_argument(
        "--cancel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cancel working orders (default: the plugin's cancel_on_kill)",
    )
    ks.add_argument(
        "--flatten",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="close positions with market orders (default: flatten_on_kill)",
    )
    st = sub.add_parser("status", parents=[common], help="positions, open orders, PnL, state")
    st.add_argument("--json", action="store_true", help="print the reply's JSON body")
    state = sub.add_parser("state", parents=[common], help="set the trading state")
    state.add_argument("mode", choices=["active", "reducing", "halted"])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Send the command, print the answer."""
    if bool(args.pub) != bool(args.sub):
        raise TickbusError("--pub and --sub go together")
    connector = None
    if args.pub:
        pub_ep, sub_ep = args.pub, args.sub
    else:
        pub_ep, sub_ep, connector = endpoints(args.config)
    cmd_args: list[str] = []
    if args.ctl_command in ("kill-switch", "state"):
        cmd_args.append(args.mode)
    if args.ctl_command == "kill-switch":
        for name in ("cancel", "flatten"):
            value = getattr(args, name)
            if value is not None:
                cmd_args.append(name if value else f"no-{name}")
    try:
        reply = send_command(pub_ep, sub_ep, args.target, args.ctl_command, cmd_args,
                             args.timeout, connector)  # fmt: skip
    except CtlError as err:
        print(f"tickbus ctl: {err}", file=sys.stderr)
        return 1
    try:
        body = json.loads(reply.body)
    except ValueError:
        body = {"error": f"unreadable reply body {reply.body[:80]!r}"}
    if not reply.ok:
        print(f"tickbus ctl: {reply.target} refused: {body.get('error', body)}", file=sys.stderr)
        return 1
    if args.ctl_command == "status":
        print(reply.body if args.json else format_status(body))
    elif args.ctl_command == "kill-switch":
        line = f"kill switch {'ON' if body['kill_switch'] else 'off'} ({reply.target})"
        if body["kill_switch"]:
            line += f"; {body['canceled']} working orders asked to cancel"
            for f in body["flatten"]:
                if "skipped" in f:
                    line += f"; {f['symbol']} {from_fixed(f['qty'])} not flattened ({f['skipped']})"
                else:
                    line += f"; flatten {f['symbol']} {f['side']} {from_fixed(f['qty'])}"
        print(line)
    else:
        print(f"trading state {body['state']} ({reply.target})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.ctl``."""
    p = argparse.ArgumentParser(prog="tickbus ctl", description=__doc__.split("\n")[0])
    build_parser(p)
    try:
        return run(p.parse_args(argv))
    except TickbusError as err:
        print(f"tickbus ctl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
