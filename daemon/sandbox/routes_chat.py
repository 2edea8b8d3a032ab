"""Sandbox OpenAI-style chat completions: simulated answers after a configurable latency, with `usage`."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from daemon.sandbox.chat import approx_tokens, simulate_answer, text_of
from daemon.sandbox.faults import error_response
from daemon.sandbox.state import SANDBOX

RATE_LIMIT_PER_MIN = 6000
routes = web.RouteTableDef()


def _bad_request(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages must be a non-empty list of objects"
    if body.get("stream"):
        return "the sandbox does not stream; send stream=false"
    return None


def _truncate(answer: str, max_tokens: Any) -> tuple[str, str]:
    """Cut the answer to `max_tokens` (4 characters per token); returns (text, finish_reason)."""
    if isinstance(max_tokens, int) and max_tokens > 0 and approx_tokens(answer) > max_tokens:
        return answer[: max_tokens * 4], "length"
    return answer, "stop"


def _completion(model: str, answer: str, finish: str, prompt_tokens: int) -> dict[str, Any]:
    """A `chat.completion` object in Together's shape."""
    completion_tokens = approx_tokens(answer)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "prompt": [],
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": answer, "tool_calls": []},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.Response:
    """Answer the last user message; a completed sandbox fine-tune answers short, any other model verbosely."""
    sb = request.app[SANDBOX]
    try:
        body = await request.json()
    except ValueError:
        body = None
    problem = _bad_request(body)
    if problem is not None:
        return error_response(400, problem, param="messages")
    model = body["model"]
    job = sb.completed_output(model)
    if job is not None and job.status(sb.clock()) != "completed":
        message = f"Unable to access model {model}: its fine-tuning job {job.id} has not completed"
        return error_response(404, message, code="model_not_available", param="model")
    await sb.pause(sb.latency_s())
    answer, finish = _truncate(
        simulate_answer(body["messages"], fine_tuned=job is not None, model=model), body.get("max_tokens")
    )
    prompt_tokens = sum(approx_tokens(text_of(m.get("content"))) for m in body["messages"])
    reply = _completion(model, answer, finish, prompt_tokens)
    headers = {
        "x-ratelimit-limit": str(RATE_LIMIT_PER_MIN),
        "x-ratelimit-remaining": str(RATE_LIMIT_PER_MIN - 1),
        "x-ratelimit-reset": "1",
    }
    return web.json_response(reply, headers=headers)
