"""The end of a dedicated endpoint's life: its spend guard, and its deletion with what it cost.

`release` is a step of its own after `evaluate` (so the report shows the cost); `cleanup` is the `serve` step's
cleanup, run at every end of the job (completed, failed, cancelled; after a restart too): both delete the endpoint
the journal names (or, after a crash between the intent and the id, the one found by the journaled tag), on the
API the journal says it was created on, record the minutes and dollars in the journal (`serve.released`, shown in
status.json), `endpoint.json` and `metrics.json`, and are idempotent. The minutes are counted on the provider's
clock (its creation and stop timestamps, else the Date of the answer that stopped it), the daemon's wall clock
only when its answers carry neither. The guard (a task owned here, tied to the job's task) keeps the bill within
`max_endpoint_usd`: Together bills every started minute, so it stops the endpoint `STOP_MARGIN_S` before the first
minute the budget cannot pay for would start, reading the time billed so far on the provider's clock (its creation
timestamp to the Date of its latest answer; the daemon's clock when they are absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import FinetunedError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import usd
from daemon.remote.api import (
    ENDPOINT_STOPPED_STATES,
    Clock,
    EndpointUsage,
    FineTuneAPI,
    RemoteEndpoint,
    Surface,
)
from daemon.remote.backoff import retry
from daemon.spool.files import atomic_write_json

DISPLAY_PREFIX = "finetuned-"  # every endpoint this daemon creates: display_name = prefix + the job's tag
ENDPOINT_FILE = "endpoint.json"
STOP_MARGIN_S = 10.0  # the guard stops this long (provider time) before an unpaid minute would start
GUARD_MIN_WAIT_S, GUARD_MAX_WAIT_S = 0.01, 60.0  # between the guard's reads of the endpoint, on the daemon's clock
Reader = Callable[[], Awaitable[RemoteEndpoint | None]]
METRICS_FILE = "metrics.json"
CLOCK_WORDS: dict[str, str] = {
    Clock.PROVIDER: "between Together's own creation and stop timestamps",
    Clock.PROVIDER_DATE: "from Together's creation timestamp to the Date of its answer to the stop",
    Clock.DAEMON: "on the daemon's clock, from creation to deletion",
}
log = structlog.get_logger()
_guards: dict[str, tuple[SpendGuard, asyncio.Task[None]]] = {}


def journaled_surface(ctx: JobContext) -> Surface | None:
    """The API the job's endpoint was (or is being) created on; an intent journaled without one predates v2: v1."""
    value = ctx.journal.get(JournalKey.ENDPOINT_SURFACE)
    if value:
        return Surface(value)
    return Surface.V1 if ctx.journal.get(JournalKey.ENDPOINT_INTENT) else None


def arm_budget_guard(ctx: JobContext, remote: FineTuneAPI, endpoint_id: str) -> None:
    """With `max_endpoint_usd`, stop the endpoint before its bill would pass it (the guard ends with the job)."""
    evaluate = ctx.spec.evaluate
    price = float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0)
    if evaluate is None or evaluate.max_endpoint_usd is None or price <= 0:
        return
    surface = journaled_surface(ctx)
    guard_of = SpendGuard(
        endpoint_id,
        payable_minutes(evaluate.max_endpoint_usd, price),
        float(ctx.journal.get(JournalKey.ENDPOINT_CREATED_AT) or time.time()),
    )
    _disarm(ctx.job_id)
    read = functools.partial(remote.get_endpoint, endpoint_id, surface=surface)
    stop = functools.partial(remote.stop_endpoint, endpoint_id, surface=surface)
    guard = asyncio.create_task(guard_of.run(read, stop, evaluate.max_endpoint_usd))
    _guards[ctx.job_id] = (guard_of, guard)
    job_task = asyncio.current_task()
    if job_task is not None:
        job_task.add_done_callback(lambda _: guard.cancel())


def rearm_budget_guard(ctx: JobContext, served: StepOutput | None) -> None:
    """For `evaluate`, which may run in a restarted daemon after `serve` was checkpointed: guard its endpoint
    again (a no-op when the model is served serverless, without a budget, or already guarded)."""
    if not served or served.get("mode") != "dedicated" or ctx.remote is None or ctx.job_id in _guards:
        return
    arm_budget_guard(ctx, ctx.remote, str(served["endpoint_id"]))


def payable_minutes(budget_usd: float, usd_per_minute: float) -> int:
    """How many started minutes `budget_usd` pays for (Together bills each started minute in full)."""
    return math.floor(budget_usd / usd_per_minute + 1e-9)


