"""daemon/notify.py: a real aiohttp receiver on loopback gets exactly one POST per job end from the real service;
a receiver that never answers does not hold a job up; Slack-style bodies; errors are retried, then given up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from daemon.config import Settings
from daemon.errors import SpecError
from daemon.logs import JobLogs
from daemon.notify import Webhook
from daemon.remote.backoff import RetryPolicy
from daemon.service import Service
from daemon.spec import parse_spec
from tests.conftest import with_
from tests.daemon.test_service import SPEC, STEPS, Probe, drop, statuses, wait_for


@dataclass
class Receiver:
    """A webhook receiver: records each POST; can answer errors first, or hang."""

    url: str = ""
    posts: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    failures: int = 0
    hang: bool = False
    pending: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request; answer 503 while failures remain, hang when asked, else 200."""
        body = await request.json()
        if self.failures > 0:
            self.failures -= 1
            return web.json_response({"error": {"message": "busy"}}, status=503)
        if self.hang:
            self.pending += 1
            await asyncio.sleep(3600)
        self.posts.append((dict(request.headers), body))
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 at a free port."""
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    found.url = f"http://{host}:{port}/hook"
    yield found
    await runner.cleanup()


async def test_one_post_per_job_end(settings: Settings, job_logs: JobLogs, receiver: Receiver) -> None:
    """Completed, failed and rejected jobs: exactly one POST each, with status, summary, report path and token."""
    settings = with_(settings, webhook_url=receiver.url, webhook_token="hook-token-123")
    for name in ("good", "bad"):
        drop(settings, name)
    drop(settings, "syntax", b"name: x\ndataset: [1,\n")
    receiver.failures = 2  # the first POST is retried through two 503s
    assert await asyncio.wait_for(Service(settings, STEPS, job_logs=job_logs, remote=Probe(), once=True).run(), 30) == 0
    bodies = {body["name"] or body["job_id"]: body for _, body in receiver.posts}
    assert len(receiver.posts) == 3 and {b["status"] for b in bodies.values()} == {"completed", "failed", "rejected"}
    assert all(headers["Authorization"] == "Bearer hook-token-123" for headers, _ in receiver.posts)
    bad = bodies["bad"]
    assert bad["event"] == "job_failed" and bad["error"]["message"] == "the dataset is wrong on line 3"
    assert bad["report"].endswith("/report.html") and bad["summary"].startswith("bad: failed")
    rejected = next(b for b in bodies.values() if b["status"] == "rejected")
    assert rejected["report"] is None and "intake" in rejected["summary"]


async def test_slack_body_is_text_only(settings: Settings, job_logs: JobLogs, receiver: Receiver) -> None:
    """Format slack: the body is {"text": summary line + report path}."""
    settings = with_(settings, webhook_url=receiver.url, webhook_format="slack")
    drop(settings, "good")
    assert await asyncio.wait_for(Service(settings, STEPS, job_logs=job_logs, remote=Probe(), once=True).run(), 30) == 0
    ((_, body),) = receiver.posts
    assert list(body) == ["text"] and body["text"].startswith("good: completed") and "report.html" in body["text"]


async def test_a_hanging_receiver_does_not_hold_the_job(
    settings: Settings, job_logs: JobLogs, receiver: Receiver
) -> None:
    """The receiver never answers: the job still completes at once, and shutdown waits only the grace period."""
    receiver.hang = True
    settings = with_(settings, webhook_url=receiver.url, request_timeout_s=60.0)
    service = Service(settings, STEPS, job_logs=job_logs, remote=Probe())
    task = asyncio.create_task(service.run())
    started = time.monotonic()
    drop(settings, "good")
    await wait_for(lambda: any(d["status"] == "completed" for d in statuses(settings).values()))
    completed_s = time.monotonic() - started
    await wait_for(lambda: receiver.pending == 1)
    drop(settings, "second")
    await wait_for(lambda: sum(d["status"] == "completed" for d in statuses(settings).values()) == 2)
    assert completed_s < 5 and receiver.posts == []
    stopping = time.monotonic()
    service.stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert time.monotonic() - stopping < settings.shutdown_grace_s + 2


async def test_a_spec_opts_in_with_its_own_variable(settings: Settings, job_logs: JobLogs, receiver: Receiver) -> None:
    """No global webhook: the spec naming TEAM_WEBHOOK_URL gets its POST, the spec without `notify` none."""
    settings = with_(settings, named_secrets={"TEAM_WEBHOOK_URL": receiver.url})
    drop(settings, "told", f"{SPEC.format(name='told')}notify:\n  webhook_url_env: TEAM_WEBHOOK_URL\n".encode())
    drop(settings, "quiet")
    assert await asyncio.wait_for(Service(settings, STEPS, job_logs=job_logs, remote=Probe(), once=True).run(), 30) == 0
    assert [body["name"] for _, body in receiver.posts] == ["told"]
    with pytest.raises(SpecError, match="webhook_url_env"):
        parse_spec(b"name: x\ndataset: {source: d}\nnotify: {webhook_url_env: https://hooks.example/abc}\n")


async def test_gives_up_after_the_retry_policy(settings: Settings, receiver: Receiver) -> None:
    """A receiver that keeps failing is tried `attempts` times, then the notification is dropped with a warning."""
    receiver.failures = 99
    hook = Webhook(with_(settings, webhook_url=receiver.url), policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02))
    document = {"job_id": "j-1", "name": "j", "status": "failed", "error": {"type": "X", "message": "m", "step": "s"}}
    await hook.job_published(document, final=True)
    await hook.job_published(document | {"status": "running"}, final=False)  # not an ending: ignored
    await hook.close(grace_s=5)
    assert (hook.sent, hook.given_up, receiver.failures) == (0, 1, 96)
