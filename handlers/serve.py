"""Step `serve`: make the fine-tuned model answerable for `evaluate`, serverless or on a dedicated endpoint.

`evaluate.serve: auto` asks Together (daemon.remote: the models list, else a one-token request) whether it serves
the fine-tuned model serverless; if not, or with `serve: dedicated`, a dedicated endpoint is created once, on the
API this run uses (`remote.endpoint_surface()`, journaled with the intent; every later call names it): the
hardware is the spec's or the cheapest available compatible one, the price per minute x the expected evaluation
time is checked against `max_endpoint_usd` before anything is created, the tag (in `display_name`) is journaled
before the create call and the id right after, so a crash in between adopts the endpoint instead of making a
second (one whose set-up the crash interrupted is completed by creating it again, which the remote side adopts).
The step waits with backoff until STARTED (ERROR fails the job with Together's reason; a journaled deadline).
Its output's `model` is the name `evaluate` asks (the endpoint's `name`). A guard stops the endpoint when the money
spent reaches `max_endpoint_usd`; `release` (after evaluate) and the step's cleanup (any end of the job) delete
it: see handlers/serving.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from daemon.errors import BadInput, RemoteJobFailed, RemoteRejected, TransientError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import usd
from daemon.remote.api import EndpointRequest, EndpointState, FineTuneAPI, HardwareOption, RemoteEndpoint, Surface
from daemon.remote.backoff import Backoff, retry
from daemon.spec import EvaluateSpec
from handlers.create import make_tag
from handlers.serving import DISPLAY_PREFIX, arm_budget_guard, cleanup, journaled_surface, release

__all__ = ["cleanup", "release", "run"]
STARTUP_ALLOWANCE_MIN = 10.0  # Together: start-up takes minutes ("up to 10"), billed
SECONDS_PER_ANSWER = 2.0  # one chat answer, for the expected evaluation time when the spec gives none
USABLE = ("available", "unknown")
log = structlog.get_logger()


def expected_minutes(evaluate: EvaluateSpec, inputs: StepInputs) -> float:
    """How long the endpoint is expected to bill: the spec's `expected_eval_min` (start-up included), else
    STARTUP_ALLOWANCE_MIN plus the eval set's turns at SECONDS_PER_ANSWER over `concurrency` requests in flight."""
    if evaluate.expected_eval_min is not None:
        return evaluate.expected_eval_min
    turns = inputs.get("prepare", {}).get("counts", {}).get("eval", {}).get("turns") or 0
    return STARTUP_ALLOWANCE_MIN + float(turns) * SECONDS_PER_ANSWER / evaluate.concurrency / 60


def choose_hardware(evaluate: EvaluateSpec, options: list[HardwareOption], model: str) -> HardwareOption:
    """The spec's hardware (it must be offered and available), else the cheapest available compatible one."""
    offered = ", ".join(f"{o.id} ({o.availability})" for o in options) or "none"
    if evaluate.hardware is not None:
        chosen = next((o for o in options if o.id == evaluate.hardware), None)
        if chosen is None or chosen.availability not in USABLE:
            state = "not offered" if chosen is None else chosen.availability
            raise RemoteRejected(f"evaluate.hardware {evaluate.hardware} is {state} for {model} (offered: {offered})")
        return chosen
    usable = [o for o in options if o.availability in USABLE]
    if not usable:
        raise TransientError(f"no hardware compatible with {model} is available right now (offered: {offered})")
    return min(usable, key=lambda o: o.cents_per_minute)


def check_endpoint_price(evaluate: EvaluateSpec, usd_per_minute: float, minutes: float) -> None:
    """Refuse before creating anything when the expected cost (every started minute billed, at least one) is above
    `max_endpoint_usd`."""
    billed = max(1, math.ceil(minutes - 1e-9))
    expected = usd_per_minute * billed
    if evaluate.max_endpoint_usd is not None and expected > evaluate.max_endpoint_usd:
        raise RemoteRejected(
            f"a dedicated endpoint at {usd(usd_per_minute)}/min for the expected {billed} started min would cost "
            f"{usd(expected)}, above evaluate.max_endpoint_usd {usd(evaluate.max_endpoint_usd)}; no endpoint was "
            "created (raise max_endpoint_usd, set evaluate.expected_eval_min, or pick cheaper evaluate.hardware)"
        )


