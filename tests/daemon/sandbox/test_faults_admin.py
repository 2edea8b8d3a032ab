"""Sandbox faults and admin routes on the wire: scripted and random faults, stats, outcomes, reset, config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from daemon.sandbox.sim import SandboxFile
from tests.daemon.sandbox.helpers import API_KEY, admin, script_fault, stats

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A sandbox with a fast clock and no random faults."""
    handle = await start_sandbox(speed=1000.0, seed=3)
    yield handle
    await handle.close()


async def call(base_url: str, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    """One raw request: (status, headers, JSON body or text)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, base_url + path, headers=AUTH, **kwargs) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, dict(response.headers), body


async def test_scripted_429_burst_then_success_with_retry_after(sandbox: SandboxHandle) -> None:
    """A burst of 2 scripted 429s on one route carries Retry-After headers, then the route answers normally."""
    await script_fault(sandbox.base_url, kind="429", route="GET /v1/files", count=2, retry_after_s=2.5)
    for _ in range(2):
        status, headers, body = await call(sandbox.base_url, "GET", "/v1/files")
        assert status == 429
        assert headers["Retry-After"] == "3" and headers["retry-after-ms"] == "2500"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (await call(sandbox.base_url, "GET", "/v1/files"))[0] == 200
    counters = await stats(sandbox.base_url)
    assert counters["faults"] == {"GET /v1/files": 2} and counters["requests"] == {"GET /v1/files": 1}


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("401", 401, "invalid_api_key"),
        ("402", 402, "payment_required"),
        ("insufficient_quota", 429, "insufficient_quota"),
        ("500", 500, None),
        ("502", 502, None),
        ("503", 503, "service_unavailable"),
    ],
)
async def test_error_kinds_answer_in_together_shape(sandbox: SandboxHandle, kind: str, status: int, code: str) -> None:
    """Each scripted error kind answers its status with Together's error body, on any route with `*`."""
    await script_fault(sandbox.base_url, kind=kind, route="*")
    got, _, body = await call(sandbox.base_url, "GET", "/v1/fine-tunes")
    assert got == status and body["error"]["code"] == code and body["error"]["message"]


async def test_timeout_runs_the_endpoint_but_holds_the_answer(sandbox: SandboxHandle) -> None:
    """A `timeout` fault lets the side effect happen while the client times out waiting."""
    await script_fault(sandbox.base_url, kind="timeout", route="POST /v1/fine-tunes/{id}/cancel", delay_s=5)
    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            await session.post(sandbox.base_url + "/v1/fine-tunes/ft-missing/cancel", headers=AUTH)
    counters = await stats(sandbox.base_url)
    assert counters["requests"] == {"POST /v1/fine-tunes/{id}/cancel": 1}
    assert counters["faults"] == {"POST /v1/fine-tunes/{id}/cancel": 1}


async def test_slow_body_trickles_over_the_delay(sandbox: SandboxHandle) -> None:
    """A `slow` fault delivers the complete, valid body, but only after about `delay_s`."""
    await script_fault(sandbox.base_url, kind="slow", route="GET /v1/fine-tunes", delay_s=0.5)
    started = time.monotonic()
    status, _, body = await call(sandbox.base_url, "GET", "/v1/fine-tunes")
    assert status == 200 and body == {"object": "list", "data": []}
    assert time.monotonic() - started >= 0.45


async def test_random_faults_hit_api_routes_but_never_admin_routes() -> None:
    """With fault_rate 1 every /v1/ call faults (429/500/502/503) while /_sandbox/ routes keep answering."""
    handle = await start_sandbox(fault_rate=1.0, seed=1, retry_after_s=0.05)
    try:
        statuses = {(await call(handle.base_url, "GET", "/v1/files"))[0] for _ in range(40)}
        assert statuses <= {429, 500, 502, 503} and len(statuses) >= 3
        for _ in range(5):
            assert (await call(handle.base_url, "GET", "/_sandbox/stats"))[0] == 200
        assert (await stats(handle.base_url))["faults"] == {"GET /v1/files": 40}
    finally:
        await handle.close()


async def test_random_fault_rate_is_roughly_the_share_of_faults() -> None:
    """fault_rate 0.3 faults about 30 % of API requests (seeded, so this is deterministic)."""
    handle = await start_sandbox(fault_rate=0.3, seed=11)
    try:
        results = [(await call(handle.base_url, "GET", "/v1/fine-tunes"))[0] for _ in range(200)]
        assert 40 <= sum(status != 200 for status in results) <= 80
    finally:
        await handle.close()


async def test_missing_or_wrong_key_is_401() -> None:
    """/v1/ routes need a bearer token (exactly the configured key when one is set); the presigned PUT does not."""
    handle = await start_sandbox(api_key="right-key")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(handle.base_url + "/v1/files") as response:
                assert response.status == 401
            async with session.get(handle.base_url + "/v1/files", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with session.get(handle.base_url + "/v1/files", headers={"Authorization": "Bearer right-key"}) as r:
                assert r.status == 200
    finally:
        await handle.close()


async def test_scripted_job_outcome_and_reset(sandbox: SandboxHandle) -> None:
    """A scripted `error` outcome ends the next job in error with its message; reset forgets jobs and counters."""
    await admin(sandbox.base_url, "POST", "/_sandbox/job-outcomes", {"outcome": "error", "message": "GPU on fire"})
    sb = sandbox.sandbox
    sb.files["file-x"] = SandboxFile(
        "file-x", "t.jsonl", "fine-tune", "jsonl", "0", 0, "sig", content=b'{"messages":[1]}\n'
    )
    body = {"training_file": "file-x", "model": "org/model", "n_epochs": 1}
    status, _, job = await call(sandbox.base_url, "POST", "/v1/fine-tunes", json=body)
    assert status == 200
    await asyncio.sleep(0.3)
    _, _, final = await call(sandbox.base_url, "GET", f"/v1/fine-tunes/{job['id']}")
    assert final["status"] == "error"
    assert final["events"][-1]["type"] == "job_error" and final["events"][-1]["message"] == "GPU on fire"
    assert (await admin(sandbox.base_url, "POST", "/_sandbox/reset"))["reset"] is True
    counters = await stats(sandbox.base_url)
    assert {k: counters[k] for k in ("requests", "faults", "files", "jobs")} == {
        "requests": {},
        "faults": {},
        "files": 0,
        "jobs": 0,
    }
    assert counters["chat"]["served"] == 0 and counters["batches"]["created"] == 0


async def test_admin_rejects_bad_scripts_and_changes_knobs(sandbox: SandboxHandle) -> None:
    """Unknown fault kinds and keys are 400; config changes latency, and chat then takes that long."""
    status, _, body = await call(sandbox.base_url, "POST", "/_sandbox/faults", json={"kind": "teapot"})
    assert status == 400 and "unknown fault kind" in body["error"]["message"]
    status, _, _ = await call(sandbox.base_url, "POST", "/_sandbox/config", json={"colour": "red"})
    assert status == 400
    config = await admin(sandbox.base_url, "POST", "/_sandbox/config", {"latency_ms": "200-300"})
    assert config["latency_ms"] == "200-300"
    started = time.monotonic()
    chat = {"model": "org/base", "messages": [{"role": "user", "content": "hello"}]}
    status, _, answer = await call(sandbox.base_url, "POST", "/v1/chat/completions", json=chat)
    assert status == 200 and answer["usage"]["prompt_tokens"] == 2
    assert 0.2 <= time.monotonic() - started < 1.0


async def test_unknown_route_and_bad_create_use_error_shape(sandbox: SandboxHandle) -> None:
    """Unknown paths and invalid create bodies answer 404/400 in Together's error shape."""
    status, _, body = await call(sandbox.base_url, "GET", "/v1/nothing-here")
    assert status == 404 and "message" in body["error"]
    status, _, body = await call(sandbox.base_url, "POST", "/v1/fine-tunes", json={"model": "org/m"})
    assert status == 400 and body["error"]["param"] == "training_file"
    status, _, body = await call(sandbox.base_url, "GET", "/v1/fine-tunes/models/limits?model_name=nomodel")
    assert status == 404
