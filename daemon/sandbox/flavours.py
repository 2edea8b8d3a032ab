"""How each imitated server words a context overflow and a model still loading: status, body and shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox.faults import error_body

# Where the wording comes from (each server's own source, or a real body someone posted):
# * llama.cpp, tools/server/server-context.cpp: a prompt of n_ctx tokens or more gets send_error("request (%d
#   tokens) exceeds the available context size (%d tokens), try increasing it", ERROR_TYPE_EXCEED_CONTEXT_SIZE);
#   format_error_response makes that 400 {"code": 400, "message", "type": "exceed_context_size_error"} and
#   server-task.cpp (server_task_result_error::to_json) adds n_prompt_tokens and n_ctx. A prompt that fits is
#   answered until the context is full (finish_reason "length"). Older builds said "the request exceeds the
#   available context size, try increasing it". While loading, its middleware_server_state answers
#   format_error_response("Loading model", ERROR_TYPE_UNAVAILABLE): 503 "unavailable_error".
# * vLLM: VLLMValidationError(..., parameter="input_tokens"), served as 400 {"error": {"message", "type":
#   "BadRequestError", "param": "input_tokens", "code": 400}} (vllm/entrypoints/openai/protocol.py ErrorInfo);
#   before V1, serving_engine.py::_validate_prompt_and_tokenize said "... However, you requested N tokens (P in
#   the messages, C in the completion). Please reduce the length of the messages or completion."
# * TGI, router/src/validation.rs: ValidationError::MaxTotalTokens "`inputs` tokens + `max_new_tokens` must be
#   <= {0}. Given: {1} `inputs` tokens and {2} `max_new_tokens`", wrapped by InferError::ValidationError
#   ("Input validation error: {0}", router/src/infer/mod.rs) and answered 422 {"error", "error_type":
#   "validation"} (router/src/server.rs, lib.rs ErrorResponse).
# * OpenAI: 400 invalid_request_error, code "context_length_exceeded", param "messages" (many user reports).
# * Together: 400 {"id", "error": {"message": "Input validation error: `inputs` tokens + `max_new_tokens` must be
#   <= N. Given: ...", "type": "invalid_request_error", "param": "max_tokens", "code": null}} (a real body in
#   BerriAI/litellm#4934); Together's error-code page lists 403 for this case too. Its 503 "The server is
#   overloaded or not ready yet." is reported in together-cookbook#57.
# vLLM and TGI open their HTTP port only once the model is loaded, so while "loading" they refuse connections.
FLAVOURS = ("together", "llama.cpp", "vllm", "tgi", "openai")
REFUSE_WHILE_LOADING = frozenset({"vllm", "tgi"})
OVERLOADED_MESSAGE = "The server is overloaded or not ready yet."


@dataclass
class ChatError:
    """An error answer to a chat request, as the imitated server sends it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The human-readable text, whatever the body's shape (`{"error": {"message"}}` or TGI's `{"error": str}`)."""
        error = self.body.get("error")
        return str(error.get("message", "")) if isinstance(error, dict) else str(error)

    @property
    def code(self) -> str | None:
        """The machine-readable code (or type), when the body has one."""
        error = self.body.get("error")
        if not isinstance(error, dict):
            return str(self.body.get("error_type") or "") or None
        code = error.get("code") or error.get("type")
        return None if code is None else str(code)

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The aiohttp answer."""
        return web.json_response(self.body, status=self.status, headers={**self.headers, **(headers or {})})


def together_error(status: int, message: str, *, type_: str, code: str | None, param: str | None = None) -> ChatError:
    """An error in Together's shape `{"id", "error": {"message", "type", "param", "code"}}`."""
    return ChatError(status, error_body(message, type_=type_, code=code, param=param))


def overflows(flavour: str, limit: int, prompt: int, requested: int | None) -> bool:
    """True if the server refuses the request: llama.cpp refuses only a prompt that fills its context, the others
    refuse prompt + max_tokens > limit. No limit (0) never overflows."""
    if limit <= 0:
        return False
    if flavour == "llama.cpp":
        return prompt >= limit
    return prompt + (requested or 0) > limit


def context_overflow(flavour: str, limit: int, prompt: int, requested: int | None) -> ChatError:
    """The server's answer to `prompt` tokens plus `requested` output tokens that do not fit `limit` tokens."""
    return _OVERFLOW[flavour](limit, prompt, requested)


def _llama_cpp(limit: int, prompt: int, requested: int | None) -> ChatError:
    message = f"request ({prompt} tokens) exceeds the available context size ({limit} tokens), try increasing it"
    error = {"code": 400, "message": message, "type": "exceed_context_size_error"}
    return ChatError(400, {"error": {**error, "n_prompt_tokens": prompt, "n_ctx": limit}})


def _vllm(limit: int, prompt: int, requested: int | None) -> ChatError:
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested {requested or 0} output "
        f"tokens and your prompt contains at least {prompt} input tokens, for a total of at least "
        f"{prompt + (requested or 0)} tokens. Please reduce the length of the input prompt or the number of "
        f"requested output tokens. (parameter=input_tokens, value={prompt})"
    )
    return ChatError(
        400, {"error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    )


def _tgi_sentence(limit: int, prompt: int, requested: int | None) -> str:
    return (
        f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. "
        f"Given: {prompt} `inputs` tokens and {requested or 0} `max_new_tokens`"
    )


def _tgi(limit: int, prompt: int, requested: int | None) -> ChatError:
    return ChatError(422, {"error": _tgi_sentence(limit, prompt, requested), "error_type": "validation"})


def _together(limit: int, prompt: int, requested: int | None) -> ChatError:
    message = _tgi_sentence(limit, prompt, requested)
    return together_error(400, message, type_="invalid_request_error", code=None, param="max_tokens")


def _openai(limit: int, prompt: int, requested: int | None) -> ChatError:
    if requested is None:
        tail = f"your messages resulted in {prompt} tokens. Please reduce the length of the messages."
    else:
        tail = (
            f"you requested {prompt + requested} tokens ({prompt} in the messages, {requested} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    message = f"This model's maximum context length is {limit} tokens. However, {tail}"
    body = {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
    return ChatError(400, {"error": body})


_OVERFLOW: dict[str, Callable[[int, int, int | None], ChatError]] = {
    "together": _together,
    "llama.cpp": _llama_cpp,
    "vllm": _vllm,
    "tgi": _tgi,
    "openai": _openai,
}


def loading_error(flavour: str) -> ChatError:
    """The answer while the model loads: llama.cpp's exact 503, a provider's 503 for the others (vLLM and TGI
    refuse connections instead: see REFUSE_WHILE_LOADING)."""
    if flavour == "llama.cpp":
        return ChatError(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    return overloaded()


def overloaded() -> ChatError:
    """A provider's 503 for an overloaded or not yet ready server."""
    return together_error(503, OVERLOADED_MESSAGE, type_="server_error", code="service_unavailable")
