"""Sandbox admin API under /_sandbox/ (never faulted): counters, scripted faults, job and batch outcomes, knobs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.sandbox.faults import Fault
from daemon.sandbox.knobs import apply_config, describe
from daemon.sandbox.listener import LISTENER
from daemon.sandbox.routes_endpoints import endpoint_stats
from daemon.sandbox.sim import Outcome
from daemon.sandbox.state import SANDBOX, PendingOutcome

OUTCOME_STATUSES = frozenset({"error", "user_error", "cancelled"})
BATCH_OUTCOMES = frozenset({"failed", "expired"})
routes = web.RouteTableDef()


def _bad(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc


@routes.get("/_sandbox/stats")
async def stats(request: web.Request) -> web.Response:
    """Counters by `METHOD /route-pattern`, how many files and jobs exist, chat serving, rate limits, batches."""
    sb = request.app[SANDBOX]
    now = sb.clock()
    batches = list(sb.batches.values())
    return web.json_response(
        {
            **sb.stats.to_json(),
            "files": len(sb.files),
            "jobs": len(sb.jobs),
            "chat": sb.serving.to_json(),
            "rate_limit": sb.limiter.to_json(),
            "batches": {
                "created": len(batches),
                "completed": sum(b.status(now) == "COMPLETED" for b in batches),
                "requests": sum(b.answered(now) for b in batches),
            },
            "outages": request.app[LISTENER].outages,
            "endpoints": endpoint_stats(sb),
        }
    )


@routes.post("/_sandbox/endpoint-failures")
async def endpoint_failure(request: web.Request) -> web.Response:
    """The next `count` endpoints created go to ERROR with `message` after `at_s` simulated seconds (default 60)."""
    body = await _body(request)
    if not isinstance(body, dict):
        return _bad("expected {message, at_s, count}")
    message = str(body.get("message") or "The endpoint failed to start (scripted by the sandbox)")
    sb = request.app[SANDBOX]
    sb.endpoint_failures += [(message, float(body.get("at_s", 60.0)))] * int(body.get("count", 1))
    return web.json_response({"pending": len(sb.endpoint_failures)})


@routes.post("/_sandbox/reset")
async def reset(request: web.Request) -> web.Response:
    """Forget everything (files, jobs, scripted faults and outcomes, counters); the knobs stay."""
    request.app[SANDBOX].reset()
    return web.json_response({"reset": True})


@routes.get("/_sandbox/faults")
async def get_faults(request: web.Request) -> web.Response:
    """The scripted faults still pending."""
    return web.json_response({"faults": request.app[SANDBOX].faults.to_json()})


@routes.post("/_sandbox/faults")
async def add_faults(request: web.Request) -> web.Response:
    """Script faults: one fault object, or {"faults": [...]}. See the package docstring for the fields."""
    body = await _body(request)
    raws = body.get("faults", [body]) if isinstance(body, dict) else body
    try:
        parsed = [Fault.from_json(raw) for raw in (raws if isinstance(raws, list) else [raws])]
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    plan = request.app[SANDBOX].faults
    for fault in parsed:
        plan.add(fault)
    return web.json_response({"faults": plan.to_json()})


@routes.delete("/_sandbox/faults")
async def clear_faults(request: web.Request) -> web.Response:
    """Drop every scripted fault."""
    request.app[SANDBOX].faults.clear()
    return web.json_response({"faults": []})


@routes.post("/_sandbox/job-outcomes")
async def job_outcome(request: web.Request) -> web.Response:
    """Make the next `count` jobs (or job `job_id`) end in error/user_error/cancelled at fraction `at` of training
    (the failure event at `level`, default error; `restarted` adds a job_restarted notice after it)."""
    body = await _body(request)
    sb = request.app[SANDBOX]
    if not isinstance(body, dict) or body.get("outcome") not in OUTCOME_STATUSES:
        return _bad(f"outcome must be one of {sorted(OUTCOME_STATUSES)}")
    message = str(body.get("message") or f"The job ended in {body['outcome']} (scripted by the sandbox)")
    level, restarted = str(body.get("level") or "error"), bool(body.get("restarted", False))
    outcome = Outcome(body["outcome"], message, at=float(body.get("at", 0.5)), level=level, restarted=restarted)
    job_id = body.get("job_id")
    if job_id is not None:
        job = sb.jobs.get(str(job_id))
        if job is None:
            return _bad(f"no job {job_id}")
        job.set_outcome(outcome)
    else:
        sb.outcomes.append(PendingOutcome(outcome, count=int(body.get("count", 1))))
    return web.json_response({"pending": len(sb.outcomes)})


@routes.post("/_sandbox/eval-trends")
async def eval_trend(request: web.Request) -> web.Response:
    """Make the next `count` fine-tunes' validation loss `rising` (overfitting) or `falling` (the default)."""
    body = await _body(request)
    if not isinstance(body, dict) or body.get("eval_loss") not in ("rising", "falling"):
        return _bad("eval_loss must be rising or falling")
    sb = request.app[SANDBOX]
    sb.eval_trends.extend([str(body["eval_loss"])] * int(body.get("count", 1)))
    return web.json_response({"pending": len(sb.eval_trends)})


@routes.post("/_sandbox/batch-outcomes")
async def batch_outcome(request: web.Request) -> web.Response:
    """Make the next `count` batches (or batch `batch_id`) end FAILED or EXPIRED at fraction `at` of their run."""
    body = await _body(request)
    sb = request.app[SANDBOX]
    if not isinstance(body, dict) or body.get("outcome") not in BATCH_OUTCOMES:
        return _bad(f"outcome must be one of {sorted(BATCH_OUTCOMES)}")
    message = str(body.get("message") or f"The batch ended {str(body['outcome']).upper()} (scripted by the sandbox)")
    outcome = Outcome(str(body["outcome"]), message, at=float(body.get("at", 0.5)))
    batch_id = body.get("batch_id")
    if batch_id is not None:
        batch = sb.batches.get(str(batch_id))
        if batch is None:
            return _bad(f"no batch {batch_id}")
        batch.outcome = outcome
    else:
        sb.batch_outcomes.append(PendingOutcome(outcome, count=int(body.get("count", 1))))
    return web.json_response({"pending": len(sb.batch_outcomes)})


@routes.post("/_sandbox/config")
async def config(request: web.Request) -> web.Response:
    """Change knobs at run time (see daemon.sandbox.knobs: the same names as start_sandbox's)."""
    body = await _body(request)
    if not isinstance(body, dict):
        return _bad("the body must be a JSON object")
    try:
        apply_config(request.app[SANDBOX], body)
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response(describe(request.app[SANDBOX]))


@routes.get("/_sandbox/config")
async def get_config(request: web.Request) -> web.Response:
    """The current knobs."""
    return web.json_response(describe(request.app[SANDBOX]))
