"""The TOML config, validated into msgspec Structs.

Layout::

    [kernel]               # process-wide settings (KernelConfig)
    [bus]                  # endpoints and high-water marks (BusConfig)
    [lanes.<name>]         # one thread each (LaneConfig); default: a single lane "main"
    [plugins.<name>]       # one plugin instance each: reserved keys below, the rest is the
                           # plugin's own config, validated by the type the plugin declares

Reserved keys in a plugin table: ``plugin`` (entry point name, default: the table name, so
one plugin can run as several instances), ``lane``, ``enabled`` (default true) and ``after``
(instances that must start before this one).

Every error is a :class:`~kernel.errors.ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError

RESERVED_PLUGIN_KEYS = frozenset({"plugin", "lane", "enabled", "after"})
DEFAULT_LANE = "main"


class KernelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[kernel]``: process-wide settings."""

    name: str = "tickbus"
    """Process name: shown in heartbeats and by the sniffer, and the default runtime dir's
    last component, so configs with different names run side by side."""
    runtime_dir: str = ""
    """Where the ipc sockets live (one run at a time: a lock file in it names the owner).
    Default: ``$RUNTIME_DIRECTORY`` (systemd), else ``$XDG_RUNTIME_DIR/tickbus/<name>``,
    else ``/tmp/tickbus-<uid>/<name>``."""
    check_runtime_dir: bool = True
    """Refuse a runtime dir (or an ipc socket's directory) owned by another user or writable
    by group/others, or below such a directory. Turn off only for a directory you set up
    yourself on purpose (e.g. shared with a trusted group)."""
    state_dir: str = ""
    """Where state (the database) lives.
    Default: ``$STATE_DIRECTORY`` (systemd), else ``./state``."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    clock: Literal["live", "replay"] = "live"
    heartbeat_s: float = 1.0
    """Each lane publishes ``sys.heartbeat`` this often; the systemd watchdog is fed only
    while every lane beats."""
    stop_timeout_s: float = 0.8
    """Budget for stopping plugins and draining the bus before the process exits anyway."""
    drain_timeout_s: float = 10.0
    """Longest a drain may take while lanes are still working off a backlog: nothing
    already published is dropped at shutdown unless this runs out (then it is logged)."""
    flush_timeout_s: float = 3.0
    """Budget of each plugin's flush hook (``tickbus_shutdown``: commit the database...)
    after the drain, whatever the stop hooks and the drain used."""
    status_interval_s: float = 10.0
    """Log a status line this often: per-topic rates, lane backlogs and each plugin's
    fragment (``tickbus_status``); 0 turns it off."""


class BusConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[bus]``: where the bus is reachable from outside the process.

    ``{runtime_dir}`` in an endpoint is replaced by the runtime directory."""

    tap: str = "ipc://{runtime_dir}/tap"
    """Endpoint for sniffers. Lossy by design: a slow sniffer loses messages, never the engine."""
    tap_hwm: int = 100_000
    listen_pub: list[str] = msgspec.field(default_factory=lambda: ["ipc://{runtime_dir}/bus-pub"])
    """Endpoints where plugins in other processes publish into this bus."""
    listen_sub: list[str] = msgspec.field(default_factory=lambda: ["ipc://{runtime_dir}/bus-sub"])
    """Endpoints where plugins in other processes subscribe. Lossless (no high-water mark)."""
    listen_tap_pub: list[str] = msgspec.field(
        default_factory=lambda: ["ipc://{runtime_dir}/tap-pub"]
    )
    """Endpoints where plugins in other processes publish what a sniffer of this bus wants."""
    join_pub: str = ""
    join_sub: str = ""
    """Set both to join another tickbus process's bus (its ``listen_pub``/``listen_sub``)
    instead of hosting a router: this process's lanes then run as remote lanes."""
    join_tap: str = ""
    """With join_*: the other process's ``listen_tap_pub``, so its sniffers see our lanes."""
    max_msg_bytes: int = 16 * 1024 * 1024
    """Largest frame accepted from outside the process (ZMQ_MAXMSGSIZE); a peer that sends
    a larger one is disconnected."""
    sub_hwm: int = 100_000
    """Messages queued at most for one remote subscriber (``listen_sub``)..."""
    sub_timeout_s: float = 2.0
    """...and if its queue stays full this long, every subscriber of that endpoint is
    disconnected (logged as an error) rather than the host's memory growing without limit.
    Lanes of this process are lossless and unbounded."""
    curve_dir: str = ""
    """CURVE keys for ``tcp://`` endpoints (``tickbus keys``). Default: ``<state_dir>/curve``."""
    plain_loopback: bool = False
    """Allow ``tcp://127.x.x.x`` / ``tcp://[::1]`` endpoints without CURVE. Every local user
    can then reach them: use ``ipc://`` instead where you can."""


class LaneConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[lanes.<name>]``: one thread with its own event loop."""

    cpu: int = -1
    """Pin the whole process to this CPU when the lane starts (-1: no pinning).
    Linux pins threads individually; Python threads share the GIL, so this is advisory."""


class PluginEntry(msgspec.Struct, frozen=True):
    """One ``[plugins.<name>]`` table after the reserved keys are split off."""

    name: str
    plugin: str
    lane: str
    enabled: bool
    after: tuple[str, ...]
    settings: dict[str, Any]


class Config(msgspec.Struct, frozen=True):
    """A whole validated config file."""

    path: str
    kernel: KernelConfig
    bus: BusConfig
    lanes: dict[str, LaneConfig]
    plugins: dict[str, PluginEntry]

    @property
    def runtime_dir(self) -> Path:
        """The runtime directory (ipc sockets), resolved from config and environment."""
        return resolve_runtime_dir(self.kernel.runtime_dir, self.kernel.name)

    @property
    def state_dir(self) -> Path:
        """The state directory (database), resolved from config and environment."""
        if self.kernel.state_dir:
            return Path(os.path.expandvars(self.kernel.state_dir)).expanduser()
        env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(env) if env else Path("state")

    @property
    def curve_dir(self) -> Path:
        """Where the CURVE key files are (``tickbus keys``)."""
        if self.bus.curve_dir:
            return Path(os.path.expandvars(self.bus.curve_dir)).expanduser()
        return self.state_dir / "curve"

    def endpoint(self, template: str) -> str:
        """Expand ``{runtime_dir}`` in an endpoint."""
        return template.replace("{runtime_dir}", str(self.runtime_dir))


def resolve_runtime_dir(configured: str = "", name: str = "tickbus") -> Path:
    """Runtime directory: config value, else systemd's (already one per unit), else
    ``$XDG_RUNTIME_DIR/tickbus/<name>``, else ``/tmp/tickbus-<uid>/<name>``."""
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    env = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "tickbus" / name
    return Path(f"/tmp/tickbus-{os.getuid()}") / name


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A process name: it becomes a directory name and part of inproc endpoints."""
ENDPOINT_RE = re.compile(r"(?P<scheme>ipc|tcp)://(?P<address>.+)")


