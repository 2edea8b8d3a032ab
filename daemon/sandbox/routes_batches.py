"""Sandbox Batch API (half-price chat in bulk): create, retrieve, list and cancel, as the SDK's `client.batches` calls
them. Errors use the contract's BatchErrorResponse `{"error": "..."}`."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from daemon.sandbox.batches import SandboxBatch, settle_files, validate_input
from daemon.sandbox.state import SANDBOX, Sandbox, take_outcome

ENDPOINTS = ("/v1/chat/completions",)
COMPLETION_WINDOW = "24h"
routes = web.RouteTableDef()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _problem(sb: Sandbox, body: dict[str, Any]) -> str | None:
    """Why the create request is refused at once (400), if it is."""
    if body.get("endpoint") not in ENDPOINTS:
        return f"endpoint must be one of {list(ENDPOINTS)}"
    file = sb.files.get(str(body.get("input_file_id")))
    if file is None or file.content is None:
        return f"input file {body.get('input_file_id')!r} not found"
    if file.purpose != "batch-api":
        return f"input file {file.id} was uploaded with purpose {file.purpose!r}, not 'batch-api'"
    model_id = body.get("model_id")
    if model_id is not None and (not isinstance(model_id, str) or not model_id):
        return "model_id must be a model name"
    return None


@routes.post("/v1/batches")
async def create_batch(request: web.Request) -> web.Response:
    """201 `{"job": BatchJob}` (plus a `warning` for a completion_window other than 24h); VALIDATING at first."""
    sb = request.app[SANDBOX]
    body = await _body(request)
    if body is None:
        return _error(400, "the request body must be a JSON object")
    problem = _problem(sb, body)
    if problem is not None:
        return _error(400, problem)
    file = sb.files[str(body["input_file_id"])]
    batch = SandboxBatch(
        id=str(uuid.uuid4()),
        input_file_id=file.id,
        file_size_bytes=len(file.content or b""),
        endpoint=str(body["endpoint"]),
        model_id=body.get("model_id"),
        created_at_s=sb.clock(),
        speed=sb.speed,
    )
    batch.outcome = take_outcome(sb.batch_outcomes, batch.id)
    validate_input(sb, batch, file.content or b"")
    sb.batches[batch.id] = batch
    answer: dict[str, Any] = {"job": batch.to_json(sb.clock())}
    window = body.get("completion_window")
    if window not in (None, COMPLETION_WINDOW):
        answer["warning"] = f"completion_window {window!r} is not supported; the batch runs with {COMPLETION_WINDOW}"
    return web.json_response(answer, status=201)


def _batch_or_404(request: web.Request) -> SandboxBatch | web.Response:
    batch = request.app[SANDBOX].batches.get(request.match_info["id"])
    return batch if batch is not None else _error(404, f"batch {request.match_info['id']} not found")


def _view(sb: Sandbox, batch: SandboxBatch) -> dict[str, Any]:
    now = sb.clock()
    settle_files(sb, batch, now)
    return batch.to_json(now)


@routes.get("/v1/batches")
async def list_batches(request: web.Request) -> web.Response:
    """Every batch, newest first (a bare JSON list)."""
    sb = request.app[SANDBOX]
    batches = sorted(sb.batches.values(), key=lambda b: b.created_at_s, reverse=True)
    return web.json_response([_view(sb, b) for b in batches])


@routes.get("/v1/batches/{id}")
async def retrieve_batch(request: web.Request) -> web.Response:
    """One batch; once it has ended it carries its output and error file ids."""
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    return web.json_response(_view(request.app[SANDBOX], batch))


@routes.post("/v1/batches/{id}/cancel")
async def cancel_batch(request: web.Request) -> web.Response:
    """CANCELLED at once if VALIDATING or IN_PROGRESS (answered requests stay in the output file); else unchanged."""
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    sb = request.app[SANDBOX]
    batch.cancel(sb.clock())
    return web.json_response(_view(sb, batch))
