"""Sandbox chat serving slots on the wire: requests queue FIFO behind N slots, never 429; hung-up waiters leave."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from daemon.sandbox import start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, admin, stats

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "org/base", "messages": [{"role": "user", "content": "hello"}]}


async def chat(session: aiohttp.ClientSession, base_url: str, **timeout: Any) -> tuple[int, float]:
    """One chat request: (status, seconds until its answer)."""
    started = time.monotonic()
    client_timeout = aiohttp.ClientTimeout(**timeout) if timeout else None
    async with session.post(f"{base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=client_timeout) as r:
        await r.read()
        return r.status, time.monotonic() - started


async def test_two_slots_serve_eight_requests_in_four_waves() -> None:
    """slots=2, 100 ms each: 8 concurrent requests finish in 4 waves, 6 of them queued, none refused."""
    handle = await start_sandbox(slots=2, latency_ms="100")
    try:
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(chat(session, handle.base_url) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8
        finished = sorted(seconds for _, seconds in results)
        for wave in range(4):  # each pair waits for the pairs before it
            assert min(finished[2 * wave : 2 * wave + 2]) >= 0.1 * (wave + 1) - 0.02, finished
        assert finished[-1] < 0.8, finished
        served = (await stats(handle.base_url))["chat"]
        assert served["peak_queue_depth"] == 6 and served["queued"] == 6 and served["served"] == 8
        assert served["queue_depth"] == 0 and served["in_service"] == 0
        assert (await stats(handle.base_url))["requests"] == {"POST /v1/chat/completions": 8}
    finally:
        await handle.close()


async def test_queue_time_counts_against_the_client_timeout() -> None:
    """With one 300 ms slot, the third of three requests needs 900 ms: a 500 ms client timeout expires in the queue."""
    handle = await start_sandbox(slots=1, latency_ms="300")
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(chat(session, handle.base_url))
            second = asyncio.create_task(chat(session, handle.base_url))
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await chat(session, handle.base_url, total=0.5)
            assert [(await first)[0], (await second)[0]] == [200, 200]
    finally:
        await handle.close()


async def test_a_client_that_hangs_up_leaves_the_queue() -> None:
    """A queued request whose client disconnects is dropped: the queue empties and the next request is not delayed."""
    handle = await start_sandbox(slots=1, latency_ms="400")
    try:
        async with aiohttp.ClientSession() as session:
            holder = asyncio.create_task(chat(session, handle.base_url))
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await chat(session, handle.base_url, total=0.1)
            for _ in range(50):
                counters = (await stats(handle.base_url))["chat"]
                if counters["abandoned"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert counters["abandoned"] == 1 and counters["queue_depth"] == 0
            assert (await holder)[0] == 200
            status, seconds = await chat(session, handle.base_url)
            assert status == 200 and seconds < 0.6  # served at once, not after the hung-up one's 400 ms
    finally:
        await handle.close()


async def test_slots_change_at_run_time_and_zero_means_unlimited() -> None:
    """`slots` is a config knob: raising it lets waiters in; 0 serves all concurrent requests at once."""
    handle = await start_sandbox(latency_ms="200")
    try:
        assert (await admin(handle.base_url, "POST", "/_sandbox/config", {"slots": 1}))["slots"] == 1
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(chat(session, handle.base_url)) for _ in range(4)]
            await asyncio.sleep(0.05)
            assert (await stats(handle.base_url))["chat"]["queue_depth"] == 3
            await admin(handle.base_url, "POST", "/_sandbox/config", {"slots": 0})
            results = await asyncio.gather(*tasks)
        assert max(seconds for _, seconds in results) < 0.55  # all four done in about two latencies, not four
        assert (await admin(handle.base_url, "POST", "/_sandbox/config", {"slots": -1})).get("error")
    finally:
        await handle.close()
