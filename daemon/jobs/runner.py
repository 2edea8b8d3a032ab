"""The runner: runs claimed jobs through their steps under a bound, one error boundary per job, step by step.

It is the only writer of the state store and of the outbox: intake admits, rejects and files duplicates through it,
the status server reads through it, and handlers get capabilities through JobContext.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from daemon.config import Settings
from daemon.errors import (
    AttemptsExhausted,
    BadInput,
    JobCancelled,
    Paused,
    RemoteJobFailed,
    RemoteRejected,
    TransientError,
)
from daemon.jobs.capabilities import StoreItems, StoreJournal
from daemon.jobs.context import JobContext, StepInputs, StepOutput, remote_ids
from daemon.jobs.faults import crash_point
from daemon.jobs.state import TERMINAL, JobStatus, StateStore
from daemon.jobs.status import JobListener, error_info, iso, status_document
from daemon.jobs.steps import Step, steps_for
from daemon.logs import JobLogs
from daemon.remote.api import FineTuneAPI
from daemon.remote.gate import RemoteGate
from daemon.spec import JobSpec, parse_spec
from daemon.spool import outbox
from daemon.spool.names import printable

log = structlog.get_logger()

PROGRESS_WRITE_INTERVAL_S = 1.0
# The errors a job ends `failed` with, recorded with their message (any other exception is a crash: traceback too).
JOB_FAILURES = (BadInput, RemoteRejected, RemoteJobFailed, TransientError, Paused)


@dataclass
class LiveJob:
    """What the runner knows about a job in memory: its task, its current step's progress, a cancel request."""

    task: asyncio.Task[None]
    progress: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    last_write: float = 0.0


class Runner:
    """Admits, starts, resumes, cancels and bounds jobs; publishes their status; answers readers."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        gate: RemoteGate,
        *,
        steps: Sequence[Step],
        job_logs: JobLogs,
        remote: FineTuneAPI | None = None,
        on_change: Callable[[], None] = lambda: None,
        listeners: Sequence[JobListener] = (),
    ) -> None:
        self.settings, self._store, self._gate, self._remote = settings, store, gate, remote
        self._steps = steps
        self._job_logs = job_logs
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._live: dict[str, LiveJob] = {}
        self._on_change = on_change
        self._listeners = tuple(listeners)

    # -- what readers (the service, the status server) may know -----------------------------------------------
    @property
    def busy(self) -> bool:
        """True while any job task is alive."""
        return bool(self._live)

    @property
    def active_jobs(self) -> int:
        """Jobs with a running task."""
        return len(self._live)

    async def document(self, job_id: str) -> dict[str, Any] | None:
        """One job's status document (as in its status.json), or None for an unknown job."""
        record = await self._store.job(job_id)
        if record is None:
            return None
        return status_document(record, self._progress_of(job_id), self._gate.reason)

    async def documents(self) -> list[dict[str, Any]]:
        """Every job's status document, oldest first."""
        found = [await self.document(job_id) for job_id in await self._store.job_ids()]
        return [d for d in found if d is not None]

    async def counts(self) -> Counter[str]:
        """How many jobs are in each status."""
        return Counter(str(d["status"]) for d in await self.documents())

    async def known(self, job_id: str) -> bool:
        """True if a job (or a rejected input) with this id exists."""
        return await self._store.job(job_id) is not None

    # -- admissions (intake decides, the runner writes) --------------------------------------------------------
    async def admit(self, job_id: str, name: str, claimed: Path) -> None:
        """Record a claimed spec (`claimed`: its absolute path) as a job, publish its outbox folder, and start it."""
        await self._store.add_job(job_id, name, str(claimed))
        initial = {"job_id": job_id, "name": name, "status": str(JobStatus.queued), "created_at": iso(time.time())}
        await asyncio.to_thread(outbox.create_job_folder, self.settings.outbox, job_id, claimed, initial)
        await self.publish(job_id)
        self.start(job_id)

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
                await self._job_logs.open(job_id, outbox.job_dir(self.settings.outbox, job_id) / outbox.LOG_FILE)
                try:
                    await self._job_boundary(job_id)
                finally:
                    await asyncio.shield(self._job_logs.close(job_id))

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
            status, error = JobStatus.failed, error_info(exc, await self._current_step(job_id))
            log.error("job_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
        except Exception as exc:  # noqa: BLE001 - the per-job boundary: record it, keep the daemon and other jobs going
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
        return self._context(job_id, spec, dict(record.journal))

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

    def _context(self, job_id: str, spec: JobSpec, journal: dict[str, str]) -> JobContext:
        return JobContext(
            job_id=job_id,
            spec=spec,
            settings=self.settings,
            out_dir=outbox.job_dir(self.settings.outbox, job_id),
            work_dir=self.settings.jobs_dir / job_id,
            journal=StoreJournal(self._store, self.settings, job_id, journal),
            items=StoreItems(self._store, job_id),
            progress=lambda **fields: self._progress(job_id, fields),
            remote=self._remote,
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
            except Exception:
                await asyncio.shield(self._store.fail_step(ctx.job_id, step.name))
                raise
            log.info("step_finished", attempt=attempt, duration_s=round(time.monotonic() - started, 3))
            return output

    async def _wait_gate(self, job_id: str) -> None:
        if self._gate.is_open:
            return
        await self._store.set_status(job_id, JobStatus.paused)
        await self.publish(job_id)
        await self._gate.wait_open()
        await self._store.set_status(job_id, JobStatus.running)

    # -- status -----------------------------------------------------------------------------------------------
    async def _progress(self, job_id: str, fields: dict[str, Any]) -> None:
        live = self._live.get(job_id)
        if live is None:
            return
        live.progress = dict(fields)
        now = time.monotonic()
        if now - live.last_write >= PROGRESS_WRITE_INTERVAL_S:
            live.last_write = now
            await self.publish(job_id)

    def _progress_of(self, job_id: str) -> dict[str, Any]:
        live = self._live.get(job_id)
        return live.progress if live is not None else {}

    async def publish(self, job_id: str) -> None:
        """Rewrite the job's status.json from the state store (atomically)."""
        document = await self.document(job_id)
        if document is None:
            return
        await asyncio.to_thread(outbox.write_status, self.settings.outbox, job_id, document)
        self._on_change()
        await self._tell(document, final=False)

    async def _tell(self, document: dict[str, Any], *, final: bool) -> None:
        for listener in self._listeners:
            await listener.job_published(document, final=final)

    async def _finish(
        self, job_id: str, status: JobStatus, error: dict[str, Any] | None, duration_s: float | None = None
    ) -> None:
        await self._store.set_status(job_id, status, error=error)
        self._progress_of(job_id).clear()
        await self.publish(job_id)
        final = await self.document(job_id)
        if final is not None:
            await self._tell(final, final=True)
        record = await self._store.job(job_id)
        log.info(
            "job_finished",
            job_id=job_id,
            status=str(status),
            duration_s=round(duration_s, 3) if duration_s is not None else None,
            steps={
                n: round(s.finished_at - s.started_at, 3)
                for n, s in (record.steps.items() if record else ())
                if s.finished_at is not None and s.started_at is not None
            },
            remote=remote_ids(record.journal) if record else {},
            error_type=error["type"] if error else None,
        )

    async def _current_step(self, job_id: str) -> str | None:
        record = await self._store.job(job_id)
        return record.step if record else None
