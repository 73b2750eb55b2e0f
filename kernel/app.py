"""The kernel: brings the bus, lanes and plugins up in order and takes them down cleanly.

Start: load plugins -> router -> lanes -> every instance's setup (subscriptions) -> lanes
subscribe on the router and wait until every subscription has propagated -> start in
dependency order -> READY.

Stop (SIGTERM/SIGINT or a plugin's request): STOPPING -> ``sys.shutdown`` -> stop in reverse
order (handlers keep receiving) -> drain: rounds of barrier messages until no lane sent
anything between two rounds, so every cross-lane message has been handled -> shutdown hooks
(flush) in reverse order -> lanes end -> router closes.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import zmq

from tickbus.schemas import Shutdown

from . import sdnotify
from .clock import make_clock
from .config import Config
from .context import PluginContext
from .errors import TickbusError
from .lane import Lane, LaneDead
from .plugins import PluginManager
from .router import ConnectionWatch, Connector, Router

log = logging.getLogger("tickbus.kernel")


class StartAborted(TickbusError):
    """A stop was requested (SIGTERM) before every plugin had started."""


class Kernel:
    """One tickbus process: see the module docstring for the order of things."""

    def __init__(self, config: Config, *, extra_plugins: dict[str, object] | None = None) -> None:
        self.config = config
        self.name = config.kernel.name
        self.clock = make_clock(config.kernel.clock)
        self.manager = PluginManager()
        self.lanes: dict[str, Lane] = {}
        self.contexts: dict[str, PluginContext] = {}
        self.order: list[str] = []
        self.router: Router | None = None
        self.shutdown_reason = ""
        self._status_counts: dict[str, int] = {}
        self._status_at = time.monotonic()
        self.failures: list[str] = []
        """Why this run must exit non-zero (a task died, input was lost...); logged at exit."""
        self._extra = extra_plugins or {}
        self._zctx: zmq.Context | None = None
        self._stop_requested = threading.Event()
        self._started: list[str] = []
        self._stopped = False
        self._settle = False
        self._epochs = itertools.count(1)  # drain markers, unique over the run
        self._watch: ConnectionWatch | None = None

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Bring everything up; raises TickbusError (after cleaning up) on a user error."""
        try:
            self._start()
        except StartAborted:
            if not self._started:  # nothing runs yet (e.g. SIGTERM during a compile)
                self._teardown(time.monotonic() + 1.0)
            raise  # else run() stops what started: stop, drain, flush
        except BaseException:
            self._teardown(time.monotonic() + 1.0)
            raise

    def _start(self) -> None:
        cfg = self.config
        self.manager.load(cfg, self._extra)
        enabled = {n: e for n, e in cfg.plugins.items() if e.enabled}
        settings = {n: self.manager.validate_settings(cfg, n) for n in enabled}
        self.order = _start_order(enabled)
        codec_types = self.manager.message_types()

        self._zctx = zmq.Context()
        bus = cfg.bus
        connector: Connector | None = None
        if bus.join_pub:
            pub_ep, sub_ep, exact = cfg.endpoint(bus.join_pub), cfg.endpoint(bus.join_sub), False
            tap_ep = cfg.endpoint(bus.join_tap) if bus.join_tap else ""
            # a remote lane: CURVE keys for tcp, frame cap, heartbeats; losing the host bus
            # stops this process (non-zero) rather than leaving it talking to nobody
            connector = Connector.from_config(cfg)
            self._watch = ConnectionWatch(
                self._zctx, lambda why: self.request_shutdown(why, failed=True)
            )
        else:
            # [runtime-dir lock + CURVE + limits] Router.from_config locks the runtime dir
            # (refuses a second run on it), loads CURVE keys for tcp endpoints, sets the
            # frame cap and remote-subscriber bounds; router.close() undoes all of it.
            self.router = Router.from_config(self._zctx, cfg)
            self.router.start()
            pub_ep, sub_ep, exact = self.router.pub_inproc, self.router.sub_inproc, True
            tap_ep = self.router.tap_inproc
        from tickbus.schemas import BUILTIN_TYPES

        for i, (lane_name, lane_cfg) in enumerate(cfg.lanes.items()):
            lane = Lane(
                lane_name,
                i,
                process=self.name,
                zctx=self._zctx,
                pub_endpoint=pub_ep,
                sub_endpoint=sub_ep,
                tap_endpoint=tap_ep,
                codec_types=(*BUILTIN_TYPES, *codec_types),
                heartbeat_s=cfg.kernel.heartbeat_s,
                exact_interest=exact,
                cpu=lane_cfg.cpu,
                connector=connector,
                watch=self._watch,
            )
            lane.on_death = lambda why: self.request_shutdown(why, failed=True)
            lane.start()
            self.lanes[lane_name] = lane

        config_path = Path(cfg.path).resolve() if cfg.path != "<config>" else None
        for name in self.order:
            entry = enabled[name]
            lane = self.lanes[entry.lane]
            ctx = PluginContext(
                name=name,
                plugin=entry.plugin,
                config=settings[name],
                lane=lane,
                clock=self.clock,
                process=self.name,
                runtime_dir=cfg.runtime_dir,
                state_dir=cfg.state_dir,
                request_shutdown=self.request_shutdown,
                report_failure=self.report_failure,
                config_dir=config_path.parent if config_path else None,
                bus_stats=self.bus_stats,
                config_path=config_path,
            )
            self.contexts[name] = ctx
            # set-up may compile numba kernels on a cold cache: tens of seconds, once
            ctx.component = self._hook(lane, self.manager.setup, ctx, "set up", timeout=300.0)

        prefixes = {ln: lane.call(lane.bus_prefixes) for ln, lane in self.lanes.items()}
        expected: dict[bytes, int] = {}
        for ps in prefixes.values():
            for p in ps:
                expected[p] = expected.get(p, 0) + 1 if exact else 1
        futures = [
            lane.call(lane.activate, expected, len(self.lanes) - 1) for lane in self.lanes.values()
        ]
        try:
            for fut in futures:
                fut.result(5.0)
        except TimeoutError:
            raise TickbusError(
                f"bus subscriptions did not propagate within 5 s (endpoints {pub_ep}, {sub_ep})"
            ) from None

        for name in self.order:
            ctx = self.contexts[name]
            deps = [self.contexts[d] for d in enabled[name].after if d in self._started]
            if any(d.lane_name != ctx.lane_name for d in deps) and not self._drain(
                time.monotonic() + 5.0, max_rounds=1
            ):
                # what the dependency published at its start (persistence's restore.*) must
                # have reached this plugin before it starts (in its lane it already has)
                raise TickbusError(f"plugin {name!r}: the bus did not settle before its start")
            self._hook(self.lanes[ctx.lane_name], self.manager.start, ctx, "start", timeout=30.0)
            self._started.append(name)
        log.info(
            "%s ready: %d plugin(s) in %d lane(s)%s",
            self.name,
            len(self.order),
            len(self.lanes),
            f", tap {self.router.tap}" if self.router and self.router.tap else "",
        )

    def _hook(
        self,
        lane: Lane,
        hook: Callable[[PluginContext], Any],
        ctx: PluginContext,
        what: str,
        timeout: float,
    ) -> Any:
        try:
            return self._call_abortable(lane, hook, ctx, timeout=timeout)
        except StartAborted:
            raise
        except TickbusError as err:
            raise TickbusError(f"plugin {ctx.name!r}: {err}") from err
        except TimeoutError:
            raise TickbusError(f"plugin {ctx.name!r} did not {what} within {timeout:g} s") from None
        except Exception as err:
            log.debug("plugin %s failed to %s", ctx.name, what, exc_info=True)
            raise TickbusError(
                f"plugin {ctx.name!r} failed to {what}: {type(err).__name__}: {err}"
            ) from err

    def _call_abortable(
        self, lane: Lane, fn: Callable[..., Any], *args: Any, timeout: float
    ) -> Any:
        """``lane.call`` that gives up as soon as a stop is requested (SIGTERM while a
        plugin sets up - a cold numba compile takes tens of seconds)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as err:
                fut.set_exception(err)

        assert lane.loop is not None
        lane.loop.call_soon_threadsafe(run)
        end = time.monotonic() + timeout
        while True:
            if self._stop_requested.is_set():
                raise StartAborted(f"stopped during start-up ({self.shutdown_reason})")
            if not lane.alive:
                raise TickbusError(f"lane {lane.name} died ({lane.dead})")
            try:
                return fut.result(min(0.05, max(0.0, end - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= end:
                    raise

    # ------------------------------------------------------------------ run

    def request_shutdown(self, reason: str, failed: bool = False, settle: bool = True) -> None:
        """Ask the process to stop (thread-safe; the first reason is kept). ``failed``
        makes the exit status non-zero. ``settle`` (a plugin's input ended, nothing failed):
        what is in flight reaches every running plugin before any is stopped."""
        if failed:
            self.report_failure(reason)
        if not self._stop_requested.is_set():
            self.shutdown_reason = reason
            self._settle = settle and not failed
            self._stop_requested.set()

    def report_failure(self, what: str) -> None:
        """Record why the run must end with a non-zero exit status (thread-safe)."""
        self.failures.append(what)

    def lanes_alive(self) -> bool:
        """True while every lane's loop has beaten recently (fed to the systemd watchdog)."""
        limit = 2 * self.config.kernel.heartbeat_s + 0.5
        now = time.monotonic()
        return all(lane.alive and now - lane.last_beat < limit for lane in self.lanes.values())

    def healthy(self) -> bool:
        """Every lane beats and nothing failed: the condition for the watchdog ping. A
        plugin task that died has already asked for a (failed) shutdown, so a process is
        never pinged as healthy while half of it is gone."""
        return self.lanes_alive() and not self.failures

    def run(self, *, handle_signals: bool = True) -> int:
        """Start, report READY, feed the watchdog until asked to stop, stop. Exit code."""
        if handle_signals:
            self._install_signals()
        try:
            self.start()
        except StartAborted as err:
            log.warning("%s", err)
            # plugins that had started (a replay may finish before the rest is up) are
            # stopped, drained and flushed like at any other stop
            return self.exit_status(self.stop())
        sdnotify.notify(f"READY=1\nSTATUS=running: {len(self.order)} plugins")
        interval = sdnotify.watchdog_interval_s()  # already half of WatchdogSec
        status_s = self.config.kernel.status_interval_s
        tick = min(interval or 1.0, status_s or 1.0)
        next_status = time.monotonic() + status_s
        next_ping = 0.0
        while not self._stop_requested.wait(tick):
            now = time.monotonic()
            if interval and now >= next_ping:
                next_ping = now + interval
                if self.healthy():
                    sdnotify.notify("WATCHDOG=1")
                else:
                    log.error("a lane stopped beating; withholding the watchdog ping")
            if status_s and now >= next_status:
                next_status = now + status_s
                self.log_status()
        sdnotify.notify(f"STOPPING=1\nSTATUS=stopping: {self.shutdown_reason}")
        log.info("stopping: %s", self.shutdown_reason)
        ok = self.stop()
        return self.exit_status(ok)

    def exit_status(self, stopped_cleanly: bool = True) -> int:
        """0 only if the run did its job: stopped cleanly, no handler raised, no task died,
        no plugin reported lost input. Every reason for a non-zero status is logged."""
        for lane in self.lanes.values():
            if lane.stats.encode_errors:
                self.failures.append(
                    f"lane {lane.name}: {lane.stats.encode_errors} message(s) could not be"
                    " encoded for other lanes or the tap and were not sent (see above)"
                )
            if lane.stats.handler_errors:
                self.failures.append(
                    f"lane {lane.name}: {lane.stats.handler_errors} message(s) hit a handler"
                    " that raised (see the first traceback above)"
                )
        if not stopped_cleanly:
            self.failures.append("the stop did not complete in time (see above)")
        for why in self.failures:
            log.error("exit status 1: %s", why)
        return 1 if self.failures else 0

    def bus_stats(self) -> dict[str, dict[str, Any]]:
        """Counters of every lane of this process (thread-safe to call: plain int reads):
        per lane ``published`` per topic, ``sent``, ``received``, ``bad_frames``,
        ``handler_errors``, ``encode_errors``, ``uncached_topics``, ``alive``."""
        out: dict[str, dict[str, Any]] = {}
        for name, lane in self.lanes.items():
            row: dict[str, Any] = msgspec.structs.asdict(lane.stats)
            row["topics"] = {t: c[0] for t, c in list(lane.topic_counts.items())}
            row["alive"] = lane.alive
            out[name] = row
        return out

    def log_status(self) -> None:
        """One status line: per-topic rates since the last line, lane loop lag, and each
        plugin's own fragment (``tickbus_status``)."""
        now = time.monotonic()
        counts = {t: c[0] for lane in self.lanes.values() for t, c in lane.topic_counts.items()}
        dt = max(1e-9, now - self._status_at)
        rates = sorted(
            ((t, (n - self._status_counts.get(t, 0)) / dt) for t, n in counts.items()),
            key=lambda x: -x[1],
        )
        self._status_counts, self._status_at = counts, now
        parts = [
            "rates/s " + (", ".join(f"{t} {r:.0f}" for t, r in rates[:6] if r > 0) or "none")
        ]
        for lane in self.lanes.values():
            parts.append(f"lane {lane.name} lag {self._loop_lag_ms(lane):.1f} ms")
        for name in self.order:
            ctx = self.contexts[name]
            try:
                fragment = self.lanes[ctx.lane_name].call(self.manager.status, ctx, timeout=1.0)
            except Exception as err:
                fragment = f"status failed: {type(err).__name__}"
            if fragment:
                parts.append(f"{name}: {fragment}")
        log.info("status: %s", "; ".join(parts))

    @staticmethod
    def _loop_lag_ms(lane: Lane) -> float:
        """How long a call waits for the lane's loop: its backlog, in time (-1: no answer
        within 1 s)."""
        t0 = time.perf_counter()
        try:
            lane.call(time.perf_counter, timeout=1.0)
        except Exception:
            return -1.0
        return (time.perf_counter() - t0) * 1e3

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested.is_set():
                log.warning("second %s: exiting at once", signal.Signals(signum).name)
                raise SystemExit(128 + signum)
            self.request_shutdown(signal.Signals(signum).name, settle=False)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # ------------------------------------------------------------------ stop

    def stop(self) -> bool:
        """Stop plugins, drain the bus, flush, end lanes. False if anything overran."""
        if self._stopped:
            return True
        deadline = time.monotonic() + self.config.kernel.stop_timeout_s
        ok = True
        alive = [lane for lane in self.lanes.values() if lane.alive]
        if alive:
            first = alive[0]
            msg = Shutdown(self.name, self.shutdown_reason or "stop", self.clock.now_ns())
            ok &= self._call(first, first.publish, "sys.shutdown", msg, deadline=deadline)
        if self._settle and all(lane.alive for lane in self.lanes.values()):
            # the input ended (a replay finished): what is in flight between lanes reaches
            # running plugins first - a strategy in a lane behind on a backlog would
            # otherwise be stopped before it saw the last features. Not on a signal: a live
            # feed never lets the bus go quiet, and the stop must be prompt.
            if not self._drain(deadline):
                log.warning("the bus did not settle before the plugins were stopped")
            deadline = time.monotonic() + self.config.kernel.stop_timeout_s
        for name in reversed(self._started):
            ctx = self.contexts[name]
            lane = self.lanes[ctx.lane_name]
            ok &= self._call(lane, self.manager.stop, ctx, deadline=deadline, what=f"stop {name}")
            if lane.alive:
                ok &= self._call(lane, ctx.cancel_tasks, deadline=deadline)
        drained = self._drain(deadline)
        if not drained:
            log.error("the bus did not drain before the stop deadline; messages may be lost")
        ok &= drained
        # flush hooks (commit the database...) get their own budget: a stop that spent its
        # time draining must still flush what it drained
        flush_deadline = max(deadline, time.monotonic()) + self.config.kernel.flush_timeout_s
        for name in reversed(self._started):
            ctx = self.contexts[name]
            lane = self.lanes[ctx.lane_name]
            ok &= self._call(
                lane, self.manager.shutdown, ctx, deadline=flush_deadline, what=f"shut down {name}"
            )
        self._started.clear()
        ok &= self._teardown(max(deadline, time.monotonic()) + 0.2)
        return ok

    def _call(
        self, lane: Lane, fn: Callable[..., Any], *args: Any, deadline: float, what: str = ""
    ) -> bool:
        """Run a stop-time hook on its lane; on a dead lane's plugins it runs here, on the
        main thread (their thread is gone, so nothing races it): a flush must still run."""
        try:
            if not lane.alive:
                log.warning("lane %s is dead: running %s on the main thread", lane.name, what)
                fn(*args)
                return True
            lane.call(fn, *args, timeout=max(0.01, deadline - time.monotonic()))
            return True
        except TimeoutError:
            log.error("lane %s: %s did not finish before the stop deadline", lane.name, what or fn)
        except Exception:
            log.exception("lane %s: %s failed", lane.name, what or fn)
        return False

    def _drain(self, deadline: float, max_rounds: int = 0) -> bool:
        """Barrier rounds until no lane sent anything between two rounds (or ``max_rounds``
        of them: one round delivers everything published before it).

        A backlog (a slow consumer) is worked off rather than dropped: while lanes keep
        handling messages the deadline moves, up to ``drain_timeout_s``."""
        lanes = list(self.lanes.values())
        dead = [lane.name for lane in lanes if not lane.alive]
        if dead:
            log.error("cannot drain the bus: lane(s) %s dead; what was in flight to them is lost",
                      ", ".join(dead))  # fmt: skip
            return False
        if len(lanes) < 2:
            return True
        hard = time.monotonic() + self.config.kernel.drain_timeout_s
        previous: tuple[int, ...] | None = None
        for rounds, epoch in enumerate(self._epochs, 1):
            # a lane still working off a backlog answers late: that is what we wait for
            rest = max(0.01, hard - time.monotonic())
            try:
                waits = [lane.call(lane.expect_barrier, epoch, timeout=rest) for lane in lanes]
                sent = tuple(lane.call(lane.send_barrier, epoch, timeout=rest) for lane in lanes)
            except (TimeoutError, LaneDead):
                return False
            for fut in waits:
                while True:
                    before = sum(lane.stats.received for lane in lanes)
                    try:
                        fut.result(max(0.01, min(deadline, hard) - time.monotonic()))
                        break
                    except TimeoutError:
                        progressed = sum(lane.stats.received for lane in lanes) != before
                        if not progressed or time.monotonic() >= hard:
                            return False
                        # a lane in a long handler (an fsync...) shows no progress for a
                        # while: give it a second before calling the drain stuck
                        deadline = time.monotonic() + 1.0
            if sent == previous or rounds == max_rounds:
                return True
            previous = sent
        return False  # pragma: no cover - the loop only ends by return

    def _teardown(self, deadline: float) -> bool:
        ok = True
        if self._watch is not None:
            self._watch.close()  # a lane closing its sockets is not a lost connection
            self._watch = None
        for lane in self.lanes.values():
            if not lane.stop_loop(max(0.01, deadline - time.monotonic())):
                log.error("lane %s did not end in time", lane.name)
                ok = False
        if self.router is not None:
            self.router.close()
            self.router = None
        if self._zctx is not None:
            if ok:
                self._zctx.term()
            self._zctx = None
        self._stopped = True
        return ok


def _start_order(enabled: dict[str, Any]) -> list[str]:
    """Instances in dependency order (``after``), ties in config order."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            raise TickbusError(f"plugins depend on each other in a cycle: {cycle}")
        state[name] = 1
        for dep in enabled[name].after:
            if dep in enabled:  # a disabled dependency imposes no order
                visit(dep, [*chain, name])
        state[name] = 2
        order.append(name)

    for name in enabled:
        visit(name, [])
    return order
