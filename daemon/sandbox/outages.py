"""Outages and model loading on command: `POST /_sandbox/outage` and `POST /_sandbox/loading` (and their in-process
twins on SandboxHandle). `refuse` stops listening, `503` answers chat with 503, loading answers the flavour's reply."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.sandbox.flavours import REFUSE_WHILE_LOADING
from daemon.sandbox.listener import LISTENER, Listener
from daemon.sandbox.state import SANDBOX, Sandbox

OUTAGE_MODES = ("refuse", "503")
routes = web.RouteTableDef()


async def begin_outage(sb: Sandbox, listener: Listener, seconds: float, mode: str) -> None:
    """`refuse`: nothing listens for `seconds` (connections refused, open ones dropped, the admin API too);
    `503`: every `/v1/chat/completions` answers 503 "overloaded" for `seconds`."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    if mode == "refuse":
        await listener.refuse(seconds)
    elif mode == "503":
        sb.unavailable_until_s = sb.monotonic() + seconds
    else:
        raise ValueError(f"mode must be one of {list(OUTAGE_MODES)}")


async def begin_loading(sb: Sandbox, listener: Listener, seconds: float) -> None:
    """The model is loading for `seconds`: chat answers the flavour's loading reply (llama.cpp's 503 "Loading
    model"); vLLM and TGI listen only once loaded, so for them this is a `refuse` outage."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    if sb.flavour in REFUSE_WHILE_LOADING:
        await listener.refuse(seconds)
    else:
        sb.loading_until_s = sb.monotonic() + seconds


async def _seconds_and_mode(request: web.Request) -> tuple[float, str]:
    try:
        body: Any = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict) or "seconds" not in body:
        raise ValueError('the body must be {"seconds": S} (and "mode" for an outage)')
    return float(body["seconds"]), str(body.get("mode", "refuse"))


def _bad(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)


async def _answer_then(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Send the admin answer completely before the outage starts (it may close this very connection)."""
    response = web.json_response(body)
    await response.prepare(request)
    await response.write_eof()
    return response


@routes.post("/_sandbox/outage")
async def outage(request: web.Request) -> web.StreamResponse:
    """`{"seconds": S, "mode": "refuse" | "503"}`: answers first, then goes down."""
    try:
        seconds, mode = await _seconds_and_mode(request)
        if mode not in OUTAGE_MODES or seconds < 0:
            raise ValueError(f"mode must be one of {list(OUTAGE_MODES)} and seconds >= 0")
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    response = await _answer_then(request, {"outage": mode, "seconds": seconds})
    await begin_outage(request.app[SANDBOX], request.app[LISTENER], seconds, mode)
    return response


@routes.post("/_sandbox/loading")
async def loading(request: web.Request) -> web.StreamResponse:
    """`{"seconds": S}`: the model is loading for S seconds (see begin_loading)."""
    try:
        seconds, _ = await _seconds_and_mode(request)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    sb = request.app[SANDBOX]
    response = await _answer_then(request, {"loading": True, "seconds": seconds, "flavour": sb.flavour})
    await begin_loading(sb, request.app[LISTENER], seconds)
    return response
