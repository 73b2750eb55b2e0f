"""The real ``tickbus`` command in a second process: plugins from an installed package,
clean stop on SIGTERM, one-line errors for every user mistake, systemd notifications."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import tickbus_cmd, tickbus_env, write_config


def run_cli(args: list[str], site: Path | None, timeout: float = 30, **env: str):
    return subprocess.run(
        tickbus_cmd(*args), env=tickbus_env(site, **env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_help() -> None:
    out = run_cli(["--help"], None)
    assert out.returncode == 0
    for cmd in ("run", "sniff", "plugins"):
        assert cmd in out.stdout


def test_installed_plugin_is_discovered(plugin_site: Path, tmp_path: Path, rt: Path) -> None:
    cfg = write_config(
        tmp_path / "c.toml",
        f"""
[kernel]
runtime_dir = "{rt}"
[plugins.tb_producer]
count = 10
[plugins.tb_boom]
enabled = false
""",
    )
    out = run_cli(["plugins", "--config", str(cfg)], plugin_site)
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()[1:]}
    assert "tickbus-testplugins 0.1.0" in lines["tb_producer"]
    assert "tickbus_testplugins.producer" in lines["tb_producer"]
    assert "tb_producer (lane main)" in lines["tb_producer"]
    assert "(disabled)" in lines["tb_boom"]
    assert lines["tb_recorder"].rstrip().endswith("-")
    assert "tb_producer" not in run_cli(["plugins"], None).stdout  # not installed there


def test_entry_point_plugins_run_across_lanes_and_stop_when_asked(
    plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    n = 5000
    cfg = write_config(
        tmp_path / "c.toml",
        f"""
[kernel]
runtime_dir = "{rt}"
[lanes.hot]
[lanes.cold]
[plugins.tb_recorder]
lane = "cold"
prefix = "md.trade"
out = "{tmp_path / "rec.json"}"
[plugins.tb_producer]
lane = "hot"
count = {n}
chunk = 100
shutdown_when_done = true
[plugins.tb_boom]
enabled = false
""",
    )
    out = run_cli(["run", str(cfg)], plugin_site)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["ids"] == list(range(n))
    assert rec["types"] == ["Trade"]


def test_enabling_the_import_bomb_loads_it(plugin_site: Path, tmp_path: Path, rt: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", f'[kernel]\nruntime_dir = "{rt}"\n[plugins.tb_boom]\n')
    out = run_cli(["run", str(cfg)], plugin_site)
    assert out.returncode == 2
    assert "plugin 'tb_boom'" in out.stderr and "tb_boom was imported" in out.stderr
    assert "Traceback" not in out.stderr


BAD_CONFIGS = {
    "unknown plugin": ("[plugins.nope]\n", "plugins.nope: unknown plugin 'nope'"),
    "mistyped key": ("[kernel]\nheartbeat = 1\n", "kernel.heartbeat: unknown key"),
    "missing key": ("[plugins.tb_recorder]\n", "plugins.tb_recorder.prefix: missing required key"),
    "wrong type": (
        '[plugins.tb_producer]\ncount = "many"\n',
        "plugins.tb_producer.count: expected `int`, got `str`",
    ),
    "plugin key typo": (
        "[plugins.tb_producer]\ncuont = 3\n",
        "plugins.tb_producer.cuont: unknown key",
    ),
    "no such lane": (
        '[lanes.hot]\n[plugins.tb_producer]\nlane = "fast"\n',
        "plugins.tb_producer.lane: lane 'fast' does not exist (lanes: hot)",
    ),
    "unknown section": ("[plugin.x]\n", "plugin: unknown section"),
    "not toml": ("[kernel\n", "not valid TOML"),
    "bad after": (
        '[plugins.tb_producer]\nafter = ["ghost"]\n',
        "plugins.tb_producer.after: no plugin instance named 'ghost'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_config_errors_are_one_line(case: str, plugin_site: Path, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    cfg = write_config(tmp_path / "bad.toml", text)
    out = run_cli(["run", str(cfg)], plugin_site)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"tickbus: error: {cfg}: ")
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    out = run_cli(["run", str(tmp_path / "nope.toml")], None)
    assert out.returncode == 2
    assert out.stderr.strip() == f"tickbus: error: {tmp_path / 'nope.toml'}: no such config file"


def test_an_invalid_log_level_is_one_line(tmp_path: Path, rt: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", f'[kernel]\nruntime_dir = "{rt}"\n')
    out = run_cli(["run", str(cfg)], None, TICKBUS_LOG_LEVEL="verbose")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("tickbus: error: TICKBUS_LOG_LEVEL: 'verbose'")
    assert not (rt / "tap").exists(), "nothing may start on a bad setting"


def test_bad_endpoints_are_one_line(tmp_path: Path) -> None:
    for text, key in (
        ('[bus]\nlisten_pub = ["ipc://@bus"]\n', "bus.listen_pub[0]"),
        ('[bus]\ntap = "udp://x:1"\n', "bus.tap"),
        ('[kernel]\nname = "../x"\n', "kernel.name"),
    ):
        cfg = write_config(tmp_path / "c.toml", text)
        out = run_cli(["run", str(cfg)], None)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"tickbus: error: {cfg}: {key}: "), out.stderr


def test_endpoint_in_use_is_one_line(plugin_site: Path, tmp_path: Path, rt: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cfg = write_config(
        tmp_path / "c.toml",
        f'[kernel]\nruntime_dir = "{rt}"\n[bus]\nplain_loopback = true\n'
        f'listen_pub = ["tcp://127.0.0.1:{port}"]\n',
    )
    out = run_cli(["run", str(cfg)], plugin_site)
    busy.close()
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert (
        f"cannot bind bus.listen_pub tcp://127.0.0.1:{port}: Address already in use" in out.stderr
    )


def test_ipc_path_too_long_is_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", f'[kernel]\nruntime_dir = "/tmp/{"x" * 120}"\n')
    out = run_cli(["run", str(cfg)], None)
    assert out.returncode == 2
    assert "ipc path is longer than 107 bytes" in out.stderr
    assert out.stderr.count("\n") == 1


def start_run(cfg: Path, site: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tickbus_cmd("run", str(cfg)), env=tickbus_env(site, **env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def running_config(
    tmp_path: Path, rt: Path, extra: str = "", *, slow_us: int = 5, kernel: str = ""
) -> Path:
    return write_config(
        tmp_path / "c.toml",
        f"""
