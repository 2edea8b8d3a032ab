"""Steps `serve` and `release` against the sandbox: serverless or dedicated, one endpoint, always deleted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import together

from daemon.config import Settings
from daemon.errors import RemoteJobFailed, RemoteRejected
from daemon.jobs.context import JobContext, JournalKey
from daemon.jobs.leftover_endpoints import sweep_endpoints
from daemon.jobs.state import JobStatus, StateStore
from daemon.remote.api import EndpointRequest, Surface
from daemon.remote.lazy import LazyRemote
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle, start_sandbox
from daemon.spec import JobSpec
from handlers import create, poll, serve, serving, upload
from handlers.serving import ENDPOINT_FILE
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, DictJournal, admin, make_ctx, write_chat_jsonl

OTHER_BASE = "Qwen/Qwen2.5-7B-Instruct"  # not among the sandbox's serverless LoRA bases


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A sandbox whose small fine-tunes take about 0.3 s and endpoints start in 0.24 s."""
    handle = await start_sandbox(speed=500.0, retry_after_s=0.02)
    yield handle
    await handle.close()


def spec_for(model: str, **evaluate: Any) -> JobSpec:
    """A spec fine-tuning `model` and evaluating base and fine-tuned (evaluate keys as given)."""
    return JobSpec.model_validate(
        {
            "name": "demo",
            "dataset": {"source": "unused"},
            "finetune": {"model": model},
            "evaluate": {"models": ["base", "finetuned"], **evaluate},
        }
    )


async def fine_tuned(
    tmp_path: Path, settings: Settings, api: TogetherAPI, spec: JobSpec, journal: DictJournal | None = None
) -> tuple[JobContext, dict[str, Any]]:
    """Upload, create and poll for real; returns the context and the serve step's inputs."""
    ctx = make_ctx(tmp_path, spec, settings, api, journal or DictJournal())
    uploaded = await upload.run(ctx, {"prepare": {"train_file": str(write_chat_jsonl(tmp_path / "train.jsonl"))}})
    made = await create.run(ctx, {"upload": uploaded})
    polled = await poll.run(ctx, {"upload": uploaded, "create": made})
    counts = {"eval": {"items": 2, "turns": 12}}
    return ctx, {"prepare": {"counts": counts}, "upload": uploaded, "create": made, "poll": polled}


async def endpoint_stats(sandbox: SandboxHandle) -> dict[str, Any]:
    """The sandbox's endpoint counters."""
    counted: dict[str, Any] = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    return counted


async def test_auto_serves_a_serverless_lora_without_an_endpoint(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A LoRA of a serverless base is found in the models list: evaluate asks the fine-tuned model itself."""
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(BASE_MODEL))
    out = await serve.run(ctx, inputs)
    assert out == {"mode": "serverless", "model": inputs["poll"]["model"]}
    assert (await serve.release(ctx, {**inputs, "serve": out}))["mode"] == "serverless"
    assert (await endpoint_stats(sandbox))["created"] == 0


async def test_auto_puts_another_base_on_one_dedicated_endpoint_then_deletes_it(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """Not served serverless: one endpoint (v2: one deployment) on the cheapest available hardware, STARTED, its
    name given to evaluate; release deletes it and records minutes and cost on the provider's clock (journal,
    endpoint.json, the step's note), equal to what the sandbox billed."""
    journal = DictJournal()
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(OTHER_BASE), journal)
    out = await serve.run(ctx, inputs)
    tag = journal.values[JournalKey.ENDPOINT_INTENT]
    deployment = sandbox.sandbox.live_endpoint(out["model"])
    assert deployment is not None and out["model"] == f"sandbox/finetuned-{tag}" and out["surface"] == "v2"
    assert deployment.model == inputs["poll"]["model"] and deployment.display_name == f"finetuned-{tag}"
    assert deployment.hardware.id == "1x_nvidia_a100_80gb_pcie" and out["usd_per_minute"] == pytest.approx(0.04)
    assert journal.values[JournalKey.ENDPOINT_DEPLOYMENT] == deployment.id
    order = [k for k, _ in journal.writes]
    assert order.index(JournalKey.ENDPOINT_SURFACE) < order.index(JournalKey.ENDPOINT_INTENT)
    assert order.index(JournalKey.ENDPOINT_INTENT) < order.index(JournalKey.ENDPOINT_ID)
    released = await serve.release(ctx, {**inputs, "serve": out})
    assert released["mode"] == "dedicated" and released["minutes"] >= 1 and released["cost_usd"] > 0
    assert released["clock"] == "provider" and released["minutes"] == (await endpoint_stats(sandbox))["minutes_billed"]
    assert "Dedicated endpoint" in released["note"]
    assert json.loads(journal.values[JournalKey.ENDPOINT_RELEASED])["endpoint_id"] == out["endpoint_id"]
    assert json.loads((ctx.out_dir / ENDPOINT_FILE).read_text())["cost_usd"] == released["cost_usd"]
    await serve.cleanup(ctx, "completed")  # idempotent: nothing more is deleted or created
    counted = await endpoint_stats(sandbox)
    assert counted["created"] == 1 and counted["running"] == 0 and counted["deleted"] == 1


