"""Step `upload` against the sandbox: journal intent then id, dedupe by sha256, 409 adoption, faults."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import DatasetError, Paused, TransientError
from daemon.logs import configure
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle, start_sandbox
from handlers import upload
from handlers.upload import sha256_file
from tests.conftest import with_
from tests.daemon.sandbox.helpers import (
    API_KEY,
    DictJournal,
    make_ctx,
    make_spec,
    script_fault,
    stats,
    write_chat_jsonl,
)


def inputs_for(train: Path, validation: Path | None = None) -> dict[str, dict[str, object]]:
    """What the prepare step hands on."""
    return {"prepare": {"train_file": str(train), "validation_file": str(validation) if validation else None}}


async def test_upload_records_intent_then_id_and_skips_the_same_bytes(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """The sha256 is journaled before the upload and the file id after; rerunning the step uploads nothing."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    journal = DictJournal()
    ctx = make_ctx(tmp_path, make_spec(), remote_settings, api, journal)
    first = await upload.run(ctx, inputs_for(train))
    assert journal.writes == [("upload.intent", sha256_file(train)), ("file_id", first["file_id"])]
    assert first["file_id"].startswith("file-") and first["validation_file_id"] is None
    again = await upload.run(ctx, inputs_for(train))
    assert again["file_id"] == first["file_id"] and again["train"]["reused"] is True
    other_job = make_ctx(tmp_path / "other", make_spec(), remote_settings, api, DictJournal())
    assert (await upload.run(other_job, inputs_for(train)))["file_id"] == first["file_id"]
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/files"] == 1


async def test_crash_before_the_id_was_saved_finds_the_file_by_listing(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """Intent journaled, upload done, id lost (crash): a new process finds the file by name, size and content hash."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    decoy = write_chat_jsonl(tmp_path / "decoy" / "train.jsonl", tag="x")  # same name, other bytes
    await api.upload(decoy, sha256=sha256_file(decoy))
    uploaded = await api.upload(train, sha256=sha256_file(train))  # the upload that finished before the crash
    journal = DictJournal({"upload.intent": sha256_file(train)})
    restarted = TogetherAPI(remote_settings)
    try:
        out = await upload.run(make_ctx(tmp_path, make_spec(), remote_settings, restarted, journal), inputs_for(train))
    finally:
        await restarted.close()
    assert out["file_id"] == uploaded.id and out["train"]["reused"] is True
    assert journal.values["file_id"] == uploaded.id
    requests = (await stats(sandbox.base_url))["requests"]
    assert requests["POST /v1/files"] == 2 and requests["GET /v1/files/{id}/content"] >= 1


async def test_crash_before_the_upload_finished_uploads_again(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """Intent journaled but nothing on the server (crash mid-upload): the file is uploaded and its id journaled."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    journal = DictJournal({"upload.intent": sha256_file(train)})
    out = await upload.run(make_ctx(tmp_path, make_spec(), remote_settings, api, journal), inputs_for(train))
    assert out["train"]["reused"] is False and journal.values["file_id"] == out["file_id"]
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/files"] == 1


async def test_changed_bytes_are_uploaded_again(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A journaled id for other bytes is not reused: the new content is uploaded and journaled."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    journal = DictJournal()
    ctx = make_ctx(tmp_path, make_spec(), remote_settings, api, journal)
    first = await upload.run(ctx, inputs_for(train))
    write_chat_jsonl(train, tag="changed")
    second = await upload.run(ctx, inputs_for(train))
    assert second["file_id"] != first["file_id"] and journal.values["upload.intent"] == sha256_file(train)


async def test_validation_file_uploaded_only_for_evals(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI
) -> None:
    """The validation file is uploaded (and journaled) when the fine-tune runs evaluations, not otherwise."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    valid = write_chat_jsonl(tmp_path / "valid.jsonl", lines=3, tag="v")
    plain = await upload.run(
        make_ctx(tmp_path / "a", make_spec(), remote_settings, api, DictJournal()), inputs_for(train, valid)
    )
    assert plain["validation_file_id"] is None
    journal = DictJournal()
    ctx = make_ctx(tmp_path / "b", make_spec(n_evals=2), remote_settings, api, journal)
    evals = await upload.run(ctx, inputs_for(train, valid))
    assert evals["validation_file_id"] == journal.values["validation_file_id"] != evals["file_id"]


async def test_upload_survives_random_faults(tmp_path: Path, remote_settings: Settings, sandbox: SandboxHandle) -> None:
    """With 30 % of API calls failing (429/5xx), the upload still finishes through the retry layer (an upload is
    up to three faultable calls, so at this rate it needs more tries than the default FINETUNED_RETRY_ATTEMPTS)."""
    flaky = await start_sandbox(fault_rate=0.3, seed=5, retry_after_s=0.02)
    settings = with_(remote_settings, together_base_url=flaky.base_url, retry_attempts=16)
    adapter = TogetherAPI(settings)
    try:
        for i in range(5):
            train = write_chat_jsonl(tmp_path / f"t{i}" / "train.jsonl", tag=str(i))
            ctx = make_ctx(tmp_path / f"t{i}", make_spec(), settings, adapter, DictJournal())
            assert (await upload.run(ctx, inputs_for(train)))["file_id"].startswith("file-")
        assert sum((await stats(flaky.base_url))["faults"].values()) > 0
    finally:
        await adapter.close()
        await flaky.close()


async def test_auth_failure_pauses_and_bad_file_is_a_dataset_error(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A 401 on the upload call raises Paused (not retried); a non-JSONL-object file fails before any upload."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    await script_fault(sandbox.base_url, kind="401", route="POST /v1/files")
    with pytest.raises(Paused) as paused:
        await upload.run(make_ctx(tmp_path, make_spec(), remote_settings, api, DictJournal()), inputs_for(train))
    assert API_KEY not in str(paused.value)
    bad = tmp_path / "bad" / "train.jsonl"
    bad.parent.mkdir()
    bad.write_text("[1, 2, 3]\n")
    with pytest.raises(DatasetError, match="check"):
        await upload.run(make_ctx(tmp_path / "bad", make_spec(), remote_settings, api, DictJournal()), inputs_for(bad))
    assert (await stats(sandbox.base_url))["requests"].get("POST /v1/files", 0) == 0


async def test_a_flaky_upload_is_tried_the_documented_number_of_times_with_the_documented_delays(
    tmp_path: Path, remote_settings: Settings, sandbox: SandboxHandle
) -> None:
    """FINETUNED_RETRY_ATTEMPTS tries, no more; the delay before try n+1 is within [0, min(cap, base * 2^(n-1))]
    (or the Retry-After); then the TransientError fails the step (the runner does not retry on top)."""
    logged = io.StringIO()
    configure("info", json_output=True, stream=logged)  # to read the delays back
    settings = with_(remote_settings, retry_attempts=4, retry_base_s=0.04, retry_cap_s=0.1)
    adapter = TogetherAPI(settings)
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    await script_fault(sandbox.base_url, kind="500", route="POST /v1/files", count=50)
    try:
        with pytest.raises(TransientError, match="HTTP 500"):
            await upload.run(make_ctx(tmp_path, make_spec(), settings, adapter, DictJournal()), inputs_for(train))
    finally:
        await adapter.close()
        configure("info", json_output=True, stream=sys.stdout)
    assert (await stats(sandbox.base_url))["faults"]["POST /v1/files"] == 4
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    delays = [e["delay_s"] for e in lines if e.get("event") == "retrying" and e.get("what") == "upload"]
    assert len(delays) == 3
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(0.1, 0.04 * 2**n) + 0.001
