"""The ``tickbus`` command: run, sniff, plugins, keys (and the operator tools).

A user error (bad config, unknown plugin, endpoint in use) is one line on stderr and exit
status 2 - never a traceback, unless ``--debug`` asks for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import TickbusError

DEFAULT_CONFIG = "configs/default.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _config_path(given: str | None) -> str:
    return given or os.environ.get("TICKBUS_CONFIG") or DEFAULT_CONFIG


def log_level(configured: str) -> str:
    """``$TICKBUS_LOG_LEVEL`` if set, else the config's; a one-line error if invalid."""
    env = os.environ.get("TICKBUS_LOG_LEVEL", "")
    level = (env or configured).strip().lower()
    if level not in LOG_LEVELS:
        source = "TICKBUS_LOG_LEVEL" if env else "kernel.log_level"
        raise TickbusError(f"{source}: {level!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return level


def cmd_run(args: argparse.Namespace) -> int:
    """``tickbus run [CONFIG]``: start the kernel with the plugins the config enables."""
    from .app import Kernel
    from .config import load_config

    cfg = load_config(_config_path(args.config))
    logging.getLogger().setLevel(log_level(cfg.kernel.log_level).upper())
    rc = Kernel(cfg).run()
    # Every plugin has flushed in its shutdown hook and every lane has ended. Tearing the
    # interpreter down module by module (numba/LLVM) would add ~0.4 s to SIGTERM -> exit.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def cmd_plugins(args: argparse.Namespace) -> int:
    """``tickbus plugins``: every installed plugin, where it comes from, and whether the
    config enables it (no plugin is imported)."""
    from .config import load_config
    from .plugins import discover

    found = discover()
    instances: dict[str, list[str]] = {}
    path = _config_path(args.config)
    cfg = load_config(path) if (args.config or os.path.exists(path)) else None
    if cfg is not None:
        for inst in cfg.plugins.values():
            state = f"{inst.name} (lane {inst.lane})" if inst.enabled else f"{inst.name} (disabled)"
            instances.setdefault(inst.plugin, []).append(state)
    rows = [("PLUGIN", "MODULE", "DISTRIBUTION", f"IN {path}" if cfg else "CONFIG")]
    for name in sorted(found):
        d = found[name]
        rows.append((name, d.value, d.distribution, ", ".join(instances.get(name, [])) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    missing = sorted(set(instances) - set(found))
    for name in missing:
        print(
            f"tickbus: warning: config names plugin {name!r}, which is not installed",
            file=sys.stderr,
        )
    return 0


def _curve_dir(args: argparse.Namespace) -> Path:
    """``--dir``, else the config's ``[bus] curve_dir`` (default ``<state_dir>/curve``)."""
    from .config import load_config, parse_config

    if args.dir:
        return Path(args.dir)
    path = _config_path(args.config)
    if args.config or os.environ.get("TICKBUS_CONFIG") or os.path.exists(path):
        return load_config(path).curve_dir
    return parse_config({}).curve_dir


def cmd_keys(args: argparse.Namespace) -> int:
    """``tickbus keys``: CURVE keys for the bus's tcp endpoints (see kernel/auth.py)."""
    from . import auth

    where = _curve_dir(args)
    if args.action == "init":
        public = auth.init_server(where, force=args.force)
        print(f"server key pair created in {where}; give clients {public}")
        print("next: `tickbus keys client NAME` for each process or sniffer that connects")
    elif args.action == "client":
        bundle = auth.new_client(where, args.name)
        print(f"client {args.name!r} authorized; its keys: {bundle}")
        print(
            "copy that directory to the client's host and point its config's [bus] curve_dir"
            " (or `tickbus sniff --keys`) at it"
        )
    elif args.action == "authorize":
        target = auth.authorize(where, Path(args.file), args.name)
        print(f"client {args.name!r} authorized ({target})")
    elif args.action == "revoke":
        auth.revoke(where, args.name)
        print(f"client {args.name!r} revoked (connected clients keep their session until it ends)")
    else:
        print("\n".join(auth.listing(where)))
    return 0


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="CURVE keys for tcp:// bus endpoints")
    keys.add_argument("--config", help="take [bus] curve_dir from this config")
    keys.add_argument("--dir", help="the CURVE key directory (overrides the config)")
    acts = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = acts.add_parser("init", help="create this bus host's server key pair")
    init.add_argument("--force", action="store_true", help="replace an existing pair")
    client = acts.add_parser("client", help="create and authorize a client key pair")
    client.add_argument("name", help="who the client is (e.g. its host or purpose)")
    author = acts.add_parser("authorize", help="authorize a client public key made elsewhere")
    author.add_argument("file", help="the client's public key file (NAME.key)")
    author.add_argument("--name", required=True, help="name to file it under")
    revoke = acts.add_parser("revoke", help="stop authorizing a client")
    revoke.add_argument("name")
    acts.add_parser("list", help="show the server key and authorized clients")
    keys.set_defaults(func=cmd_keys)


def _tool(module: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
    import importlib

    mod = importlib.import_module(module)
    return mod.build_parser, mod.run


TOOLS = (
    ("sniff", "tickbus.tools.sniffer", "print messages flowing on a running bus"),
    ("exchange-sim", "tickbus.tools.exchange_sim", "serve a capture as a Binance-like server"),
    ("record", "tickbus.tools.record", "record raw Binance frames to a capture file"),
    ("ctl", "tickbus.tools.ctl", "commands to a running process: kill switch, state, status"),
    ("risk-gateway", "tickbus.tools.risk_gateway", "reference risk gateway for the risk plugin"),
    ("train-model", "tickbus.tools.train_model", "train the ONNX signal model on recorded data"),
    ("backtest", "tickbus.tools.backtest", "run the full pipeline on recorded data, then report"),
    ("report", "tickbus.tools.report", "a run's performance from its database (text, JSON, HTML)"),
    ("bench", "tickbus.tools.bench.pipeline", "end-to-end benchmark: tick-to-trade on every order"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. Only the tool named by ``command`` is imported: the others
    (websockets, numba...) would add ~0.4 s to every start."""
    p = argparse.ArgumentParser(
        prog="tickbus",
        description="Low-latency crypto trading engine: a message-bus microkernel.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the kernel with the plugins a config enables")
    run.add_argument(
        "config", nargs="?", help=f"TOML config (default: $TICKBUS_CONFIG or {DEFAULT_CONFIG})"
    )
    run.set_defaults(func=cmd_run)

    plugins = sub.add_parser("plugins", help="list installed plugins and what the config enables")
    plugins.add_argument(
        "--config", help=f"config to compare with (default: {DEFAULT_CONFIG} if present)"
    )
    plugins.set_defaults(func=cmd_plugins)
    _add_keys_parser(sub)

    for name, module, help_ in TOOLS:
        tp = sub.add_parser(name, help=help_)
        if name == command:
            add_args, run_tool = _tool(module)
            add_args(tp)
            tp.set_defaults(func=run_tool)
    return p


def main(argv: list[str] | None = None) -> int:
    """Console script entry point."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TickbusError as err:
        if args.debug:
            raise
        print(f"tickbus: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