@dataclass
class SpendGuard:
    """Stops one endpoint before it starts a minute the budget cannot pay for. Time billed is read on the provider's
    clock; the wait between reads is half the time left, converted to the daemon's clock at the rate the two clocks
    have run since creation (a real provider's runs at ours; the sandbox's runs `speed` times faster)."""

    endpoint_id: str
    payable_minutes: int
    created_s: float  # the daemon's clock when the endpoint was asked for
    reached: bool = False  # set before the stop is sent, so a release racing the stop still reports it

    async def run(self, read: Reader, stop: Callable[[], Awaitable[None]], budget_usd: float) -> None:
        """Read the endpoint until it ends or its paid time is up: then stop it."""
        while (left_s := await self._left_s(read)) is not None:
            if left_s <= 0:
                self.reached = True
                log.error("endpoint_budget_reached", endpoint_id=self.endpoint_id, max_endpoint_usd=budget_usd)
                try:
                    await stop()
                except FinetunedError as exc:  # the job's release deletes it in any case
                    log.error("endpoint_stop_failed", endpoint_id=self.endpoint_id, error=str(exc))
                return
            await asyncio.sleep(left_s)

    async def _left_s(self, read: Reader) -> float | None:
        """The wait before the next read (<= 0: stop now); None once the endpoint is gone or stopped."""
        try:
            endpoint = await read()
        except FinetunedError as exc:
            log.warning("endpoint_guard_read_failed", endpoint_id=self.endpoint_id, error=str(exc))
            return GUARD_MAX_WAIT_S / 4
        if endpoint is None or endpoint.state in ENDPOINT_STOPPED_STATES:
            return None
        now_s = time.time()
        start, seen = endpoint.created_s, endpoint.observed_s
        if start is None or seen is None:
            start, seen = self.created_s, now_s
        billed_s = seen - start
        left_s = self.payable_minutes * 60 - STOP_MARGIN_S - billed_s
        if left_s <= 0:
            return 0.0
        rate = billed_s / (now_s - self.created_s) if billed_s > 0 and now_s > self.created_s else 1.0
        return min(GUARD_MAX_WAIT_S, max(GUARD_MIN_WAIT_S, left_s / 2 / rate))


def _disarm(job_id: str) -> None:
    armed = _guards.pop(job_id, None)
    if armed is not None:
        armed[1].cancel()


def budget_reached(ctx: JobContext) -> bool:
    """Whether the spend guard has stopped (or is stopping) this job's endpoint."""
    armed = _guards.get(ctx.job_id)
    return armed is not None and armed[0].reached


async def _delete(ctx: JobContext, remote: FineTuneAPI, tag: str) -> tuple[str | None, EndpointUsage | None]:
    """Delete the journaled endpoint (or the ones carrying the tag) on its surface; returns the (first) id deleted
    and when it billed."""
    policy, surface = ctx.settings.retry_policy, journaled_surface(ctx)
    endpoint_id = ctx.journal.get(JournalKey.ENDPOINT_ID)
    ids = [endpoint_id] if endpoint_id else []
    if not ids:
        found = await retry(lambda: remote.find_endpoints(tag, surface=surface), policy=policy, what="list endpoints")
        ids = [e.id for e in found]
    used: list[EndpointUsage | None] = []
    for one in ids:
        delete = functools.partial(remote.delete_endpoint, one, surface=surface)
        used.append(await retry(delete, policy=policy, what="delete endpoint"))
        log.info("endpoint_deleted", endpoint_id=one, tag=tag, surface=surface)
    return (ids[0], used[0]) if ids else (None, None)


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
    deleted, used = await _delete(ctx, ctx.remote, tag)
    now = time.time()
    created = float(ctx.journal.get(JournalKey.ENDPOINT_CREATED_AT) or now)
    minutes, clock = (used or EndpointUsage(None, None)).minutes(created, now) if deleted else (0, Clock.DAEMON)
    price = float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0)
    record = {
        "endpoint_id": deleted,
        "surface": str(journaled_surface(ctx) or Surface.V1),
        "usd_per_minute": price,
        "minutes": minutes,
        "cost_usd": round(minutes * price, 6),
        "clock": str(clock),
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
    clock = CLOCK_WORDS.get(str(record.get("clock")), CLOCK_WORDS[Clock.DAEMON])
    line = (
        f"Dedicated endpoint {record.get('endpoint_id')}: {minutes} min x {usd(price)}/min = "
        f"{usd(float(record.get('cost_usd') or 0.0))} (started minutes {clock}; deleted after evaluation)."
    )
    if record.get("budget_reached"):
        line += " It was stopped when its spend reached evaluate.max_endpoint_usd."
    return line
