"""The end of a dedicated endpoint's life: its spend guard, and its deletion with what it cost.

`release` is a step of its own after `evaluate` (so the report shows the cost); `cleanup` is the `serve` step's
cleanup, run at every end of the job (completed, failed, cancelled; after a restart too): both delete the endpoint
the journal names (or, after a crash between the intent and the id, the one found by the journaled tag), record
the minutes and dollars in the journal (`serve.released`, shown in status.json), `endpoint.json` and
`metrics.json`, and are idempotent. The guard (a task owned here, tied to the job's task) stops the endpoint
when the estimated spend (minutes since creation x price per minute) reaches `max_endpoint_usd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import FinetunedError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import usd
from daemon.remote.api import FineTuneAPI
from daemon.remote.backoff import retry
from daemon.spool.files import atomic_write_json

DISPLAY_PREFIX = "finetuned-"  # every endpoint this daemon creates: display_name = prefix + the job's tag
ENDPOINT_FILE = "endpoint.json"
METRICS_FILE = "metrics.json"
log = structlog.get_logger()
_guards: dict[str, asyncio.Task[None]] = {}


def spent_usd(ctx: JobContext, now_s: float) -> tuple[int, float]:
    """(started minutes, dollars) since the journaled creation, at the journaled price per minute."""
    created = float(ctx.journal.get(JournalKey.ENDPOINT_CREATED_AT) or now_s)
    price = float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0)
    minutes = max(1, math.ceil((now_s - created) / 60 - 1e-9))
    return minutes, round(minutes * price, 6)


def arm_budget_guard(ctx: JobContext, remote: FineTuneAPI, endpoint_id: str) -> None:
    """With `max_endpoint_usd`, stop the endpoint once the spend reaches it (the guard ends with the job)."""
    evaluate = ctx.spec.evaluate
    price = float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0)
    if evaluate is None or evaluate.max_endpoint_usd is None or price <= 0:
        return
    created = float(ctx.journal.get(JournalKey.ENDPOINT_CREATED_AT) or time.time())
    stop_at = created + evaluate.max_endpoint_usd / price * 60
    _disarm(ctx.job_id)
    guard = asyncio.create_task(_stop_at(remote, endpoint_id, stop_at, evaluate.max_endpoint_usd))
    _guards[ctx.job_id] = guard
    job_task = asyncio.current_task()
    if job_task is not None:
        job_task.add_done_callback(lambda _: guard.cancel())


def rearm_budget_guard(ctx: JobContext, served: StepOutput | None) -> None:
    """For `evaluate`, which may run in a restarted daemon after `serve` was checkpointed: guard its endpoint
    again (a no-op when the model is served serverless, without a budget, or already guarded)."""
    if not served or served.get("mode") != "dedicated" or ctx.remote is None or ctx.job_id in _guards:
        return
    arm_budget_guard(ctx, ctx.remote, str(served["endpoint_id"]))


async def _stop_at(remote: FineTuneAPI, endpoint_id: str, stop_at: float, budget_usd: float) -> None:
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    log.error("endpoint_budget_reached", endpoint_id=endpoint_id, max_endpoint_usd=budget_usd)
    try:
        await remote.stop_endpoint(endpoint_id)
    except FinetunedError as exc:
        log.error("endpoint_stop_failed", endpoint_id=endpoint_id, error=str(exc))


def _disarm(job_id: str) -> None:
    guard = _guards.pop(job_id, None)
    if guard is not None:
        guard.cancel()


def budget_reached(ctx: JobContext) -> bool:
    """Whether the spend guard has stopped this job's endpoint."""
    guard = _guards.get(ctx.job_id)
    return guard is not None and guard.done() and not guard.cancelled()


async def _delete(ctx: JobContext, remote: FineTuneAPI, tag: str) -> str | None:
    """Delete the journaled endpoint (or the ones carrying the tag); returns the id deleted, if any."""
    policy = ctx.settings.retry_policy
    endpoint_id = ctx.journal.get(JournalKey.ENDPOINT_ID)
    ids = [endpoint_id] if endpoint_id else []
    if not ids:
        ids = [e.id for e in await retry(lambda: remote.find_endpoints(tag), policy=policy, what="list endpoints")]
    for found in ids:
        await retry(functools.partial(remote.delete_endpoint, found), policy=policy, what="delete endpoint")
        log.info("endpoint_deleted", endpoint_id=found, tag=tag)
    return ids[0] if ids else None


async def _released(ctx: JobContext) -> dict[str, Any] | None:
    """Delete the endpoint once and record what it cost; None when the job never asked for one."""
    reached = budget_reached(ctx)
    _disarm(ctx.job_id)
    done = ctx.journal.get(JournalKey.ENDPOINT_RELEASED)
    if done:
        return dict(json.loads(done))
    tag = ctx.journal.get(JournalKey.ENDPOINT_INTENT)
    if not tag or ctx.remote is None:
        return None
    deleted = await _delete(ctx, ctx.remote, tag)
    minutes, cost = spent_usd(ctx, time.time()) if deleted else (0, 0.0)
    record = {
        "endpoint_id": deleted,
        "usd_per_minute": float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0),
        "minutes": minutes,
        "cost_usd": cost,
        "budget_reached": reached,
    }
    await ctx.journal.record(JournalKey.ENDPOINT_RELEASED, json.dumps(record))
    await asyncio.to_thread(_publish, ctx.out_dir, record)
    log.info("endpoint_released", **record)
    return record


def _publish(out_dir: Path, record: dict[str, Any]) -> None:
    """endpoint.json, and a `serving` entry in metrics.json when the evaluation wrote one (blocking)."""
    atomic_write_json(out_dir / ENDPOINT_FILE, record)
    metrics_path = out_dir / METRICS_FILE
    if metrics_path.exists():
        with contextlib.suppress(ValueError):
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            if isinstance(metrics, dict):
                atomic_write_json(metrics_path, {**metrics, "serving": record})


async def release(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Step `release`: delete the endpoint now the evaluation is done; the output says what it cost."""
    record = await _released(ctx)
    if record is None:
        return {"mode": str(inputs.get("serve", {}).get("mode") or "serverless")}
    return {"mode": "dedicated", **record, "note": cost_note(record)}


async def cleanup(ctx: JobContext, outcome: str) -> None:
    """At any end of the job: the endpoint is deleted (errors are logged; the start-up sweep retries)."""
    try:
        record = await _released(ctx)
    except FinetunedError as exc:
        log.error("endpoint_release_failed", outcome=outcome, error=str(exc))
        return
    if record is not None:
        log.info("endpoint_cleanup_done", outcome=outcome, endpoint_id=record.get("endpoint_id"))


def cost_note(record: dict[str, Any]) -> str:
    """The report's line about the endpoint's cost."""
    price, minutes = float(record.get("usd_per_minute") or 0.0), int(record.get("minutes") or 0)
    line = (
        f"Dedicated endpoint {record.get('endpoint_id')}: {minutes} min x {usd(price)}/min = "
        f"{usd(float(record.get('cost_usd') or 0.0))} (estimated from the time it ran; deleted after evaluation)."
    )
    if record.get("budget_reached"):
        line += " It was stopped when its spend reached evaluate.max_endpoint_usd."
    return line
