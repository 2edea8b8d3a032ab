"""daemon/metrics.py: the counters move where the work happens (the chat client against the real sandbox, the
Together adapter, the retry layer, the status listener), and the exposition parses with prometheus_client's parser.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import metrics
from daemon.errors import FinetunedError, TransientError
from daemon.remote.backoff import RetryPolicy, retry
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatRequest, chat_url
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle
from tests.daemon.sandbox.helpers import API_KEY


def samples() -> dict[str, float]:
    """Every sample of the exposition as `name{k=v,...}` -> value, through the standard parser."""
    text = metrics.exposition({"completed": 2}, ["queued", "completed"], active_jobs=1, paused=True).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_chat_requests_done_failed_tokens_and_in_flight(sandbox: SandboxHandle) -> None:
    """Answered requests count as done with their tokens; a dead provider counts as failed; nothing stays in flight."""
    live = metrics.provider(sandbox.base_url)
    dead_url = f"http://127.0.0.1:{closed_port()}/v1/chat/completions"
    dead = metrics.provider(dead_url)
    before = samples()
    request = ChatRequest(
        model="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
    )
    policy = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02)
    async with ChatClient(concurrency=2, request_timeout_s=5, retry_policy=policy) as client:
        for _ in range(3):
            await client.complete(ChatEndpoint(chat_url(sandbox.base_url), API_KEY), request)
        with pytest.raises(TransientError):
            await client.complete(ChatEndpoint(dead_url), request)
    after = samples()
    assert (
        after[f"finetuned_chat_done_total{{provider={live}}}"]
        - before.get(f"finetuned_chat_done_total{{provider={live}}}", 0)
        == 3
    )
    assert after[f"finetuned_tokens_total{{kind=prompt,provider={live}}}"] > before.get(
        f"finetuned_tokens_total{{kind=prompt,provider={live}}}", 0
    )
    # a refused connection is `Unavailable` (a TransientError: the provider is probed, its items wait)
    assert after[f"finetuned_chat_failed_total{{kind=Unavailable,provider={dead}}}"] == 1
    assert (
        after[f"finetuned_chat_in_flight{{provider={live}}}"] == 0
        and after[f"finetuned_chat_in_flight{{provider={dead}}}"] == 0
    )
    assert (
        after["finetuned_retries_total{what=chat_completion}"]
        - before.get("finetuned_retries_total{what=chat_completion}", 0)
        >= 1
    )


async def test_together_calls_and_errors_by_operation(api: TogetherAPI) -> None:
    """Each adapter call counts under its operation; a refused one also under its error kind."""
    before = samples()
    kind = "none"
    await api.probe()
    try:
        await api.retrieve("ft-does-not-exist")
    except FinetunedError as exc:  # whichever error the sandbox's 404 maps to, it is counted by its kind
        kind = type(exc).__name__
    after = samples()
    assert (
        after["finetuned_remote_calls_total{operation=probe}"]
        - before.get("finetuned_remote_calls_total{operation=probe}", 0)
        == 1
    )
    key = f"finetuned_remote_errors_total{{kind={kind},operation=retrieve fine-tune}}"
    assert after[key] - before.get(key, 0) == 1


async def test_retries_scrape_gauges_and_the_listener(tmp_path: Path) -> None:
    """Retries count per call; jobs, active jobs and pause are set at scrape; steps and money are observed once."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("503")
        return "ok"

    before = samples()
    assert await retry(flaky, policy=RetryPolicy(attempts=5, base_s=0.001, cap_s=0.002), what="test flaky") == "ok"
    (tmp_path / "j-1").mkdir()
    (tmp_path / "j-1" / "summary.json").write_text('{"cost_usd": 2.5}')
    listener = metrics.MetricsListener(tmp_path)
    document = {"job_id": "j-1", "status": "completed", "steps": {"prepare": {"duration_s": 0.7}}}
    await listener.job_published(document, final=False)
    await listener.job_published(document, final=True)
    after = samples()
    assert (
        after["finetuned_retries_total{what=test flaky}"] - before.get("finetuned_retries_total{what=test flaky}", 0)
        == 2
    )
    assert after["finetuned_jobs{status=completed}"] == 2 and after["finetuned_jobs{status=queued}"] == 0
    assert after["finetuned_active_jobs{}"] == 1 and after["finetuned_remote_paused{}"] == 1
    count = "finetuned_step_duration_seconds_count{step=prepare}"
    assert after[count] - before.get(count, 0) == 1
    assert after["finetuned_money_spent_usd_total{}"] - before.get("finetuned_money_spent_usd_total{}", 0) == 2.5