[kernel]
runtime_dir = "{rt}"
heartbeat_s = 0.05
{kernel}
[lanes.hot]
[lanes.cold]
[plugins.tb_recorder]
lane = "cold"
prefix = "md.trade"
slow_us = {slow_us}
out = "{tmp_path / "rec.json"}"
[plugins.tb_producer]
lane = "hot"
count = 0
chunk = 200
period_ms = 1
out = "{tmp_path / "prod.json"}"
{extra}
""",
    )


def wait_ready(rt: Path, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not (rt / "tap").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < end, "tickbus did not come up"
        time.sleep(0.02)


def test_sigterm_drains_every_lane_within_a_second(
    plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    proc = start_run(running_config(tmp_path, rt), plugin_site)
    wait_ready(rt, proc)
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(10)
    took = time.monotonic() - t0
    assert rc == 0, proc.stderr.read() if proc.stderr else ""
    sent = json.loads((tmp_path / "prod.json").read_text())["sent"]
    ids = json.loads((tmp_path / "rec.json").read_text())["ids"]
    assert sent > 1000
    assert ids == list(range(sent)), "a message published before SIGTERM was not delivered"
    assert took < 1.5, f"SIGTERM to exit took {took:.2f} s"
    assert not (rt / "tap").exists(), "ipc socket files must be removed"


def test_systemd_notifications(plugin_site: Path, tmp_path: Path, rt: Path) -> None:
    addr = str(rt / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(addr)
    sd.settimeout(10)
    proc = start_run(
        running_config(tmp_path, rt), plugin_site, NOTIFY_SOCKET=addr, WATCHDOG_USEC="200000"
    )
    try:
        got: list[str] = []
        while not any("READY=1" in g for g in got):
            got.append(sd.recv(4096).decode())
        t_ready = time.monotonic()
        while sum("WATCHDOG=1" in g for g in got) < 3:
            got.append(sd.recv(4096).decode())
        assert time.monotonic() - t_ready < 2, "watchdog pings must come every 0.1 s"
        proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in g for g in got):
            got.append(sd.recv(4096).decode())
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        sd.close()
    first_ready = next(i for i, g in enumerate(got) if "READY=1" in g)
    assert not any("WATCHDOG=1" in g for g in got[:first_ready])
    assert "STOPPING=1" in got[-1]


def test_sniffer_sees_messages_by_topic_prefix(plugin_site: Path, tmp_path: Path, rt: Path) -> None:
    proc = start_run(running_config(tmp_path, rt), plugin_site)
    try:
        wait_ready(rt, proc)
        ep = f"ipc://{rt}/tap"
        out = run_cli(
            ["sniff", "--endpoint", ep, "--topic", "md.trade", "--json", "--count", "20"], None
        )
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(rows) == 20
        assert {r["topic"] for r in rows} == {"md.trade.BTCUSDT"}
        assert {r["type"] for r in rows} == {"Trade"}
        ids = [r["trade_id"] for r in rows]
        assert ids == list(range(ids[0], ids[0] + 20)), "sniffed messages out of order"
        assert rows[0]["px"] == 67_000 * 10**8 + ids[0] and rows[0]["symbol"] == "BTCUSDT"

        hb = run_cli(["sniff", "--endpoint", ep, "--topic", "sys.", "--count", "2"], None)
        assert hb.returncode == 0
        assert all(
            ln.startswith("sys.heartbeat Heartbeat process=tickbus")
            for ln in hb.stdout.splitlines()
        )

        none = run_cli(
            ["sniff", "--endpoint", ep, "--topic", "exec.", "ord.", "--timeout", "0.5"], None
        )
        assert none.returncode == 1 and none.stdout == ""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_plugin_in_another_process_joins_the_bus(
    transport: str, plugin_site: Path, tmp_path: Path, rt: Path
) -> None:
    if transport == "ipc":
        pub, sub, tap = (f"ipc://{rt}/{n}" for n in ("bus-pub", "bus-sub", "tap-pub"))
        listen = ""
    else:
        pub, sub, tap = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
        listen = (
            f'[bus]\nplain_loopback = true\nlisten_pub = ["{pub}"]\nlisten_sub = ["{sub}"]\n'
            f'listen_tap_pub = ["{tap}"]'
        )
    fills = tmp_path / "fills.json"
    extra = f"""
