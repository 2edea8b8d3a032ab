"""Step `poll` against the sandbox: to a terminal status with backoff, events saved once, failures and pauses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from daemon.config import Settings
from daemon.errors import Paused, RemoteJobFailed
from daemon.jobs.context import JobContext
from daemon.remote.api import RemoteJob, RemoteStatus
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle, start_sandbox
from handlers import create, poll, upload
from handlers.training.curve import CHECKPOINTS_FILE, TRAINING_METRICS_FILE
from handlers.training.events import EVENTS_FILE
from tests.conftest import with_
from tests.daemon.sandbox.helpers import (
    DictJournal,
    admin,
    make_ctx,
    make_spec,
    script_fault,
    stats,
    write_chat_jsonl,
)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A sandbox whose 10-step jobs take about 0.3 s."""
    handle = await start_sandbox(speed=500.0, retry_after_s=0.02)
    yield handle
    await handle.close()


async def created(
    tmp_path: Path, settings: Settings, api: Any, journal: DictJournal | None = None, **finetune: Any
) -> tuple[JobContext, dict[str, dict[str, Any]]]:
    """Run the real upload and create steps; returns the context and the poll step's inputs."""
    ctx = make_ctx(tmp_path, make_spec(**finetune), settings, api, journal or DictJournal())
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    uploaded = await upload.run(ctx, {"prepare": {"train_file": str(train)}})
    made = await create.run(ctx, {"upload": uploaded})
    return ctx, {"upload": uploaded, "create": made}


def saved_events(ctx: JobContext) -> list[dict[str, Any]]:
    """The lines of events.jsonl."""
    return [json.loads(line) for line in (ctx.out_dir / EVENTS_FILE).read_text().splitlines()]


async def test_poll_follows_the_job_to_its_model_and_saves_the_loss_curve(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI
) -> None:
    """The output names the fine-tuned model (also journaled); progress reports the remote statuses in their order;
    events.jsonl holds every event once; the training metrics (loss falling) and the checkpoints are saved to the
    outbox, the final loss from the metrics."""
    journal = DictJournal()
    ctx, inputs = await created(tmp_path, remote_settings, api, journal, suffix="coqa")
    out = await poll.run(ctx, inputs)
    assert out["status"] == "completed" and out["model"] == journal.values["model"]
    assert out["model"] == inputs["create"]["model_output_name"] and "coqa" in out["model"]
    events = saved_events(ctx)
    assert len(events) == out["events"] == len({json.dumps(e, sort_keys=True) for e in events})
    assert [e["loss"] for e in events if "loss" in e]  # parsed from epoch_complete messages
    rows = json.loads((ctx.out_dir / TRAINING_METRICS_FILE).read_text())["metrics"]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) >= 5 and losses[-1] < losses[0] and out["final_loss"] == losses[-1]
    saved = json.loads((ctx.out_dir / CHECKPOINTS_FILE).read_text())["checkpoints"]
    assert out["checkpoints"] == len(saved) >= 1 and saved[-1]["checkpoint_type"] == "Final"
    statuses = [u["remote_status"] for u in ctx.progress.calls if "remote_status" in u]  # type: ignore[attr-defined]
    # A loaded machine may poll past a short-lived status, so only the order is asserted, not that each was seen.
    order = ["pending", "queued", "running", "compressing", "uploading", "completed"]
    assert len(statuses) >= 2 and statuses[-1] == "completed"
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)


