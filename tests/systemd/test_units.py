"""systemd integration: kernel/sdnotify.py against real sockets, and the unit files in systemd/.

The `systemd-analyze` checks need the binary from the Debian/Ubuntu package `systemd`
(`apt-get install systemd`); CI installs it. Without it they are skipped, not passed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickbus.kernel import sdnotify

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tickbus.service"
TEMPLATE = ROOT / "systemd" / "tickbus@.service"
ENV_FILE = ROOT / "systemd" / "tickbus.env"
README = ROOT / "systemd" / "README.md"
INSTALLED_BINARY = "/usr/local/bin/tickbus"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found: install the Debian/Ubuntu package `systemd`",
)
linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="abstract sockets and /proc are Linux"
)

# ---------------------------------------------------------------------------------------
# sd_notify
# ---------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No systemd variables from the environment the tests happen to run in."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="tb-sd-", dir="/tmp") as name:
        yield Path(name)


def _abstract_name() -> str:
    return f"tickbus-test-{uuid.uuid4().hex}"


@pytest.fixture(params=["path", pytest.param("abstract", marks=linux_only)])
def receiver(
    request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch, short_dir: Path
) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd, with $NOTIFY_SOCKET pointing at it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(short_dir / "notify")
        sock.bind(path)
        clean_env.setenv("NOTIFY_SOCKET", path)
    else:
        name = _abstract_name()
        sock.bind("\0" + name)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
    sock.settimeout(2.0)
    yield sock
    sock.close()


def _assert_nothing_queued(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_notify_sends_the_exact_bytes(receiver: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"


def test_notify_sends_several_assignments_as_one_datagram(receiver: socket.socket) -> None:
    state = "STATUS=bus up, 6 plugins started\nREADY=1"
    assert sdnotify.notify(state) is True
    assert receiver.recv(4096) == state.encode()
    _assert_nothing_queued(receiver)


def test_notify_encodes_utf8(receiver: socket.socket) -> None:
    assert sdnotify.notify("STATUS=démarré") is True
    assert receiver.recv(4096) == "STATUS=démarré".encode()


def test_notify_is_a_silent_noop_without_notify_socket(
    receiver: socket.socket, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False
    _assert_nothing_queued(receiver)


def test_notify_ignores_empty_notify_socket(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


def test_notify_refuses_relative_path(clean_env: pytest.MonkeyPatch, short_dir: Path) -> None:
    # systemd only ever hands out absolute paths or @names; a relative one would resolve
    # against whatever the working directory happens to be.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(short_dir / "notify"))
        clean_env.chdir(short_dir)
        clean_env.setenv("NOTIFY_SOCKET", "notify")
        assert sdnotify.notify("READY=1") is False
        _assert_nothing_queued(sock)


@pytest.mark.parametrize(
    "kind",
    ["stale path", "missing path", "regular file", pytest.param("abstract", marks=linux_only)],
)
def test_notify_returns_false_when_systemd_is_gone(
    kind: str, clean_env: pytest.MonkeyPatch, short_dir: Path
) -> None:
    path = short_dir / "notify"
    if kind == "stale path":  # bound then closed: the file stays, nobody listens
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
        assert path.exists()
        target = str(path)
    elif kind == "missing path":
        target = str(short_dir / "no-such-dir" / "notify")
    elif kind == "regular file":
        path.write_text("not a socket")
        target = str(path)
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            name = _abstract_name()
            sock.bind("\0" + name)
        target = "@" + name
    clean_env.setenv("NOTIFY_SOCKET", target)
    assert sdnotify.notify("WATCHDOG=1") is False


def test_notify_does_not_block_when_systemd_stops_reading(
    receiver: socket.socket,
) -> None:
    # Nobody reads: the receive queue fills (net.unix.max_dgram_qlen). A blocking send would
    # hang the calling lane forever; notify must report False instead.
    results: list[bool] = []

    def flood() -> None:
        for _ in range(100_000):
            ok = sdnotify.notify("WATCHDOG=1")
            results.append(ok)
            if not ok:
                return

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "notify blocked on a full notify socket"
    assert results[-1] is False
    assert results.count(True) >= 1  # the first datagrams did go through


@linux_only
def test_notify_does_not_leak_file_descriptors(
    receiver: socket.socket, clean_env: pytest.MonkeyPatch, short_dir: Path
) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        assert sdnotify.notify("WATCHDOG=1")
        receiver.recv(4096)
    clean_env.setenv("NOTIFY_SOCKET", str(short_dir / "missing"))
    for _ in range(200):
        assert not sdnotify.notify("WATCHDOG=1")
    assert len(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------------------------------
# watchdog interval
# ---------------------------------------------------------------------------------------

OWN_PID = "own"  # placeholder: replaced by os.getpid() in the test
OTHER_PID = "other"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),  # no WatchdogSec=
        ("10000000", None, 5.0),  # WatchdogSec=10 -> ping every 5 s
        ("10000000", OWN_PID, 5.0),
        ("10000000", OTHER_PID, None),  # meant for another process (e.g. our parent)
        ("10000000", "not-a-pid", None),
        ("1", None, 0.0000005),
        ("0", None, None),
        ("-5", None, None),
        ("", None, None),
        ("10s", None, None),
    ],
)
def test_watchdog_interval_s(
    clean_env: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        clean_env.setenv("WATCHDOG_USEC", usec)
    if pid == OWN_PID:
        pid = str(os.getpid())
    elif pid == OTHER_PID:
        pid = str(os.getpid() + 1)
    if pid is not None:
        clean_env.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval_s() == expected


def test_watchdog_is_off_in_a_child_process_that_inherited_the_environment() -> None:
    # The real case: a plugin process started by the kernel inherits WATCHDOG_PID=<kernel>.
    env = dict(os.environ, WATCHDOG_USEC="10000000", WATCHDOG_PID=str(os.getpid()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = "from kernel import sdnotify; print(sdnotify.watchdog_interval_s())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"


# ---------------------------------------------------------------------------------------
# unit files: key settings
# ---------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value assigned, in order (comments and blanks dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot parse {raw!r}"
        assert not value.endswith("\\"), f"{path.name}: continuation lines not expected"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set exactly once, got {values}"
    return values[0]


def _environment(service: dict[str, list[str]]) -> dict[str, str]:
    pairs = (value.split("=", 1) for value in service.get("Environment", []))
    return {name: value for name, value in pairs}


EXPECTED = {
    UNIT: {
        "ExecStart": f"{INSTALLED_BINARY} run ${{TICKBUS_CONFIG}}",
        "EnvironmentFile": "-/etc/tickbus/tickbus.env",
        "RuntimeDirectory": "tickbus",
        "StateDirectory": "tickbus",
        "CacheDirectory": "tickbus",
    },
    TEMPLATE: {
        "ExecStart": f"{INSTALLED_BINARY} run /etc/tickbus/%i.toml",
        "EnvironmentFile": "-/etc/tickbus/%i.env",
        "RuntimeDirectory": "tickbus/%i",
        "StateDirectory": "tickbus/%i",
        "CacheDirectory": "tickbus/%i",
    },
}


@pytest.mark.parametrize("path", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_unit_key_settings(path: Path) -> None:
    service = parse_unit(path)["Service"]
    assert _one(service, "Type") == "notify"
    assert _one(service, "NotifyAccess") == "main"
    assert _one(service, "WatchdogSec") == "10"
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "RestartSec")
    assert _one(service, "KillSignal") == "SIGTERM"
    # We exit within 1 s of SIGTERM; a long stop timeout only delays restarts.
    assert 1 < int(_one(service, "TimeoutStopSec")) <= 10
    for key, value in EXPECTED[path].items():
        assert _one(service, key) == value, key
    assert set(_one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert _one(service, "NoNewPrivileges") == "yes"
    assert _one(service, "ProtectSystem") == "strict"
    assert "@system-service" in service["SystemCallFilter"]


@pytest.mark.parametrize("path", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_numba_cache_is_inside_the_cache_directory(path: Path) -> None:
    # ProtectSystem=strict leaves only the unit's own directories writable.
    service = parse_unit(path)["Service"]
    cache_dir = _one(service, "CacheDirectory")
    assert _environment(service)["NUMBA_CACHE_DIR"] == f"%C/{cache_dir}/numba"


@pytest.mark.parametrize("path", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_memory_deny_write_execute_is_not_enabled(path: Path) -> None:
    # numba/LLVM must make freshly written code executable.
    values = parse_unit(path)["Service"].get("MemoryDenyWriteExecute", [])
    assert all(v.lower() in {"no", "false", "off", "0"} for v in values), values


def test_template_hardening_matches_the_plain_unit() -> None:
    # The two files duplicate everything but the per-instance paths; catch drift.
    per_instance = {"ExecStart", "Environment", "EnvironmentFile"} | {
        f"{kind}Directory" for kind in ("Runtime", "State", "Cache")
    }
    unit, template = parse_unit(UNIT), parse_unit(TEMPLATE)
    for section in ("Service", "Install"):
        strip = per_instance if section == "Service" else set()
        assert {k: v for k, v in unit[section].items() if k not in strip} == {
            k: v for k, v in template[section].items() if k not in strip
        }
    assert {k: v for k, v in unit["Unit"].items() if k != "Description"} == {
        k: v for k, v in template["Unit"].items() if k != "Description"
    }


def test_plain_unit_default_config_matches_the_example_env_file() -> None:
    lines = [
        line.strip()
        for line in ENV_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";"))
    ]
    # EnvironmentFile= is not a shell script: plain VAR=value only.
    for line in lines:
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=[^$`]*", line), line
    settings = dict(line.split("=", 1) for line in lines)
    unit_env = _environment(parse_unit(UNIT)["Service"])
    assert settings["TICKBUS_CONFIG"] == unit_env["TICKBUS_CONFIG"] == "/etc/tickbus/tickbus.toml"
    assert settings["TICKBUS_LOG_LEVEL"] == "info"


@pytest.mark.parametrize("path", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_who_may_do_what(path: Path) -> None:
    # The kernel moded the sockets itself (tap 0660, the rest 0600); the umask keeps every
    # other file group-readable at most, and the group may enter the runtime dir.
    service = parse_unit(path)["Service"]
    assert _one(service, "UMask") == "0027"
    assert _one(service, "RuntimeDirectoryMode") == "0750"
    assert (_one(service, "User"), _one(service, "Group")) == ("tickbus", "tickbus")


_ROOTED = re.compile(r"(?<![\w.:/])/(?:etc|run|var|opt|usr)/[^\s`'\")(|,;]*")


def _documented_paths() -> set[str]:
    """Every path the units and the env file define, for an instance named ``paper``."""
    unit, template = parse_unit(UNIT)["Service"], parse_unit(TEMPLATE)["Service"]
    paths = {INSTALLED_BINARY, "/usr/sbin/nologin", "/etc/tickbus", "/etc/systemd/system"}
    for service in (unit, template):
        binary, *args = _one(service, "ExecStart").split()
        paths |= {a.replace("%i", "paper") for a in args if a.startswith("/")}
        paths.add(_one(service, "EnvironmentFile").lstrip("-").replace("%i", "paper"))
        for kind, root in (("Runtime", "/run"), ("State", "/var/lib"), ("Cache", "/var/cache")):
            paths.add(f"{root}/{_one(service, f'{kind}Directory')}".replace("%i", "paper"))
    paths.add(_environment(unit)["TICKBUS_CONFIG"])
    for line in ENV_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            paths.add(line.split("=", 1)[1])
    return paths


def _check_paths(text: str, allowed: set[str], exact: set[str], where: str) -> None:
    for found in _ROOTED.findall(text.replace("NAME", "paper").replace("%i", "paper")):
        path = found.rstrip("/.:")
        ok = path in exact or any(path == a or path.startswith(a + "/") for a in allowed)
        assert ok, f"{where}: {found} is not a path the units or the env file define"


def test_every_path_in_the_readme_and_env_file_is_one_the_units_define() -> None:
    readme = README.read_text()
    venv = re.search(r"python3 -m venv (\S+)", readme)
    assert venv is not None, "the README no longer says where the venv goes"
    v = venv.group(1)
    venv_paths = {v, f"{v}/bin/pip", f"{v}/bin/tickbus"}
    # the symlink puts the venv's command where the unit's ExecStart= looks
    assert f"ln -s {v}/bin/tickbus {INSTALLED_BINARY}" in readme
    # the override example runs the very command the install step put in the venv
    override = re.findall(r"^ExecStart=(\S.*)$", readme, re.MULTILINE)
    unit_exec = _one(parse_unit(UNIT)["Service"], "ExecStart")
    assert override == [unit_exec.replace(INSTALLED_BINARY, f"{v}/bin/tickbus", 1)]
    allowed = _documented_paths() - {INSTALLED_BINARY, "/usr/sbin/nologin"}
    hidden = {"/run/user", "/var/tmp"}  # what ProtectHome=/PrivateTmp= hide (unit comments)
    exact = venv_paths | hidden | {INSTALLED_BINARY, "/usr/sbin/nologin"}
    _check_paths(readme, allowed, exact, "systemd/README.md")
    _check_paths(ENV_FILE.read_text(), allowed, exact, "systemd/tickbus.env")
    for unit in (UNIT, TEMPLATE):
        _check_paths(unit.read_text(), allowed, exact, unit.name)


# ---------------------------------------------------------------------------------------
# unit files: systemd-analyze
# ---------------------------------------------------------------------------------------

# Verify prints problems but does not always exit non-zero for them (an unknown key is
# "ignored"), so the output is checked as well as the exit code.
ALARMING = re.compile(
    r"unknown|ignoring|invalid|fail|not found|not executable|no such|deprecated|warning|error",
    re.IGNORECASE,
)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8"),
    )


def _verify_flags() -> list[str]:
    flags = ["--man=no"]  # no man pages to look up; Documentation= is not checked
    # Judge our unit only, not the distro's units it pulls in (flag added in systemd 250).
    if "--recursive-errors" in _analyze("--help").stdout:
        flags.append("--recursive-errors=no")
    return flags


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """Copies of both units whose ExecStart= binary exists (verify checks it)."""
    binary = shutil.which("tickbus")
    if binary is None:
        stub = tmp_path / "bin" / "tickbus"
        stub.parent.mkdir()
        stub.write_text(f"#!{sys.executable}\nraise SystemExit(0)\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        binary = str(stub)
    units = tmp_path / "units"
    units.mkdir()
    for source in (UNIT, TEMPLATE):
        text = source.read_text()
        assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
        (units / source.name).write_text(
            text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} ")
        )
    return units


def _problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    output = (result.stdout + result.stderr).splitlines()
    return [line for line in output if ALARMING.search(line) or "tickbus" in line]


# The template is verified through an instance: `tickbus@paper.service` has no file of its
# own, systemd finds tickbus@.service next to it.
UNIT_NAMES = ["tickbus.service", "tickbus@paper.service"]


@needs_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_verify(staged: Path, name: str) -> None:
    result = _analyze("verify", *_verify_flags(), str(staged / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _problems(result) == []


@needs_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_verify_would_catch_a_broken_unit(staged: Path, name: str) -> None:
    # Guards the test above: proves verify really loaded our file (for the template too).
    source = staged / ("tickbus@.service" if "@" in name else name)
    source.write_text(source.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    result = _analyze("verify", *_verify_flags(), str(staged / name))
    assert any("NoSuchKey" in line for line in _problems(result)), result.stderr


@needs_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_security_exposure_is_low(staged: Path, name: str) -> None:
    if "--offline" not in _analyze("--help").stdout:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    # Exposure is 1.4 ("OK") today; without the hardening block it is above 9.
    # --threshold= counts tenths: 25 means 2.5.
    result = _analyze("security", "--offline=yes", "--threshold=25", str(staged / name))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert level is not None, result.stdout[-2000:]
    assert float(level.group(1)) <= 2.5
