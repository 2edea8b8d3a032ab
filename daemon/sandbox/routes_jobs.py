"""Sandbox Fine-tuning API: model limits, price estimate, create, list, retrieve, events and cancel."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.sandbox import training
from daemon.sandbox.faults import error_response
from daemon.sandbox.models import DEFAULT_MODELS
from daemon.sandbox.sim import (
    MAX_BATCH_SIZE,
    Outcome,
    SandboxJob,
    iso,
    model_limits,
    output_name,
    plan_steps,
    price_usd,
    token_count,
)
from daemon.sandbox.state import SANDBOX, Sandbox

MAX_SUFFIX_CHARS = 40
routes = web.RouteTableDef()


class Invalid(Exception):
    """A request the API rejects with 400; carries the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    return body


def _known_model(model: Any) -> str:
    """Any `org/name` model can be fine-tuned in the sandbox; anything else is unknown."""
    if not isinstance(model, str) or "/" not in model:
        raise Invalid(f"Model {model!r} is not available for fine-tuning", param="model")
    return model


def _training_type(body: dict[str, Any]) -> str:
    training_type = body.get("training_type") or {"type": "Lora"}
    return str(training_type.get("type", "Lora")) if isinstance(training_type, dict) else "Lora"


def _file_tokens(sb: Sandbox, file_id: Any, param: str) -> int:
    file = sb.files.get(file_id) if isinstance(file_id, str) else None
    if file is None or file.content is None:
        raise Invalid(f"{param} {file_id!r} does not exist", param=param)
    return token_count(len(file.content))


def _estimate(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    """The price estimate from the token-count formula (see daemon.sandbox.sim)."""
    for key in ("training_file", "validation_file"):
        file = sb.files.get(body.get(key) or "")
        if file is not None and file.report is not None and not file.report["valid"]:
            reason = "train_file_invalid" if key == "training_file" else "eval_file_invalid"
            return {"estimation_available": False, "unavailable_reason": reason}
    train = _file_tokens(sb, body.get("training_file"), "training_file") * int(body.get("n_epochs") or 1)
    evals = 0
    if body.get("validation_file"):
        evals = _file_tokens(sb, body["validation_file"], "validation_file") * int(body.get("n_evals") or 0)
    total = price_usd(train, evals, _training_type(body))
    return {
        "estimation_available": True,
        "allowed_to_proceed": total <= sb.user_limit_usd,
        "estimated_total_price": total,
        "estimated_train_token_count": train,
        "estimated_eval_token_count": evals,
        "user_limit": sb.user_limit_usd,
    }


def _check_create(body: dict[str, Any]) -> None:
    """The server-side checks of a create request that matter for the daemon."""
    _known_model(body.get("model"))
    limits = model_limits(str(body["model"]))
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX_CHARS):
        raise Invalid(f"suffix must be a string of at most {MAX_SUFFIX_CHARS} characters", param="suffix")
    n_epochs = body.get("n_epochs", 1)
    if not isinstance(n_epochs, int) or not 1 <= n_epochs <= limits["max_num_epochs"]:
        raise Invalid(f"n_epochs must be between 1 and {limits['max_num_epochs']}", param="n_epochs")
    batch = body.get("batch_size", "max")
    lora = limits["lora_training"]
    if batch != "max" and not (isinstance(batch, int) and lora["min_batch_size"] <= batch <= lora["max_batch_size"]):
        raise Invalid("batch_size is out of range for this model", param="batch_size")
    if int(body.get("n_evals") or 0) > 0 and not body.get("validation_file"):
        raise Invalid("n_evals > 0 requires a validation_file", param="validation_file")


@routes.get("/v1/fine-tunes/models/limits")
async def limits(request: web.Request) -> web.Response:
    """The model's limits (the SDK fetches these before estimating and creating)."""
    name = request.query.get("model_name", "")
    if "/" not in name:
        return error_response(404, f"Model {name!r} not found or not available for fine-tuning", code="model_not_found")
    return web.json_response(model_limits(name))


@routes.get("/v1/fine-tunes/models/supported")
async def supported_models(request: web.Request) -> web.Response:
    """The base models offered for fine-tuning (the sandbox fine-tunes any `org/name`; these are its defaults)."""
    return web.json_response({"models": list(DEFAULT_MODELS)})


@routes.post("/v1/fine-tunes/estimate-price")
async def estimate_price(request: web.Request) -> web.Response:
    """Estimated price in dollars from the files' token counts."""
    try:
        body = await _json_body(request)
        _continue_from_checkpoint(request.app[SANDBOX], body)
        _known_model(body.get("model"))
        return web.json_response(_estimate(request.app[SANDBOX], body))
    except Invalid as exc:
        return error_response(400, str(exc), param=exc.param)


@routes.post("/v1/fine-tunes")
async def create(request: web.Request) -> web.Response:
    """Create a job; it starts `pending` and moves along on the sandbox clock."""
    sb = request.app[SANDBOX]
    try:
        body = await _json_body(request)
        _continue_from_checkpoint(sb, body)
        _check_create(body)
        estimate = _estimate(sb, body)
    except Invalid as exc:
        return error_response(400, str(exc), param=exc.param)
    job = _new_job(sb, body, estimate)
    sb.jobs[job.id] = job
    return web.json_response(job.to_json(sb.clock(), full=False))