async def test_price_above_max_endpoint_usd_is_refused_before_creating(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """$0.04/min x the expected 10+ minutes is above $0.10: refused, no endpoint created, nothing journaled."""
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(OTHER_BASE, max_endpoint_usd=0.10))
    with pytest.raises(RemoteRejected, match="max_endpoint_usd"):
        await serve.run(ctx, inputs)
    assert (await endpoint_stats(sandbox))["created"] == 0
    assert ctx.journal.get(JournalKey.ENDPOINT_INTENT) is None


async def test_an_endpoint_in_error_fails_with_togethers_reason_and_is_deleted(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """ERROR while starting: the job fails with Together's message; the cleanup deletes the endpoint."""
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(OTHER_BASE, serve="dedicated"))
    body = {"message": "insufficient capacity in zone", "at_s": 30}
    await admin(sandbox.base_url, "POST", "/_sandbox/endpoint-failures", body)
    with pytest.raises(RemoteJobFailed, match="insufficient capacity in zone"):
        await serve.run(ctx, inputs)
    await serve.cleanup(ctx, "failed")
    counted = await endpoint_stats(sandbox)
    assert counted["created"] == 1 and counted["running"] == 0 and counted["deleted"] == 1


async def test_a_crash_between_intent_and_id_adopts_the_tagged_endpoint(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """The intent was journaled (on v2) and the endpoint created, but its id was lost: the rerun adopts it."""
    journal = DictJournal()
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(OTHER_BASE), journal)
    await journal.record(JournalKey.ENDPOINT_SURFACE, "v2")
    await journal.record(JournalKey.ENDPOINT_INTENT, "abcde1234")
    chosen = next(o for o in await api.hardware(inputs["poll"]["model"]) if o.availability == "available")
    request = EndpointRequest(inputs["poll"]["model"], chosen.id, 1, "finetuned-abcde1234", None, chosen.config)
    made = await api.create_endpoint(request)
    out = await serve.run(ctx, inputs)
    assert out["endpoint_id"] == made.id and journal.values[JournalKey.ENDPOINT_ID] == made.id
    await serve.cleanup(ctx, "cancelled")
    counted = await endpoint_stats(sandbox)
    assert counted["created"] == 1 and counted["running"] == 0


async def test_the_spend_guard_stops_the_endpoint_at_max_endpoint_usd(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A budget paying for 5 minutes at $0.04, 2 of them spent starting up: the guard, reading the time billed on
    the sandbox's clock (speed 60: a minute lasts 1 s), stops the endpoint in its fifth minute, before a sixth
    starts; the sandbox's bill is the budget's 5 minutes, not more."""
    spec = spec_for(OTHER_BASE, max_endpoint_usd=0.20, expected_eval_min=5)
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec)
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"speed": 60.0})
    out = await serve.run(ctx, inputs)
    endpoint = sandbox.sandbox.live_endpoint(out["model"])
    assert endpoint is not None and out["usd_per_minute"] == pytest.approx(0.04)
    async with asyncio.timeout(20):
        while endpoint.billing(sandbox.sandbox.sim_now()):
            await asyncio.sleep(0.01)
    now_s = sandbox.sandbox.sim_now()
    assert endpoint.billed_minutes(now_s) == 5 and endpoint.cost_usd(now_s) <= 0.20
    released = await serve.release(ctx, {**inputs, "serve": out})
    assert released["budget_reached"] is True and "max_endpoint_usd" in released["note"]
    assert released["minutes"] == 5 and released["cost_usd"] == pytest.approx(0.20)


async def test_a_budget_below_one_minute_is_refused_before_an_endpoint_exists(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """Every started minute is billed: $0.03 cannot pay for one minute at $0.04, however short the expected time."""
    spec = spec_for(OTHER_BASE, max_endpoint_usd=0.03, expected_eval_min=0.001)
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec)
    with pytest.raises(RemoteRejected, match="for the expected 1 started min would cost \\$0.04"):
        await serve.run(ctx, inputs)
    assert (await endpoint_stats(sandbox))["created"] == 0


async def test_the_spend_guard_is_armed_again_for_an_evaluation_resumed_after_a_restart(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """A restarted daemon (no guard in memory) re-arms it from serve's output when the evaluation resumes."""
    spec = spec_for(OTHER_BASE, max_endpoint_usd=0.04, expected_eval_min=1)
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec)
    out = await serve.run(ctx, inputs)
    serving._disarm(ctx.job_id)  # what a new process has: no guard
    endpoint = sandbox.sandbox.live_endpoint(out["model"])
    assert endpoint is not None
    serving.rearm_budget_guard(ctx, out)
    serving.rearm_budget_guard(ctx, {"mode": "serverless", "model": "x"})  # nothing to guard
    async with asyncio.timeout(5):
        while endpoint.billing(sandbox.sandbox.sim_now()):
            await asyncio.sleep(0.05)
    await serve.cleanup(ctx, "completed")
    assert (await endpoint_stats(sandbox))["running"] == 0


