"""The sandbox aiohttp application: routes plus the middleware that counts requests and injects faults."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.sandbox import (
    admin,
    outages,
    routes_batches,
    routes_chat,
    routes_endpoints,
    routes_files,
    routes_jobs,
    routes_v2,
)
from daemon.sandbox.faults import Fault, error_response, fault_response
from daemon.sandbox.lean import lean_answer
from daemon.sandbox.listener import LISTENER, Listener
from daemon.sandbox.state import SANDBOX, Sandbox

MAX_UPLOAD_BYTES = 64 * 2**30
SLOW_BODY_CHUNKS = 10
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_key(request: web.Request) -> str:
    """`METHOD /route-pattern` (e.g. `GET /v1/fine-tunes/{id}`), the key of the counters and scripted faults."""
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else request.path
    return f"{request.method} {pattern}"


def _authorized(sb: Sandbox, request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return sb.api_key is None or token.strip() == sb.api_key


@web.middleware
async def sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin routes pass straight through; API routes are authorised, maybe faulted, counted, then answered."""
    if request.path.startswith("/_sandbox/"):
        return await handler(request)
    sb = request.app[SANDBOX]
    key = route_key(request)
    fault = sb.faults.take(key, random_allowed=request.path.startswith("/v1/"))
    if fault is not None and fault.kind not in ("timeout", "slow"):
        sb.stats.faults[key] += 1
        return fault_response(fault)
    sb.stats.requests[key] += 1
    if request.path.startswith(("/v1/", "/v2/", "/v3/")) and not _authorized(sb, request):
        return error_response(401, "Invalid API key provided.", code="invalid_api_key")
    response = _lean(sb, key, await _answer(request, handler))
    if fault is None:
        return response
    sb.stats.faults[key] += 1
    return await _misbehave(sb, request, fault, response)


def _lean(sb: Sandbox, key: str, response: web.StreamResponse) -> web.StreamResponse:
    """With the `lean` knob, a successful JSON answer keeps only the fields the contract declares (lean.py)."""
    if not sb.lean or not isinstance(response, web.Response) or response.status >= 300:
        return response
    if response.content_type != "application/json" or not isinstance(response.body, bytes):
        return response
    pruned = lean_answer(key, json.loads(response.body))
    if pruned is None:
        return response
    return web.json_response(pruned, status=response.status, headers=_extra_headers(response))


def _extra_headers(response: web.Response) -> dict[str, str]:
    skip = {"content-type", "content-length"}
    return {k: v for k, v in response.headers.items() if k.lower() not in skip}


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the route; aiohttp's own HTTP errors (unknown path, wrong method) come back in Together's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.text or exc.reason, code="not_found" if exc.status == 404 else None)


async def _misbehave(
    sb: Sandbox, request: web.Request, fault: Fault, response: web.StreamResponse
) -> web.StreamResponse:
    """`timeout`: hold the finished response back for `delay_s`; `slow`: send its body in pieces over `delay_s`."""
    if fault.kind == "timeout" or not isinstance(response, web.Response):
        await sb.pause(fault.delay_s)
        return response
    body = response.body if isinstance(response.body, bytes) else json.dumps(None).encode()
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    piece = max(1, -(-len(body) // SLOW_BODY_CHUNKS))
    for start in range(0, len(body), piece):
        await stream.write(body[start : start + piece])
        await sb.pause(fault.delay_s / SLOW_BODY_CHUNKS)
    await stream.write_eof()
    return stream


def make_app(sb: Sandbox, listener: Listener) -> web.Application:
    """The aiohttp application serving `sb` on `listener`; static fine-tune paths are registered before `/{id}`."""
    app = web.Application(middlewares=[sandbox_middleware], client_max_size=MAX_UPLOAD_BYTES)
    app[SANDBOX] = sb
    app[LISTENER] = listener
    tables = (routes_files, routes_jobs, routes_chat, routes_batches, routes_endpoints, routes_v2, admin, outages)
    for module in tables:
        app.router.add_routes(module.routes)
    return app
