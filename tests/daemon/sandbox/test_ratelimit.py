"""Provider-style rate limits on the wire: a minute's budget, then 429 with honest headers, then admitted again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from multidict import CIMultiDict

from daemon.sandbox import start_sandbox
from tests.daemon.sandbox.helpers import stats

MESSAGES = [{"role": "user", "content": "hello"}]


async def ask(
    session: aiohttp.ClientSession, base_url: str, key: str = "k1", model: str = "org/base"
) -> tuple[int, CIMultiDict[str], Any]:
    """One chat request: (status, headers, JSON body)."""
    async with session.post(
        f"{base_url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def test_120_rpm_admits_the_budget_then_429s_with_honest_headers_and_admits_after_the_reset() -> None:
    """At 120 rpm a burst gets ~120 answers counting x-ratelimit-remaining down to 0, whatever the key or model;
    the rest get 429 dynamic_request_limited with Retry-After and retry-after-ms; after that wait one more fits."""
    handle = await start_sandbox(rate_limit_rpm=120)
    try:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            burst = [ask(session, handle.base_url, key=f"k{i % 3}", model=f"org/m{i % 2}") for i in range(130)]
            results = await asyncio.gather(*burst)
            elapsed_s = time.monotonic() - started
            answered = [headers for status, headers, _ in results if status == 200]
            refused = [(headers, body) for status, headers, body in results if status == 429]
            assert len(answered) + len(refused) == 130
            assert 120 <= len(answered) <= 120 + 2 * elapsed_s + 1  # the bucket refills 2 requests a second
            remaining = sorted(int(h["x-ratelimit-remaining"]) for h in answered)
            assert remaining[-1] == 119 and remaining[0] == 0
            assert all(h["x-ratelimit-limit"] == "120" for h in answered)
            headers, body = refused[-1]
            assert body["error"]["type"] == "dynamic_request_limited"
            assert headers["x-ratelimit-remaining"] == "0" and headers["Retry-After"] == "1"
            wait_ms = int(headers["retry-after-ms"])
            assert 0 < wait_ms <= 500 and abs(float(headers["x-ratelimit-reset"]) * 1000 - wait_ms) <= 1
            await asyncio.sleep(wait_ms / 1000)
            status, headers, _ = await ask(session, handle.base_url)
            assert status == 200 and headers["x-ratelimit-remaining"] == "0"
        counters = (await stats(handle.base_url))["rate_limit"]
        assert counters["admitted"] == len(answered) + 1 and counters["refused_requests"] == len(refused)
    finally:
        await handle.close()


async def test_sequential_requests_count_down_one_by_one() -> None:
    """Each admitted request takes one from the bucket: remaining goes 119, 118, 117 and reset stays 0."""
    handle = await start_sandbox(rate_limit_rpm=120)
    try:
        async with aiohttp.ClientSession() as session:
            seen = [await ask(session, handle.base_url) for _ in range(3)]
        assert [h["x-ratelimit-remaining"] for _, h, _ in seen] == ["119", "118", "117"]
        assert {h["x-ratelimit-reset"] for _, h, _ in seen} == {"0"}
    finally:
        await handle.close()


async def test_tokens_per_minute_refuses_with_dynamic_token_limited() -> None:
    """With tpm on, x-tokenlimit-remaining falls by each answer's total_tokens until a 429 dynamic_token_limited."""
    handle = await start_sandbox(rate_limit_tpm=40)
    try:
        async with aiohttp.ClientSession() as session:
            status, headers, body = await ask(session, handle.base_url)
            assert status == 200 and headers["x-tokenlimit-limit"] == "40"
            used = body["usage"]["total_tokens"]
            assert int(headers["x-tokenlimit-remaining"]) == 40 - used
            while status == 200:
                status, headers, body = await ask(session, handle.base_url)
        assert status == 429 and body["error"]["type"] == "dynamic_token_limited"
        assert float(headers["x-ratelimit-reset"]) > 0 and "x-ratelimit-limit" not in headers
        assert (await stats(handle.base_url))["rate_limit"]["refused_tokens"] == 1
    finally:
        await handle.close()


async def test_without_limits_no_rate_limit_headers_are_sent() -> None:
    """No limit configured: no x-ratelimit-* header (the old constant 6000/5999 claimed a limit that was not there)."""
    handle = await start_sandbox()
    try:
        async with aiohttp.ClientSession() as session:
            status, headers, _ = await ask(session, handle.base_url)
        assert status == 200
        assert not [name for name in headers if name.lower().startswith(("x-ratelimit", "x-tokenlimit"))]
        assert headers["x-finetuned-simulated"] == "true"
    finally:
        await handle.close()
