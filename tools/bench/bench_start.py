"""Start -> READY and SIGTERM -> exit of ``tickbus run CONFIG`` (not a test).

    python -m tickbus.tools.bench.bench_start [CONFIG] [--runs R]

Each run spawns the real command with a real ``$NOTIFY_SOCKET`` datagram socket, times the
arrival of READY=1, waits 0.5 s, sends SIGTERM and times the exit. Run it twice if the numba
cache may be cold: the first start then includes the one-time compile.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tickbus.tools.bench.bench_start")
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.toml"))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    ready, stop = [], []
    tmp = Path(tempfile.mkdtemp(prefix="tbs", dir="/tmp"))
    for i in range(args.runs):
        path = tmp / f"n{i}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(300)
        env = dict(os.environ, NOTIFY_SOCKET=str(path))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickbus.kernel.cli", "run", args.config],
            env=env, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready.append(time.monotonic() - t0)
            time.sleep(0.5)
            t1 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            stop.append(time.monotonic() - t1)
        finally:
            if proc.poll() is None:
                proc.kill()
            sock.close()
    print(f"config {args.config}, {args.runs} runs")
    print(f"start -> READY  median {statistics.median(ready):.3f} s  max {max(ready):.3f} s")
    print(f"SIGTERM -> exit median {statistics.median(stop):.3f} s  max {max(stop):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
