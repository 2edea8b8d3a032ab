"""The morning after, with the real daemon as a subprocess against the real sandbox: a fine-tune + evaluation job
and a job Together fails leave reports (rendered in headless Chromium when installed), the outbox index lists both
with links that resolve, and /metrics parses with prometheus_client's parser while its counters move."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import daemon_env, sandbox_admin, spec_text, start_daemon, statuses, wait_until, write_coqa

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A fast sandbox (training in a blink)."""
    handle = await start_sandbox(speed=2000.0)
    yield handle
    await handle.close()


def free_port() -> int:
    """A free loopback port for the status server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics as `name{labels}` -> value, parsed by prometheus_client's text parser."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def scrape_when_up(port: int, timeout_s: float = 30) -> dict[str, float]:
    """The first scrape once the daemon's status server accepts connections."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await scrape(port)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)


def total(samples: dict[str, float], prefix: str) -> float:
    """The sum of every sample whose key starts with `prefix`."""
    return sum(v for k, v in samples.items() if k.startswith(prefix))


async def render(page: Path) -> str:
    """The DOM headless Chromium builds from a local page."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--dump-dom",
        page.as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    dom, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    return dom.decode()


async def test_morning_after_a_batch(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """Completed and failed jobs: reports with analysis and failure words, an index, and moving /metrics counters."""
    write_coqa(tmp_path / "data")
    port = free_port()
    env = daemon_env(tmp_path, sandbox.base_url, FINETUNED_STATUS_PORT=str(port))
    process = await start_daemon(env)
    try:
        before = await scrape_when_up(port)
        await sandbox_admin(sandbox.base_url, "job-outcomes", {"outcome": "error", "message": "Out of GPUs, sorry"})
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        (inbox / "broken.yaml").write_text(spec_text("broken", tmp_path / "data"))
        await wait_until(lambda: any(d.get("status") == "failed" for d in statuses(tmp_path).values()), timeout_s=60)
        (inbox / "good.yaml").write_text(spec_text("good", tmp_path / "data", evaluate=True))
        await wait_until(lambda: any(d.get("status") == "completed" for d in statuses(tmp_path).values()), timeout_s=90)
        await wait_until(
            lambda: len(re.findall(r"report\.html\)", (tmp_path / "outbox" / "index.md").read_text())) == 2
        )
        after = await scrape(port)
    finally:
        process.terminate()
        await asyncio.wait_for(process.communicate(), 20)

    assert total(after, "finetuned_remote_calls_total{operation=upload") > total(
        before, "finetuned_remote_calls_total{operation=upload"
    )
    assert total(after, "finetuned_chat_done_total") >= 18 > total(before, "finetuned_chat_done_total")
    assert total(after, "finetuned_tokens_total") > 0
    assert after["finetuned_jobs_ended_total{status=failed}"] == 1 and after["finetuned_jobs{status=completed}"] == 1
    assert total(after, "finetuned_step_duration_seconds_count{step=prepare}") == 2
    assert total(after, "finetuned_step_duration_seconds_count{step=poll}") == 1  # the failed poll has no duration
    assert after["finetuned_remote_paused{}"] == 0

    outbox = tmp_path / "outbox"
    by_name = {d["name"]: d for d in statuses(tmp_path).values()}
    failed = (outbox / by_name["broken"]["job_id"] / "report.md").read_text()
    assert "## What went wrong" in failed and "The job failed in step `poll`" in failed
    assert "Out of GPUs, sorry" in failed and "What to do:" in failed
    good = (outbox / by_name["good"]["job_id"] / "report.md").read_text()
    for heading in ("Timeline and cost", "Data", "Training", "Evaluation", "What to try next", "Error analysis"):
        assert f"## {heading}" in good
    assert "Whole cost: $" in good and "> **prediction:**" in good
    index = (outbox / "index.md").read_text()
    assert all((outbox / link).is_file() for link in re.findall(r"\]\(([^)]+)\)", index))
    if HAVE_CHROMIUM:  # the rendering check runs where Chromium is installed (tests/handlers/test_report.py too)
        dom = await render(outbox / by_name["good"]["job_id"] / "report.html")
        assert dom.count("<img") == 3 and "Lowest-scoring turns" in dom and "SIMULATED" in dom
        assert "failed" in await render(outbox / "index.html")
