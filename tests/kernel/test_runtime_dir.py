"""One owner per runtime dir: a lock naming the holder, a private directory, socket files
bound with their final mode and removed only by the process that created them."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from test_cli import run_cli, start_run, wait_ready

from conftest import write_config
from tickbus.kernel import runtime
from tickbus.kernel.config import parse_config, resolve_runtime_dir
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.router import Router


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def producer_config(path: Path, body: str) -> Path:
    producer = "[plugins.tb_producer]\ncount = 0\nperiod_ms = 20\nchunk = 1\n"
    return write_config(path, f"{body}\n{producer}")


def test_a_second_run_on_the_same_runtime_dir_is_refused_and_the_first_keeps_its_sockets(
    plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    cfg = producer_config(tmp_path / "a.toml", f'[kernel]\nruntime_dir = "{rt}"')
    first = start_run(cfg, plugin_site)
    try:
        wait_ready(rt, first)
        tap_before = runtime.file_id(str(rt / "tap"))
        second = run_cli(["run", str(cfg)], plugin_site)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"runtime dir {rt} is in use by pid {first.pid}" in second.stderr
        assert str(cfg) in second.stderr  # names the holder's config
        # the first run still owns and serves its sockets
        assert runtime.file_id(str(rt / "tap")) == tap_before
        out = run_cli(
            ["sniff", "--endpoint", f"ipc://{rt}/tap", "--topic", "md.", "--count", "2"], None
        )
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr
    finally:
        assert _stop(first) == 0
    assert not (rt / "tap").exists()
    # released at exit: the next run may take the directory
    again = start_run(cfg, plugin_site)
    try:
        wait_ready(rt, again)
    finally:
        assert _stop(again) == 0


@pytest.fixture
def xdg(tmp_path: Path) -> Iterator[Path]:
    """A short private $XDG_RUNTIME_DIR (ipc paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xdg", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_configs_with_different_names_run_side_by_side_and_sniff_finds_each(
    plugin_site: Path, tmp_path: Path, xdg: Path
) -> None:
    env = {"XDG_RUNTIME_DIR": str(xdg)}
    procs = {}
    try:
        for name in ("alpha", "beta"):
            cfg = producer_config(tmp_path / f"{name}.toml", f'[kernel]\nname = "{name}"')
            procs[name] = (cfg, start_run(cfg, plugin_site, **env))
        for name, (cfg, proc) in procs.items():
            wait_ready(xdg / "tickbus" / name, proc)
            assert stat.S_IMODE(os.stat(xdg / "tickbus" / name).st_mode) == 0o700
            out = run_cli(
                ["sniff", "--config", str(cfg), "--topic", "sys.heartbeat", "--count", "1"],
                None,
                **env,
            )
            assert out.returncode == 0, out.stderr
            assert f"process={name} " in out.stdout
    finally:
        for _, proc in procs.values():
            assert _stop(proc) == 0


def test_default_runtime_dir_is_per_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_runtime_dir("", "paper") == Path(f"/tmp/tickbus-{os.getuid()}/paper")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert resolve_runtime_dir("", "paper") == Path("/run/user/7/tickbus/paper")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/tickbus/paper")  # systemd: one per unit
    assert resolve_runtime_dir("", "x") == Path("/run/tickbus/paper")
    assert parse_config({"kernel": {"name": "paper"}}).runtime_dir == Path("/run/tickbus/paper")


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x" * 65])
def test_a_name_that_cannot_be_a_directory_is_refused(name: str) -> None:
    with pytest.raises(TickbusError, match="kernel.name"):
        parse_config({"kernel": {"name": name}})


# ----------------------------------------------------------------- the directory itself


def _router(rt: Path, **kernel: object) -> Router:
    cfg = parse_config(
        {
            "kernel": {"runtime_dir": str(rt), **kernel},
            "bus": {"listen_tap_pub": [], "listen_pub": [], "listen_sub": []},
        },
        "t.toml",
    )
    return Router.from_config(zmq.Context.instance(), cfg)


def test_the_runtime_dir_is_created_0700_with_its_missing_parents(rt: Path) -> None:
    target = rt / "base" / "name"
    _router(target).close()
    for d in (rt / "base", target):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_a_dir_owned_by_another_user_is_refused(rt: Path) -> None:
    if os.geteuid() == 0:
        other = rt / "theirs"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
    else:
        other = Path("/")  # root's
    with pytest.raises(TickbusError, match=r"belongs to uid \d+, not to this user"):
        _router(other)


