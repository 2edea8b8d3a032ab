"""daemon.remote.together against the real sandbox: SDK errors mapped to daemon errors, no SDK retries, dedupe."""

from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from daemon.config import Settings
from daemon.errors import BadInput, FinetunedError, Paused, RemoteRejected, TransientError
from daemon.remote.api import FineTuneRequest
from daemon.remote.backoff import retry
from daemon.remote.classify import retry_after_s
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle
from handlers.upload import sha256_file
from tests.conftest import with_
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, make_spec, script_fault, stats, write_chat_jsonl


def request_for(file_id: str, **finetune: object) -> FineTuneRequest:
    """A create request from a spec with the given finetune keys."""
    spec = make_spec(**finetune).finetune
    assert spec is not None
    return FineTuneRequest.from_spec(spec, training_file=file_id, validation_file="", suffix="tag123456")


@pytest.mark.parametrize(
    ("kind", "error_type", "status"),
    [
        ("401", Paused, 401),
        ("403", Paused, 403),
        ("402", Paused, 402),
        ("insufficient_quota", Paused, 429),
        ("429", TransientError, 429),
        ("500", TransientError, 500),
        ("503", TransientError, 503),
    ],
)
async def test_status_codes_map_to_daemon_errors(
    api: TogetherAPI, sandbox: SandboxHandle, kind: str, error_type: type[FinetunedError], status: int
) -> None:
    """Auth/quota statuses pause, rate limits and 5xx are transient; the SDK does not retry on its own."""
    await script_fault(sandbox.base_url, kind=kind, route="GET /v1/fine-tunes", retry_after_s=0.25)
    with pytest.raises(error_type) as caught:
        await api.find_job("anything")
    assert getattr(caught.value, "http_status", None) == status
    assert API_KEY not in str(caught.value)
    counters = await stats(sandbox.base_url)
    assert counters["faults"] == {"GET /v1/fine-tunes": 1} and counters["requests"] == {}
    if kind == "429":
        assert isinstance(caught.value, TransientError) and caught.value.retry_after_s == 0.25


async def test_not_found_and_bad_request_are_rejections_with_the_remote_message(api: TogetherAPI) -> None:
    """404 and 400 become RemoteRejected carrying the HTTP status and Together's message."""
    with pytest.raises(RemoteRejected) as missing:
        await api.retrieve("ft-does-not-exist")
    assert missing.value.http_status == 404 and "ft-does-not-exist not found" in str(missing.value)
    with pytest.raises(RemoteRejected) as bad:
        await api.estimate_price(request_for("file-nope"))
    assert bad.value.http_status == 400 and "training_file" in str(bad.value)


async def test_timeouts_and_refused_connections_are_transient(
    sandbox: SandboxHandle, remote_settings: Settings
) -> None:
    """A held-back answer times out after request_timeout_s, and a closed port fails fast: both transient."""
    adapter = TogetherAPI(with_(remote_settings, request_timeout_s=0.3))
    try:
        await script_fault(sandbox.base_url, kind="timeout", route="GET /v1/fine-tunes/{id}", delay_s=5)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out|no answer"):
            await adapter.retrieve("ft-x")
        assert time.monotonic() - started < 2.0
    finally:
        await adapter.close()
    dead = TogetherAPI(with_(remote_settings, together_base_url="http://127.0.0.1:9"))
    try:
        with pytest.raises(TransientError, match="cannot reach"):
            await dead.probe()
    finally:
        await dead.close()


