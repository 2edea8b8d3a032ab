"""The service lifecycle: start-up checks, recovery before READY, the intake loop, signals and an ordered shutdown.

Start: lock → same-filesystem check → state store → recovery → READY=1 → status server → watch + reconcile.
Stop (first SIGTERM/SIGINT): stop intake → STOPPING=1 → let steps finish within the grace period → cancel the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog
import watchfiles

from daemon.config import Settings
from daemon.errors import StartupError
from daemon.jobs.consistency import check_matches_outbox
from daemon.jobs.index import OutboxIndex, store_outputs
from daemon.jobs.leftover_endpoints import sweep_endpoints
from daemon.jobs.runner import Runner
from daemon.jobs.state import StateStore
from daemon.jobs.steps import Step
from daemon.logs import JobLogs
from daemon.metrics import MetricsListener
from daemon.notify import Webhook, store_specs
from daemon.remote.api import FineTuneAPI
from daemon.remote.gate import RemoteGate
from daemon.remote.lazy import LazyRemote
from daemon.spool import inbox
from daemon.spool.intake import Intake
from daemon.systemd import Notifier

if TYPE_CHECKING:
    from daemon.status_server import StatusServer

log = structlog.get_logger()

# `run --once` gives up on a remote pause (bad key, no balance) after this many probe intervals and exits with
# EXIT_PAUSED; the paused jobs resume at the next run.
ONCE_PAUSE_PROBES = 5
EXIT_PAUSED = 3
# After the watcher fails, wait this long before watching again (the reconcile timer and the wake cover the gap).
WATCH_RESTART_S = 0.5


@contextlib.contextmanager
def single_instance(lock_path: Path) -> Any:
    """Hold an exclusive flock on the spool's lock file; the kernel drops it when the process dies."""
    fh: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held for the life of the daemon
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        other = fh.read().strip() or "unknown"
        fh.close()
        raise StartupError(
            f"another finetuned (pid {other}) is already running on this spool (lock {lock_path})"
        ) from exc
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield
    finally:
        fh.close()


def prepare_dirs(settings: Settings) -> None:
    """Create the spool folders and check that claiming (a rename) works between them."""
    for folder in (settings.inbox, settings.outbox, settings.jobs_dir, settings.cancel_dir, settings.retry_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".finetuned-write-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise StartupError(
                f"cannot use {folder} ({exc.strerror or exc}): the inbox, outbox and state folder must be "
                "folders this user can write (set --inbox/--outbox/--state-dir or FINETUNED_*)"
            ) from exc
    inbox.check_same_filesystem(settings)