async def _serverless(ctx: JobContext, remote: FineTuneAPI, model: str) -> bool:
    evaluate = ctx.spec.evaluate
    assert evaluate is not None  # the spec's serves_finetune checked it
    if ctx.journal.get(JournalKey.ENDPOINT_INTENT) or evaluate.serve == "dedicated":
        return False
    if evaluate.serve == "serverless":
        return True
    policy = ctx.settings.retry_policy
    return await retry(lambda: remote.serves_serverless(model), policy=policy, what="serverless check")


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Serve `poll.model`; the output's `model` is what evaluate asks for the fine-tuned model."""
    if inputs["poll"].get("stopped"):
        return {"mode": "none", "model": None, "skipped": "the fine-tune was stopped: there is nothing to serve"}
    model = str(inputs["poll"]["model"])
    remote = ctx.fine_tuning()
    if await _serverless(ctx, remote, model):
        log.info("model_served_serverless", model=model)
        return {"mode": "serverless", "model": model}
    if ctx.spec.evaluate is not None and ctx.spec.evaluate.mode == "batch":
        raise BadInput(
            f"evaluate.mode batch needs a serverless model, and Together serves {model} only on a dedicated "
            "endpoint: use evaluate.mode realtime for this fine-tune (no endpoint was created)"
        )
    endpoint = await _resume(ctx, remote) or await _create(ctx, remote, model, inputs)
    endpoint = await _wait_started(ctx, remote, endpoint)
    arm_budget_guard(ctx, remote, endpoint.id)
    price = float(ctx.journal.get(JournalKey.ENDPOINT_PRICE) or 0.0)
    log.info(
        "endpoint_serving", endpoint_id=endpoint.id, name=endpoint.name, usd_per_minute=price, surface=endpoint.surface
    )
    return {
        "mode": "dedicated",
        "model": endpoint.name,
        "fine_tuned_model": model,
        "endpoint_id": endpoint.id,
        "surface": str(endpoint.surface),
        "hardware": endpoint.hardware,
        "usd_per_minute": price,
        "max_endpoint_usd": ctx.spec.evaluate.max_endpoint_usd if ctx.spec.evaluate else None,
    }


async def _resume(ctx: JobContext, remote: FineTuneAPI) -> RemoteEndpoint | None:
    """The endpoint this job already created: by its journaled id, or found by its journaled tag (None when its
    set-up was interrupted: `_create` completes it)."""
    policy, surface = ctx.settings.retry_policy, journaled_surface(ctx)
    recorded = ctx.journal.get(JournalKey.ENDPOINT_ID)
    if recorded:
        found = await retry(lambda: remote.get_endpoint(recorded, surface=surface), policy=policy, what="get endpoint")
        if found is None:
            raise RemoteJobFailed(f"dedicated endpoint {recorded} no longer exists", remote_status="deleted")
        return found
    tag = ctx.journal.get(JournalKey.ENDPOINT_INTENT)
    if not tag:
        return None
    matches = await retry(lambda: remote.find_endpoints(tag, surface=surface), policy=policy, what="list endpoints")
    if not matches or matches[0].incomplete:
        return None
    await _record_ids(ctx, matches[0])
    log.warning("endpoint_adopted", endpoint_id=matches[0].id, tag=tag, reason="created before a crash")
    return matches[0]


async def _record_ids(ctx: JobContext, endpoint: RemoteEndpoint) -> None:
    await ctx.journal.record(JournalKey.ENDPOINT_ID, endpoint.id)
    if endpoint.deployment_id:
        await ctx.journal.record(JournalKey.ENDPOINT_DEPLOYMENT, endpoint.deployment_id)


async def _create(ctx: JobContext, remote: FineTuneAPI, model: str, inputs: StepInputs) -> RemoteEndpoint:
    evaluate = ctx.spec.evaluate
    if evaluate is None:
        raise BadInput("the spec has no evaluate section")
    policy = ctx.settings.retry_policy
    surface = journaled_surface(ctx)
    if surface is None:
        surface = await retry(remote.endpoint_surface, policy=policy, what="endpoint surface")
    options = await retry(lambda: remote.hardware(model, surface=surface), policy=policy, what="list hardware")
    chosen = choose_hardware(evaluate, options, model)
    price = chosen.usd_per_minute * evaluate.replicas
    check_endpoint_price(evaluate, price, expected_minutes(evaluate, inputs))
    tag = ctx.journal.get(JournalKey.ENDPOINT_INTENT) or make_tag(ctx.job_id)
    await ctx.journal.record(JournalKey.ENDPOINT_PRICE, f"{price:.6f}")
    await ctx.journal.record(JournalKey.ENDPOINT_CREATED_AT, f"{time.time():.3f}")
    await ctx.journal.record(JournalKey.ENDPOINT_SURFACE, str(surface))
    await ctx.journal.record(JournalKey.ENDPOINT_INTENT, tag)
    request = EndpointRequest(
        model, chosen.id, evaluate.replicas, DISPLAY_PREFIX + tag, evaluate.inactive_timeout_min, chosen.config
    )
    endpoint = await retry(_create_once(remote, request, tag, surface), policy=policy, what="create endpoint")
    await _record_ids(ctx, endpoint)
    log.info("endpoint_created", endpoint_id=endpoint.id, hardware=chosen.id, usd_per_minute=price, tag=tag)
    await ctx.progress(endpoint_id=endpoint.id, endpoint_state=endpoint.state, usd_per_minute=price)
    return endpoint