async def test_upload_dedupes_in_process_and_adopts_on_409(
    api: TogetherAPI, remote_settings: Settings, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    """The same bytes twice make one POST /v1/files; a fresh adapter (new process) adopts the file on 409."""
    path = write_chat_jsonl(tmp_path / "train.jsonl")
    digest = sha256_file(path)
    first = await api.upload(path, sha256=digest)
    again = await api.upload(path, sha256=digest)
    assert again.id == first.id and again.reused and not first.reused
    assert (await stats(sandbox.base_url))["requests"]["POST /v1/files"] == 1
    fresh = TogetherAPI(remote_settings)
    try:
        adopted = await fresh.upload(path, sha256=digest)
    finally:
        await fresh.close()
    assert adopted.id == first.id and adopted.reused
    counters = await stats(sandbox.base_url)
    assert counters["requests"]["POST /v1/files"] == 2 and counters["files"] == 1


async def test_every_spec_parameter_reaches_the_wire(api: TogetherAPI, sandbox: SandboxHandle, tmp_path: Path) -> None:
    """FineTuneRequest.from_spec carries every finetune parameter, and the W&B key is sent as wandb_key."""
    path = write_chat_jsonl(tmp_path / "train.jsonl")
    file = await api.upload(path, sha256="unused-digest")
    request = request_for(
        file.id,
        n_epochs=2,
        learning_rate=2e-4,
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.1,
        lora_trainable_modules="q_proj,v_proj",
        batch_size=16,
        warmup_ratio=0.05,
        lr_scheduler="linear",
        min_lr_ratio=0.1,
        max_grad_norm=0.5,
        weight_decay=0.01,
        train_on_inputs=False,
        n_checkpoints=2,
        max_seq_length=4096,
        packing=False,
        random_seed=42,
        wandb_api_key_env="WANDB_TEST_KEY",
        wandb_project_name="proj",
        wandb_name="run1",
    )
    estimate = await api.estimate_price(request)
    assert estimate.available and estimate.total_usd is not None and estimate.total_usd > 0
    job = await api.create(request)
    sent = sandbox.sandbox.jobs[job.id].request
    assert sent["training_type"] == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "lora_trainable_modules": "q_proj,v_proj",
    }
    assert sent["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert sent["lr_scheduler"] == {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.1}}
    expected = {
        "n_epochs": 2,
        "learning_rate": 2e-4,
        "batch_size": 16,
        "warmup_ratio": 0.05,
        "max_grad_norm": 0.5,
        "weight_decay": 0.01,
        "n_checkpoints": 2,
        "max_seq_length": 4096,
        "packing": False,
        "random_seed": 42,
        "suffix": "tag123456",
        "wandb_key": "wandb-secret-value",
        "wandb_project_name": "proj",
        "wandb_name": "run1",
        "model": BASE_MODEL,
    }
    assert {k: sent.get(k) for k in expected} == expected
    found = await api.find_job("123456")
    assert found is not None and found.id == job.id and found.suffix == "tag123456"
    assert await api.find_job("999999") is None


async def test_missing_wandb_key_is_bad_input(api: TogetherAPI, tmp_path: Path) -> None:
    """A spec naming a W&B key variable that is not set fails clearly, without creating a job."""
    file = await api.upload(write_chat_jsonl(tmp_path / "train.jsonl"), sha256="d")
    with pytest.raises(BadInput, match="NOT_SET_ANYWHERE"):
        await api.create(request_for(file.id, wandb_api_key_env="NOT_SET_ANYWHERE"))


async def test_probe_pauses_until_auth_works_again(api: TogetherAPI, sandbox: SandboxHandle) -> None:
    """probe raises Paused while 401s are scripted and returns once the API accepts the key again."""
    await script_fault(sandbox.base_url, kind="401", route="*", count=2)
    for _ in range(2):
        with pytest.raises(Paused):
            await api.probe()
    await api.probe()


async def test_the_retry_layer_rides_out_transient_errors(
    remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """The retry layer retries 503/429 (honouring Retry-After) and returns the answer; Paused is not retried."""
    await script_fault(sandbox.base_url, kind="503", route="GET /v1/fine-tunes", count=2)
    await script_fault(sandbox.base_url, kind="429", route="GET /v1/fine-tunes", retry_after_s=0.05)
    assert await retry(lambda: api.find_job("x"), policy=remote_settings.retry_policy, what="list") is None
    assert (await stats(sandbox.base_url))["faults"]["GET /v1/fine-tunes"] == 3
    await script_fault(sandbox.base_url, kind="402", route="GET /v1/fine-tunes", count=5)
    with pytest.raises(Paused):
        await retry(lambda: api.find_job("x"), policy=remote_settings.retry_policy, what="list")
    assert (await stats(sandbox.base_url))["faults"]["GET /v1/fine-tunes"] == 4


def test_retry_after_headers() -> None:
    """retry-after-ms wins, then Retry-After in seconds or as an HTTP date, then x-ratelimit-reset."""
    assert retry_after_s(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after_s(httpx.Headers({"retry-after": "7"})) == 7.0
    dated = retry_after_s(httpx.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)}))
    assert dated is not None and 25 <= dated <= 31
    assert retry_after_s(httpx.Headers({"x-ratelimit-reset": "2"})) == 2.0
    assert retry_after_s(httpx.Headers({})) is None


def test_missing_api_key_pauses(settings: Settings) -> None:
    """Without TOGETHER_API_KEY the adapter cannot be built and says which variable is missing."""
    with pytest.raises(Paused, match="TOGETHER_API_KEY"):
        TogetherAPI(settings)
