"""The service in-process with `--once` semantics: intake of every kind of input, the per-job boundary, pauses,
retries, duplicates and cancellation. The steps here are small real steps written for the test (the production
steps are exercised end to end in tests/test_daemon_process.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings
from daemon.errors import BadInput, Paused, TransientError
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.jobs.steps import Step
from daemon.logs import JobLogs
from daemon.remote.backoff import RetryPolicy, retry
from daemon.service import Service
from daemon.spool.files import atomic_write_json
from tests.conftest import with_

SPEC = "name: {name}\ndataset:\n  source: data/{name}.jsonl\n"
CALLS: list[tuple[str, str]] = []


async def write_step(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Writes an artifact and returns what it saw of the previous step."""
    CALLS.append((ctx.job_id, "write"))
    atomic_write_json(ctx.out_dir / "artifact.json", {"job": ctx.job_id})
    await ctx.progress(done=1, total=1)
    return {"artifact": str(ctx.out_dir / "artifact.json")}


def flaky_call(job_id: str, failures: int = 2) -> Callable[[], Awaitable[None]]:
    """A remote call that answers 503 the first `failures` times."""

    async def call() -> None:
        CALLS.append((job_id, "call"))
        if CALLS.count((job_id, "call")) <= failures:
            raise TransientError("503 from upstream", http_status=503)

    return call