@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_a_dir_writable_by_group_or_others_is_refused_unless_checks_are_off(
    rt: Path, mode: int
) -> None:
    shared = rt / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(TickbusError, match="writable by group or others"):
        _router(shared)
    assert not (shared / "tap").exists() and not (shared / "lock").exists()
    _router(shared, check_runtime_dir=False).close()  # configured on purpose


def test_a_dir_below_a_directory_others_may_write_is_refused(rt: Path) -> None:
    # The /tmp fallback's trap: someone else pre-creates /tmp/tickbus-<uid> (0777, no sticky
    # bit) and can then rename our directory away and put theirs in its place.
    base = rt / "tickbus-base"
    base.mkdir()
    base.chmod(0o777)
    with pytest.raises(TickbusError, match="above it is writable by group or others"):
        _router(base / "tickbus")


def test_a_symlink_is_not_a_runtime_dir(rt: Path) -> None:
    (rt / "real").mkdir(mode=0o700)
    (rt / "link").symlink_to(rt / "real")
    with pytest.raises(TickbusError, match="is a symlink"):
        _router(rt / "link")


# ----------------------------------------------------------------- lock and socket files


def test_the_lock_names_its_holder_and_is_released_on_close(rt: Path) -> None:
    router = _router(rt)
    holder = json.loads((rt / "lock").read_text())
    assert holder["pid"] == os.getpid() and holder["name"] == "tickbus"
    with pytest.raises(TickbusError, match=rf"in use by pid {os.getpid()} \(tickbus 'tickbus'"):
        _router(rt)
    assert (rt / "tap").exists(), "the refused router must not have touched the sockets"
    router.close()
    assert (rt / "lock").read_text() == ""
    _router(rt).close()


def test_socket_files_get_their_final_mode_and_only_ours_are_removed(rt: Path) -> None:
    cfg = parse_config({"kernel": {"runtime_dir": str(rt)}}, "t.toml")
    router = Router.from_config(zmq.Context.instance(), cfg)
    try:
        modes = {n: stat.S_IMODE(os.lstat(rt / n).st_mode) for n in ("tap", "bus-pub")}
        modes |= {n: stat.S_IMODE(os.lstat(rt / n).st_mode) for n in ("bus-sub", "tap-pub")}
        assert modes == {"tap": 0o660, "bus-pub": 0o600, "bus-sub": 0o600, "tap-pub": 0o600}
        assert not [p.name for p in rt.iterdir() if p.name.startswith(".")], "temporary names"
        # someone replaced bus-pub meanwhile: it is not ours to delete
        (rt / "bus-pub").unlink()
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(str(rt / "bus-pub"))
            router.close()
            assert (rt / "bus-pub").exists()
            assert not (rt / "tap").exists() and not (rt / "bus-sub").exists()
    finally:
        router.close()


def test_a_live_socket_outside_the_runtime_dir_is_not_taken_over_a_stale_one_is(
    rt: Path, tmp_path: Path
) -> None:
    sockets = Path(tempfile.mkdtemp(prefix="tbs", dir="/tmp"))
    try:
        path = sockets / "pub"
        ctx = zmq.Context.instance()
        raw = {
            "kernel": {"runtime_dir": str(rt)},
            "bus": {"listen_pub": [f"ipc://{path}"], "listen_sub": [], "listen_tap_pub": []},
        }
        cfg = parse_config(raw, "t.toml")
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(str(path))
            live.listen()
            with pytest.raises(TickbusError, match="another process is listening there"):
                Router.from_config(ctx, cfg)
            assert runtime.listener_at(str(path))
        assert path.exists() and not runtime.listener_at(str(path))  # stale now
        Router.from_config(ctx, cfg).close()
        assert not path.exists()
    finally:
        import shutil

        shutil.rmtree(sockets, ignore_errors=True)


def test_a_process_without_ipc_endpoints_takes_no_lock(rt: Path) -> None:
    raw = {
        "kernel": {"runtime_dir": str(rt)},
        "bus": {"tap": "", "listen_pub": [], "listen_sub": [], "listen_tap_pub": []},
    }
    contexts = [zmq.Context(), zmq.Context()]  # as two processes: inproc names are per context
    a = Router.from_config(contexts[0], parse_config(raw, "a.toml"))
    b = Router.from_config(contexts[1], parse_config(raw, "b.toml"))  # backtests side by side
    a.close()
    b.close()
    for c in contexts:
        c.term()
    assert not (rt / "lock").exists()
