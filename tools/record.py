"""``tickbus record``: record raw Binance market-data frames to a capture file.

Writes the hftbacktest line format that ``replay_feed`` and ``exchange-sim`` read (gzip,
``<local receive ns> <raw json>`` per line): every WebSocket frame exactly as received, and
one REST depth snapshot per symbol after its first depth event (again after every reconnect,
since events may have been missed). A REST body does not say which symbol it is for, so the
recorder adds a leading ``"symbol"`` key to it (as Binance's own COIN-M bodies have) - the
only byte it changes. Stops after ``--duration`` seconds or on Ctrl-C/SIGTERM, and always
closes the file so the gzip stream is complete.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tickbus.plugins.binance.capture import CaptureWriter, check_symbols
from tickbus.plugins.binance.feed import (
    DEFAULT_URLS,
    backoff_delay,
    handshake_rejection,
    http_get,
    is_permanent,
    stream_url,
)


def build_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``record`` arguments to ``p``."""
    p.add_argument("--symbols", nargs="+", required=True, help="e.g. BTCUSDT ETHUSDT")
    p.add_argument("--out", required=True, help="capture file to write (gzip)")
    p.add_argument("--market", choices=sorted(DEFAULT_URLS), default="spot")
    p.add_argument("--ws-url", default="", help="WebSocket base URL (default: Binance's)")
    p.add_argument("--rest-url", default="", help="REST base URL (default: Binance's)")
    p.add_argument("--depth-interval", default="100ms")
    p.add_argument("--limit", type=int, default=1000, help="REST snapshot depth")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (default: until Ctrl-C)")


class Recorder:
    """One combined stream into one file, snapshots fetched as needed."""

    def __init__(self, args: argparse.Namespace) -> None:
        ws_default, rest_default, self.depth_path = DEFAULT_URLS[args.market]
        self.args = args
        self.symbols = check_symbols(args.symbols, "--symbols")
        self.url = stream_url(
            args.ws_url or ws_default, self.symbols, args.depth_interval, True, True
        )
        self.rest = (args.rest_url or rest_default).rstrip("/")
        self.writer = CaptureWriter(args.out)
        self.frames = 0
        self.snapshots = 0
        self.error = ""
        """Why the recording stopped on its own (the server refused the stream for good)."""
        self._need: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                async with connect(self.url, compression=None, max_size=None, proxy=None) as ws:
                    attempt = 0
                    self._need = set(self.symbols)  # a (re)connect: fresh snapshots
                    reader = asyncio.ensure_future(self._read(ws))
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    if not reader.done():
                        reader.cancel()
                    elif reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
            except InvalidStatus as err:
                status, text, _ = handshake_rejection(err)
                if is_permanent(status):  # an unknown stream, a bad URL: retrying cannot help
                    self.error = f"{self.url} rejected the WebSocket handshake: {text}"
                    break
                print(f"tickbus record: handshake rejected: {text}; reconnecting", file=sys.stderr)
            except (OSError, TimeoutError, websockets.WebSocketException) as err:
                print(f"tickbus record: {err or type(err).__name__}; reconnecting", file=sys.stderr)
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), backoff_delay(attempt, 0.5, 30.0))
            except TimeoutError:
                pass
            attempt += 1
        for task in list(self._tasks):
            task.cancel()

    async def _read(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        async for frame in ws:
            ts = time.time_ns()
            data = frame if isinstance(frame, bytes) else frame.encode()
            self.writer.write_ws(ts, data)
            self.frames += 1
            if self._need and b"depthUpdate" in data:
                for sym in list(self._need):
                    if f'"s":"{sym}"'.encode() in data:
                        self._need.discard(sym)
                        task = asyncio.ensure_future(self._snapshot(sym))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)

    async def _snapshot(self, symbol: str) -> None:
        url = f"{self.rest}{self.depth_path}?symbol={symbol}&limit={self.args.limit}"
        for attempt in range(8):
            try:
                status, _, body = await asyncio.to_thread(http_get, url, 10.0)
            except (OSError, TimeoutError) as err:
                status, body = 0, str(err).encode()
            if status == 200 and body.startswith(b"{"):
                if b'"symbol"' not in body[:200]:
                    body = b'{"symbol":"%s",' % symbol.encode() + body[1:]
                self.writer.write_rest(time.time_ns(), body)
                self.snapshots += 1
                return
            print(f"tickbus record: {symbol} snapshot: HTTP {status}; retrying", file=sys.stderr)
            await asyncio.sleep(backoff_delay(attempt, 0.5, 30.0))
        print(f"tickbus record: {symbol}: no snapshot recorded", file=sys.stderr)


async def _main(args: argparse.Namespace) -> int:
    try:
        rec = Recorder(args)
    except (ValueError, OSError) as err:
        print(f"tickbus record: error: {err}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    try:
        await rec.run(stop)
    finally:
        rec.writer.close()
    print(
        f"tickbus record: {rec.frames} frames and {rec.snapshots} snapshots written to {args.out}",
        file=sys.stderr,
    )
    if rec.error:
        print(f"tickbus record: error: {rec.error}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Record until ``--duration`` or a signal."""
    return asyncio.run(_main(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m tickbus.tools.record``."""
    p = argparse.ArgumentParser(prog="tickbus record", description=__doc__.split("\n")[0])
    build_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
