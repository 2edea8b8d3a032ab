"""daemon/remote/classify.py on the real wording of each server (the sandbox's flavours quote their sources), and
the chat client against the sandbox imitating each server: context overflow and loading are told apart."""

from __future__ import annotations

import pytest

from daemon.errors import ContentFiltered, ContextLengthExceeded, Paused, RemoteRejected, TransientError, Unavailable
from daemon.remote.backoff import RetryPolicy
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatRequest, chat_url
from daemon.remote.classify import classify
from daemon.sandbox import start_sandbox
from daemon.sandbox.flavours import FLAVOURS, context_overflow, loading_error, overloaded

LONG_PROMPT = "Story: " + "The hat was red and the cat was blue. " * 40


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_servers_context_overflow_is_context_length(flavour: str) -> None:
    """llama.cpp, vLLM, TGI (422), OpenAI and Together overflow bodies all classify as ContextLengthExceeded."""
    answer = context_overflow(flavour, 100, 120, 64)
    error = classify("chat request", answer.status, answer.body, answer.headers)
    assert isinstance(error, ContextLengthExceeded), (flavour, str(error))


@pytest.mark.parametrize("flavour", ["llama.cpp", "together", "openai"])
def test_loading_and_overloaded_503_are_unavailable(flavour: str) -> None:
    """llama.cpp's `503 Loading model` and a provider's 503 are Unavailable: transient until the server is ready."""
    for answer in (loading_error(flavour), overloaded()):
        error = classify("chat request", answer.status, answer.body, answer.headers)
        assert isinstance(error, Unavailable) and isinstance(error, TransientError), str(error)


def test_other_statuses_keep_their_classes() -> None:
    """502 is transient (not Unavailable), 404 a refusal, 401 a pause, a 400 without context wording a refusal,
    a 400 content_filter ContentFiltered."""
    body = {"error": {"message": "nope", "type": "x"}}
    assert type(classify("c", 502, body, {})) is TransientError
    assert type(classify("c", 404, body, {})) is RemoteRejected
    assert type(classify("c", 401, body, {})) is Paused
    assert type(classify("c", 400, {"error": {"message": "bad temperature"}}, {})) is RemoteRejected
    filtered = {"error": {"message": "The response was filtered", "code": "content_filter"}}
    assert type(classify("c", 400, filtered, {})) is ContentFiltered


def _client() -> ChatClient:
    policy = RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01, max_total_s=5.0)
    return ChatClient(concurrency=2, request_timeout_s=5.0, retry_policy=policy)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_chat_client_against_each_imitated_server(flavour: str) -> None:
    """Against the sandbox as each server: an overflowing prompt raises ContextLengthExceeded; while the model
    loads (503, or a refused connection for vLLM/TGI) the client raises Unavailable."""
    handle = await start_sandbox(flavour=flavour, context_tokens=200)
    endpoint = ChatEndpoint(chat_url(handle.base_url), "sandbox-key")
    request = ChatRequest(model="m", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=64)
    try:
        async with _client() as client:
            with pytest.raises(ContextLengthExceeded):
                await client.complete(endpoint, request)
            await handle.loading(5.0)
            short = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
            with pytest.raises(Unavailable):
                await client.complete(endpoint, short)
    finally:
        await handle.close()
