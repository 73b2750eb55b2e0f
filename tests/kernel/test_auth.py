"""Who may do what on the bus: CURVE on tcp endpoints (tickbus keys), socket file modes
(the tap for the group, the rest for the owner), and what a peer from outside the process
can cost the host (frame size, a subscriber that falls behind)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from test_bus import wait_for
from test_cli import free_port, run_cli, running_config, start_run, wait_ready

from conftest import tickbus_cmd, tickbus_env, write_config
from tickbus.kernel import auth
from tickbus.kernel.config import parse_config
from tickbus.kernel.errors import TickbusError
from tickbus.kernel.router import ConnectionWatch, Connector, Router, split_frame
from tickbus.schemas import Codec
from tickbus_testplugins.producer import make_msg

ORIGIN = b"\xfe\xfe\xfe\xfe"  # no lane of the host has it


def fill_frame(i: int, pad: int = 0) -> bytes:
    """A valid ``exec.fill`` wire frame; ``pad`` makes it bigger."""
    msg = make_msg("fill", i, time.time_ns())
    if pad:
        import msgspec

        msg = msgspec.structs.replace(msg, strategy_id="x" * pad)
    return b"exec.fill\x00" + ORIGIN + Codec().encode(msg)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A server key pair and one authorized client bundle (made as `tickbus keys` does)."""
    curve = tmp_path / "curve"
    auth.init_server(curve)
    return curve, auth.new_client(curve, "ops")


def stranger_bundle(curve: Path, tmp_path: Path) -> Path:
    """A client that knows the server's public key but was never authorized."""
    pair, bundle = tmp_path / "pair", tmp_path / "stranger"
    auth.init_server(pair)  # any key pair will do
    bundle.mkdir()
    shutil.copy(curve / "server.key", bundle / "server.key")
    shutil.copy(pair / "server.key_secret", bundle / "client.key_secret")
    return bundle


def client(zctx: zmq.Context, kind: int, endpoint: str, bundle: Path | None, **opts: Any):
    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    for opt, value in opts.items():
        sock.setsockopt(getattr(zmq, opt), value)
    if bundle is not None:
        auth.apply_client(sock, auth.load_client(bundle))
    sock.connect(endpoint)
    return sock


def drain(sock: zmq.Socket) -> None:
    while sock.poll(0):
        sock.recv()


def received(sock: zmq.Socket, within: float) -> int:
    end = time.monotonic() + within
    n = 0
    while time.monotonic() < end:
        if sock.poll(50):
            sock.recv()
            n += 1
    return n


# ------------------------------------------------------------------------- tickbus keys


def test_keys_command_creates_authorizes_lists_and_revokes(tmp_path: Path) -> None:
    d = tmp_path / "curve"
    out = run_cli(["keys", "--dir", str(d), "init"], None)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(d / "server.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    again = run_cli(["keys", "--dir", str(d), "init"], None)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "exists" in again.stderr  # a server key is never replaced by accident
    out = run_cli(["keys", "--dir", str(d), "client", "laptop"], None)
    assert out.returncode == 0, out.stderr
    bundle = d / "clients" / "laptop"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "client.key",
        "client.key_secret",
        "server.key",
    ]
    assert stat.S_IMODE(os.stat(bundle / "client.key_secret").st_mode) == 0o600
    client_key = auth.load_client(bundle)
    assert client_key.server_public == auth.load_server(d)[0]
    listing = run_cli(["keys", "--dir", str(d), "list"], None).stdout
    assert client_key.public.decode() in listing and "laptop" in listing
    # a key made elsewhere: only its public half is handed over
    other = tmp_path / "other"
    auth.init_server(other)
    out = run_cli(
        ["keys", "--dir", str(d), "authorize", str(other / "server.key"), "--name", "box"], None
    )
    assert out.returncode == 0, out.stderr
    secret = run_cli(
        ["keys", "--dir", str(d), "authorize", str(other / "server.key_secret"), "--name", "y"],
        None,
    )
    assert secret.returncode == 2 and "secret" in secret.stderr
    assert run_cli(["keys", "--dir", str(d), "revoke", "laptop"], None).returncode == 0
    assert not (d / "authorized" / "laptop.key").exists() and not bundle.exists()


# ------------------------------------------------------------------------- CURVE on tcp


def tcp_bus(curve: Path, **bus: Any) -> dict[str, Any]:
    ports = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("pub", "sub", "tap")}
    return {
        "bus": {
            "listen_pub": [ports["pub"]],
            "listen_sub": [ports["sub"]],
            "tap": ports["tap"],
            "listen_tap_pub": [],
            "curve_dir": str(curve),
            **bus,
        },
        "plugins": {
            "tb_producer": {"count": 0, "chunk": 5, "period_ms": 10},
            "tb_recorder": {"prefix": "exec."},
        },
    }