class Service:
    """One daemon over one spool: the gate, the runner and intake, the watcher, the watchdog, the status server."""

    def __init__(
        self,
        settings: Settings,
        steps: Sequence[Step],
        *,
        job_logs: JobLogs,
        remote: FineTuneAPI | LazyRemote | None = None,
        once: bool = False,
    ) -> None:
        self.settings, self.steps, self.once = settings, steps, once
        self.remote = remote if remote is None or isinstance(remote, LazyRemote) else LazyRemote.of(remote)
        self.job_logs = job_logs
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.notifier = Notifier(settings.notify_socket)
        self.gate = RemoteGate(
            self.remote.probe if self.remote is not None else None, settings.pause_probe_s, on_change=self._changed
        )
        self._runner: Runner | None = None
        self._signals = 0
        self.exit_code = 0
        self._last_tick = time.monotonic()

    @property
    def runner(self) -> Runner:
        """The runner, once the state store is open (it lives as long as the daemon serves)."""
        assert self._runner is not None, "the runner exists only while the service runs"
        return self._runner

    async def run(self) -> int:
        """Run until stopped (or, with once, until idle); returns the exit code."""
        self._install_signals()  # a stop during start-up finishes the start-up, then stops cleanly
        prepare_dirs(self.settings)
        with single_instance(self.settings.lock_path):
            store = await StateStore.open(self.settings.db_path)
            try:
                await check_matches_outbox(store, self.settings.outbox, self.settings.db_path)
                return await self._serve(store)
            finally:
                await store.close()

    async def _serve(self, store: StateStore) -> int:
        webhook = Webhook(self.settings, specs=store_specs(store))
        self._runner = Runner(
            self.settings,
            store,
            self.gate,
            steps=self.steps,
            job_logs=self.job_logs,
            remote=self.remote,
            on_change=self._changed,
            listeners=(
                OutboxIndex(self.settings.outbox, store_outputs(store)),
                MetricsListener(self.settings.outbox),
                webhook,
            ),
        )
        intake = Intake(self.settings, self.runner)
        if self.remote is not None:  # endpoints of ended jobs whose cleanup did not finish (handlers/serving.py)
            await sweep_endpoints(store, self.remote.get, timeout_s=3 * self.settings.request_timeout_s)
        resumed = await intake.recover()
        self.notifier.send("READY=1", f"STATUS=ready; {len(resumed)} job(s) resumed")
        log.info("daemon_ready", inbox=str(self.settings.inbox), outbox=str(self.settings.outbox), once=self.once)
        try:
            async with self._background():
                await self._intake_loop(intake)
        finally:
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            await self.runner.drain(0 if self._signals > 1 else self.settings.shutdown_grace_s)
            await self.gate.close()
            await webhook.close(self.settings.shutdown_grace_s)
            log.info("daemon_stopped", exit_code=self.exit_code)
            self.notifier.close()
        return self.exit_code

    @contextlib.asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        """The watcher, the watchdog and the status server live exactly as long as the intake loop."""
        server = await self._status_server()
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(self._watch(), name="watcher")
            watchdog = tasks.create_task(self._watchdog(), name="watchdog")
            try:
                yield
            finally:
                self.stop.set()
                watcher.cancel()
                watchdog.cancel()
                if server is not None:
                    await server.stop()

    async def _status_server(self) -> StatusServer | None:
        """The status server, serving; None with no FINETUNED_STATUS_PORT (then aiohttp's server is not imported)."""
        if not self.settings.status_port:
            return None
        from daemon.status_server import StatusServer

        server = StatusServer(self.settings, self.runner, self.gate)
        try:
            await server.start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve status on {self.settings.status_host}:{self.settings.status_port} "
                f"({exc.strerror or exc}): choose another FINETUNED_STATUS_PORT (0: none)"
            ) from exc
        return server

    async def _intake_loop(self, intake: Intake) -> None:
        """Scan at start, on every watch event and on the reconcile timer; with once, return when idle."""
        while not self.stop.is_set():
            self.wake.clear()
            next_due = await intake.scan_once()
            self._last_tick = time.monotonic()
            if self.once and next_due is None and not self.runner.busy:
                log.info("idle", reason="once: nothing left to do")
                return
            if self.once and self._pause_unresolved():
                self.exit_code = EXIT_PAUSED
                return
            timeout_s = self.settings.reconcile_interval_s
            if next_due is not None:
                timeout_s = max(0.05, min(timeout_s, next_due - time.time()))
            if self.once and not self.gate.is_open:
                timeout_s = min(timeout_s, self.settings.pause_probe_s)
            await self._wait_for_wake(timeout_s)

    async def _wait_for_wake(self, timeout_s: float) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (stop, wake):
                waiter.cancel()
            await asyncio.gather(stop, wake, return_exceptions=True)

    async def _watch(self) -> None:
        """watchfiles as a wake-up hint only; restarted when the inbox folder is replaced (which silences inotify) or
        when it fails (it raises on a file name that is not UTF-8): the scan, which reads names as bytes, is the truth.
        """
        while not self.stop.is_set():
            try:
                await self._watch_until_replaced()
            except Exception as exc:  # noqa: BLE001 - a hint source failing costs latency, never the daemon
                log.warning("watcher_failed", error=f"{type(exc).__name__}: {exc}"[:300], restart_in_s=WATCH_RESTART_S)
                self.wake.set()
                await asyncio.sleep(WATCH_RESTART_S)

    async def _watch_until_replaced(self) -> None:
        watched = [self.settings.inbox, self.settings.cancel_dir, self.settings.retry_dir]
        for folder in watched:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        inode = self.settings.inbox.stat().st_ino
        async for _changes in watchfiles.awatch(
            *watched,
            watch_filter=None,
            recursive=False,
            debounce=200,
            step=20,
            stop_event=self.stop,
            rust_timeout=int(self.settings.reconcile_interval_s * 1000 / 2) or 1000,
            yield_on_timeout=True,
        ):
            self.wake.set()
            if not _same_inode(self.settings.inbox, inode):
                log.warning("inbox_replaced", inbox=str(self.settings.inbox))
                return

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself, every half WatchdogSec, while the intake loop keeps ticking."""
        interval_s = self.settings.watchdog_usec / 2e6 if self.settings.watchdog_usec else 5.0
        while True:
            await asyncio.sleep(interval_s)
            lines = [f"STATUS={self._status_line()}"]
            stale_s = time.monotonic() - self._last_tick
            if self.settings.watchdog_usec and stale_s < self.settings.reconcile_interval_s * 3:
                lines.append("WATCHDOG=1")
            self.notifier.send(*lines)

    def _pause_unresolved(self) -> bool:
        """With --once, a pause that outlasts a few probes ends the run (jobs stay resumable) instead of hanging."""
        since = self.gate.paused_since
        limit_s = ONCE_PAUSE_PROBES * self.settings.pause_probe_s
        if since is None or asyncio.get_running_loop().time() - since < limit_s:
            return False
        log.error("remote_pause_unresolved", reason=self.gate.reason, waited_s=round(limit_s, 1))
        return True

    def _status_line(self) -> str:
        paused = "" if self.gate.is_open else f"; remote work paused: {self.gate.reason}"
        if self.runner.space.is_full:
            paused += "; disk full: claims and writing paused until space returns"
        return f"{self.runner.active_jobs} job(s) active{paused}"

    def _changed(self) -> None:
        self.wake.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        # The inbox asks for a read lease to tell whether a spec is still open for writing; a writer opening the
        # file during those microseconds would signal SIGIO (default: terminate). Nothing here uses SIGIO.
        signal.signal(signal.SIGIO, signal.SIG_IGN)

    def _on_hangup(self) -> None:
        log.info("sighup_ignored", note="settings are read once at start: restart the daemon to apply changes")

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown_requested", signal=sig.name, grace_s=self.settings.shutdown_grace_s)
            self.stop.set()
            return
        log.warning("shutdown_forced", signal=sig.name)
        if self._runner is not None:
            self.runner.interrupt_all()


def _same_inode(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except FileNotFoundError:
        return False
