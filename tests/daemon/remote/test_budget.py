"""daemon/remote/budget.py: one rate budget per provider and key, shared by every chat client of the process (two
jobs evaluating at once), pacing by requests and by tokens before the provider refuses."""

from __future__ import annotations

import asyncio

import aiohttp

from daemon.remote.backoff import RetryPolicy
from daemon.remote.budget import RateBudget, Window, shared_budget
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatRequest, RateHints, chat_url
from daemon.sandbox import start_sandbox

POLICY = RetryPolicy(attempts=1000, base_s=0.2, cap_s=5.0, max_total_s=300.0)


def ask(n: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": f"q{n} who kept the goats?"}], max_tokens=16)


async def stats(base_url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_sandbox/stats") as response:
        body = await response.json()
    limit: dict[str, int] = body["rate_limit"]
    return limit


def test_one_budget_per_origin_and_key() -> None:
    """Same origin and key: the same object (whatever the path); another key or another origin: another budget."""
    first = shared_budget("http://127.0.0.1:9/v1/chat/completions", "key-a")
    assert shared_budget("http://127.0.0.1:9/other/path", "key-a") is first
    assert shared_budget("http://127.0.0.1:9/v1/chat/completions", "key-b") is not first
    assert shared_budget("http://127.0.0.1:10/v1/chat/completions", "key-a") is not first
    assert first.users == 2 and first.summary()["shared"] is True


def test_token_headers_of_together_and_openai_are_read() -> None:
    """Together's x-tokenlimit-* and OpenAI's x-ratelimit-*-tokens give the token window; requests as before."""
    together = RateHints.parse(
        {
            "x-ratelimit-limit": "600",
            "x-ratelimit-remaining": "12",
            "x-tokenlimit-limit": "9000",
            "x-tokenlimit-remaining": "40",
        }
    )
    assert (together.limit_per_min, together.remaining, together.tokens) == (600, 12, Window(40, 9000))
    openai = RateHints.parse({"x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "149000"})
    assert openai.tokens == Window(149000, 150000) and openai.remaining is None
    assert RateHints.parse({}).tokens is None


async def test_a_nearly_spent_token_budget_spaces_sends_by_the_tokens_a_request_costs() -> None:
    """Requests of ~100 tokens against 6,000 tokens a minute with 50 left: one send per second (1 % slower); the
    token interval lifts once twice what is in flight fits again."""
    budget = RateBudget("p")
    budget.learn(Window(None, None), Window(50, 6000), spent_tokens=100)
    assert abs(budget.interval_s - 1.01) < 1e-9
    budget.learn(Window(None, None), Window(5000, 6000), spent_tokens=100)
    assert budget.interval_s == 0.0


async def test_an_answer_read_late_counts_the_requests_sent_after_it() -> None:
    """A burst of answers read after many more requests went out: the oldest answer's `remaining` (26) predates the
    25 sent after it, so the budget paces although nothing is in flight when it is read."""
    budget = RateBudget("p")
    orders = []
    for _ in range(26):
        orders.append(await budget.turn())
        budget.returned()
    assert budget.in_flight == 0
    budget.learn(Window(26, 600), sent_as=orders[-1])  # the newest request: 26 left covers the next one
    assert budget.interval_s == 0.0
    budget.learn(Window(26, 600), sent_as=orders[0])  # the oldest: 25 of the 26 went to later sends
    assert abs(budget.interval_s - 0.101) < 1e-9


async def test_sends_between_answers_count_the_budget_down() -> None:
    """An answer left 20 of 600 a minute; no other answer comes, yet the sends after it use the 20 up: the budget
    spaces sends once what is left (less the 2 % reserve of 12) would not cover the next one."""
    budget = RateBudget("p")
    order = await budget.turn()
    budget.learn(Window(20, 600), sent_as=order)
    assert budget.interval_s == 0.0
    for _ in range(7):
        await budget.turn()
    assert budget.interval_s == 0.0  # 20 - 6 = 14 left when the 7th went: more than it and the reserve of 12
    await budget.turn()
    assert abs(budget.interval_s - 0.101) < 1e-9  # 13 left at the 8th: from it on, sends are spaced


async def test_two_clients_on_one_key_share_the_rate_and_earn_almost_no_429() -> None:
    """Two evaluations at once (two ChatClients, 64 in flight each) against a sandbox allowing 600 requests a
    minute: every request is answered and at most 2 % are refused, because both pace from one budget."""
    handle = await start_sandbox(rate_limit_rpm=600)
    endpoint = ChatEndpoint(chat_url(handle.base_url), "one-account-key")
    try:
        async with (
            ChatClient(concurrency=64, request_timeout_s=30.0, retry_policy=POLICY) as first,
            ChatClient(concurrency=64, request_timeout_s=30.0, retry_policy=POLICY) as second,
        ):
            replies = await asyncio.gather(
                *(first.complete(endpoint, ask(n)) for n in range(320)),
                *(second.complete(endpoint, ask(n)) for n in range(320, 640)),
            )
            limits = (first.limit_of(endpoint.url), second.limit_of(endpoint.url))
        counters = await stats(handle.base_url)
    finally:
        await handle.close()
    assert all(reply.content for reply in replies) and len(replies) == 640
    assert limits[0] is not None and limits[1] is not None and limits[0].budget is limits[1].budget
    assert limits[0].budget.paced_sends > 0
    sent = counters["admitted"] + counters["refused_requests"]
    assert counters["admitted"] == 640 and counters["refused_requests"] <= 0.02 * sent


async def test_a_token_limit_is_met_by_pacing_not_by_429s() -> None:
    """A sandbox allowing 6,000 tokens a minute (about 285 requests of ~21 tokens at once, then ~5 a second),
    310 requests at 64 in flight: all answered, at most 2 % refused for tokens."""
    handle = await start_sandbox(rate_limit_tpm=6000)
    endpoint = ChatEndpoint(chat_url(handle.base_url), "token-key")
    try:
        async with ChatClient(concurrency=64, request_timeout_s=30.0, retry_policy=POLICY) as client:
            replies = await asyncio.gather(*(client.complete(endpoint, ask(n)) for n in range(310)))
        counters = await stats(handle.base_url)
    finally:
        await handle.close()
    assert len(replies) == 310 and all(reply.content for reply in replies)
    sent = counters["admitted"] + counters["refused_tokens"]
    assert counters["admitted"] == 310 and counters["refused_tokens"] <= 0.02 * sent
