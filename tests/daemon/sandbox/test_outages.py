"""Sandbox outages and model loading on the wire: refused connections on the same port, 503s, llama.cpp's loading."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from daemon.sandbox import start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, stats

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "org/base", "messages": [{"role": "user", "content": "hello"}]}


async def call(base_url: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    """One request on a fresh connection: (status, JSON body)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.request(method, base_url + path, json=json, headers=AUTH) as response,
    ):
        return response.status, await response.json(content_type=None)


async def wait_until_up(base_url: str, limit_s: float = 5.0) -> float:
    """Poll until the sandbox accepts connections again; returns when (monotonic seconds)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            await call(base_url, "GET", "/v1/files")
            return time.monotonic()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.02)
    raise AssertionError("the sandbox never came back")


async def test_refuse_outage_answers_first_then_refuses_and_comes_back_on_the_same_port() -> None:
    """The admin call answers, then connections are refused for S seconds, then the same port serves again."""
    handle = await start_sandbox()
    try:
        started = time.monotonic()
        status, body = await call(handle.base_url, "POST", "/_sandbox/outage", {"seconds": 0.6, "mode": "refuse"})
        assert status == 200 and body == {"outage": "refuse", "seconds": 0.6}
        with pytest.raises(aiohttp.ClientConnectorError):
            await call(handle.base_url, "POST", "/v1/chat/completions", CHAT)
        with pytest.raises(aiohttp.ClientConnectorError):  # the admin API is down too
            await call(handle.base_url, "GET", "/_sandbox/stats")
        back = await wait_until_up(handle.base_url)
        assert 0.55 <= back - started < 2.0
        assert (await call(handle.base_url, "POST", "/v1/chat/completions", CHAT))[0] == 200
        assert (await stats(handle.base_url))["outages"] == 1
    finally:
        await handle.close()


async def test_refuse_outage_drops_open_keep_alive_connections() -> None:
    """A pooled connection opened before the outage does not keep working through it."""
    handle = await start_sandbox()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(handle.base_url + "/v1/files", headers=AUTH) as response:
                assert response.status == 200
            await handle.outage(0.5)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(handle.base_url + "/v1/files", headers=AUTH) as response:
                    await response.read()
        await wait_until_up(handle.base_url)
    finally:
        await handle.close()


async def test_close_during_an_outage_cancels_the_restart() -> None:
    """Closing while nothing listens ends cleanly, and the port stays closed."""
    handle = await start_sandbox()
    await handle.outage(30)
    await handle.close()
    with pytest.raises(aiohttp.ClientConnectorError):
        await call(handle.base_url, "GET", "/v1/files")


async def test_503_outage_answers_chat_with_503_for_a_while() -> None:
    """mode 503: chat answers 503 "overloaded" for S seconds while other routes still answer."""
    handle = await start_sandbox()
    try:
        assert (await call(handle.base_url, "POST", "/_sandbox/outage", {"seconds": 0.4, "mode": "503"}))[0] == 200
        status, body = await call(handle.base_url, "POST", "/v1/chat/completions", CHAT)
        assert status == 503 and body["error"]["message"] == "The server is overloaded or not ready yet."
        assert (await call(handle.base_url, "GET", "/v1/files"))[0] == 200
        await asyncio.sleep(0.45)
        assert (await call(handle.base_url, "POST", "/v1/chat/completions", CHAT))[0] == 200
        assert (await stats(handle.base_url))["chat"]["unavailable"] == 1
    finally:
        await handle.close()


async def test_loading_answers_llama_cpp_exact_reply_then_serves() -> None:
    """While loading, chat answers llama.cpp's exact 503 body; afterwards it answers normally."""
    handle = await start_sandbox(flavour="llama.cpp")
    try:
        assert (await call(handle.base_url, "POST", "/_sandbox/loading", {"seconds": 0.4}))[0] == 200
        status, body = await call(handle.base_url, "POST", "/v1/chat/completions", CHAT)
        assert status == 503
        assert body == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        await asyncio.sleep(0.45)
        assert (await call(handle.base_url, "POST", "/v1/chat/completions", CHAT))[0] == 200
    finally:
        await handle.close()


async def test_loading_vllm_refuses_connections_like_a_server_not_yet_listening() -> None:
    """vLLM and TGI open their port only once loaded: loading them refuses connections instead of answering."""
    handle = await start_sandbox(flavour="vllm")
    try:
        await handle.loading(0.4)
        with pytest.raises(aiohttp.ClientConnectorError):
            await call(handle.base_url, "POST", "/v1/chat/completions", CHAT)
        await wait_until_up(handle.base_url)
        assert (await call(handle.base_url, "POST", "/v1/chat/completions", CHAT))[0] == 200
    finally:
        await handle.close()


async def test_outage_admin_rejects_bad_bodies() -> None:
    """An unknown mode or a missing `seconds` is a 400 and changes nothing."""
    handle = await start_sandbox()
    try:
        assert (await call(handle.base_url, "POST", "/_sandbox/outage", {"seconds": 1, "mode": "explode"}))[0] == 400
        assert (await call(handle.base_url, "POST", "/_sandbox/loading", {"mode": "503"}))[0] == 400
        assert (await call(handle.base_url, "POST", "/v1/chat/completions", CHAT))[0] == 200
    finally:
        await handle.close()
