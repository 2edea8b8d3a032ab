"""Step `poll`: follow the remote fine-tune to a terminal status, saving its training events as they arrive.

Polls with exponential backoff and full jitter between `poll_min_s` and `poll_max_s` (reset when the status
changes), honours Retry-After, retries transient errors itself, and gives up at a journaled deadline
(`finetune.poll_deadline_h` after the first poll). Events go to `outbox/<job>/events.jsonl`, each once.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from daemon.errors import RemoteJobFailed, RemoteRejected, TransientError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import from_nanodollars
from daemon.remote.api import FAILED_STATUSES, TERMINAL_STATUSES, FineTuneAPI, RemoteJob, RemoteStatus
from daemon.remote.backoff import Backoff
from handlers.training.events import EVENTS_FILE, EventLog

log = structlog.get_logger()


async def _deadline_at(ctx: JobContext) -> float:
    """Epoch seconds after which polling gives up; journaled so a restart keeps the original deadline."""
    recorded = ctx.journal.get(JournalKey.POLL_DEADLINE)
    if recorded:
        return float(recorded)
    assert ctx.spec.finetune is not None  # the create step ran, so the spec has a finetune section
    deadline = time.time() + ctx.spec.finetune.poll_deadline_h * 3600
    await ctx.journal.record(JournalKey.POLL_DEADLINE, f"{deadline:.3f}")
    return deadline


async def _observe(remote: FineTuneAPI, fine_tune_id: str, events: EventLog) -> RemoteJob:
    job = await remote.retrieve(fine_tune_id)
    added = await events.add(await remote.events(fine_tune_id))
    if added:
        log.info("training_events_saved", fine_tune_id=fine_tune_id, new=added, total=len(events.events))
    return job


async def _poll_until_terminal(ctx: JobContext, fine_tune_id: str, events: EventLog) -> RemoteJob:
    remote = ctx.fine_tuning()
    deadline = await _deadline_at(ctx)
    backoff = Backoff(base_s=ctx.settings.poll_min_s, cap_s=ctx.settings.poll_max_s, floor_s=ctx.settings.poll_min_s)
    last_status: str | None = None
    while True:
        retry_after: float | None = None
        try:
            job = await _observe(remote, fine_tune_id, events)
        except TransientError as exc:
            log.warning("poll_failed_retrying", fine_tune_id=fine_tune_id, error=str(exc), http_status=exc.http_status)
            retry_after = exc.retry_after_s
        else:
            if job.known_status in TERMINAL_STATUSES:
                return job
            if job.status != last_status:
                last_status = job.status
                backoff.reset()
                await _status_changed(ctx, job)
        delay = backoff.next_delay(retry_after)
        if time.time() + delay > deadline:
            raise _deadline_error(ctx, fine_tune_id, last_status)
        await asyncio.sleep(delay)


async def _status_changed(ctx: JobContext, job: RemoteJob) -> None:
    if job.known_status is None:
        log.warning(
            "remote_status_unknown", fine_tune_id=job.id, status=job.status, known=[s.value for s in RemoteStatus]
        )
    else:
        log.info("remote_status", fine_tune_id=job.id, status=job.status)
    raw = job.raw
    await ctx.progress(
        fine_tune_id=job.id,
        remote_status=job.status,
        steps_completed=raw.get("steps_completed"),
        total_steps=raw.get("total_steps"),
    )


def _deadline_error(ctx: JobContext, fine_tune_id: str, status: str | None) -> RemoteJobFailed:
    hours = ctx.spec.finetune.poll_deadline_h if ctx.spec.finetune else 0
    return RemoteJobFailed(
        f"fine-tune {fine_tune_id} did not finish within finetune.poll_deadline_h={hours:g} h "
        f"(last status {status or 'unknown'}); it was left as it is on Together",
        remote_status=status or "unknown",
    )


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Poll `create.fine_tune_id` to the end; output the fine-tuned model name, or raise RemoteJobFailed."""
    fine_tune_id = str(inputs["create"]["fine_tune_id"])
    events = await EventLog.load(ctx.out_dir / EVENTS_FILE)
    job = await _poll_until_terminal(ctx, fine_tune_id, events)
    status = RemoteStatus(job.status)
    await _status_changed(ctx, job)
    if status in FAILED_STATUSES:
        reason = events.failure_message() or "no reason given"
        raise RemoteJobFailed(f"Together fine-tune {fine_tune_id} ended {status.value}: {reason}", remote_status=status)
    model = job.model_output_name
    if not model:
        raise RemoteRejected(f"Together fine-tune {fine_tune_id} completed without a model_output_name")
    await ctx.journal.record(JournalKey.MODEL, model)
    log.info("fine_tune_completed", fine_tune_id=fine_tune_id, model=model, events=len(events.events))
    return {
        "fine_tune_id": fine_tune_id,
        "status": status.value,
        "model": model,
        "events_file": EVENTS_FILE,
        "events": len(events.events),
        "final_loss": events.last_loss(),
        "total_price_usd": from_nanodollars(job.raw.get("total_price")),
    }
