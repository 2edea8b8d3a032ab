"""Sandbox inference: chat completions (outages, rate limits, serving slots, latency) and the priced models list."""

from __future__ import annotations

from aiohttp import web

from daemon.sandbox.completion import plan_chat
from daemon.sandbox.flavours import ChatError, loading_error, overloaded
from daemon.sandbox.models import models_list
from daemon.sandbox.state import SANDBOX, Sandbox

SIMULATED_HEADER = "x-finetuned-simulated"  # the daemon's chat client marks such answers as simulated
routes = web.RouteTableDef()


def _unavailable(sb: Sandbox) -> ChatError | None:
    """The loading or 503-outage answer while one is under way."""
    now = sb.monotonic()
    if now < sb.loading_until_s:
        return loading_error(sb.flavour)
    if now < sb.unavailable_until_s:
        return overloaded()
    return None


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.Response:
    """Decide the answer, meter it against the rate limits, wait for a serving slot, take the latency, answer."""
    sb = request.app[SANDBOX]
    down = _unavailable(sb)
    if down is not None:
        sb.serving.unavailable += 1
        return down.response()
    try:
        body = await request.json()
    except ValueError:
        body = None
    plan = plan_chat(sb, body)
    verdict = sb.limiter.admit(plan.total_tokens)
    if verdict.refusal is not None:
        return verdict.refusal.response(verdict.headers)
    if plan.error is not None or plan.reply is None:
        return (plan.error or ChatError(500, {"error": "no answer"})).response(verdict.headers)
    async with sb.serving.slot():
        await sb.pause(sb.latency_s())
    return web.json_response(plan.reply, headers={**verdict.headers, SIMULATED_HEADER: "true"})


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """Together's `GET /v1/models`: a JSON list of priced models (see daemon.sandbox.models)."""
    return web.json_response(models_list(request.app[SANDBOX]))
