"""Sandbox dedicated endpoints (the contract's `/endpoints`) and the hardware list (`/hardware?model=`).

Endpoint answers (here and in routes_v2.py) carry a `Date` header on the simulated clock: the provider's "now".
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from daemon.sandbox.endpoints import CATALOGUE, SandboxEndpoint, hardware_for, iso_us
from daemon.sandbox.faults import error_response
from daemon.sandbox.sim import OWNER
from daemon.sandbox.state import SANDBOX, Sandbox

routes = web.RouteTableDef()


class Refused(Exception):
    """A request answered 400 with this message and parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def dated(sb: Sandbox, body: Any, status: int = 200) -> web.Response:
    """A JSON answer whose `Date` header is the simulated now."""
    now = format_datetime(datetime.fromtimestamp(sb.sim_now(), UTC), usegmt=True)
    return web.json_response(body, status=status, headers={"Date": now})


def _servable(sb: Sandbox, model: Any) -> str:
    """A base model (`org/name`) or the output of a completed sandbox fine-tune."""
    if not isinstance(model, str) or "/" not in model:
        raise Refused(f"Model {model!r} cannot be deployed", param="model")
    job = sb.completed_output(model)
    if job is not None and job.status(sb.clock()) != "completed":
        raise Refused(f"Model {model} is not ready: its fine-tuning job {job.id} has not completed", param="model")
    return model


def _replicas(body: dict[str, Any]) -> tuple[int, int]:
    scaling = body.get("autoscaling")
    if not isinstance(scaling, dict):
        raise Refused("autoscaling {min_replicas, max_replicas} is required", param="autoscaling")
    low, high = scaling.get("min_replicas"), scaling.get("max_replicas")
    if not isinstance(low, int) or not isinstance(high, int) or not 1 <= low <= high:
        raise Refused("autoscaling needs integers 1 <= min_replicas <= max_replicas", param="autoscaling")
    return low, high


