"""The real SDK's typed endpoint methods (project-scoped `/v2` surface) against the sandbox, unmodified; every
answer validates with the SDK's own pydantic models, full and lean; the v2 switch; the simulated clock."""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import together
from together.types import Endpoint, EndpointDeployment, WhoamiProjectAPIKey
from together.types.endpoints import HardwareListResponse
from together.types.models import Config

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, admin, fine_tune


@pytest.fixture(params=[False, True], ids=["full", "lean"])
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[SandboxHandle]:
    """A fast sandbox (deployments ready after 1.2 simulated minutes = 0.24 s), full or lean."""
    handle = await start_sandbox(speed=300.0, endpoint_startup_s=72.0, lean=request.param)
    yield handle
    await handle.close()


@pytest.fixture
async def sdk(sandbox: SandboxHandle) -> AsyncIterator[together.AsyncTogether]:
    """The SDK, project id left to whoami."""
    client = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0)
    yield client
    await client.close()


async def raw(call: Any) -> tuple[dict[str, Any], float]:
    """(the JSON answer of a `with_raw_response` call, its Date header as epoch seconds)."""
    response = await call
    return response.http_response.json(), email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()


def selectors(config: Config) -> dict[str, str]:
    """A config's selectors as a dict."""
    return {s.key: s.value for s in config.selectors}


async def deploy(sdk: together.AsyncTogether, model_name: str, pid: str) -> tuple[Endpoint, EndpointDeployment]:
    """As the SDK's CLI deploys: the model and its config resolved, endpoint, deployment, traffic split."""
    model = [m async for m in sdk.models.list(project_id=pid) if m.name == model_name][0]
    reference = model.base_model or f"projects/{model.project_id}/models/{model.id}"
    configs = [c async for c in sdk.models.configs.list(project_id=pid, reference_model=reference)]
    for row in configs:
        Config.model_validate(row.to_dict())
    catalogue = await sdk.endpoints.hardware.list()
    HardwareListResponse.model_validate(catalogue.to_dict())
    offered = {t.name for t in catalogue.data if t.regions}
    chosen = next(c for c in configs if "{accelerator_count}x{accelerator_type}".format_map(selectors(c)) in offered)
    endpoint = await sdk.endpoints.create(project_id=pid, name="finetuned-abc123")
    deployment = await sdk.endpoints.deployments.create(
        endpoint.id,
        project_id=pid,
        name="finetuned-abc123",
        model=f"projects/{model.project_id}/models/{model.id}",
        config=f"projects/{chosen.project_id}/configs/{chosen.id}",
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    split = [{"deployment_id": deployment.id, "weight": 1.0}]
    routed = await sdk.endpoints.update(
        endpoint.id, project_id=pid, traffic_split=split, update_mask="trafficSplit", etag=endpoint.etag
    )
    return routed, deployment


async def test_the_sdks_typed_endpoint_methods_work_against_the_sandbox(
    sandbox: SandboxHandle, sdk: together.AsyncTogether, tmp_path: Path
) -> None:
    """whoami, models, configs, instance types, endpoint + deployment + traffic split, list by filter, chat on the
    endpoint's name once READY, scale to 0/0, delete deployment then endpoint; answers are valid SDK models."""
    model_name = await fine_tune(sdk, sandbox, tmp_path)
    identity = await sdk.whoami()
    assert isinstance(identity, WhoamiProjectAPIKey)
    WhoamiProjectAPIKey.model_validate(identity.to_dict())
    pid = identity.project.id
    endpoint, deployment = await deploy(sdk, model_name, pid)
    assert endpoint.name == f"{identity.project.slug}/finetuned-abc123" and endpoint.traffic_split[0].weight == 1
    listed = [e async for e in sdk.endpoints.list(project_id=pid, filter='name:"abc123"')]
    assert [e.id for e in listed] == [endpoint.id]
    assert [e async for e in sdk.endpoints.list(project_id=pid, filter='name:"other"')] == []
    async with asyncio.timeout(10):
        while True:
            got, _ = await raw(
                sdk.endpoints.deployments.with_raw_response.retrieve(
                    deployment.id, endpoint_id=endpoint.id, project_id=pid
                )
            )
            if EndpointDeployment.model_validate(got).status.state == "DEPLOYMENT_STATE_READY":
                break
            await asyncio.sleep(0.02)
    answer = await sdk.chat.completions.create(model=endpoint.name, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices
    body, _ = await raw(sdk.endpoints.with_raw_response.retrieve(endpoint.id, project_id=pid))
    Endpoint.model_validate(body)
    stopped, _ = await raw(
        sdk.endpoints.deployments.with_raw_response.update(
            deployment.id, endpoint_id=endpoint.id, project_id=pid, autoscaling={"min_replicas": 0, "max_replicas": 0}
        )
    )
    assert EndpointDeployment.model_validate(stopped).status.state == "DEPLOYMENT_STATE_STOPPING"
    with pytest.raises(together.BadRequestError):
        await sdk.endpoints.delete(endpoint.id, project_id=pid)  # deployments first
    await sdk.endpoints.deployments.delete(deployment.id, endpoint_id=endpoint.id, project_id=pid)
    await sdk.endpoints.delete(endpoint.id, project_id=pid)
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    assert counted["created"] == counted["deleted"] == 1 and counted["deployments"] == {"created": 1, "deleted": 1}
    assert counted["running"] == 0


async def test_timestamps_and_the_bill_share_the_simulated_clock(
    sandbox: SandboxHandle, sdk: together.AsyncTogether, tmp_path: Path
) -> None:
    """The stopped deployment's updatedAt - createdAt, in started minutes, is what the sandbox bills; the Date
    header runs on the same clock."""
    model_name = await fine_tune(sdk, sandbox, tmp_path)
    pid = (await sdk.whoami()).project.id  # type: ignore[union-attr]
    endpoint, deployment = await deploy(sdk, model_name, pid)
    await asyncio.sleep(0.5)  # 150 simulated seconds
    stopped, date_s = await raw(
        sdk.endpoints.deployments.with_raw_response.update(
            deployment.id, endpoint_id=endpoint.id, project_id=pid, autoscaling={"min_replicas": 0, "max_replicas": 0}
        )
    )
    parsed = EndpointDeployment.model_validate(stopped)
    ran_s = (parsed.updated_at - parsed.created_at).total_seconds()
    assert 150 <= ran_s < 300 and abs(date_s - parsed.updated_at.timestamp()) < 2
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    assert counted["minutes_billed"] == math.ceil(ran_s / 60 - 1e-9) and counted["running"] == 0


async def test_switching_v2_off_answers_404_and_v1_still_serves(sandbox: SandboxHandle) -> None:
    """With `v2_endpoints` off, whoami and the project routes answer 404 (the SDK raises NotFoundError); the
    contract's /v1/endpoints and /v1/hardware still answer."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"v2_endpoints": False})
    client = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0, project_id="proj_x")
    try:
        with pytest.raises(together.NotFoundError):
            await client.whoami()
        with pytest.raises(together.NotFoundError):
            await client.endpoints.hardware.list()
        hardware = await client.get("/v1/hardware", cast_to=httpx.Response)
        assert hardware.json()["data"]
    finally:
        await client.close()
