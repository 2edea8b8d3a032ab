"""Context limits on the wire, in each imitated server's own words (status and body as the real server sends them)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from daemon.sandbox import start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, admin

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMIT = 100
PROMPT = "x" * 360  # 90 tokens by the sandbox's formula (4 characters per token)


async def ask(base_url: str, content: str, **extra: Any) -> tuple[int, Any]:
    """One chat request: (status, JSON body)."""
    body = {"model": "org/base", "messages": [{"role": "user", "content": content}], **extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/v1/chat/completions", json=body, headers=AUTH) as response,
    ):
        return response.status, await response.json()


TOGETHER = (
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 100. "
    "Given: 90 `inputs` tokens and 20 `max_new_tokens`"
)
VLLM = (
    "This model's maximum context length is 100 tokens. However, you requested 20 output tokens and your prompt "
    "contains at least 90 input tokens, for a total of at least 110 tokens. Please reduce the length of the input "
    "prompt or the number of requested output tokens. (parameter=input_tokens, value=90)"
)
OPENAI = (
    "This model's maximum context length is 100 tokens. However, you requested 110 tokens (90 in the messages, 20 "
    "in the completion). Please reduce the length of the messages or completion."
)


@pytest.mark.parametrize(
    ("flavour", "status", "expected"),
    [
        ("together", 400, {"message": TOGETHER, "type": "invalid_request_error", "param": "max_tokens", "code": None}),
        ("vllm", 400, {"message": VLLM, "type": "BadRequestError", "param": "input_tokens", "code": 400}),
        (
            "openai",
            400,
            {
                "message": OPENAI,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            },
        ),
    ],
)
async def test_prompt_plus_max_tokens_over_the_limit_gets_the_servers_error(
    flavour: str, status: int, expected: dict[str, Any]
) -> None:
    """90 prompt tokens + max_tokens 20 > 100: each flavour answers its server's status and exact error object."""
    handle = await start_sandbox(context_tokens=LIMIT, flavour=flavour)
    try:
        got, body = await ask(handle.base_url, PROMPT, max_tokens=20)
        assert got == status and body["error"] == expected
        assert (await ask(handle.base_url, PROMPT, max_tokens=10))[0] == 200  # 90 + 10 fits exactly
    finally:
        await handle.close()


async def test_tgi_answers_422_with_its_validation_body() -> None:
    """TGI's router answers 422 {"error": "Input validation error: ...", "error_type": "validation"}."""
    handle = await start_sandbox(context_tokens=LIMIT, flavour="tgi")
    try:
        status, body = await ask(handle.base_url, PROMPT, max_tokens=20)
        assert status == 422 and body == {"error": TOGETHER, "error_type": "validation"}
    finally:
        await handle.close()


async def test_llama_cpp_refuses_a_full_prompt_and_cuts_an_answer_at_the_context_left() -> None:
    """llama.cpp refuses a prompt filling n_ctx (400 exceed_context_size_error) and answers a shorter one until the
    context is full, finish_reason "length", whatever max_tokens asked."""
    handle = await start_sandbox(context_tokens=LIMIT, flavour="llama.cpp")
    try:
        status, body = await ask(handle.base_url, "x" * 400, max_tokens=5)
        assert status == 400
        assert body == {
            "error": {
                "code": 400,
                "message": "request (100 tokens) exceeds the available context size (100 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 100,
                "n_ctx": 100,
            }
        }
        status, body = await ask(handle.base_url, "x" * 380, max_tokens=50)  # 95 tokens: 5 left
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 5
    finally:
        await handle.close()


async def test_openai_without_max_tokens_and_no_limit_by_default() -> None:
    """OpenAI words a prompt alone over the limit differently; with context_tokens 0 nothing is ever refused."""
    handle = await start_sandbox(flavour="openai")
    try:
        assert (await ask(handle.base_url, "x" * 4000))[0] == 200
        await admin(handle.base_url, "POST", "/_sandbox/config", {"context_tokens": 50})
        status, body = await ask(handle.base_url, "x" * 400)
        assert status == 400 and body["error"]["message"] == (
            "This model's maximum context length is 50 tokens. However, your messages resulted in 100 tokens. "
            "Please reduce the length of the messages."
        )
    finally:
        await handle.close()


async def test_max_tokens_still_cuts_answers_at_length_and_unknown_flavours_are_refused() -> None:
    """An answer longer than max_tokens stops at finish_reason "length"; config refuses an unknown flavour."""
    handle = await start_sandbox(context_tokens=LIMIT)
    try:
        status, body = await ask(handle.base_url, "hello there", max_tokens=3)
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        assert len(body["choices"][0]["message"]["content"]) == 12
        assert "error" in await admin(handle.base_url, "POST", "/_sandbox/config", {"flavour": "ollama"})
    finally:
        await handle.close()
