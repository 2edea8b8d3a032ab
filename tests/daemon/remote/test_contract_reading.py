"""The adapter and the poll step against a lean sandbox: they need no field Together's contract does not declare."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import RemoteJobFailed
from daemon.remote.contract import FALLBACK_LORA_RANK, complete_limits, price_estimate
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle, start_sandbox
from handlers import create, poll, upload
from handlers.training.curve import TRAINING_METRICS_FILE, training_curve
from tests.daemon.sandbox.helpers import DictJournal, admin, make_ctx, make_spec, stats, write_chat_jsonl


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A lean sandbox (contract fields only) whose small jobs take well under a second."""
    handle = await start_sandbox(speed=500.0, lean=True)
    yield handle
    await handle.close()


def test_limits_without_default_rank_get_the_documented_fallback() -> None:
    """No lora_training.default_rank: rank 16 capped at max_rank; seq-length limits filled only when asked."""
    raw = {"lora_training": {"max_rank": 8, "max_batch_size": 8}, "supports_vision": False}
    assert complete_limits(raw, max_seq_length=None)["lora_training"]["default_rank"] == 8
    assert "default_rank" not in raw["lora_training"]  # the cached answer is left untouched
    wide = complete_limits({"lora_training": {"max_rank": 64}}, max_seq_length=2048)
    assert wide["lora_training"]["default_rank"] == FALLBACK_LORA_RANK and wide["max_seq_length_sft"] == 2048
    assert complete_limits({"lora_training": {"default_rank": 32}}, max_seq_length=None)["lora_training"] == {
        "default_rank": 32
    }


def test_estimate_without_estimation_available_is_available_when_priced() -> None:
    """An estimate with a price and no estimation_available is available; the SDK's explicit false still wins."""
    priced = price_estimate({"estimated_total_price": 1.5, "allowed_to_proceed": True, "user_limit": 10})
    assert priced.available and priced.total_usd == 1.5 and priced.allowed_to_proceed is True
    assert not price_estimate({}).available
    refused = price_estimate({"estimation_available": False, "unavailable_reason": "train_file_invalid"})
    assert not refused.available and refused.unavailable_reason == "train_file_invalid"


async def test_create_and_poll_need_only_contract_fields(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """Lean answers: the price cap is checked, the job is created with the fallback rank, and the curve comes from
    the metrics operation (events have no loss field)."""
    ctx = make_ctx(tmp_path, make_spec(max_price_usd=5.0), remote_settings, api, DictJournal())
    uploaded = await upload.run(ctx, {"prepare": {"train_file": str(write_chat_jsonl(tmp_path / "train.jsonl"))}})
    made = await create.run(ctx, {"upload": uploaded})
    assert made["estimated_price_usd"] and made["estimated_price_usd"] < 5.0
    job = sandbox.sandbox.jobs[made["fine_tune_id"]]
    assert job.request["training_type"]["lora_r"] == FALLBACK_LORA_RANK
    out = await poll.run(ctx, {"upload": uploaded, "create": made})
    assert out["status"] == "completed" and out["metrics_rows"] and out["final_loss"] is not None
    curve, source = training_curve(ctx.out_dir)
    assert source == "metrics" and len(curve.train) >= 5 and curve.train[-1][1] < curve.train[0][1]
    assert json.loads((ctx.out_dir / TRAINING_METRICS_FILE).read_text())["fine_tune_id"] == made["fine_tune_id"]
    counted = (await stats(sandbox.base_url))["requests"]
    assert counted["GET /v1/fine-tunes/{id}/metrics"] == 1 and counted["GET /v1/fine-tunes/{id}/checkpoints"] == 1


async def test_failure_reason_is_the_error_event_not_the_restart_notice(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """job_error at level legacy_ierror followed by job_restarted: the job fails with the job_error's message."""
    body = {"outcome": "error", "message": "CUDA out of memory", "level": "legacy_ierror", "restarted": True}
    await admin(sandbox.base_url, "POST", "/_sandbox/job-outcomes", body)
    ctx = make_ctx(tmp_path, make_spec(), remote_settings, api, DictJournal())
    uploaded = await upload.run(ctx, {"prepare": {"train_file": str(write_chat_jsonl(tmp_path / "train.jsonl"))}})
    made = await create.run(ctx, {"upload": uploaded})
    with pytest.raises(RemoteJobFailed) as failed:
        await poll.run(ctx, {"upload": uploaded, "create": made})
    assert "CUDA out of memory" in str(failed.value) and "restarted" not in str(failed.value)
