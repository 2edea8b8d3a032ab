"""The runner: runs claimed jobs through their steps under a bound, one error boundary per job, step by step.

It is the only writer of the state store and of status.json; handlers get capabilities through JobContext.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from daemon.config import Settings
from daemon.errors import (
    BadInput,
    FinetunedError,
    JobCancelled,
    Paused,
    RemoteJobFailed,
    RemoteRejected,
    TransientError,
)
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.jobs.faults import crash_point
from daemon.jobs.state import TERMINAL, JobStatus, StateStore
from daemon.jobs.status import remote_ids, status_document
from daemon.jobs.steps import Step, steps_for
from daemon.logs import JOB_SINKS
from daemon.remote.backoff import Backoff
from daemon.remote.gate import RemoteGate
from daemon.spec import JobSpec, parse_spec
from daemon.spool import outbox

log = structlog.get_logger()

PROGRESS_WRITE_INTERVAL_S = 1.0


class AttemptsExhausted(FinetunedError):
    """A step was started too many times without finishing (the process died or it kept failing)."""


@dataclass
class LiveJob:
    """What the runner knows about a job in memory: its task, its current step's progress, a cancel request."""

    task: asyncio.Task[None]
    progress: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    last_write: float = 0.0


class StoreJournal:
    """`Journal` over the state store, with the values cached in memory for `get`."""

    def __init__(self, store: StateStore, settings: Settings, job_id: str, values: dict[str, str]) -> None:
        self._store, self._settings, self._job_id, self._values = store, settings, job_id, values

    def get(self, key: str) -> str | None:
        """The recorded value, or None."""
        return self._values.get(key)

    async def record(self, key: str, value: str) -> None:
        """Durably record; the crash point `journal:<key>` fires just before, for the adopt-after-crash tests."""
        crash_point(self._settings, f"journal:{key}", self._job_id)
        await asyncio.shield(self._store.record(self._job_id, key, value))
        self._values[key] = value


