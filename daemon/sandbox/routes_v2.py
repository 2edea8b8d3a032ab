"""Sandbox routes of the SDK's project-scoped endpoint surface: whoami, endpoints, deployments, instance types,
configs and the project's models (projects.py), on the billed units of endpoints.py. Knob `v2_endpoints` off: each
answers 404, as a server without this surface would."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from daemon.sandbox import projects
from daemon.sandbox.endpoints import CATALOGUE, SandboxEndpoint, hardware_for
from daemon.sandbox.faults import error_response
from daemon.sandbox.routes_endpoints import Refused, dated, json_body
from daemon.sandbox.state import SANDBOX, Sandbox

routes = web.RouteTableDef()
PROJECT = "/v2/projects/{project}"
Route = Callable[[web.Request], Awaitable[web.Response]]


class NotFound(Exception):
    """Answered 404 with this message."""


def surface(handler: Route) -> Route:
    """404 while the knob is off or for another project; Refused -> 400, NotFound -> 404."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        sb = request.app[SANDBOX]
        project = request.match_info.get("project", projects.PROJECT_ID)
        if not sb.v2_endpoints or project != projects.PROJECT_ID:
            return error_response(404, f"Not found: {request.path}", code="not_found")
        try:
            return await handler(request)
        except Refused as exc:
            return error_response(400, str(exc), param=exc.param)
        except NotFound as exc:
            return error_response(404, str(exc), code="not_found")

    return guarded


@routes.get("/v1/whoami")
@routes.get("/v3/whoami")
@surface
async def whoami(request: web.Request) -> web.Response:
    """The caller's project (the SDK's `client.whoami()` asks `/v3`; older CLIs `/v1`)."""
    return web.json_response(projects.whoami())


@routes.get("/v2/public/inference-instance-types")
@surface
async def instance_types(request: web.Request) -> web.Response:
    """The whole hardware catalogue, priced per hour, with headroom per region."""
    return web.json_response({"object": "list", "data": [projects.instance_type(hw) for hw in CATALOGUE]})


def _project_models(sb: Sandbox) -> dict[str, tuple[str, str]]:
    """Model id -> (name, base) for every completed fine-tune's output."""
    now = sb.clock()
    done = [j for j in sb.jobs.values() if j.status(now) == "completed"]
    return {projects.model_id(j.output_name): (j.output_name, str(j.request.get("model"))) for j in done}


@routes.get(PROJECT + "/models")
@surface
async def models(request: web.Request) -> web.Response:
    """The project's models: the outputs of completed fine-tunes."""
    found = _project_models(request.app[SANDBOX]).values()
    return web.json_response({"data": [projects.project_model(n, b) for n, b in found], "next_cursor": None})


@routes.get(PROJECT + "/configs")
@surface
async def configs(request: web.Request) -> web.Response:
    """The configs compatible with `referenceModel` (a public base): one per catalogue entry it fits."""
    sb = request.app[SANDBOX]
    reference = request.query.get("referenceModel") or request.query.get("referenceModelId") or ""
    own = _project_models(sb).get(reference.rsplit("/", 1)[-1]) if reference.startswith(PREFIX) else None
    base = own[1] if own else next((b for b in _bases(sb) if reference in (projects.public_model(b), b)), None)
    if base is None:
        raise NotFound(f"Model {reference!r} not found")
    data = [projects.config(hw, projects.public_model(base)) for hw in hardware_for(base)]
    return web.json_response({"data": data, "next_cursor": None})


def _bases(sb: Sandbox) -> set[str]:
    return {str(job.request.get("model")) for job in sb.jobs.values()}


def _entry(sb: Sandbox, endpoint_id: str) -> projects.Entrypoint:
    entry = sb.entrypoints.get(endpoint_id)
    if entry is None or entry.deleted:
        raise NotFound(f"Endpoint {endpoint_id} not found")
    return entry


def _deployments(sb: Sandbox, entry: projects.Entrypoint) -> list[SandboxEndpoint]:
    return [d for d in sb.endpoints.values() if d.parent == entry.id and not d.deleted]


def _endpoint_json(sb: Sandbox, entry: projects.Entrypoint) -> dict[str, Any]:
    return entry.to_json(_deployments(sb, entry), sb.sim_now())