async def journal_step(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Records a 'remote id' once, and fails the way the spec name asks."""
    CALLS.append((ctx.job_id, "journal"))
    assert "artifact" in inputs["write"]
    if ctx.spec.name.startswith("bad"):
        raise BadInput("the dataset is wrong on line 3")
    if ctx.spec.name.startswith("flaky"):
        await retry(flaky_call(ctx.job_id), policy=ctx.settings.retry_policy, what="flaky call")
    if ctx.spec.name.startswith("down"):
        await retry(flaky_call(ctx.job_id, failures=99), policy=RetryPolicy(attempts=2, base_s=0.01), what="down")
    if ctx.spec.name.startswith("locked") and CALLS.count((ctx.job_id, "journal")) < 2:
        raise Paused("401: invalid API key", http_status=401)
    if ctx.spec.name.startswith("slow"):
        await asyncio.sleep(3600)
    if ctx.journal.get("file_id") is None:
        await ctx.journal.record("file_id", f"file-{ctx.job_id}")
    return {"file_id": ctx.journal.get("file_id")}


STEPS = (
    Step("write", write_step, lambda spec: True),
    Step("journal", journal_step, lambda spec: True, remote=True),
)


class Probe:
    """A provider that is always reachable and has no endpoints: the service's start-up needs no more."""

    async def probe(self) -> None:
        return None

    async def find_endpoints(self, prefix: str, *, surface: Any = None) -> list[Any]:
        return []


def drop(settings: Settings, name: str, content: bytes | None = None) -> Path:
    settings.inbox.mkdir(parents=True, exist_ok=True)
    path = settings.inbox / f"{name}.yaml"
    path.write_bytes(content if content is not None else SPEC.format(name=name).encode())
    return path


def statuses(settings: Settings) -> dict[str, dict[str, Any]]:
    # Dot-folders are outbox folders still being built (pathlib's * matches them): not jobs, and gone any moment.
    paths = [p for p in settings.outbox.glob("*/status.json") if not p.parent.name.startswith(".")]
    return {p.parent.name: json.loads(p.read_text()) for p in paths}


async def run_once(settings: Settings, job_logs: JobLogs) -> int:
    service = Service(settings, STEPS, job_logs=job_logs, remote=Probe(), once=True)
    return await asyncio.wait_for(service.run(), timeout=30)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def test_every_input_ends_in_its_own_outbox_folder(settings: Settings, tmp_path: Path, job_logs: JobLogs) -> None:
    """Valid, broken, unknown-key, empty, symlink, FIFO and oversized inputs each get a folder and a status."""
    settings = with_(settings, settle_s=0.0)
    drop(settings, "good")
    drop(settings, "syntax", b"name: x\ndataset: [1,\n")
    drop(settings, "unknown", b"name: u\ndataset: {source: x}\ncolour: red\n")
    drop(settings, "empty", b"")
    (tmp_path / "target.yaml").write_text("name: t\n")
    (settings.inbox / "link.yaml").symlink_to(tmp_path / "target.yaml")
    os.mkfifo(settings.inbox / "pipe.yaml")
    with open(settings.inbox / "huge.yaml", "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    assert await run_once(settings, job_logs) == 0
    docs = statuses(settings)
    by_file = {d["name"]: d for d in docs.values()}
    assert by_file["good"]["status"] == "completed"
    assert by_file["good"]["remote"] == {"file_id": f"file-{by_file['good']['job_id']}"}
    expectations = {
        "syntax": "invalid YAML",
        "unknown": "colour: unknown key",
        "empty": "the file is empty",
        "link": "symbolic link",
        "pipe": "FIFO",
        "huge": "104857600 bytes",
    }
    for name, needle in expectations.items():
        assert by_file[name]["status"] == "rejected", name
        assert needle in by_file[name]["error"]["message"], (name, by_file[name]["error"])
        folder = settings.outbox / by_file[name]["job_id"]
        assert any(p.name.startswith(name) and p.name != "status.json" for p in folder.iterdir()), name
    assert list(settings.inbox.iterdir()) == []
    assert (tmp_path / "target.yaml").read_text() == "name: t\n"


async def test_job_folder_holds_spec_status_and_own_log(settings: Settings, job_logs: JobLogs) -> None:
    """A job's folder has the original spec, status.json with per-step timings, and only its own log events."""
    drop(settings, "one")
    drop(settings, "two")
    await run_once(settings, job_logs)
    docs = statuses(settings)
    assert len(docs) == 2
    for job_id, doc in docs.items():
        folder = settings.outbox / job_id
        assert (folder / f"{doc['name']}.yaml").read_text() == SPEC.format(name=doc["name"])
        assert set(doc["steps"]) == {"write", "journal"}
        assert all(s["duration_s"] is not None and s["attempts"] == 1 for s in doc["steps"].values())
        events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert events and {e["job_id"] for e in events} == {job_id}
        assert [e["event"] for e in events].count("job_finished") == 1


async def test_one_failing_job_does_not_stop_the_others(settings: Settings, job_logs: JobLogs) -> None:
    """A job failing with bad input records type, message and step; its neighbour completes."""
    drop(settings, "bad-data")
    drop(settings, "fine")
    await run_once(settings, job_logs)
    docs = {d["name"]: d for d in statuses(settings).values()}
    assert docs["fine"]["status"] == "completed"
    assert docs["bad-data"]["status"] == "failed"
    assert docs["bad-data"]["error"] == {
        "type": "BadInput",
        "message": "the dataset is wrong on line 3",
        "step": "journal",
    }


async def test_transient_errors_retry_and_pauses_do_not_burn_attempts(settings: Settings, job_logs: JobLogs) -> None:
    """A 503 is retried with backoff by the retry layer (one step attempt); a 401 pauses remote work until the probe
    passes, without counting an attempt; a call that stays down fails its job with the step marked failed."""
    drop(settings, "flaky")
    drop(settings, "locked")
    drop(settings, "down")
    await run_once(settings, job_logs)
    docs = {d["name"]: d for d in statuses(settings).values()}
    flaky = docs["flaky"]
    assert flaky["status"] == "completed" and flaky["steps"]["journal"]["attempts"] == 1
    assert CALLS.count((flaky["job_id"], "call")) == 3
    assert docs["locked"]["status"] == "completed" and docs["locked"]["steps"]["journal"]["attempts"] == 1
    down = docs["down"]
    assert down["status"] == "failed" and down["error"]["type"] == "TransientError"
    assert down["steps"]["journal"]["status"] == "failed" and "progress" not in down
    assert CALLS.count((down["job_id"], "call")) == 2


async def test_duplicate_bytes_never_run_twice(settings: Settings, job_logs: JobLogs) -> None:
    """The same bytes dropped again are kept beside the first job and reported, never run."""
    drop(settings, "same")
    await run_once(settings, job_logs)
    drop(settings, "same")
    (settings.inbox / "copy.yaml").write_bytes(SPEC.format(name="same").encode())
    await run_once(settings, job_logs)
    (doc,) = statuses(settings).values()
    assert doc["status"] == "completed" and len(doc["duplicates"]) == 2
    assert all((settings.outbox / d).is_file() for d in doc["duplicates"])
    assert CALLS.count((doc["job_id"], "write")) == 1


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_cancel_interrupts_a_running_job(settings: Settings, job_logs: JobLogs) -> None:
    """`finetuned cancel` (a request file) interrupts a job mid-step and ends it cancelled; the daemon goes on."""
    drop(settings, "slow-one")
    service = Service(settings, STEPS, job_logs=job_logs, remote=Probe())
    task = asyncio.create_task(service.run())
    await wait_for(lambda: any(d.get("step") == "journal" for d in statuses(settings).values()))
    (doc,) = statuses(settings).values()
    (settings.state_dir / "cancel" / doc["job_id"]).write_bytes(b"")
    await wait_for(lambda: statuses(settings)[doc["job_id"]]["status"] == "cancelled")
    drop(settings, "after")
    await wait_for(
        lambda: any(d["name"] == "after" and d["status"] == "completed" for d in statuses(settings).values())
    )
    service.stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    assert not (settings.state_dir / "cancel" / doc["job_id"]).exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_endpoint_serves_jobs_and_metrics(settings: Settings, job_logs: JobLogs) -> None:
    """The read-only status server on loopback answers /healthz, /jobs, /jobs/{id} and Prometheus /metrics."""
    import aiohttp

    port = free_port()
    settings = with_(settings, status_port=port)
    drop(settings, "shown")
    service = Service(settings, STEPS, job_logs=job_logs, remote=Probe())
    task = asyncio.create_task(service.run())
    await wait_for(lambda: any(d["status"] == "completed" for d in statuses(settings).values()))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            assert (await response.json())["ok"] is True
        async with session.get(f"{base}/jobs") as response:
            (job,) = (await response.json())["jobs"]
        async with session.get(f"{base}/jobs/{job['job_id']}") as response:
            assert (await response.json())["status"] == "completed"
        async with session.get(f"{base}/jobs/nope") as response:
            assert response.status == 404
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
        async with session.post(f"{base}/jobs") as response:
            assert response.status == 405
    assert 'finetuned_jobs{status="completed"} 1' in text and "finetuned_remote_paused 0" in text
    service.stop.set()
    assert await asyncio.wait_for(task, 10) == 0