def _continue_from_checkpoint(sb: Sandbox, body: dict[str, Any]) -> None:
    """`from_checkpoint` (`ft-…[:step]` or an output model name): train on from that job's base model, as
    Together does; an unknown checkpoint is refused like a bad parameter."""
    checkpoint = body.get("from_checkpoint")
    if not checkpoint:
        return
    if body.get("model"):
        raise Invalid("specify either a model or a checkpoint to start a job from, not both", param="from_checkpoint")
    name = str(checkpoint).split(":", 1)[0]
    parent = sb.jobs.get(name) or next((j for j in sb.jobs.values() if j.output_name == name), None)
    if parent is None or parent.status(sb.clock()) != "completed":
        raise Invalid(f"from_checkpoint {checkpoint!r} is not a completed fine-tune job", param="from_checkpoint")
    body["model"] = parent.request["model"]


def _new_job(sb: Sandbox, body: dict[str, Any], estimate: dict[str, Any]) -> SandboxJob:
    train = sb.files[body["training_file"]]
    per_epoch, total = plan_steps(train.lines, int(body.get("n_epochs") or 1), body.get("batch_size"), MAX_BATCH_SIZE)
    job_id = sb.new_id("ft")
    outcome = sb.next_outcome(job_id)
    if outcome is None and train.report is not None and not train.report["valid"]:
        outcome = Outcome("user_error", f"Training file {train.id} failed validation: {train.report['error']}", at=0.0)
    trend = sb.eval_trends.pop(0) if sb.eval_trends else "falling"
    return SandboxJob(
        eval_trend=trend,
        id=job_id,
        request=body,
        created_at_s=sb.clock(),
        speed=sb.speed,
        output_name=output_name(str(body["model"]), body.get("suffix"), job_id),
        total_steps=total,
        steps_per_epoch=per_epoch,
        train_tokens=int(estimate.get("estimated_train_token_count") or 0),
        price_usd=float(estimate.get("estimated_total_price") or 0.0),
        seed=sb.seed,
        outcome=outcome,
    )


def _job_or_404(request: web.Request) -> SandboxJob | web.Response:
    job = request.app[SANDBOX].jobs.get(request.match_info["id"])
    if job is None:
        return error_response(404, f"Fine-tune job {request.match_info['id']} not found", param="id")
    return job


@routes.get("/v1/fine-tunes")
async def list_jobs(request: web.Request) -> web.Response:
    """Every job, truncated (no events), newest first."""
    sb = request.app[SANDBOX]
    now = sb.clock()
    jobs = sorted(sb.jobs.values(), key=lambda j: j.created_at_s, reverse=True)
    return web.json_response({"object": "list", "data": [j.to_json(now, full=False) for j in jobs]})


@routes.get("/v1/fine-tunes/{id}")
async def retrieve(request: web.Request) -> web.Response:
    """One job with its events."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    return web.json_response(job.to_json(request.app[SANDBOX].clock(), full=True))


@routes.get("/v1/fine-tunes/{id}/events")
async def events(request: web.Request) -> web.Response:
    """The job's events so far (the loss appears only in the messages of epoch_complete events)."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    return web.json_response({"object": "list", "data": job.events(request.app[SANDBOX].clock())})


@routes.post("/v1/fine-tunes/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    """Ask to cancel: `cancel_requested` now, `cancelled` shortly after; a finished job is left as it is."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    now = request.app[SANDBOX].clock()
    job.cancel(now)
    return web.json_response(job.to_json(now, full=False))


def _row_step(row: dict[str, float]) -> float:
    return row.get("train/global_step", row.get("eval/global_step", 0.0))


def _step_bound(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    return int(float(value)) if value not in (None, "") else None


@routes.get("/v1/fine-tunes/{id}/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Training (and eval) metrics logged so far, by global step; `global_step_from`/`_to` filter them."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    try:
        low, high = _step_bound(request, "global_step_from"), _step_bound(request, "global_step_to")
    except ValueError:
        return error_response(400, "global_step_from and global_step_to must be integers", param="global_step_from")
    rows = training.metrics(job, request.app[SANDBOX].clock())
    kept = [r for r in rows if (low is None or _row_step(r) >= low) and (high is None or _row_step(r) <= high)]
    return web.json_response({"metrics": kept})


@routes.get("/v1/fine-tunes/{id}/checkpoints")
async def checkpoints(request: web.Request) -> web.Response:
    """The checkpoints saved so far (the final one once the job completed)."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    return web.json_response({"data": training.checkpoints(job, request.app[SANDBOX].clock(), iso)})


@routes.delete("/v1/fine-tunes/{id}")
async def delete(request: web.Request) -> web.Response:
    """Forget a job (its output model stops being served)."""
    job = _job_or_404(request)
    if isinstance(job, web.Response):
        return job
    del request.app[SANDBOX].jobs[job.id]
    return web.json_response({"message": f"Fine-tune job {job.id} deleted"})
