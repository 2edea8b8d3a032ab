"""The Batch API life cycle through the real `together` SDK on loopback: create, retrieve, list, cancel, files."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import together

from daemon.sandbox import SandboxHandle
from daemon.sandbox.sim import SandboxFile
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, QUESTIONS, STORY, admin, stats

SYSTEM = {"role": "system", "content": f"Read the story and extract answers for the questions.\nStory: {STORY}"}


def request_line(custom_id: str, question: str, model: str = BASE_MODEL) -> dict[str, Any]:
    """One batch input line asking `question` about the story."""
    messages = [SYSTEM, {"role": "user", "content": question}]
    return {"custom_id": custom_id, "body": {"model": model, "messages": messages, "max_tokens": 64}}


def write_batch(path: Path, extra: list[str] | None = None) -> Path:
    """A batch input file: one request per CoQA question, then `extra` raw lines."""
    lines = [json.dumps(request_line(f"q{i}", q)) for i, (q, _) in enumerate(QUESTIONS)]
    path.write_text("\n".join([*lines, *(extra or [])]) + "\n")
    return path


async def until_done(sdk: together.AsyncTogether, batch_id: str) -> tuple[Any, list[str]]:
    """Retrieve until the batch ends (5 s cap): (the final BatchJob, the statuses seen on the way)."""
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        batch = await sdk.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(str(batch.status))
        if batch.status in {"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"}:
            return batch, seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} never ended: {seen}")


async def jsonl(sdk: together.AsyncTogether, file_id: str) -> list[dict[str, Any]]:
    """A file's lines, read through the SDK's file content call."""
    content = await sdk.files.content(file_id)
    return [json.loads(line) for line in (await content.read()).splitlines()]


async def test_batch_life_cycle_through_the_sdk_answers_like_real_time_chat(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """VALIDATING -> IN_PROGRESS -> COMPLETED; output lines matched by custom_id carry the real-time answers;
    invalid lines (bad JSON, no custom_id, no body, another model) land in the error file."""
    extra = [
        "{not json",
        json.dumps({"body": request_line("x", "Who?")["body"]}),
        json.dumps({"custom_id": "nobody"}),
        json.dumps(request_line("wrong", "What did Max chase?", model="org/Other-7B")),
    ]
    upload = await client.files.upload(write_batch(tmp_path / "batch.jsonl", extra), purpose="batch-api", check=False)
    created = await client.batches.create(endpoint="/v1/chat/completions", input_file_id=upload.id, model_id=BASE_MODEL)
    assert created.job is not None and created.job.status == "VALIDATING" and created.job.progress == 0
    assert created.job.input_file_id == upload.id and created.job.file_size_bytes == upload.bytes
    batch, seen = await until_done(client, created.job.id or "")
    assert seen[-1] == "COMPLETED" and set(seen) <= {"VALIDATING", "IN_PROGRESS", "COMPLETED"}
    assert batch.progress == 100 and batch.completed_at is not None and batch.error is None
    assert [b.id for b in await client.batches.list()] == [batch.id]
    outputs = {line["custom_id"]: line for line in await jsonl(client, batch.output_file_id or "")}
    assert sorted(outputs) == ["q0", "q1", "q2", "q3"]
    for i, (question, _) in enumerate(QUESTIONS):
        line = outputs[f"q{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        live = await client.chat.completions.create(
            model=BASE_MODEL, messages=[SYSTEM, {"role": "user", "content": question}], max_tokens=64
        )
        assert line["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
    errors = await jsonl(client, batch.error_file_id or "")
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (None, "invalid_json"),
        (None, "invalid_request"),
        ("nobody", "invalid_request"),
        ("wrong", "invalid_model"),
    ]
    assert (await stats(sandbox.base_url))["batches"] == {"created": 1, "completed": 1, "requests": 4}


async def test_cancel_while_validating_ends_cancelled_without_output(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """cancel before the run starts: CANCELLED at once, nothing answered, so no output file."""
    upload = await client.files.upload(write_batch(tmp_path / "b.jsonl"), purpose="batch-api")
    created = await client.batches.create(endpoint="/v1/chat/completions", input_file_id=upload.id)
    cancelled = await client.batches.cancel(created.job.id if created.job else "")
    assert cancelled.status == "CANCELLED" and cancelled.output_file_id is None and cancelled.progress == 0
    await asyncio.sleep(0.3)  # long after it would have completed
    assert (await client.batches.retrieve(cancelled.id or "")).status == "CANCELLED"
    assert (await stats(sandbox.base_url))["batches"]["requests"] == 0


async def test_scripted_expiry_keeps_what_was_answered(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """An `expired` outcome at half the run: EXPIRED with 2 of 4 answers, the other 2 in the error file."""
    await admin(sandbox.base_url, "POST", "/_sandbox/batch-outcomes", {"outcome": "expired", "at": 0.5})
    upload = await client.files.upload(write_batch(tmp_path / "b.jsonl"), purpose="batch-api")
    created = await client.batches.create(endpoint="/v1/chat/completions", input_file_id=upload.id)
    batch, _ = await until_done(client, created.job.id if created.job else "")
    assert batch.status == "EXPIRED" and batch.progress == 50 and batch.error
    assert [line["custom_id"] for line in await jsonl(client, batch.output_file_id or "")] == ["q0", "q1"]
    errors = await jsonl(client, batch.error_file_id or "")
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("q2", "batch_expired"), ("q3", "batch_expired")]


async def test_scripted_failure_and_oversized_file_end_failed_with_a_reason(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """A `failed` outcome ends FAILED with its message; a file over 50,000 lines fails validation."""
    await admin(sandbox.base_url, "POST", "/_sandbox/batch-outcomes", {"outcome": "failed", "message": "GPU on fire"})
    upload = await client.files.upload(write_batch(tmp_path / "b.jsonl"), purpose="batch-api")
    created = await client.batches.create(endpoint="/v1/chat/completions", input_file_id=upload.id)
    failed, _ = await until_done(client, created.job.id if created.job else "")
    assert failed.status == "FAILED" and failed.error == "GPU on fire" and failed.output_file_id is None
    big = b"".join(json.dumps(request_line(f"r{i}", "Who?")).encode() + b"\n" for i in range(50_001))
    sandbox.sandbox.files["file-big"] = SandboxFile(
        "file-big", "big.jsonl", "batch-api", "jsonl", "0", 0, "sig", content=big
    )
    created = await client.batches.create(endpoint="/v1/chat/completions", input_file_id="file-big")
    too_big, seen = await until_done(client, created.job.id if created.job else "")
    assert seen[-1] == "FAILED" and "IN_PROGRESS" not in seen  # it never runs
    assert too_big.status == "FAILED" and "at most 50000 requests" in (too_big.error or "")


async def test_bad_create_requests_are_refused_with_batch_errors(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """Another endpoint, an unknown file or a file not uploaded for batches is a 400; an unknown batch a 404."""
    fine_tune_file = await client.files.upload(write_batch(tmp_path / "ft.jsonl"), purpose="fine-tune", check=False)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bodies = [
        {"endpoint": "/v1/embeddings", "input_file_id": fine_tune_file.id},
        {"endpoint": "/v1/chat/completions", "input_file_id": "file-missing"},
        {"endpoint": "/v1/chat/completions", "input_file_id": fine_tune_file.id},
    ]
    async with aiohttp.ClientSession(headers=headers) as session:
        for body in bodies:
            async with session.post(f"{sandbox.base_url}/v1/batches", json=body) as response:
                assert response.status == 400 and isinstance((await response.json())["error"], str)
    with pytest.raises(together.NotFoundError):
        await client.batches.retrieve("no-such-batch")
