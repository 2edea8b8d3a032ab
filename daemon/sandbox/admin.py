"""Sandbox admin API under /_sandbox/ (never faulted): request counters, scripted faults and job outcomes, knobs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.sandbox.faults import Fault
from daemon.sandbox.sim import Outcome
from daemon.sandbox.state import SANDBOX, PendingOutcome, Sandbox, parse_latency_ms

OUTCOME_STATUSES = frozenset({"error", "user_error", "cancelled"})
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
    """Counters by `METHOD /route-pattern`, plus how many files and jobs exist."""
    sb = request.app[SANDBOX]
    return web.json_response({**sb.stats.to_json(), "files": len(sb.files), "jobs": len(sb.jobs)})


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
    """Make the next `count` jobs (or job `job_id`) end in error/user_error/cancelled at fraction `at` of training."""
    body = await _body(request)
    sb = request.app[SANDBOX]
    if not isinstance(body, dict) or body.get("outcome") not in OUTCOME_STATUSES:
        return _bad(f"outcome must be one of {sorted(OUTCOME_STATUSES)}")
    message = str(body.get("message") or f"The job ended in {body['outcome']} (scripted by the sandbox)")
    outcome = Outcome(body["outcome"], message, at=float(body.get("at", 0.5)))
    job_id = body.get("job_id")
    if job_id is not None:
        job = sb.jobs.get(str(job_id))
        if job is None:
            return _bad(f"no job {job_id}")
        job.set_outcome(outcome)
    else:
        sb.outcomes.append(PendingOutcome(outcome, count=int(body.get("count", 1))))
    return web.json_response({"pending": len(sb.outcomes)})


@routes.post("/_sandbox/config")
async def config(request: web.Request) -> web.Response:
    """Change knobs at run time: speed, latency_ms, fault_rate, retry_after_s, user_limit_usd."""
    body = await _body(request)
    if not isinstance(body, dict):
        return _bad("the body must be a JSON object")
    try:
        _apply_config(request.app[SANDBOX], body)
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response(describe(request.app[SANDBOX]))


def _apply_config(sb: Sandbox, body: dict[str, Any]) -> None:
    unknown = set(body) - {"speed", "latency_ms", "fault_rate", "retry_after_s", "user_limit_usd"}
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    if "speed" in body:
        if float(body["speed"]) <= 0:
            raise ValueError("speed must be > 0")
        sb.speed = float(body["speed"])
    if "latency_ms" in body:
        sb.latency_ms = parse_latency_ms(str(body["latency_ms"]))
    if "fault_rate" in body:
        sb.faults.fault_rate = float(body["fault_rate"])
    if "retry_after_s" in body:
        sb.faults.retry_after_s = float(body["retry_after_s"])
    if "user_limit_usd" in body:
        sb.user_limit_usd = float(body["user_limit_usd"])


@routes.get("/_sandbox/config")
async def get_config(request: web.Request) -> web.Response:
    """The current knobs."""
    return web.json_response(describe(request.app[SANDBOX]))


def describe(sb: Sandbox) -> dict[str, Any]:
    """The knobs as JSON."""
    lo, hi = sb.latency_ms
    return {
        "speed": sb.speed,
        "latency_ms": f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}",
        "fault_rate": sb.faults.fault_rate,
        "retry_after_s": sb.faults.retry_after_s,
        "user_limit_usd": sb.user_limit_usd,
    }