async def test_a_crash_between_endpoint_and_deployment_completes_the_endpoint(
    tmp_path: Path, remote_settings: Settings, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """The v2 endpoint was created but the crash came before its deployment: the rerun completes that endpoint
    (deployment + route) and serves on it; one endpoint, one deployment."""
    journal = DictJournal()
    ctx, inputs = await fine_tuned(tmp_path, remote_settings, api, spec_for(OTHER_BASE), journal)
    await journal.record(JournalKey.ENDPOINT_SURFACE, "v2")
    await journal.record(JournalKey.ENDPOINT_INTENT, "fghij5678")
    half = await project_endpoint(sandbox, "finetuned-fghij5678")
    out = await serve.run(ctx, inputs)
    assert out["endpoint_id"] == half and out["model"] == "sandbox/finetuned-fghij5678"
    await serve.cleanup(ctx, "completed")
    counted = await endpoint_stats(sandbox)
    assert counted["created"] == counted["deleted"] == 1 and counted["deployments"] == {"created": 1, "deleted": 1}


async def test_start_up_sweep_deletes_endpoints_of_ended_jobs_only(
    tmp_path: Path, api: TogetherAPI, sandbox: SandboxHandle
) -> None:
    """An ended job's tagged endpoint is deleted on the surface its journal names (none: v1); an unfinished job's
    and an untagged one are left alone."""
    store = await StateStore.open(tmp_path / "state.db")
    jobs = (("ended-1", "aaaaa0001", None), ("ended-2", "ccccc0003", "v2"), ("running-1", "bbbbb0002", "v2"))
    try:
        for job_id, tag, surface in jobs:
            await store.add_job(job_id, job_id, str(tmp_path / "spec.yaml"))
            if surface:
                await store.record(job_id, JournalKey.ENDPOINT_SURFACE, surface)
            await store.record(job_id, JournalKey.ENDPOINT_INTENT, tag)
            if job_id.startswith("ended"):
                await store.set_status(job_id, JobStatus.failed)
        v1 = {}
        for name in ("finetuned-aaaaa0001", "someone-else"):
            request = EndpointRequest(BASE_MODEL, "1x_nvidia_a100_80gb_pcie", 1, name)
            v1[name] = await api.create_endpoint(request, surface=Surface.V1)
        v2 = {name: await project_endpoint(sandbox, name) for name in ("finetuned-ccccc0003", "finetuned-bbbbb0002")}
        swept = await sweep_endpoints(store, LazyRemote.of(api).get, timeout_s=5)
    finally:
        await store.close()
    assert swept == [v1["finetuned-aaaaa0001"].id, v2["finetuned-ccccc0003"]]
    assert (await endpoint_stats(sandbox))["running"] == 1
    assert [e.name for e in sandbox.sandbox.entrypoints.values() if not e.deleted] == ["sandbox/finetuned-bbbbb0002"]


async def project_endpoint(sandbox: SandboxHandle, name: str) -> str:
    """A v2 endpoint (no deployment) made with the SDK; its id."""
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0, project_id="proj_sandbox")
    try:
        return str((await sdk.endpoints.create(name=name)).id)
    finally:
        await sdk.close()
