"""One chat completion, decided before it is served: the reply or the error, and its tokens (real-time and batch)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.sandbox.chat import approx_tokens, simulate_answer, text_of
from daemon.sandbox.flavours import ChatError, context_overflow, overflows, together_error
from daemon.sandbox.models import ServedModel, resolve_served_model

if TYPE_CHECKING:
    from daemon.sandbox.state import Sandbox


@dataclass
class ChatPlan:
    """What the sandbox will answer to one chat body: `reply` (a chat.completion) or `error`, and the tokens."""

    prompt_tokens: int
    reply: dict[str, Any] | None = None
    error: ChatError | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus answer tokens (what a token rate limit charges)."""
        usage = (self.reply or {}).get("usage") or {}
        return int(usage.get("total_tokens") or self.prompt_tokens)


def bad_request(body: Any) -> ChatError | None:
    """The 400 for a body that is not a chat request the sandbox can answer."""
    problem = None
    if not isinstance(body, dict):
        problem = "the request body must be a JSON object"
    elif not isinstance(body.get("model"), str) or not body["model"]:
        problem = "model is required"
    elif not _messages_ok(body.get("messages")):
        problem = "messages must be a non-empty list of objects"
    elif body.get("stream"):
        problem = "the sandbox does not stream; send stream=false"
    if problem is None:
        return None
    return together_error(400, problem, type_="invalid_request_error", code=None, param="messages")


def _messages_ok(messages: Any) -> bool:
    return isinstance(messages, list) and bool(messages) and all(isinstance(m, dict) for m in messages)


def prompt_tokens_of(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens by the sandbox's formula: 4 characters per token, at least 1 per message."""
    return sum(approx_tokens(text_of(m.get("content"))) for m in messages)


def plan_chat(sb: Sandbox, body: Any) -> ChatPlan:
    """Decide the answer to `body`: shape errors, the model (see resolve_served_model), the context limit of the
    configured flavour, then the simulated answer cut to `max_tokens` (or to the context left, for llama.cpp)."""
    error = bad_request(body)
    if error is not None:
        return ChatPlan(0, error=error)
    prompt = prompt_tokens_of(body["messages"])
    served = resolve_served_model(sb, body["model"])
    if isinstance(served, ChatError):
        return ChatPlan(prompt, error=served)
    if not served.fine_tuned and "/" in served.name and sb.live_endpoint(served.name) is None:
        sb.seen_models.add(served.name)
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else None
    if overflows(sb.flavour, sb.context_tokens, prompt, max_tokens):
        return ChatPlan(prompt, error=context_overflow(sb.flavour, sb.context_tokens, prompt, max_tokens))
    budget = max_tokens if max_tokens is not None and max_tokens > 0 else None
    if sb.flavour == "llama.cpp" and sb.context_tokens > 0:
        budget = min(budget or sb.context_tokens, sb.context_tokens - prompt)
    return ChatPlan(prompt, reply=_reply(body, served, prompt, budget))


def truncate(answer: str, budget_tokens: int | None) -> tuple[str, str]:
    """Cut the answer to `budget_tokens` (4 characters per token); returns (text, finish_reason)."""
    if budget_tokens is not None and approx_tokens(answer) > budget_tokens:
        return answer[: budget_tokens * 4], "length"
    return answer, "stop"


def _reply(body: dict[str, Any], served: ServedModel, prompt: int, budget: int | None) -> dict[str, Any]:
    answer = simulate_answer(body["messages"], fine_tuned=served.fine_tuned, model=served.name)
    text, finish = truncate(answer, budget)
    completion = approx_tokens(text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.name,
        "prompt": [],
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