@routes.post(PROJECT + "/endpoints")
@surface
async def create_endpoint(request: web.Request) -> web.Response:
    """A named entry point (no deployment, not billed); 409 when the name is taken."""
    sb = request.app[SANDBOX]
    body = await json_body(request)
    bare = str(body.get("name") or "").rsplit("/", 1)[-1]
    if not bare:
        raise Refused("name is required", param="name")
    name = f"{projects.PROJECT_SLUG}/{bare}"
    if any(e.name == name and not e.deleted for e in sb.entrypoints.values()):
        return error_response(409, f"Endpoint {name} already exists", code="already_exists")
    now = sb.sim_now()
    entry = projects.Entrypoint("ep_" + sb.new_id("x")[2:].replace("-", "")[:20], name, now, now)
    entry.visibility = str(body.get("visibility") or entry.visibility)
    sb.entrypoints[entry.id] = entry
    return dated(sb, _endpoint_json(sb, entry))


@routes.get(PROJECT + "/endpoints")
@surface
async def list_endpoints(request: web.Request) -> web.Response:
    """The endpoints not deleted, narrowed by `filter` (`name:"part"` or `name="x"`)."""
    sb = request.app[SANDBOX]
    expression = request.query.get("filter")
    keep = projects.name_filter(expression) if expression else (lambda _: True)
    if keep is None:
        raise Refused(f"unsupported filter {expression!r}", param="filter")
    live = [e for e in sb.entrypoints.values() if not e.deleted and keep(e.name)]
    return dated(sb, {"data": [_endpoint_json(sb, e) for e in live], "next_cursor": None})


@routes.get(PROJECT + "/endpoints/{id}")
@surface
async def retrieve_endpoint(request: web.Request) -> web.Response:
    """One endpoint with summaries of its deployments."""
    sb = request.app[SANDBOX]
    return dated(sb, _endpoint_json(sb, _entry(sb, request.match_info["id"])))


@routes.patch(PROJECT + "/endpoints/{id}")
@surface
async def update_endpoint(request: web.Request) -> web.Response:
    """Replace the traffic split (`trafficSplit` [{deploymentId, weight}]), the name or the visibility."""
    sb = request.app[SANDBOX]
    entry = _entry(sb, request.match_info["id"])
    body = await json_body(request)
    if body.get("etag") not in (None, entry.etag):
        return error_response(409, f"etag {body['etag']} is stale (now {entry.etag})", code="aborted")
    if "trafficSplit" in body:
        entry.traffic = _traffic(body["trafficSplit"], {d.id for d in _deployments(sb, entry)})
    if isinstance(body.get("visibility"), str):
        entry.visibility = body["visibility"]
    entry.touch(sb.sim_now())
    return dated(sb, _endpoint_json(sb, entry))


def _traffic(split: Any, known: set[str]) -> list[tuple[str, float]]:
    if not isinstance(split, list):
        raise Refused("trafficSplit is a list of {deploymentId, weight}", param="trafficSplit")
    entries: list[tuple[str, float]] = []
    for entry in split:
        if not isinstance(entry, dict):
            raise Refused("trafficSplit is a list of {deploymentId, weight}", param="trafficSplit")
        deployment_id, weight = str(entry.get("deploymentId")), entry.get("weight")
        if deployment_id not in known or not isinstance(weight, int | float) or weight < 0:
            raise Refused(f"bad traffic split entry for {deployment_id}", param="trafficSplit")
        entries.append((deployment_id, float(weight)))
    return entries


@routes.delete(PROJECT + "/endpoints/{id}")
@surface
async def delete_endpoint(request: web.Request) -> web.Response:
    """Delete an endpoint without deployments (400 while it has any, as Together asks them deleted first)."""
    sb = request.app[SANDBOX]
    entry = _entry(sb, request.match_info["id"])
    if _deployments(sb, entry):
        raise Refused(f"Endpoint {entry.id} still has deployments: delete them first")
    entry.deleted = True
    entry.touch(sb.sim_now())
    return dated(sb, {})


def _autoscaling(body: dict[str, Any]) -> tuple[int, int]:
    scaling = body.get("autoscaling")
    low = scaling.get("minReplicas") if isinstance(scaling, dict) else None
    high = scaling.get("maxReplicas", low) if isinstance(scaling, dict) else None
    if not isinstance(low, int) or not isinstance(high, int) or not 0 <= low <= high:
        raise Refused("autoscaling needs integers 0 <= minReplicas <= maxReplicas", param="autoscaling")
    return low, high


