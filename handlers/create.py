"""Step `create`: estimate the price, refuse above `max_price_usd`, then create the LoRA fine-tune exactly once.

The job is tagged: its suffix ends with a fragment of the job id plus a nonce. The tag is journaled as
`create.intent` before the create call and `fine_tune_id` right after, so a crash in between (or a lost answer)
is resolved by listing jobs and adopting the one with the tag, never by creating a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from daemon.errors import BadInput, FinetunedError, RemoteRejected, TransientError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import usd
from daemon.remote.api import FineTuneAPI, FineTuneRequest, PriceEstimate, RemoteJob
from daemon.remote.backoff import retry
from daemon.spec import FinetuneSpec

TAG_HASH_CHARS = 5  # from sha256(job id): which daemon job this is
TAG_NONCE_BYTES = 2  # 4 hex: tells apart two runs of the same job id (another spool, a wiped state)
log = structlog.get_logger()


def make_tag(job_id: str) -> str:
    """A 9-character suffix fragment: 5 hex of sha256(job id) + 4 random hex (spec suffix 30 + '-' + 9 <= 40)."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:TAG_HASH_CHARS] + secrets.token_hex(TAG_NONCE_BYTES)


def suffix_for(spec_suffix: str | None, tag: str) -> str:
    """The Together suffix: the spec's own suffix (if any) followed by the tag."""
    return f"{spec_suffix}-{tag}" if spec_suffix else tag


def check_price(estimate: PriceEstimate, spec: FinetuneSpec) -> None:
    """Raise unless the estimate allows creating the job under the spec's `max_price_usd`."""
    reason = estimate.unavailable_reason or ""
    if not estimate.available and reason.endswith("_not_validated"):
        raise TransientError(f"Together cannot estimate the price yet ({reason}): the file is still being validated")
    if not estimate.available and reason.endswith("_invalid"):
        raise RemoteRejected(f"Together's validation refused the dataset ({reason}); no fine-tune job was created")
    if estimate.allowed_to_proceed is False:
        limit = usd(estimate.user_limit_usd) if estimate.user_limit_usd is not None else "the account's limit"
        price = usd(estimate.total_usd or 0.0)
        # This job's refusal, not the account's: a smaller job may proceed, so nothing else is paused.
        raise RemoteRejected(
            f"Together refuses this job: its estimated {price} exceeds {limit}; no fine-tune job was created"
        )
    if spec.max_price_usd is None:
        return
    if not estimate.available or estimate.total_usd is None:
        raise RemoteRejected(
            f"finetune.max_price_usd is {usd(spec.max_price_usd)} but Together gives no price estimate ({reason}); "
            "no fine-tune job was created (remove max_price_usd to proceed without an estimate)"
        )
    if estimate.total_usd > spec.max_price_usd:
        raise RemoteRejected(
            f"estimated price {usd(estimate.total_usd)} is above finetune.max_price_usd {usd(spec.max_price_usd)}; "
            "no fine-tune job was created (raise max_price_usd, or use fewer epochs or less data)"
        )


def _request(spec: FinetuneSpec, upload: dict[str, Any], tag: str) -> FineTuneRequest:
    validation = upload.get("validation_file_id") or ""
    if spec.n_evals > 0 and not validation:
        raise BadInput("finetune.n_evals > 0 needs a validation file, and the prepare step produced none")
    suffix = suffix_for(spec.suffix, tag)
    return FineTuneRequest.from_spec(spec, training_file=upload["file_id"], validation_file=validation, suffix=suffix)


def _output(job: RemoteJob, tag: str, *, adopted: bool, estimate: PriceEstimate | None) -> StepOutput:
    return {
        "fine_tune_id": job.id,
        "tag": tag,
        "suffix": job.suffix,
        "status": job.status,
        "model_output_name": job.model_output_name,
        "adopted": adopted,
        "from_checkpoint": job.raw.get("from_checkpoint"),
        "estimated_price_usd": estimate.total_usd if estimate else None,
        "estimated_train_tokens": estimate.train_tokens if estimate else None,
    }


