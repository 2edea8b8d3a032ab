"""daemon/remote/limit.py: the per-provider in-flight limit follows latency, timeouts and health; against a
2-slot queueing sandbox at ceiling 32 with a 0.5 s timeout it keeps nearly every request inside the timeout."""

from __future__ import annotations

import asyncio
import itertools
import time

from daemon.errors import TransientError
from daemon.remote.backoff import RetryPolicy
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatRequest, chat_url
from daemon.remote.limit import ConcurrencyLimit, LimitTuning
from daemon.sandbox import start_sandbox


def loaded(limit: ConcurrencyLimit) -> None:
    """As if the limit were fully in use when the next answer arrives (the limit grows only then)."""
    limit.in_flight = int(limit.limit)


def test_flat_latency_grows_the_limit_to_the_ceiling_and_rising_latency_lowers_it() -> None:
    """Answers at the floor latency grow the limit (from 4) to the ceiling; answers at 4x the floor bring it down
    to where tolerance x floor / rtt x limit + sqrt(limit) balances (about 3-4 here), never below 1."""
    limit = ConcurrencyLimit(32)
    assert limit.limit == 4
    for _ in range(200):
        loaded(limit)
        limit.succeeded(0.05)
    assert limit.limit == 32
    for _ in range(300):
        loaded(limit)
        limit.succeeded(0.2)
    assert 2 <= limit.limit <= 5
    summary = limit.summary()
    assert (summary["ceiling"], summary["min"], summary["max"], summary["floor_ms"]) == (32, 4, 32, 50.0)
    assert summary["final"] == int(limit.limit) and len(summary["history"]) > 5  # type: ignore[arg-type]


def test_slow_start_doubles_per_round_trip_until_the_first_slow_answer_or_timeout() -> None:
    """From 4, each answer within tolerance x floor adds one (4 -> 8 -> 16 in two round trips); the first answer
    slower than that hands over to the gradient for good, as does a timeout."""
    limit = ConcurrencyLimit(64)
    for _ in range(2):  # two round trips: every request of the round answers at the floor latency
        for _ in range(int(limit.limit)):
            loaded(limit)
            limit.succeeded(0.05)
    assert limit.limit == 16 and limit.slow_start
    loaded(limit)
    limit.succeeded(0.2)  # queueing: 4x the floor
    assert not limit.slow_start and limit.limit < 16
    before = limit.limit
    loaded(limit)
    limit.succeeded(0.05)  # the gradient's step now, not one more
    assert before < limit.limit < before + 1
    timed_out = ConcurrencyLimit(64)
    timed_out.dropped(0)
    assert not timed_out.slow_start and timed_out.limit == 2


def test_app_limited_answers_do_not_grow_the_limit() -> None:
    """Answers while less than half the limit is used say nothing about more load: the limit stays put."""
    limit = ConcurrencyLimit(32, tuning=LimitTuning(initial=10))
    for _ in range(100):
        limit.in_flight = 2
        limit.succeeded(0.05)
    assert limit.limit == 10


def test_timeouts_lower_once_per_round() -> None:
    """Timeouts of requests sent under the same limit halve it once, not once per request."""
    limit = ConcurrencyLimit(32, tuning=LimitTuning(initial=16))
    for _ in range(8):
        limit.dropped(0)
    assert limit.limit == 8


async def test_a_down_provider_gets_one_probe_at_a_time_then_all_slots_again() -> None:
    """While down, one request at a time goes out, spaced by the probe delay; the first answer reopens all slots."""
    limit = ConcurrencyLimit(8, tuning=LimitTuning(initial=8, probe_base_s=0.05, probe_cap_s=0.05))
    limit.unavailable(0)
    peak, answers = 0, iter([False, False, True])

    async def probe() -> None:
        nonlocal peak
        async with limit.slot() as send:
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.005)
            if next(answers):
                limit.succeeded(0.005)
            else:
                limit.unavailable(send.generation)

    await asyncio.gather(*(probe() for _ in range(3)))
    assert peak == 1 and not limit.down
    answers = iter([True] * 8)
    await asyncio.gather(*(probe() for _ in range(8)))
    assert peak > 1


async def test_queueing_server_at_ceiling_32_keeps_requests_inside_the_timeout() -> None:
    """2 slots x 20 ms, ceiling 32, request_timeout 0.5 s, one attempt per request: at most 1 % of 300 requests
    time out, and the limit ends near what the server serves (a few requests, far below 32)."""
    handle = await start_sandbox(latency_ms="20", slots=2, flavour="llama.cpp", seed=5)
    policy = RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01, max_total_s=5.0)
    endpoint = ChatEndpoint(chat_url(handle.base_url), "sandbox-key")
    failures = 0

    async def ask(client: ChatClient, n: int) -> None:
        nonlocal failures
        request = ChatRequest(model="m", messages=[{"role": "user", "content": f"q{n}"}], max_tokens=16)
        try:
            await client.complete(endpoint, request)
        except TransientError:
            failures += 1

    try:
        async with ChatClient(concurrency=32, request_timeout_s=0.5, retry_policy=policy) as client:
            await asyncio.gather(*(ask(client, n) for n in range(300)))
            limit = client.limit_of(endpoint.url)
    finally:
        await handle.close()
    assert failures <= 3
    assert limit is not None and 2 <= limit.limit <= 12
    assert handle.sandbox.serving.peak_queue_depth <= 12


async def test_a_nearly_spent_request_budget_spaces_sends_at_the_refill_rate_until_it_recovers() -> None:
    """remaining <= in flight: sends go out one per 60/limit s (1 % slower); with budget to spare, at once again."""
    limit = ConcurrencyLimit(8, tuning=LimitTuning(initial=8))
    limit.pace(remaining=0, limit_per_min=1200)  # refill: one request every 50 ms
    sent: list[float] = []

    async def send() -> None:
        async with limit.slot():
            sent.append(time.monotonic())

    await asyncio.gather(*(send() for _ in range(4)))
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(gaps) == 3 and min(gaps) >= 0.05 * 1.01 - 0.002
    limit.pace(remaining=500, limit_per_min=1200)
    sent.clear()
    await asyncio.sleep(0.06)  # past the last scheduled send
    await asyncio.gather(*(send() for _ in range(4)))
    assert max(sent) - min(sent) < 0.02
