"""Step `poll`: follow the remote fine-tune to a terminal status, saving its training events as they arrive.

Polls with exponential backoff and full jitter between `poll_min_s` and `poll_max_s` (reset when the status
changes), honours Retry-After, retries transient errors itself, and gives up at a journaled deadline
(`finetune.poll_deadline_h` after the first poll). Events go to `outbox/<job>/events.jsonl`, each once.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog

from daemon.errors import FinetunedError, RemoteJobFailed, RemoteRejected, TransientError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import from_nanodollars
from daemon.remote.api import FAILED_STATUSES, TERMINAL_STATUSES, FineTuneAPI, RemoteJob, RemoteStatus
from daemon.remote.backoff import Backoff, retry
from daemon.spool.files import atomic_write_bytes
from handlers.training.curve import CHECKPOINTS_FILE, TRAINING_METRICS_FILE, curve_from_metrics
from handlers.training.events import EVENTS_FILE, EventLog, loss_curve
from handlers.training.stopping import stop_reason

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
            await _check_stop(ctx, job, events)
        delay = backoff.next_delay(retry_after)
        if time.time() + delay > deadline:
            raise _deadline_error(ctx, fine_tune_id, last_status)
        await asyncio.sleep(delay)


async def _check_stop(ctx: JobContext, job: RemoteJob, events: EventLog) -> None:
    """Apply `finetune.stop_when` to the curve so far; on a reason, record it, then cancel the remote job."""
    rules = ctx.spec.finetune.stop_when if ctx.spec.finetune else None
    if rules is None or ctx.journal.get(JournalKey.POLL_STOPPED):
        return
    remote = ctx.fine_tuning()
    try:
        rows = await remote.metrics(job.id)
    except FinetunedError as exc:  # the curve then comes from the events, as in the report
        log.warning("training_metrics_unavailable", fine_tune_id=job.id, error=str(exc))
        rows = None
    curve = curve_from_metrics(rows) if rows else loss_curve(events.events)
    reason = stop_reason(curve, rules, price_so_far_usd=_price_so_far(job))
    if reason is None:
        return
    stopped = {"reason": reason, "steps_completed": job.raw.get("steps_completed"), "at": time.time()}
    await ctx.journal.record(JournalKey.POLL_STOPPED, json.dumps(stopped))
    log.warning("fine_tune_stopping", fine_tune_id=job.id, reason=reason)
    await _cancel(ctx, job.id)


async def _cancel(ctx: JobContext, fine_tune_id: str) -> None:
    remote = ctx.fine_tuning()
    await retry(lambda: remote.cancel(fine_tune_id), policy=ctx.settings.retry_policy, what="cancel fine-tune")


def _price_so_far(job: RemoteJob) -> float | None:
    """The job's price pro rata of the steps done (Together bills a cancelled job for what it trained)."""
    total = from_nanodollars(job.raw.get("total_price"))
    done, steps = job.raw.get("steps_completed"), job.raw.get("total_steps")
    if total is None or not isinstance(done, int) or not isinstance(steps, int) or steps <= 0:
        return None
    return total * done / steps


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


async def _write_json(path: Any, value: Any) -> None:
    data = json.dumps(value, ensure_ascii=False, indent=1).encode()
    await asyncio.to_thread(atomic_write_bytes, path, data)


