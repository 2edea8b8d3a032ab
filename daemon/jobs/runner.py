"""The runner: runs claimed jobs through their steps under a bound, one error boundary per job, step by step.

It is the only writer of the state store and of the outbox: intake admits, rejects and files duplicates through it,
the status server reads through it, and handlers get capabilities through JobContext.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from daemon.config import Settings
from daemon.errors import (
    AttemptsExhausted,
    BadInput,
    DiskFull,
    EvaluationIncomplete,
    JobCancelled,
    Paused,
    RemoteJobFailed,
    RemoteRejected,
    TransientError,
)
from daemon.jobs.capabilities import StoreItems, StoreJournal
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.jobs.faults import crash_point
from daemon.jobs.publishing import LiveJob, Publisher
from daemon.jobs.state import TERMINAL, JobStatus, StateStore
from daemon.jobs.status import JobListener, error_info, iso
from daemon.jobs.steps import Step, load_handlers, steps_for
from daemon.logs import JobLogs
from daemon.remote.api import FineTuneAPI
from daemon.remote.gate import RemoteGate
from daemon.remote.lazy import LazyRemote
from daemon.spec import JobSpec, parse_spec
from daemon.spool import outbox
from daemon.spool.names import printable
from daemon.spool.space import DiskSpace, is_disk_full

log = structlog.get_logger()

# How often a full disk is looked at again (at most; the remote pause probe interval if shorter).
DISK_PROBE_S = 2.0
# The errors a job ends `failed` with, recorded with their message (any other exception is a crash: traceback too).
JOB_FAILURES = (BadInput, RemoteRejected, RemoteJobFailed, TransientError, Paused, EvaluationIncomplete)


class Runner(Publisher):
    """Admits, starts, resumes, cancels and bounds jobs; publishes their status; answers readers."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        gate: RemoteGate,
        *,
        steps: Sequence[Step],
        job_logs: JobLogs,
        remote: LazyRemote | None = None,
        on_change: Callable[[], None] = lambda: None,
        listeners: Sequence[JobListener] = (),
    ) -> None:
        self.settings, self._store, self._gate, self._remote = settings, store, gate, remote
        self._steps, self._job_logs = steps, job_logs
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._live: dict[str, LiveJob] = {}
        self._on_change = on_change
        self._listeners = tuple(listeners)
        self.space = DiskSpace(
            (settings.outbox, settings.state_dir), settings.min_free_bytes, min(DISK_PROBE_S, settings.pause_probe_s)
        )

    # -- admissions (intake decides, the runner writes) --------------------------------------------------------
    async def admit(self, job_id: str, name: str, claimed: Path) -> None:
        """Record a claimed spec (`claimed`: its absolute path) as a job, publish its outbox folder, and start it."""
        await self._store.add_job(job_id, name, str(claimed))
        try:
            await self._ensure_folder(job_id)
            await self.publish(job_id)
        except (OSError, DiskFull) as exc:
            if not is_disk_full(exc):
                raise
            self.space.found_full(str(exc))  # the job waits for space and makes its folder itself
        self.start(job_id)

    async def _ensure_folder(self, job_id: str) -> None:
        """Publish the job's outbox folder (a copy of its spec and status.json) unless it exists."""
        if await asyncio.to_thread(outbox.job_dir(self.settings.outbox, job_id).is_dir):
            return
        record = await self._store.job(job_id)
        assert record is not None
        initial = {"job_id": job_id, "name": record.name, "status": str(record.status), "created_at": iso(time.time())}
        spec = Path(record.spec_file)
        await asyncio.to_thread(outbox.create_job_folder, self.settings.outbox, job_id, spec, initial)

    async def reject(self, job_id: str, name: str, path: Path, problems: list[str]) -> None:
        """Move a rejected input into its own outbox folder with a status.json naming its problems."""
        error: dict[str, Any] = {"type": "SpecError", "message": "; ".join(problems), "step": "intake"}
        document = {
            "job_id": job_id,
            "name": name,
            "status": str(JobStatus.rejected),
            "file": printable(path.name),
            "created_at": iso(time.time()),
            "error": error | {"problems": problems},
            "problems": problems,
        }
        kept = await asyncio.to_thread(outbox.publish_rejected, self.settings.outbox, job_id, path, document)
        await self._store.add_job(job_id, name, str(kept.relative_to(self.settings.outbox)), JobStatus.rejected)
        await self._store.set_status(job_id, JobStatus.rejected, error=error | {"problems": problems})
        final = await self.document(job_id)
        if final is not None:
            await self._tell(final, final=True)

    async def file_duplicate(self, job_id: str, path: Path) -> None:
        """Keep a re-dropped copy of a job's spec beside the job (never run) and list it in its status."""
        kept = await asyncio.to_thread(outbox.keep_duplicate, self.settings.outbox, job_id, path)
        await self._store.add_duplicate(job_id, str(kept.relative_to(self.settings.outbox)))
        await self.publish(job_id)

    async def resume_unfinished(self) -> list[str]:
        """Start every job that is not in a terminal state (at start-up); returns their ids."""
        unfinished = await self._store.job_ids(unfinished_only=True)
        for job_id in unfinished:
            self.start(job_id)
        return unfinished

    # -- running ----------------------------------------------------------------------------------------------
    def start(self, job_id: str) -> None:
        """Run (or resume) a job in its own owned task; a job already running is left alone."""
        if job_id in self._live:
            return
        task = asyncio.create_task(self._run_job(job_id), name=f"job:{job_id}")
        self._live[job_id] = LiveJob(task=task)
        task.add_done_callback(lambda t: self._job_done(job_id, t))

    def _job_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._live.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", job_id=job_id, error=repr(task.exception()))
        self._on_change()

    async def request_cancel(self, job_id: str) -> bool:
        """Cancel a job: a running one is interrupted, a queued one ends at once. False if unknown or finished."""
        record = await self._store.job(job_id)
        if record is None or record.status in TERMINAL:
            return False
        live = self._live.get(job_id)
        if live is not None:
            live.cancel_requested = True
            live.task.cancel()
            return True
        await self._finish(job_id, JobStatus.cancelled, None)
        return True

    async def request_retry(self, job_id: str) -> bool:
        """Run a failed job again from its failed step (finished steps and saved items kept); False if not failed."""
        record = await self._store.job(job_id)
        if acted := record is not None and record.status is JobStatus.failed and job_id not in self._live:
            await self._store.reopen(job_id)
            await self.publish(job_id)
            self.start(job_id)
        return acted

    def interrupt_all(self) -> None:
        """Cancel every running job task at once (a second signal); their state is saved, they resume later."""
        for live in list(self._live.values()):
            live.task.cancel()

    async def drain(self, grace_s: float) -> None:
        """Let running steps finish for up to `grace_s`, then cancel the rest (their state is saved)."""
        tasks = [live.task for live in self._live.values()]
        if not tasks:
            return
        log.info("draining", jobs=len(tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run_job(self, job_id: str) -> None:
        async with self._slots:
            with bound_contextvars(job_id=job_id):
                while True:
                    try:
                        await self._run_job_once(job_id)
                        return
                    except DiskFull as exc:
                        # Nothing was recorded as failed: wait for space, then resume from the last checkpoint.
                        self.space.found_full(str(exc.__cause__ or exc))
                        await self._publish_quietly(job_id)
                        await self.space.wait()

    async def _run_job_once(self, job_id: str) -> None:
        try:
            await self._ensure_folder(job_id)
            await self._job_logs.open(job_id, outbox.job_dir(self.settings.outbox, job_id) / outbox.LOG_FILE)
        except (OSError, sqlite3.Error) as exc:
            _raise_if_disk_full(exc)
            raise
        try:
            await self._job_boundary(job_id)
        finally:
            await asyncio.shield(self._job_logs.close(job_id))

    async def _publish_quietly(self, job_id: str) -> None:
        """Try to show the wait in status.json (it may not fit either)."""
        try:
            await self.publish(job_id)
        except (OSError, sqlite3.Error) as exc:
            if not is_disk_full(exc):
                raise

    async def _job_boundary(self, job_id: str) -> None:
        """The one place a job's failure is caught: it is recorded, and no other job is affected."""
        started = time.monotonic()
        status: JobStatus | None = None
        error: dict[str, Any] | None = None
        ctx: JobContext | None = None
        try:
            ctx = await self._load(job_id)
            if ctx is not None:
                await self._execute(ctx)
            status = JobStatus.completed
        except asyncio.CancelledError:
            live = self._live.get(job_id)
            if live is None or not live.cancel_requested:
                log.info("job_interrupted", reason="shutdown; resumes from its last checkpoint on restart")
                raise
            status = JobStatus.cancelled
        except JobCancelled:
            status = JobStatus.cancelled
        except (*JOB_FAILURES, AttemptsExhausted) as exc:
            _raise_if_disk_full(exc)
            status, error = JobStatus.failed, error_info(exc, await self._current_step(job_id))
            log.error("job_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
        except Exception as exc:  # noqa: BLE001 - the per-job boundary: record it, keep the daemon and other jobs going
            _raise_if_disk_full(exc)
            log.exception("job_crashed")
            status, error = JobStatus.failed, error_info(exc, await self._current_step(job_id))
        finally:
            if status is not None:
                await asyncio.shield(self._end(ctx, job_id, status, error, time.monotonic() - started))

    async def _load(self, job_id: str) -> JobContext | None:
        """The job's context from its record and spec; None when it has already ended."""
        record = await self._store.job(job_id)
        assert record is not None, f"job {job_id} vanished from the state store"
        if record.status in TERMINAL:
            return None
        spec_path = Path(record.spec_file)
        spec = parse_spec(await asyncio.to_thread(spec_path.read_bytes), spec_path.name)
        await self._store.set_status(job_id, JobStatus.running)
        await self.publish(job_id)
        log.info("job_started", name=spec.name, resumed=bool(record.steps))
        return self._context(job_id, spec, dict(record.journal), await self._prepare_steps(spec))

    async def _prepare_steps(self, spec: JobSpec) -> FineTuneAPI | None:
        """Import the handlers of the steps this job runs, and build the provider if one of them is remote."""
        steps = steps_for(spec, self._steps)
        await asyncio.to_thread(load_handlers, steps)
        if self._remote is None or not any(step.remote for step in steps):
            return None
        return await self._remote.get()

    async def _execute(self, ctx: JobContext) -> None:
        record = await self._store.job(ctx.job_id)
        assert record is not None
        outputs: dict[str, StepOutput] = {}
        for step in steps_for(ctx.spec, self._steps):
            saved = record.steps.get(step.name)
            if saved is not None and saved.output is not None and saved.finished_at is not None:
                outputs[step.name] = saved.output
                continue
            outputs[step.name] = await self._run_step(ctx, step, outputs)

    async def _end(
        self, ctx: JobContext | None, job_id: str, status: JobStatus, error: dict[str, Any] | None, duration_s: float
    ) -> None:
        """Release what the job's steps hold remotely (latest step first), then record and publish the end."""
        if ctx is not None:
            for step in reversed(steps_for(ctx.spec, self._steps)):
                if step.cleanup is not None:
                    with bound_contextvars(step=step.name):
                        await step.cleanup(ctx, str(status))
        await self._finish(job_id, status, error, duration_s)

    def _context(self, job_id: str, spec: JobSpec, journal: dict[str, str], remote: FineTuneAPI | None) -> JobContext:
        return JobContext(
            job_id=job_id,
            spec=spec,
            settings=self.settings,
            out_dir=outbox.job_dir(self.settings.outbox, job_id),
            work_dir=self.settings.jobs_dir / job_id,
            journal=StoreJournal(self._store, self.settings, job_id, journal),
            items=StoreItems(self._store, job_id),
            progress=lambda **fields: self._progress(job_id, fields),
            remote=remote,
        )

    async def _run_step(self, ctx: JobContext, step: Step, outputs: StepInputs) -> StepOutput:
        """Run one step to a saved checkpoint: attempts counted first, pauses waited out (without spending one)."""
        if step.needs_together:
            ctx.fine_tuning()  # fails the job clearly, before an attempt is counted, when no provider is configured
        while True:
            if step.remote:
                await self._wait_gate(ctx.job_id)
            attempt = await self._store.begin_step(ctx.job_id, step.name, count=not step.waits)
            if attempt > self.settings.max_step_attempts:
                raise AttemptsExhausted(
                    f"step {step.name} was started {attempt - 1} times without finishing "
                    f"(limit FINETUNED_MAX_STEP_ATTEMPTS={self.settings.max_step_attempts})"
                )
            crash_point(self.settings, f"before:{step.name}", ctx.job_id)
            output = await self._attempt(ctx, step, attempt, outputs)
            if output is not None:
                await asyncio.shield(self._store.finish_step(ctx.job_id, step.name, output))
                self._progress_of(ctx.job_id).clear()
                await self.publish(ctx.job_id)
                crash_point(self.settings, f"after:{step.name}", ctx.job_id)
                return output

    async def _attempt(self, ctx: JobContext, step: Step, attempt: int, outputs: StepInputs) -> StepOutput | None:
        """One try of a step: its output, or None after a pause (the step runs again once remote work resumes).

        Any other error ends the step `failed` (retrying remote calls is the retry layer's business, not this one's).
        """
        with bound_contextvars(step=step.name):
            log.info("step_started", attempt=attempt)
            await self.publish(ctx.job_id)
            started = time.monotonic()
            try:
                output = await step.run(ctx, outputs)
            except Paused as exc:
                await asyncio.shield(self._store.refund_attempt(ctx.job_id, step.name))
                self._gate.pause(exc)
                return None
            except asyncio.CancelledError:
                await asyncio.shield(self._store.refund_attempt(ctx.job_id, step.name))
                raise
            except Exception as exc:
                if is_disk_full(exc):
                    await self._refund_quietly(ctx.job_id, step.name)
                    raise DiskFull(str(exc)) from exc
                await asyncio.shield(self._store.fail_step(ctx.job_id, step.name))
                raise
            log.info("step_finished", attempt=attempt, duration_s=round(time.monotonic() - started, 3))
            return output

    async def _refund_quietly(self, job_id: str, step: str) -> None:
        """A full disk is not the step's failure: take its attempt back if the database still takes writes."""
        try:
            await asyncio.shield(self._store.refund_attempt(job_id, step))
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise

    async def _wait_gate(self, job_id: str) -> None:
        if self._gate.is_open:
            return
        await self._store.set_status(job_id, JobStatus.paused)
        await self.publish(job_id)
        await self._gate.wait_open()
        await self._store.set_status(job_id, JobStatus.running)


def _raise_if_disk_full(exc: BaseException) -> None:
    """A full disk is not the job's failure: raise DiskFull (the job waits for space) instead of recording one."""
    if isinstance(exc, DiskFull):
        raise exc
    if is_disk_full(exc):
        raise DiskFull(str(exc)) from exc