class StoreItems:
    """`ItemStore` over the state store."""

    def __init__(self, store: StateStore, job_id: str) -> None:
        self._store, self._job_id = store, job_id

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        """Every saved item of `group`."""
        return await self._store.load_items(self._job_id, group)

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Durably save one item."""
        await asyncio.shield(self._store.save_item(self._job_id, group, item_id, record))


class Runner:
    """Starts, resumes, cancels and bounds jobs; publishes their status."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        gate: RemoteGate,
        *,
        steps: Sequence[Step],
        remote: Any = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings, self.store, self.gate, self.remote = settings, store, gate, remote
        self._steps = steps
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self.live: dict[str, LiveJob] = {}
        self._on_change = on_change

    @property
    def busy(self) -> bool:
        """True while any job task is alive."""
        return bool(self.live)

    def start(self, job_id: str) -> None:
        """Run (or resume) a job in its own owned task; a job already running is left alone."""
        if job_id in self.live:
            return
        task = asyncio.create_task(self._run_job(job_id), name=f"job:{job_id}")
        self.live[job_id] = LiveJob(task=task)
        task.add_done_callback(lambda t: self._job_done(job_id, t))

    def _job_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self.live.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", job_id=job_id, error=repr(task.exception()))
        self._on_change()

    async def request_cancel(self, job_id: str) -> bool:
        """Cancel a job: a running one is interrupted, a queued one ends at once. False if unknown or finished."""
        record = await self.store.job(job_id)
        if record is None or record.status in TERMINAL:
            return False
        live = self.live.get(job_id)
        if live is not None:
            live.cancel_requested = True
            live.task.cancel()
            return True
        await self._finish(job_id, JobStatus.cancelled, None)
        return True

    async def drain(self, grace_s: float) -> None:
        """Let running steps finish for up to `grace_s`, then cancel the rest (their state is saved)."""
        tasks = [live.task for live in self.live.values()]
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
                await self._job_boundary(job_id)

    async def _job_boundary(self, job_id: str) -> None:
        """The one place a job's failure is caught: it is recorded, and no other job is affected."""
        started = time.monotonic()
        JOB_SINKS.open(job_id, outbox.job_dir(self.settings.outbox, job_id) / outbox.LOG_FILE)
        status: JobStatus | None = None
        error: dict[str, Any] | None = None
        try:
            await self._execute(job_id)
            status = JobStatus.completed
        except asyncio.CancelledError:
            live = self.live.get(job_id)
            if live is None or not live.cancel_requested:
                log.info("job_interrupted", reason="shutdown; resumes from its last checkpoint on restart")
                raise
            await asyncio.shield(self._cancel_remote(job_id))
            status = JobStatus.cancelled
        except JobCancelled:
            status = JobStatus.cancelled
        except (BadInput, RemoteRejected, RemoteJobFailed, AttemptsExhausted, TransientError, Paused) as exc:
            status, error = JobStatus.failed, _error_info(exc, await self._current_step(job_id))
            log.error("job_failed", error_type=type(exc).__name__, error=str(exc)[:2000])
        except Exception as exc:  # noqa: BLE001 - the per-job boundary: record it, keep the daemon and other jobs going
            log.exception("job_crashed")
            status, error = JobStatus.failed, _error_info(exc, await self._current_step(job_id))
        finally:
            if status is not None:
                await asyncio.shield(self._finish(job_id, status, error, time.monotonic() - started))
            JOB_SINKS.close(job_id)

    async def _execute(self, job_id: str) -> None:
        record = await self.store.job(job_id)
        assert record is not None, f"job {job_id} vanished from the state store"
        if record.status in TERMINAL:
            return
        spec_path = Path(record.spec_file)
        spec = parse_spec(await asyncio.to_thread(spec_path.read_bytes), spec_path.name)
        await self.store.set_status(job_id, JobStatus.running)
        await self.publish(job_id)
        log.info("job_started", name=spec.name, resumed=bool(record.steps))
        ctx = self._context(job_id, spec, dict(record.journal))
        outputs: dict[str, StepOutput] = {}
        for step in steps_for(spec, self._steps):
            saved = record.steps.get(step.name)
            if saved is not None and saved.output is not None and saved.finished_at is not None:
                outputs[step.name] = saved.output
                continue
            outputs[step.name] = await self._run_step(ctx, step, outputs)

    def _context(self, job_id: str, spec: JobSpec, journal: dict[str, str]) -> JobContext:
        work_dir = self.settings.jobs_dir / job_id
        return JobContext(
            job_id=job_id,
            spec=spec,
            settings=self.settings,
            out_dir=outbox.job_dir(self.settings.outbox, job_id),
            work_dir=work_dir,
            journal=StoreJournal(self.store, self.settings, job_id, journal),
            items=StoreItems(self.store, job_id),
            progress=lambda **fields: self._progress(job_id, fields),
            remote=self.remote,
        )

    async def _run_step(self, ctx: JobContext, step: Step, outputs: StepInputs) -> StepOutput:
        """Run one step to a saved checkpoint: attempts counted first, pauses waited out, transient errors retried."""
        delays = Backoff(base_s=self.settings.poll_min_s, cap_s=self.settings.poll_max_s)
        while True:
            if step.needs_together and self.remote is None:
                raise BadInput(
                    f"step {step.name} needs Together: set TOGETHER_API_KEY, or run with --sandbox to use the simulator"
                )
            if step.remote:
                await self._wait_gate(ctx.job_id)
            attempt = await self.store.begin_step(ctx.job_id, step.name)
            if attempt > self.settings.max_step_attempts:
                raise AttemptsExhausted(
                    f"step {step.name} was started {attempt - 1} times without finishing "
                    f"(limit FINETUNED_MAX_STEP_ATTEMPTS={self.settings.max_step_attempts})"
                )
            crash_point(self.settings, f"before:{step.name}", ctx.job_id)
            output = await self._attempt(ctx, step, attempt, delays, outputs)
            if output is not None:
                await asyncio.shield(self.store.finish_step(ctx.job_id, step.name, output))
                self.live_progress(ctx.job_id).clear()
                await self.publish(ctx.job_id)
                crash_point(self.settings, f"after:{step.name}", ctx.job_id)
                return output

    async def _attempt(
        self, ctx: JobContext, step: Step, attempt: int, delays: Backoff, outputs: StepInputs
    ) -> StepOutput | None:
        """One try of a step: its output, or None when it should be tried again."""
        with bound_contextvars(step=step.name):
            log.info("step_started", attempt=attempt)
            await self.publish(ctx.job_id)
            started = time.monotonic()
            try:
                output = await step.run(ctx, outputs)
            except Paused as exc:
                await asyncio.shield(self.store.refund_attempt(ctx.job_id, step.name))
                self.gate.pause(exc)
                return None
            except TransientError as exc:
                if attempt >= self.settings.max_step_attempts:
                    raise
                delay = delays.next_delay(exc.retry_after_s)
                log.warning("step_retry", attempt=attempt, delay_s=round(delay, 2), error=str(exc)[:300])
                await asyncio.sleep(delay)
                return None
            except asyncio.CancelledError:
                await asyncio.shield(self.store.refund_attempt(ctx.job_id, step.name))
                raise
            log.info("step_finished", attempt=attempt, duration_s=round(time.monotonic() - started, 3))
            return output

    async def _wait_gate(self, job_id: str) -> None:
        if self.gate.is_open:
            return
        await self.store.set_status(job_id, JobStatus.paused)
        await self.publish(job_id)
        await self.gate.wait_open()
        await self.store.set_status(job_id, JobStatus.running)

    async def _progress(self, job_id: str, fields: dict[str, Any]) -> None:
        live = self.live.get(job_id)
        if live is None:
            return
        live.progress = dict(fields)
        now = time.monotonic()
        if now - live.last_write >= PROGRESS_WRITE_INTERVAL_S:
            live.last_write = now
            await self.publish(job_id)

    def live_progress(self, job_id: str) -> dict[str, Any]:
        """The current step's progress of a running job (empty when none)."""
        live = self.live.get(job_id)
        return live.progress if live is not None else {}

    async def publish(self, job_id: str) -> None:
        """Rewrite the job's status.json from the state store (atomically)."""
        record = await self.store.job(job_id)
        if record is None:
            return
        document = status_document(record, self.live_progress(job_id), self.gate.reason)
        await asyncio.to_thread(outbox.write_status, self.settings.outbox, job_id, document)
        self._on_change()

    async def _finish(
        self, job_id: str, status: JobStatus, error: dict[str, Any] | None, duration_s: float | None = None
    ) -> None:
        await self.store.set_status(job_id, status, error=error)
        await self.publish(job_id)
        record = await self.store.job(job_id)
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

    async def _cancel_remote(self, job_id: str) -> None:
        record = await self.store.job(job_id)
        fine_tune_id = record.journal.get("fine_tune_id") if record else None
        if fine_tune_id and self.remote is not None and not (record and record.journal.get("model")):
            try:
                await self.remote.cancel(fine_tune_id)
                log.info("remote_job_cancelled", fine_tune_id=fine_tune_id)
            except FinetunedError as exc:
                log.error("remote_cancel_failed", fine_tune_id=fine_tune_id, error=str(exc))

    async def _current_step(self, job_id: str) -> str | None:
        record = await self.store.job(job_id)
        return record.step if record else None


def _error_info(exc: BaseException, step: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "step": step}
    for attr in ("http_status", "remote_status", "problems"):
        value = getattr(exc, attr, None)
        if value is not None:
            info[attr] = value
    return info