async def test_restart_mid_poll_keeps_events_without_duplicates(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A poll cancelled half-way (shutdown) and run again ends with each event saved exactly once."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"speed": 200.0})
    ctx, inputs = await created(tmp_path, remote_settings, api)
    task = asyncio.create_task(poll.run(ctx, inputs))
    async with asyncio.timeout(5):
        while not (ctx.out_dir / EVENTS_FILE).exists() or len(saved_events(ctx)) < 8:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    partial = len(saved_events(ctx))
    out = await poll.run(ctx, inputs)
    events = saved_events(ctx)
    assert out["events"] == len(events) > partial
    assert len({json.dumps(e, sort_keys=True) for e in events}) == len(events)
    assert events[0]["type"] == "job_pending" and events[-1]["type"] == "job_complete"


async def test_poll_survives_a_30_percent_fault_rate(tmp_path: Path, remote_settings: Settings) -> None:
    """Upload, create and poll all finish with 30 % of API calls failing, and exactly one job is created."""
    flaky = await start_sandbox(speed=500.0, fault_rate=0.3, seed=1, retry_after_s=0.02)
    settings = with_(remote_settings, together_base_url=flaky.base_url)
    adapter = TogetherAPI(settings)
    try:
        ctx, inputs = await created(tmp_path, settings, adapter)
        out = await poll.run(ctx, inputs)
        counters = await stats(flaky.base_url)
    finally:
        await adapter.close()
        await flaky.close()
    assert out["status"] == "completed"
    assert counters["requests"]["POST /v1/fine-tunes"] == 1 and counters["jobs"] == 1
    assert sum(counters["faults"].values()) >= 5


@pytest.mark.parametrize("outcome", ["error", "user_error", "cancelled"])
async def test_failed_job_raises_with_the_remote_message(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle, outcome: str
) -> None:
    """A job ending error/user_error/cancelled fails the step with Together's message and status."""
    message = f"simulated {outcome}: CUDA out of memory"
    await admin(sandbox.base_url, "POST", "/_sandbox/job-outcomes", {"outcome": outcome, "message": message})
    ctx, inputs = await created(tmp_path, remote_settings, api)
    with pytest.raises(RemoteJobFailed) as failed:
        await poll.run(ctx, inputs)
    assert failed.value.remote_status == outcome
    assert str(failed.value).endswith(f"ended {outcome}: {message}")
    assert ctx.journal.get("model") is None


async def test_user_cancel_ends_the_poll_as_cancelled(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """After remote.cancel (what `finetuned cancel` does) the poll ends with RemoteJobFailed(cancelled)."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"speed": 50.0})
    ctx, inputs = await created(tmp_path, remote_settings, api)
    cancelled = await api.cancel(inputs["create"]["fine_tune_id"])
    assert cancelled.status == "cancel_requested"
    with pytest.raises(RemoteJobFailed, match="cancelled by the user") as failed:
        await poll.run(ctx, inputs)
    assert failed.value.remote_status == "cancelled"


async def test_auth_failure_while_polling_pauses(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A 401 during polling raises Paused (the runner pauses remote work) instead of failing or retrying."""
    ctx, inputs = await created(tmp_path, remote_settings, api)
    await script_fault(sandbox.base_url, kind="401", route="GET /v1/fine-tunes/{id}")
    with pytest.raises(Paused, match="HTTP 401"):
        await poll.run(ctx, inputs)
    assert (await poll.run(ctx, inputs))["status"] == "completed"  # resumed once the key works again


async def test_deadline_gives_up_with_a_clear_message(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A job still running at poll_deadline_h fails the step and says it was left on Together; restarts keep it."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"speed": 1.0})
    journal = DictJournal()
    ctx, inputs = await created(tmp_path, remote_settings, api, journal, poll_deadline_h=0.1 / 3600)
    with pytest.raises(RemoteJobFailed, match=r"did not finish within finetune\.poll_deadline_h") as late:
        await poll.run(ctx, inputs)
    assert late.value.remote_status == "pending"
    deadline = journal.values["poll.deadline_at"]
    with pytest.raises(RemoteJobFailed):
        await poll.run(ctx, inputs)
    assert journal.values["poll.deadline_at"] == deadline


class ScriptedStatuses:
    """Answers retrieve with a fixed status sequence: the sandbox never sends statuses Together has not documented."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses

    async def retrieve(self, job_id: str) -> RemoteJob:
        """The next status."""
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return RemoteJob(job_id, status, "org/model-ft", "tag", {"id": job_id, "status": status})

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """No events."""
        return []

    async def metrics(self, job_id: str) -> list[dict[str, float]] | None:
        """No metrics operation (as an API without it answers)."""
        return None

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """No checkpoints."""
        return []


async def test_unknown_status_is_logged_and_polling_continues(tmp_path: Path, settings: Settings) -> None:
    """A status outside the known set logs a warning and polling goes on to the terminal status."""
    remote = ScriptedStatuses(["queued", "paused_by_provider", "running", "completed"])
    ctx = make_ctx(tmp_path, make_spec(), settings, remote, DictJournal())
    with structlog.testing.capture_logs() as logs:
        out = await poll.run(ctx, {"create": {"fine_tune_id": "ft-1"}})
    assert out["model"] == "org/model-ft"
    warnings = [e for e in logs if e["event"] == "remote_status_unknown"]
    assert [w["status"] for w in warnings] == ["paused_by_provider"] and warnings[0]["log_level"] == "warning"
    assert RemoteStatus("user_error") in poll.TERMINAL_STATUSES
