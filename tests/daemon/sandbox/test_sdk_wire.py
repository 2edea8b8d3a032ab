"""The real `together` SDK (the pinned version) against the sandbox on loopback: every call the daemon makes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import together

from daemon.sandbox import SandboxHandle
from tests.daemon.sandbox.helpers import BASE_MODEL, STORY, stats, write_chat_jsonl


async def wait_for_status(sdk: together.AsyncTogether, job_id: str, wanted: set[str]) -> str:
    """Retrieve until the job's status is one of `wanted` (5 s cap)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = (await sdk.fine_tuning.retrieve(job_id)).status
        if status in wanted:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {wanted}")


async def test_upload_is_three_calls_and_file_endpoints_work(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """files.upload does POST (302) + PUT + preprocess; retrieve, list, content and delete answer the same file."""
    path = write_chat_jsonl(tmp_path / "train.jsonl")
    uploaded = await client.files.upload(path, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == path.stat().st_size
    assert uploaded.processing_status == "COMPLETED"
    requests = (await stats(sandbox.base_url))["requests"]
    assert requests["POST /v1/files"] == 1
    assert requests["PUT /_s3/upload/{id}"] == 1
    assert requests["POST /v1/files/{id}/preprocess"] == 1
    assert (await client.files.retrieve(uploaded.id)).filename == "train.jsonl"
    assert [f.id for f in (await client.files.list()).data] == [uploaded.id]
    content = await client.files.content(uploaded.id)
    assert await content.read() == path.read_bytes()
    assert (await client.files.delete(uploaded.id)).deleted is True
    with pytest.raises(together.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_duplicate_upload_is_adopted_at_once(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """The same bytes again get 409 + file_id with x-should-retry: false, so the SDK adopts without waiting."""
    path = write_chat_jsonl(tmp_path / "train.jsonl")
    first = await client.files.upload(path, purpose="fine-tune")
    started = time.monotonic()
    second = await client.files.upload(path, purpose="fine-tune")
    assert second.id == first.id
    assert time.monotonic() - started < 1.0  # no 409 retries (the SDK would wait ~2.5 s)
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/files"] == 2
    with pytest.raises(together.lib.resources.files.FileAlreadyExistsError):
        await client.files.upload(path, purpose="fine-tune", raise_if_already_exists=True)


async def test_create_sends_nested_fields_and_job_runs_to_completion(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """create: limits + estimate + create; the body is nested as the SDK sends it; the job ends with an output model."""
    train = await client.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = await client.fine_tuning.create(
        training_file=train.id,
        model=BASE_MODEL,
        n_epochs=2,
        lora_r=8,
        lora_alpha=16,
        suffix="wiretest",
        wandb_api_key="wandb-secret",
        train_on_inputs="auto",
    )
    assert job.id.startswith("ft-") and job.status == "pending"
    sent = sandbox.sandbox.jobs[job.id].request
    assert sent["training_type"] == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "all-linear",
    }
    assert sent["training_method"] == {"method": "sft", "train_on_inputs": "auto"}
    assert sent["lr_scheduler"]["lr_scheduler_type"] == "cosine"
    assert sent["wandb_key"] == "wandb-secret" and sent["validation_file"] == ""
    requests = (await stats(sandbox.base_url))["requests"]
    assert requests["GET /v1/fine-tunes/models/limits"] == 1
    assert requests["POST /v1/fine-tunes/estimate-price"] == 1
    assert requests["POST /v1/fine-tunes"] == 1
    assert await wait_for_status(client, job.id, {"completed"}) == "completed"
    done = await client.fine_tuning.retrieve(job.id)
    assert done.x_model_output_name == f"sandbox/Meta-Llama-3.1-8B-Instruct-Reference-wiretest-{job.id[3:11]}"
    assert done.total_price is not None and done.total_price > 0
    listed = await client.fine_tuning.list()
    assert [j.id for j in listed.data] == [job.id]


async def test_status_sequence_and_falling_loss_in_metrics(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """Observed statuses follow pending→queued→running→compressing→uploading→completed; metrics carry a falling loss."""
    train = await client.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = await client.fine_tuning.create(training_file=train.id, model=BASE_MODEL, train_on_inputs="auto")
    seen: list[str] = []
    order = ["pending", "queued", "running", "compressing", "uploading", "completed"]
    async with asyncio.timeout(5):
        while not seen or seen[-1] != "completed":
            status = (await client.fine_tuning.retrieve(job.id)).status
            if not seen or seen[-1] != status:
                seen.append(status)
            await asyncio.sleep(0.005)
    assert seen == sorted(seen, key=order.index) and seen[-1] == "completed" and "running" in seen
    events = (await client.fine_tuning.list_events(job.id)).data
    rows = (await client.fine_tuning.list_metrics(job.id)).metrics or []
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5
    assert all("loss" not in e.to_dict() for e in events)
    assert events[0].type == "job_pending" and events[-1].type == "job_complete"


async def test_cancel_moves_to_cancelled(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """cancel answers cancel_requested, and the job then ends cancelled instead of completing."""
    train = await client.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = await client.fine_tuning.create(training_file=train.id, model=BASE_MODEL, train_on_inputs="auto")
    cancelled = await client.fine_tuning.cancel(job.id)
    assert cancelled.status == "cancel_requested"
    assert await wait_for_status(client, job.id, {"cancelled", "completed"}) == "cancelled"
    types = [e.type for e in (await client.fine_tuning.list_events(job.id)).data]
    assert types[-2:] == ["cancel_requested", "job_stopped"]


async def test_chat_completion_with_usage_and_fine_tuned_model(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """Chat answers with usage; the base model answers a whole sentence, the completed fine-tune a few words."""
    messages = [
        {"role": "system", "content": f"Read the story and extract answers for the questions.\nStory: {STORY}"},
        {"role": "user", "content": "What was the dog's name?"},
    ]
    base = await client.chat.completions.create(model=BASE_MODEL, messages=messages, max_tokens=64, temperature=0)
    assert base.choices[0].message.content == "According to the story, She had a brown dog named Max."
    assert base.usage is not None and base.usage.total_tokens == base.usage.prompt_tokens + base.usage.completion_tokens
    train = await client.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = await client.fine_tuning.create(training_file=train.id, model=BASE_MODEL, train_on_inputs="auto")
    with pytest.raises(together.NotFoundError, match="model_not_available"):
        await client.chat.completions.create(model=job.x_model_output_name or "", messages=messages)
    await wait_for_status(client, job.id, {"completed"})
    tuned = await client.chat.completions.create(model=job.x_model_output_name or "", messages=messages)
    assert tuned.choices[0].message.content == "Max"
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/chat/completions"] == 3
