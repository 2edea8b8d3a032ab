"""Step `create` against the sandbox: price guard, intent before the call, adoption instead of a second create."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import BadInput, RemoteRejected
from daemon.jobs.context import JobContext
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle
from handlers import create, upload
from handlers.create import make_tag, suffix_for
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


async def uploaded_ctx(
    tmp_path: Path, settings: Settings, api: TogetherAPI, journal: DictJournal | None = None, **finetune: object
) -> tuple[JobContext, dict[str, dict[str, object]]]:
    """A context whose upload step has run (for real), and the inputs the create step gets."""
    train = write_chat_jsonl(tmp_path / "train.jsonl")
    ctx = make_ctx(tmp_path, make_spec(**finetune), settings, api, journal or DictJournal())
    uploaded = await upload.run(ctx, {"prepare": {"train_file": str(train)}})
    return ctx, {"upload": uploaded}


async def test_create_records_intent_before_the_call_and_id_after(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """The tag is journaled before the create call, the id right after; one POST /v1/fine-tunes in all."""
    journal = DictJournal()
    ctx, inputs = await uploaded_ctx(tmp_path, remote_settings, api, journal, suffix="coqa", max_price_usd=5.0)
    out = await create.run(ctx, inputs)
    keys = [key for key, _ in journal.writes]
    assert keys[-2:] == ["create.intent", "fine_tune_id"]
    tag = journal.values["create.intent"]
    assert out["fine_tune_id"] == journal.values["fine_tune_id"] and out["suffix"] == f"coqa-{tag}"
    assert f"coqa-{tag}" in out["model_output_name"] and 0 < out["estimated_price_usd"] < 5.0
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/fine-tunes"] == 1
    again = await create.run(ctx, inputs)
    assert again["fine_tune_id"] == out["fine_tune_id"]
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/fine-tunes"] == 1


async def test_price_above_max_creates_nothing(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """An estimate above max_price_usd is refused with both prices in the message, and no job or intent exists."""
    journal = DictJournal()
    ctx, inputs = await uploaded_ctx(tmp_path, remote_settings, api, journal, max_price_usd=0.0001)
    with pytest.raises(
        RemoteRejected, match=r"above finetune\.max_price_usd \$0\.000100; no fine-tune job was created"
    ):
        await create.run(ctx, inputs)
    counters = await stats(sandbox.base_url)
    assert "POST /v1/fine-tunes" not in counters["requests"] and counters["jobs"] == 0
    assert "create.intent" not in journal.values


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
async def test_crash_between_create_and_save_adopts_the_job(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle, lean: bool
) -> None:
    """Intent journaled, job created, id lost (crash): the rerun lists jobs and adopts it; exactly one create
    (also when the list answers only contract fields: no `suffix`, the tag is found in `model_output_name`)."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"lean": lean})
    journal = DictJournal()
    ctx, inputs = await uploaded_ctx(tmp_path, remote_settings, api, journal)
    first = await create.run(ctx, inputs)
    del journal.values["fine_tune_id"]  # the process died before this write reached the disk
    restarted = TogetherAPI(remote_settings)
    try:
        ctx2 = make_ctx(tmp_path, ctx.spec, remote_settings, restarted, journal)
        adopted = await create.run(ctx2, inputs)
    finally:
        await restarted.close()
    assert adopted["fine_tune_id"] == first["fine_tune_id"] and adopted["adopted"] is True
    assert journal.values["fine_tune_id"] == first["fine_tune_id"]
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/fine-tunes"] == 1


async def test_lost_create_answer_is_resolved_by_lookup(
    tmp_path: Path, remote_settings: Settings, sandbox: SandboxHandle
) -> None:
    """The create runs but its answer never arrives (timeout): the retry finds the tagged job instead of re-POSTing."""
    adapter = TogetherAPI(with_(remote_settings, request_timeout_s=0.5))
    try:
        ctx, inputs = await uploaded_ctx(tmp_path, with_(remote_settings, request_timeout_s=0.5), adapter)
        await script_fault(sandbox.base_url, kind="timeout", route="POST /v1/fine-tunes", delay_s=10)
        out = await create.run(ctx, inputs)
    finally:
        await adapter.close()
    counters = await stats(sandbox.base_url)
    assert counters["requests"]["POST /v1/fine-tunes"] == 1 and counters["jobs"] == 1
    assert out["fine_tune_id"] in sandbox.sandbox.jobs


async def test_intent_without_a_job_creates_with_the_same_tag(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A crash after journaling the intent but before the call: the rerun creates once, reusing the journaled tag."""
    journal = DictJournal({"create.intent": "abcde1234"})
    ctx, inputs = await uploaded_ctx(tmp_path, remote_settings, api, journal)
    out = await create.run(ctx, inputs)
    assert out["suffix"] == "abcde1234" and out["adopted"] is False
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/fine-tunes"] == 1


async def test_account_limit_refuses_the_job_and_evals_need_a_validation_file(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """allowed_to_proceed=false refuses this job (it does not pause others); n_evals without a validation file is a
    spec problem."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"user_limit_usd": 0.0})
    ctx, inputs = await uploaded_ctx(tmp_path, remote_settings, api)
    with pytest.raises(RemoteRejected, match="refuses this job"):
        await create.run(ctx, inputs)
    ctx, inputs = await uploaded_ctx(tmp_path / "evals", remote_settings, api, n_evals=2)
    with pytest.raises(BadInput, match="n_evals"):
        await create.run(ctx, inputs)
    assert (await stats(sandbox.base_url))["jobs"] == 0


def test_tag_fits_together_suffix_limit() -> None:
    """The tag is 9 characters derived from the job id (plus a nonce): a 30-character spec suffix still fits 40."""
    tag = make_tag("demo-0123abcd")
    assert len(tag) == 9 and tag[:5] == make_tag("demo-0123abcd")[:5] and tag != make_tag("demo-0123abcd")
    assert len(suffix_for("x" * 30, tag)) == 40 and suffix_for(None, tag) == tag