def _create_once(
    remote: FineTuneAPI, request: EndpointRequest, tag: str, surface: Surface
) -> Callable[[], Awaitable[RemoteEndpoint]]:
    """A retryable create: after a failed attempt (maybe created, answer lost) look the tag up before re-sending
    (a half-made endpoint is created again: the remote side completes it)."""
    attempted = False

    async def attempt() -> RemoteEndpoint:
        nonlocal attempted
        if attempted:
            found = await remote.find_endpoints(tag, surface=surface)
            if found and not found[0].incomplete:
                log.warning("endpoint_adopted", endpoint_id=found[0].id, tag=tag, reason="create answer was lost")
                return found[0]
        attempted = True
        return await remote.create_endpoint(request, surface=surface)

    return attempt


async def _deadline_at(ctx: JobContext) -> float:
    recorded = ctx.journal.get(JournalKey.ENDPOINT_DEADLINE)
    if recorded:
        return float(recorded)
    assert ctx.spec.evaluate is not None
    deadline = time.time() + ctx.spec.evaluate.endpoint_start_timeout_min * 60
    await ctx.journal.record(JournalKey.ENDPOINT_DEADLINE, f"{deadline:.3f}")
    return deadline


async def _wait_started(ctx: JobContext, remote: FineTuneAPI, endpoint: RemoteEndpoint) -> RemoteEndpoint:
    """Poll with backoff until STARTED; ERROR (or a stop, or the deadline) fails the job."""
    deadline = await _deadline_at(ctx)
    backoff = Backoff(base_s=ctx.settings.poll_min_s, cap_s=ctx.settings.poll_max_s, floor_s=ctx.settings.poll_min_s)
    current: RemoteEndpoint | None = endpoint
    while True:
        if current is None:
            raise RemoteJobFailed(f"dedicated endpoint {endpoint.id} disappeared while starting", remote_status="gone")
        _fail_if_dead(current)
        if current.state == EndpointState.STARTED:
            return current
        delay = backoff.next_delay()
        if time.time() + delay > deadline:
            raise RemoteJobFailed(_late(ctx, current), remote_status=current.state)
        await asyncio.sleep(delay)
        previous = current.state
        try:
            current = await remote.get_endpoint(endpoint.id, surface=endpoint.surface)
        except TransientError as exc:
            log.warning("endpoint_poll_failed_retrying", endpoint_id=endpoint.id, error=str(exc))
            continue
        if current is not None and current.state != previous:
            log.info("endpoint_state", endpoint_id=endpoint.id, state=current.state)
            await ctx.progress(endpoint_id=endpoint.id, endpoint_state=current.state)


def _fail_if_dead(endpoint: RemoteEndpoint) -> None:
    if endpoint.state == EndpointState.ERROR:
        raise RemoteJobFailed(f"dedicated endpoint {endpoint.id} failed: {endpoint.reason}", remote_status="ERROR")
    if endpoint.state in (EndpointState.STOPPING, EndpointState.STOPPED):
        raise RemoteJobFailed(
            f"dedicated endpoint {endpoint.id} stopped before it started serving", remote_status=endpoint.state
        )


def _late(ctx: JobContext, endpoint: RemoteEndpoint) -> str:
    minutes = ctx.spec.evaluate.endpoint_start_timeout_min if ctx.spec.evaluate else 0
    return (
        f"dedicated endpoint {endpoint.id} was not STARTED within evaluate.endpoint_start_timeout_min={minutes:g} "
        f"(state {endpoint.state}); it is deleted with the job"
    )