async def _save_training_record(ctx: JobContext, fine_tune_id: str) -> dict[str, Any]:
    """Save the metrics (the curve's first source) and checkpoints of the finished job; a failure here only loses
    them (the curve then comes from the events). Returns what the step's output says about them."""
    remote, policy = ctx.fine_tuning(), ctx.settings.retry_policy
    found: dict[str, Any] = {"metrics_rows": None, "checkpoints": None, "final_loss_from_metrics": None}
    try:
        rows = await retry(lambda: remote.metrics(fine_tune_id), policy=policy, what="list metrics")
        if rows is not None:
            await _write_json(ctx.out_dir / TRAINING_METRICS_FILE, {"fine_tune_id": fine_tune_id, "metrics": rows})
            curve = curve_from_metrics(rows)
            found["metrics_rows"] = len(rows)
            found["final_loss_from_metrics"] = curve.train[-1][1] if curve.train else None
    except FinetunedError as exc:
        log.warning("training_metrics_unavailable", fine_tune_id=fine_tune_id, error=str(exc))
    try:
        checkpoints = await retry(lambda: remote.checkpoints(fine_tune_id), policy=policy, what="list checkpoints")
        await _write_json(ctx.out_dir / CHECKPOINTS_FILE, {"fine_tune_id": fine_tune_id, "checkpoints": checkpoints})
        found["checkpoints"] = len(checkpoints)
    except FinetunedError as exc:
        log.warning("checkpoints_unavailable", fine_tune_id=fine_tune_id, error=str(exc))
    return found


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Poll `create.fine_tune_id` to the end; output the fine-tuned model name, or raise RemoteJobFailed."""
    fine_tune_id = str(inputs["create"]["fine_tune_id"])
    events = await EventLog.load(ctx.out_dir / EVENTS_FILE)
    if ctx.journal.get(JournalKey.POLL_STOPPED):
        await _cancel(ctx, fine_tune_id)  # a crash may have come between the record and the cancel
    job = await _poll_until_terminal(ctx, fine_tune_id, events)
    status = RemoteStatus(job.status)
    await _status_changed(ctx, job)
    stopped = ctx.journal.get(JournalKey.POLL_STOPPED)
    if stopped and status is RemoteStatus.CANCELLED:
        return await _stopped_output(ctx, job, events, json.loads(stopped))
    if status in FAILED_STATUSES:
        reason = events.failure_message() or "no reason given"
        raise RemoteJobFailed(f"Together fine-tune {fine_tune_id} ended {status.value}: {reason}", remote_status=status)
    model = job.model_output_name
    if not model:
        raise RemoteRejected(f"Together fine-tune {fine_tune_id} completed without a model_output_name")
    await ctx.journal.record(JournalKey.MODEL, model)
    log.info("fine_tune_completed", fine_tune_id=fine_tune_id, model=model, events=len(events.events))
    record = await _save_training_record(ctx, fine_tune_id)
    metrics_loss = record.pop("final_loss_from_metrics")
    return {
        "fine_tune_id": fine_tune_id,
        "status": status.value,
        "model": model,
        "events_file": EVENTS_FILE,
        "events": len(events.events),
        "final_loss": metrics_loss if metrics_loss is not None else events.last_loss(),
        "total_price_usd": from_nanodollars(job.raw.get("total_price")),
        "training_metrics_file": TRAINING_METRICS_FILE if record["metrics_rows"] is not None else None,
        "checkpoints_file": CHECKPOINTS_FILE if record["checkpoints"] is not None else None,
        **record,
    }


async def _stopped_output(ctx: JobContext, job: RemoteJob, events: EventLog, stopped: dict[str, Any]) -> StepOutput:
    """A run a stop rule ended: no model to evaluate; its curve, checkpoints and the reason are kept."""
    log.info("fine_tune_stopped", fine_tune_id=job.id, reason=stopped["reason"])
    record = await _save_training_record(ctx, job.id)
    record.pop("final_loss_from_metrics")
    return {
        "fine_tune_id": job.id,
        "status": job.status,
        "model": None,
        "stopped": stopped,
        "events_file": EVENTS_FILE,
        "events": len(events.events),
        "final_loss": events.last_loss(),
        "total_price_usd": from_nanodollars(job.raw.get("total_price")),
        "training_metrics_file": TRAINING_METRICS_FILE if record["metrics_rows"] is not None else None,
        "checkpoints_file": CHECKPOINTS_FILE if record["checkpoints"] is not None else None,
        **record,
    }