def check_endpoint(path: str, key: str, endpoint: str, *, bind: bool) -> None:
    """A bus endpoint must be ``ipc://PATH`` or ``tcp://HOST:PORT``. An abstract unix socket
    (``ipc://@name``) has no file permissions - anyone on the host could use it - so it is
    refused for a bind."""
    m = ENDPOINT_RE.fullmatch(endpoint)
    if m is None:
        raise ConfigError(path, key, f"{endpoint!r} is not an ipc:// or tcp:// endpoint")
    address = m.group("address")
    if m.group("scheme") == "ipc":
        if bind and address.startswith("@"):
            raise ConfigError(
                path, key, f"{endpoint}: an abstract socket has no permissions; use a path"
            )
    elif not re.fullmatch(r".+:(\d+|\*)", address):
        raise ConfigError(path, key, f"{endpoint}: expected tcp://HOST:PORT")


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _key_and_problem(prefix: str, err: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.a.b``` into (key, problem)."""
    text = str(err)
    key = prefix
    m = _AT_PATH.search(text)
    if m:
        text = text[: m.start()]
        sub = m.group("path").lstrip(".")
        key = ".".join(p for p in (prefix, sub) if p)
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown:
        return ".".join(p for p in (key, unknown.group(1)) if p), "unknown key"
    missing = re.fullmatch(r"Object missing required field `(.+)`", text)
    if missing:
        return ".".join(p for p in (key, missing.group(1)) if p), "missing required key"
    return key, text[:1].lower() + text[1:]


def convert(path: str, key: str, data: Any, type_: Any) -> Any:
    """Validate ``data`` into ``type_``; a failure becomes a ConfigError naming ``key``."""
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as err:
        k, problem = _key_and_problem(key, err)
        raise ConfigError(path, k, problem) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file (plugin settings are validated later, by the
    plugin manager, once it knows each plugin's config type)."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(p, "", "no such config file") from None
    except IsADirectoryError:
        raise ConfigError(p, "", "is a directory, not a config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(p, "", f"not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(p, "", "not valid TOML: not UTF-8") from None
    except OSError as err:
        raise ConfigError(p, "", f"cannot read: {err.strerror}") from None
    return parse_config(raw, p)


def parse_config(raw: dict[str, Any], path: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    unknown = set(raw) - {"kernel", "bus", "lanes", "plugins"}
    if unknown:
        raise ConfigError(
            path, sorted(unknown)[0], "unknown section (known: kernel, bus, lanes, plugins)"
        )
    kernel = convert(path, "kernel", raw.get("kernel", {}), KernelConfig)
    if not NAME_RE.fullmatch(kernel.name):
        raise ConfigError(
            path, "kernel.name", "must be 1-64 letters, digits, '_', '.', '-' (not first)"
        )
    if kernel.heartbeat_s <= 0:
        raise ConfigError(path, "kernel.heartbeat_s", "must be > 0")
    for key in ("stop_timeout_s", "drain_timeout_s", "flush_timeout_s"):
        if getattr(kernel, key) <= 0:
            raise ConfigError(path, f"kernel.{key}", "must be > 0")
    if kernel.status_interval_s < 0:
        raise ConfigError(path, "kernel.status_interval_s", "must be >= 0 (0: no status line)")
    bus = convert(path, "bus", raw.get("bus", {}), BusConfig)
    if bool(bus.join_pub) != bool(bus.join_sub):
        raise ConfigError(path, "bus.join_pub", "join_pub and join_sub must be set together")
    if bus.tap_hwm < 1:
        raise ConfigError(path, "bus.tap_hwm", "must be >= 1 (the tap is bounded on purpose)")
    if bus.sub_hwm < 1:
        raise ConfigError(path, "bus.sub_hwm", "must be >= 1 (remote subscribers are bounded)")
    if bus.sub_timeout_s <= 0:
        raise ConfigError(path, "bus.sub_timeout_s", "must be > 0")
    if bus.max_msg_bytes < 4096:
        raise ConfigError(path, "bus.max_msg_bytes", "must be >= 4096")
    for key in ("listen_pub", "listen_sub", "listen_tap_pub"):
        for i, ep in enumerate(getattr(bus, key)):
            check_endpoint(path, f"bus.{key}[{i}]", ep, bind=True)
    if bus.tap:
        check_endpoint(path, "bus.tap", bus.tap, bind=True)
    for key in ("join_pub", "join_sub", "join_tap"):
        if getattr(bus, key):
            check_endpoint(path, f"bus.{key}", getattr(bus, key), bind=False)
    lanes = convert(path, "lanes", raw.get("lanes", {}), dict[str, LaneConfig])
    if not lanes:
        lanes = {DEFAULT_LANE: LaneConfig()}
    plugins_raw = raw.get("plugins", {})
    if not isinstance(plugins_raw, dict):
        raise ConfigError(path, "plugins", "must be a table of [plugins.<name>] tables")
    plugins: dict[str, PluginEntry] = {}
    for name, table in plugins_raw.items():
        plugins[name] = _plugin_entry(path, name, table, lanes)
    for entry in plugins.values():
        for dep in entry.after:
            if dep not in plugins:
                raise ConfigError(
                    path, f"plugins.{entry.name}.after", f"no plugin instance named {dep!r}"
                )
    return Config(path=path, kernel=kernel, bus=bus, lanes=lanes, plugins=plugins)


def _plugin_entry(path: str, name: str, table: Any, lanes: dict[str, LaneConfig]) -> PluginEntry:
    key = f"plugins.{name}"
    if not isinstance(table, dict):
        raise ConfigError(path, key, "must be a table")
    plugin = convert(path, f"{key}.plugin", table.get("plugin", name), str)
    default_lane = next(iter(lanes))
    lane = convert(path, f"{key}.lane", table.get("lane", default_lane), str)
    if lane not in lanes:
        raise ConfigError(
            path, f"{key}.lane", f"lane {lane!r} does not exist (lanes: {', '.join(lanes)})"
        )
    enabled = convert(path, f"{key}.enabled", table.get("enabled", True), bool)
    after = tuple(convert(path, f"{key}.after", table.get("after", []), list[str]))
    settings = {k: v for k, v in table.items() if k not in RESERVED_PLUGIN_KEYS}
    return PluginEntry(name, plugin, lane, enabled, after, settings)