def _new_deployment(sb: Sandbox, entry: projects.Entrypoint, body: dict[str, Any]) -> SandboxEndpoint:
    model_path = str(body.get("model") or "")
    found = _project_models(sb).get(model_path.rsplit("/", 1)[-1]) if model_path.startswith(PREFIX) else None
    if found is None:
        raise Refused(f"Model {model_path!r} is not a model of project {projects.PROJECT_ID}", param="model")
    name, base = found
    hardware = next((hw for hw in hardware_for(base) if projects.config_path(hw) == body.get("config")), None)
    if hardware is None or hardware.availability != "available":
        raise Refused(f"Config {body.get('config')!r} cannot serve {name} now", param="config")
    low, high = _autoscaling(body)
    bare = str(body.get("name") or "")
    if not bare or any(d.name.endswith("/" + bare) for d in _deployments(sb, entry)):
        raise Refused(f"deployment name {bare!r} is empty or taken", param="name")
    now = sb.sim_now()
    unit = SandboxEndpoint(
        id="dep_" + sb.new_id("x")[2:].replace("-", "")[:20],
        name=f"{entry.name}/{bare}",
        display_name=bare,
        model=name,
        hardware=hardware,
        min_replicas=low,
        max_replicas=high,
        inactive_timeout_min=int(body.get("inactiveTimeout") or 0) or None,
        created_at_s=now,
        startup_s=sb.endpoint_startup_s,
        parent=entry.id,
        config=projects.config_path(hardware),
        extra={"model_path": model_path, "model_id": projects.model_id(name)},
    )
    if high > 0:
        unit.start(now)
    if sb.endpoint_failures:
        message, at_s = sb.endpoint_failures.pop(0)
        unit.error_at_s, unit.error_message = now + at_s, message
    return unit


PREFIX = f"projects/{projects.PROJECT_ID}/models/"


@routes.post(PROJECT + "/endpoints/{endpoint}/deployments")
@surface
async def create_deployment(request: web.Request) -> web.Response:
    """A deployment of a project model on a config; it provisions at once and bills per started minute."""
    sb = request.app[SANDBOX]
    entry = _entry(sb, request.match_info["endpoint"])
    unit = _new_deployment(sb, entry, await json_body(request))
    sb.endpoints[unit.id] = unit
    return dated(sb, projects.deployment(unit, sb.sim_now()))


@routes.get(PROJECT + "/endpoints/{endpoint}/deployments")
@surface
async def list_deployments(request: web.Request) -> web.Response:
    """The endpoint's deployments (not deleted)."""
    sb = request.app[SANDBOX]
    now = sb.sim_now()
    found = _deployments(sb, _entry(sb, request.match_info["endpoint"]))
    return dated(sb, {"data": [projects.deployment(d, now) for d in found], "next_cursor": None})


def _unit(sb: Sandbox, request: web.Request) -> SandboxEndpoint:
    entry = _entry(sb, request.match_info["endpoint"])
    unit = sb.endpoints.get(request.match_info["id"])
    if unit is None or unit.deleted or unit.parent != entry.id:
        raise NotFound(f"Deployment {request.match_info['id']} not found")
    return unit


@routes.get(PROJECT + "/endpoints/{endpoint}/deployments/{id}")
@surface
async def retrieve_deployment(request: web.Request) -> web.Response:
    """One deployment and its status."""
    sb = request.app[SANDBOX]
    return dated(sb, projects.deployment(_unit(sb, request), sb.sim_now()))


@routes.patch(PROJECT + "/endpoints/{endpoint}/deployments/{id}")
@surface
async def update_deployment(request: web.Request) -> web.Response:
    """Change the replica bounds (0/0 stops it, more starts it again) or the inactivity timeout."""
    sb = request.app[SANDBOX]
    unit = _unit(sb, request)
    body = await json_body(request)
    now = sb.sim_now()
    if "autoscaling" in body:
        low, high = _autoscaling(body)
        if high == 0:
            unit.billed_replicas = unit.billed_replicas or unit.min_replicas  # what the minutes so far were billed at
            unit.stop(now)
        else:
            unit.billed_replicas = 0
            unit.start(now)
        unit.min_replicas, unit.max_replicas = low, high
    if isinstance(body.get("inactiveTimeout"), int):
        unit.inactive_timeout_min = body["inactiveTimeout"] or None
    unit.changed_at_s = now
    return dated(sb, projects.deployment(unit, now))


@routes.delete(PROJECT + "/endpoints/{endpoint}/deployments/{id}")
@surface
async def delete_deployment(request: web.Request) -> web.Response:
    """Delete it (billing stops at once) and take it out of the traffic split."""
    sb = request.app[SANDBOX]
    unit = _unit(sb, request)
    now = sb.sim_now()
    unit.stop(now)
    unit.deleted = True
    entry = _entry(sb, request.match_info["endpoint"])
    entry.traffic = [(d, w) for d, w in entry.traffic if d != unit.id]
    entry.touch(now)
    return dated(sb, {})