[plugins.fills]
plugin = "tb_recorder"
lane = "cold"
prefix = "exec."
out = "{fills}"
{listen}
"""
    # the host's own recorder keeps up (slow_us=0): it must still get every md.trade after
    # the remote subscriber of md.trade left
    host_cfg = running_config(tmp_path, rt, extra, slow_us=0, kernel="stop_timeout_s = 3.0")
    host = start_run(host_cfg, plugin_site)
    procs = [host]
    try:
        wait_ready(rt, host)
        remote_dir = tmp_path / "remote"
        remote_dir.mkdir()
        cfg = write_config(
            remote_dir / "remote.toml",
            f"""
[kernel]
name = "remote"
runtime_dir = "{rt}/r"
[bus]
plain_loopback = true
join_pub = "{pub}"
join_sub = "{sub}"
join_tap = "{tap}"
[plugins.tb_recorder]
prefix = "md.trade"
out = "{remote_dir / "rec.json"}"
[plugins.tb_producer]
kind = "fill"
topic = "exec.fill"
count = 0
chunk = 20
period_ms = 2
""",
        )
        remote = start_run(cfg, plugin_site)
        procs.append(remote)
        sniff = run_cli(
            [
                "sniff",
                "--endpoint",
                f"ipc://{rt}/tap",
                "--topic",
                "exec.",
                "--json",
                "--count",
                "3",
            ],
            None,
        )
        assert sniff.returncode == 0, sniff.stderr
        assert {json.loads(line)["type"] for line in sniff.stdout.splitlines()} == {"Fill"}
        time.sleep(1.0)
        remote.send_signal(signal.SIGTERM)
        assert remote.wait(10) == 0, remote.stderr.read() if remote.stderr else ""
    finally:
        for proc in procs:  # never leave a process behind, whatever failed
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert host.returncode == 0, host.stderr.read() if host.stderr else ""
    sent = json.loads((tmp_path / "prod.json").read_text())["sent"]
    local = json.loads((tmp_path / "rec.json").read_text())["ids"]
    # the remote subscriber of md.trade left first: the host's own lanes must not lose it
    assert local == list(range(sent)), "a remote subscriber leaving cut off a local lane"
    ids = json.loads((remote_dir / "rec.json").read_text())["ids"]
    assert len(ids) > 500
    assert ids == list(range(ids[0], ids[0] + len(ids))), "remote subscriber missed messages"
    got = json.loads(fills.read_text())["ids"]
    assert len(got) > 300
    # the remote lane learnt the host's subscriptions before it started: not even the first is lost
    assert got == list(range(len(got))), "the host missed remote fills"