def _new_endpoint(sb: Sandbox, body: dict[str, Any]) -> SandboxEndpoint:
    model = _servable(sb, body.get("model"))
    hardware = next((hw for hw in CATALOGUE if hw.id == body.get("hardware")), None)
    job = sb.completed_output(model)
    if hardware is None or hardware not in hardware_for(str(job.request.get("model")) if job is not None else model):
        raise Refused(f"Hardware {body.get('hardware')!r} is not available for {model}", param="hardware")
    if hardware.availability != "available":
        raise Refused(f"Hardware {hardware.id} is {hardware.availability} right now", param="hardware")
    low, high = _replicas(body)
    timeout = body.get("inactive_timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 0):
        raise Refused("inactive_timeout is a whole number of minutes >= 0", param="inactive_timeout")
    endpoint_id = sb.new_id("endpoint")
    now = sb.sim_now()
    endpoint = SandboxEndpoint(
        id=endpoint_id,
        name=f"{OWNER}/{model.rsplit('/', 1)[-1]}-{endpoint_id.removeprefix('endpoint-')[:8]}",
        display_name=str(body.get("display_name") or model),
        model=model,
        hardware=hardware,
        min_replicas=low,
        max_replicas=high,
        inactive_timeout_min=timeout or None,
        created_at_s=now,
        startup_s=sb.endpoint_startup_s,
    )
    if body.get("state", "STARTED") == "STARTED":
        endpoint.start(now)
    if sb.endpoint_failures:
        message, at_s = sb.endpoint_failures.pop(0)
        endpoint.error_at_s, endpoint.error_message = now + at_s, message
    return endpoint


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise Refused("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise Refused("the request body must be a JSON object")
    return body


@routes.post("/v1/endpoints")
async def create(request: web.Request) -> web.Response:
    """Create a dedicated endpoint; it starts at once (unless `state: STOPPED`) and bills per started minute."""
    sb = request.app[SANDBOX]
    try:
        endpoint = _new_endpoint(sb, await json_body(request))
    except Refused as exc:
        return error_response(400, str(exc), param=exc.param)
    sb.endpoints[endpoint.id] = endpoint
    return dated(sb, endpoint.to_json(sb.sim_now()))


@routes.get("/v1/endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    """Every endpoint not deleted (`type=dedicated` lists the same; `type=serverless` lists none)."""
    sb = request.app[SANDBOX]
    now = sb.sim_now()
    units = [e for e in sb.endpoints.values() if not e.deleted and e.parent is None]
    live = [] if request.query.get("type") == "serverless" else units
    return dated(sb, {"object": "list", "data": [e.to_json(now) for e in live]})


def _found(request: web.Request) -> SandboxEndpoint | web.Response:
    endpoint = request.app[SANDBOX].live_endpoint(request.match_info["id"])
    if endpoint is None or endpoint.parent is not None:
        return error_response(404, f"Endpoint {request.match_info['id']} not found", param="id", code="not_found")
    return endpoint


@routes.get("/v1/endpoints/{id}")
async def retrieve(request: web.Request) -> web.Response:
    """One endpoint and its current state."""
    endpoint = _found(request)
    if isinstance(endpoint, web.Response):
        return endpoint
    return dated(request.app[SANDBOX], endpoint.to_json(request.app[SANDBOX].sim_now()))


@routes.patch("/v1/endpoints/{id}")
async def update(request: web.Request) -> web.Response:
    """Start or stop it (`state`), or change `display_name`, `inactive_timeout`, `autoscaling`."""
    sb = request.app[SANDBOX]
    endpoint = _found(request)
    if isinstance(endpoint, web.Response):
        return endpoint
    try:
        body = await json_body(request)
        if "autoscaling" in body:
            endpoint.min_replicas, endpoint.max_replicas = _replicas(body)
    except Refused as exc:
        return error_response(400, str(exc), param=exc.param)
    now = sb.sim_now()
    if body.get("state") == "STOPPED":
        endpoint.stop(now)
    elif body.get("state") == "STARTED":
        endpoint.start(now)
    if isinstance(body.get("display_name"), str):
        endpoint.display_name = body["display_name"]
    if isinstance(body.get("inactive_timeout"), int):
        endpoint.inactive_timeout_min = body["inactive_timeout"] or None
    endpoint.changed_at_s = now
    return dated(sb, endpoint.to_json(now))


@routes.delete("/v1/endpoints/{id}")
async def delete(request: web.Request) -> web.Response:
    """Delete it (billing stops at once); 204."""
    sb = request.app[SANDBOX]
    endpoint = _found(request)
    if isinstance(endpoint, web.Response):
        return endpoint
    endpoint.stop(sb.sim_now())
    endpoint.deleted = True
    return web.Response(status=204, headers={"Date": dated(sb, None).headers["Date"]})


@routes.get("/v1/hardware")
async def hardware(request: web.Request) -> web.Response:
    """The hardware catalogue with prices and availability; `?model=` keeps the configurations that fit it."""
    sb = request.app[SANDBOX]
    updated = iso_us(sb.started_at_s)
    model = request.query.get("model")
    job = sb.completed_output(model) if model else None
    listed = hardware_for(str(job.request.get("model")) if job is not None else model)  # a fine-tune: its base
    return web.json_response({"object": "list", "data": [hw.to_json(updated) for hw in listed]})


def endpoint_stats(sb: Sandbox) -> dict[str, Any]:
    """`/_sandbox/stats` `endpoints`: endpoints (v1, and v2 entry points) created and deleted; billed units (v1
    endpoints, v2 deployments) billing now, their minutes and dollars; v2 deployments created and deleted."""
    now = sb.sim_now()
    every = list(sb.endpoints.values())
    v1 = [e for e in every if e.parent is None]
    v2 = [e for e in every if e.parent is not None]
    return {
        "created": len(v1) + len(sb.entrypoints),
        "running": sum(e.billing(now) for e in every),
        "deleted": sum(e.deleted for e in v1) + sum(e.deleted for e in sb.entrypoints.values()),
        "deployments": {"created": len(v2), "deleted": sum(e.deleted for e in v2)},
        "minutes_billed": sum(e.billed_minutes(now) for e in every),
        "cost_usd": round(sum(e.cost_usd(now) for e in every), 6),
    }