def test_a_tcp_bus_serves_and_accepts_only_authorized_clients(
    start_kernel, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    curve, bundle = keys
    raw = tcp_bus(curve)
    k = start_kernel(raw)
    rec = k.contexts["tb_recorder"].component
    sub_ep, pub_ep = raw["bus"]["listen_sub"][0], raw["bus"]["listen_pub"][0]
    stranger = stranger_bundle(curve, tmp_path)
    zctx = zmq.Context()
    try:
        subs = {
            name: client(zctx, zmq.SUB, sub_ep, b, SUBSCRIBE=b"md.")
            for name, b in (("plain", None), ("stranger", stranger), ("ops", bundle))
        }
        assert received(subs["ops"], 1.0) > 0
        assert received(subs["plain"], 0.2) == 0
        assert received(subs["stranger"], 0.2) == 0

        pubs = {
            name: client(zctx, zmq.PUB, pub_ep, b)
            for name, b in (("plain", None), ("stranger", stranger), ("ops", bundle))
        }
        base = {"plain": 1000, "stranger": 2000, "ops": 3000}
        end = time.monotonic() + 5
        while 3000 not in rec["ids"] and time.monotonic() < end:
            for name, pub in pubs.items():
                pub.send(fill_frame(base[name]))
            time.sleep(0.05)
        assert 3000 in rec["ids"], "the authorized publisher got nothing through"
        assert not {1000, 2000} & set(rec["ids"]), "an unauthenticated publisher got in"
        assert k.router is not None and k.router.auth_denied >= 2

        # a client authorized while the bus runs is admitted on its next connection
        late = auth.new_client(curve, "late")
        assert received(client(zctx, zmq.SUB, sub_ep, late, SUBSCRIBE=b"md."), 1.0) > 0
        # and a revoked one is not
        auth.revoke(curve, "ops")
        assert received(client(zctx, zmq.SUB, sub_ep, stranger, SUBSCRIBE=b"md."), 0.3) == 0
    finally:
        zctx.destroy(linger=0)


def test_sniff_reaches_a_tcp_tap_with_keys_only(
    start_kernel, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    curve, bundle = keys
    raw = tcp_bus(curve)
    start_kernel(raw)
    tap = raw["bus"]["tap"]
    args = ["sniff", "--endpoint", tap, "--topic", "md.", "--count", "2", "--timeout", "5"]
    ok = run_cli([*args, "--keys", str(bundle)], None)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 2
    no_keys = run_cli([*args, "--keys", str(tmp_path / "nowhere")], None)
    assert no_keys.returncode == 2 and no_keys.stderr.count("\n") == 1, no_keys.stderr
    assert "needs CURVE keys" in no_keys.stderr
    assert str(tmp_path / "nowhere" / "server.key") in no_keys.stderr  # names the missing file


def test_a_tcp_bind_without_keys_is_refused_in_one_line(
    plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path / "c.toml",
        f'[kernel]\nruntime_dir = "{rt}"\nstate_dir = "{tmp_path}"\n'
        f'[bus]\nlisten_pub = ["tcp://0.0.0.0:{port}"]\n'
        "plain_loopback = true\n",  # never covers a non-loopback address
    )
    out = run_cli(["run", str(cfg)], plugin_site)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"bus.listen_pub: tcp://0.0.0.0:{port} needs CURVE keys" in out.stderr
    assert str(tmp_path / "curve" / "server.key_secret") in out.stderr


def test_loopback_tcp_needs_keys_unless_plain_loopback_is_set(rt: Path, tmp_path: Path) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    raw: dict[str, Any] = {
        "kernel": {"runtime_dir": str(rt), "state_dir": str(tmp_path)},
        "bus": {"tap": "", "listen_pub": [ep], "listen_sub": [], "listen_tap_pub": []},
    }
    zctx = zmq.Context()
    try:
        with pytest.raises(TickbusError, match="bus.plain_loopback = true"):
            Router.from_config(zctx, parse_config(raw, "t.toml"))
        raw["bus"]["plain_loopback"] = True
        Router.from_config(zctx, parse_config(raw, "t.toml")).close()
    finally:
        zctx.term()


def test_a_secret_key_others_can_read_is_refused(keys: tuple[Path, Path]) -> None:
    curve, _ = keys
    (curve / "server.key_secret").chmod(0o640)
    with pytest.raises(TickbusError, match="readable by group or others.*chmod 600"):
        auth.load_server(curve)


def test_joining_over_tcp_needs_client_keys(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, bundle = keys
    ep = "tcp://10.1.2.3:5555"
    raw = {"kernel": {"state_dir": str(tmp_path / "s")}, "bus": {"join_pub": ep, "join_sub": ep}}
    with pytest.raises(TickbusError, match=r"bus.join_pub: tcp://10.1.2.3:5555 needs CURVE keys"):
        Connector.from_config(parse_config(raw, "t.toml"))
    raw["bus"]["curve_dir"] = str(bundle)
    assert Connector.from_config(parse_config(raw, "t.toml")).curve is not None


def test_a_remote_lane_joins_a_tcp_bus_with_curve(
    plugin_site: Path, tmp_path: Path, rt: Path, keys: tuple[Path, Path]
) -> None:
    curve, bundle = keys
    pub, sub = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    host = start_run(
        running_config(
            tmp_path,
            rt,
            f'[bus]\ncurve_dir = "{curve}"\nlisten_pub = ["{pub}"]\nlisten_sub = ["{sub}"]',
            slow_us=0,
        ),
        plugin_site,
    )
    remote_cfg = write_config(
        tmp_path / "remote.toml",
        f"""
[kernel]
name = "remote"
[bus]
curve_dir = "{bundle}"
join_pub = "{pub}"
join_sub = "{sub}"
[plugins.tb_recorder]
prefix = "md.trade"
out = "{tmp_path / "remote.json"}"
""",
    )
    try:
        wait_ready(rt, host)
        remote = start_run(remote_cfg, plugin_site)
        time.sleep(2.0)
        remote.send_signal(signal.SIGTERM)
        assert remote.wait(10) == 0, remote.stderr.read() if remote.stderr else ""
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(10)
    assert len(json.loads((tmp_path / "remote.json").read_text())["ids"]) > 100


# ------------------------------------------------------------------------- socket modes


def test_a_tap_connection_cannot_publish_into_the_bus(start_kernel, rt: Path) -> None:
    k = start_kernel({"plugins": {"tb_recorder": {"prefix": "exec."}}})
    rec = k.contexts["tb_recorder"].component
    zctx = zmq.Context()
    try:
        # the most a tap peer can do: an XSUB sends whatever frames it likes
        forger = client(zctx, zmq.XSUB, f"ipc://{rt}/tap", None)
        forger.send(b"\x01exec.")
        for i in range(20):
            forger.send(fill_frame(500 + i))
            time.sleep(0.01)
        time.sleep(0.3)
        assert rec["ids"] == [], "a frame sent on the tap reached the bus"
        # control: the same frames on bus-pub do arrive
        pub = client(zctx, zmq.PUB, f"ipc://{rt}/bus-pub", None)
        wait_for(lambda: pub.send(fill_frame(7)) or 7 in rec["ids"], 5)
    finally:
        zctx.destroy(linger=0)


CONNECT = "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('ok')"


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as other users (needs root)")
def test_the_group_may_connect_to_the_tap_only(plugin_site: Path, tmp_path: Path) -> None:
    """Real permission checks by the kernel: a member of the socket files' group (the
    operators of the systemd unit) can connect to the tap and to nothing else; anyone else
    cannot even reach the directory. The host runs with a permissive umask (0007, as the
    shipped unit used to): the modes must not depend on it."""
    system_python = "/usr/bin/python3"  # readable by other users, unlike a venv under /root
    if not os.access(system_python, os.X_OK):
        pytest.skip("no system python for the other users")
    rt = Path(f"/tmp/tbperm{os.getpid()}")
    rt.mkdir(mode=0o750)
    rt.chmod(0o750)
    gid = os.stat(rt).st_gid
    cfg = running_config(tmp_path, rt)
    host = subprocess.Popen(
        tickbus_cmd("run", str(cfg)),
        env=tickbus_env(plugin_site),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o007),
    )

    def connect(name: str, groups: list[int]) -> str:
        out = subprocess.run(
            [system_python, "-c", CONNECT, str(rt / name)],
            user=65534,
            group=65534,
            extra_groups=groups,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        )
        return "ok" if out.stdout.strip() == "ok" else out.stderr.strip().splitlines()[-1]

    try:
        wait_ready(rt, host)
        assert connect("tap", [gid]) == "ok"
        for name in ("bus-pub", "bus-sub", "tap-pub"):
            assert "PermissionError" in connect(name, [gid]), name
        assert "PermissionError" in connect("tap", [])  # not in the group
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(10)
        shutil.rmtree(rt, ignore_errors=True)


# ------------------------------------------------------------------------- limits


def test_a_frame_above_max_msg_bytes_from_outside_is_refused(start_kernel, rt: Path) -> None:
    k = start_kernel(
        {"bus": {"max_msg_bytes": 4096}, "plugins": {"tb_recorder": {"prefix": "exec."}}}
    )
    rec = k.contexts["tb_recorder"].component
    zctx = zmq.Context()
    try:
        pub = client(zctx, zmq.PUB, f"ipc://{rt}/bus-pub", None)
        wait_for(lambda: pub.send(fill_frame(1)) or 1 in rec["ids"], 5)
        pub.send(fill_frame(2, pad=8000))  # the host drops the connection instead
        wait_for(lambda: pub.send(fill_frame(3)) or 3 in rec["ids"], 10)  # reconnected
        assert 2 not in rec["ids"]
    finally:
        zctx.destroy(linger=0)


def test_a_remote_subscriber_that_falls_behind_is_cut_off_loudly_lanes_stay_lossless(
    start_kernel, rt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tickbus.router")
    k = start_kernel(
        {
            "bus": {"sub_hwm": 100, "sub_timeout_s": 0.3},
            "lanes": {"hot": {}, "cold": {}},
            "plugins": {
                "tb_producer": {"lane": "hot", "count": 0, "chunk": 50, "period_ms": 1},
                "tb_recorder": {"lane": "cold", "prefix": "md.trade"},
            },
        }
    )
    zctx = zmq.Context()
    lost: list[str] = []
    watch = ConnectionWatch(zctx, lost.append)
    try:
        slow = zctx.socket(zmq.SUB)
        slow.setsockopt(zmq.LINGER, 0)
        slow.setsockopt(zmq.RCVHWM, 10)
        slow.setsockopt(zmq.RCVBUF, 4096)
        watch.watch(slow, "test subscriber")
        slow.connect(f"ipc://{rt}/bus-sub")
        slow.subscribe(b"md.trade")
        assert slow.poll(5000), "the remote subscriber got nothing at all"
        # ...and now it reads nothing more
        assert k.router is not None
        wait_for(lambda: k.router.remote_disconnects >= 1, 10)
        assert "disconnecting every subscriber" in caplog.text
        # catching up, the subscriber reaches the end of the connection: it knows
        wait_for(lambda: drain(slow) or lost, 10)
        assert "test subscriber: lost the connection" in lost[0]
        # the endpoint listens again, owner-only as before
        assert stat.S_IMODE(os.lstat(rt / "bus-sub").st_mode) == 0o600
        fresh = client(zctx, zmq.SUB, f"ipc://{rt}/bus-sub", None, SUBSCRIBE=b"md.trade")
        assert received(fresh, 1.0) > 0
    finally:
        watch.close()
        zctx.destroy(linger=0)
    prod = k.contexts["tb_producer"].component
    rec = k.contexts["tb_recorder"].component
    assert k.stop()
    assert rec["ids"] == list(range(prod["sent"])), "a local lane lost messages"


def test_connection_watch_reports_a_lost_peer_not_its_own_close(tmp_path: Path) -> None:
    zctx = zmq.Context()
    lost: list[str] = []
    watch = ConnectionWatch(zctx, lost.append)
    ep = f"ipc://{tmp_path}/s"
    try:
        host = client(zctx, zmq.XPUB, "inproc://unused", None)
        host.bind(ep)
        mine, theirs = (zctx.socket(zmq.SUB) for _ in range(2))
        for name, sock in (("mine", mine), ("theirs", theirs)):
            watch.watch(sock, name)
            sock.connect(ep)
            sock.subscribe(b"")
        assert host.poll(5000), "no subscriber connected"
        time.sleep(0.3)  # both handshakes done
        mine.close(0)
        time.sleep(0.3)
        assert lost == [], "closing our own socket is not a loss"
        host.close(0)
        wait_for(lambda: lost, 5)
        assert lost == [f"theirs: lost the connection to {ep} (messages may have been lost)"]
    finally:
        watch.close()
        zctx.destroy(linger=0)


def test_a_bounded_subscriber_that_keeps_up_is_never_cut_off(start_kernel, rt: Path) -> None:
    k = start_kernel(
        {
            "bus": {"sub_hwm": 1000, "sub_timeout_s": 0.5},
            # paced (~2 s), so the subscriber below joins while it runs
            "plugins": {"tb_producer": {"count": 20_000, "chunk": 500, "period_ms": 50}},
        }
    )
    zctx = zmq.Context()
    try:
        sub = client(zctx, zmq.SUB, f"ipc://{rt}/bus-sub", None, SUBSCRIBE=b"md.trade")
        ids = []
        codec = Codec()
        while sub.poll(1000):
            ids.append(codec.decode(split_frame(sub.recv())[2]).trade_id)
        assert k.router is not None and k.router.remote_disconnects == 0
        assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[-1] == 19_999
    finally:
        zctx.destroy(linger=0)


def test_socket_options_refuse_unknown_schemes_and_abstract_sockets() -> None:
    for bad in ("ws://x:1", "ipc://@abstract", "tcp://nohostport"):
        with pytest.raises(TickbusError, match="bus.listen_pub"):
            parse_config({"bus": {"listen_pub": [bad]}})
    parse_config({"bus": {"join_pub": "tcp://h:1", "join_sub": "ipc:///x"}})