async def _resume(ctx: JobContext, remote: FineTuneAPI) -> StepOutput | None:
    """The job this step already created (id journaled) or tagged (intent journaled, found by listing)."""
    tag = ctx.journal.get(JournalKey.CREATE_INTENT) or ""
    recorded = ctx.journal.get(JournalKey.FINE_TUNE_ID)
    if recorded:
        job = await retry(
            policy=ctx.settings.retry_policy, what="retrieve fine-tune", call=lambda: remote.retrieve(recorded)
        )
        return _output(job, tag, adopted=False, estimate=None)
    if not tag:
        return None
    found = await retry(lambda: remote.find_job(tag), policy=ctx.settings.retry_policy, what="list fine-tunes")
    if found is None:
        return None
    await ctx.journal.record(JournalKey.FINE_TUNE_ID, found.id)
    log.warning("fine_tune_adopted", fine_tune_id=found.id, tag=tag, reason="created before a crash or lost answer")
    return _output(found, tag, adopted=True, estimate=None)


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Create (or adopt) the fine-tuning job for the uploaded file; the output names its id and output model."""
    spec = ctx.spec.finetune
    if spec is None:
        raise BadInput("the spec has no finetune section")
    remote = ctx.fine_tuning()
    resumed = await _resume(ctx, remote)
    if resumed is not None:
        return resumed
    if spec.from_checkpoint:
        spec = spec.model_copy(update={"from_checkpoint": await resolve_checkpoint(ctx, spec.from_checkpoint)})
        log.info("continuing_from_checkpoint", from_checkpoint=spec.from_checkpoint)
    tag = ctx.journal.get(JournalKey.CREATE_INTENT) or make_tag(ctx.job_id)
    request = _request(spec, dict(inputs["upload"]), tag)

    async def estimate_checked() -> PriceEstimate:
        estimate = await remote.estimate_price(request)
        check_price(estimate, spec)
        return estimate

    estimate = await retry(estimate_checked, policy=ctx.settings.retry_policy, what="estimate price")
    log.info("price_estimated", price_usd=estimate.total_usd, max_price_usd=spec.max_price_usd, tag=tag)
    if ctx.journal.get(JournalKey.CREATE_INTENT) != tag:
        await ctx.journal.record(JournalKey.CREATE_INTENT, tag)
    job = await retry(
        policy=ctx.settings.retry_policy, what="create fine-tune", call=_create_once(remote, request, tag)
    )
    await ctx.journal.record(JournalKey.FINE_TUNE_ID, job.id)
    log.info("fine_tune_created", fine_tune_id=job.id, tag=tag, model=request.model, suffix=request.suffix)
    await ctx.progress(fine_tune_id=job.id, remote_status=job.status)
    return _output(job, tag, adopted=False, estimate=estimate)


def _create_once(remote: FineTuneAPI, request: FineTuneRequest, tag: str) -> Callable[[], Awaitable[RemoteJob]]:
    """A retryable create: after a failed attempt (maybe created, answer lost) look the tag up before re-sending."""
    attempted = False

    async def attempt() -> RemoteJob:
        nonlocal attempted
        if attempted:
            found = await remote.find_job(tag)
            if found is not None:
                log.warning("fine_tune_adopted", fine_tune_id=found.id, tag=tag, reason="create answer was lost")
                return found
        attempted = True
        return await remote.create(request)

    return attempt


async def cleanup(ctx: JobContext, outcome: str) -> None:
    """When the job was cancelled or failed, cancel its fine-tune on Together too (unless it had already completed):
    nothing is billed for a job that ended; if the cancel fails, the log says plainly that it may still run."""
    fine_tune_id = ctx.journal.get(JournalKey.FINE_TUNE_ID)
    if outcome not in {"cancelled", "failed"} or not fine_tune_id or ctx.journal.get(JournalKey.MODEL):
        return
    if ctx.remote is None:
        return
    try:
        await ctx.remote.cancel(fine_tune_id)
        log.info("remote_job_cancelled", fine_tune_id=fine_tune_id, outcome=outcome)
    except FinetunedError as exc:
        log.error(
            "remote_cancel_failed",
            fine_tune_id=fine_tune_id,
            error=str(exc),
            note=f"the fine-tune may still run and be billed: cancel {fine_tune_id} on Together",
        )


async def estimate(ctx: JobContext, spec: FinetuneSpec, upload: dict[str, Any]) -> PriceEstimate:
    """Together's price estimate for a fine-tune of `spec` on the uploaded files, without creating anything."""
    remote = ctx.fine_tuning()
    request = _request(spec, upload, make_tag(ctx.job_id))
    return await retry(lambda: remote.estimate_price(request), policy=ctx.settings.retry_policy, what="estimate price")


async def resolve_checkpoint(ctx: JobContext, value: str) -> str:
    """`finetune.from_checkpoint` as Together takes it: a job id of this daemon becomes its fine-tune's id (the
    optional `:step` kept); anything else is already Together's (a fine-tune id or an output model name)."""
    job, sep, step = value.partition(":")
    status_path = ctx.settings.outbox / job / "status.json"
    if "/" in job or not await asyncio.to_thread(status_path.is_file):
        return value
    document = json.loads(await asyncio.to_thread(status_path.read_text, encoding="utf-8"))
    fine_tune_id = (document.get("remote") or {}).get("fine_tune_id")
    if not fine_tune_id or document.get("status") != "completed":
        raise BadInput(
            f"finetune.from_checkpoint names job {job}, which is {document.get('status')} "
            f"{'with' if fine_tune_id else 'without'} a fine-tune: continue only from a completed one"
        )
    return f"{fine_tune_id}{sep}{step}"
