"""The sandbox's answers on the SDK's project-scoped endpoint surface against JSON Schemas written from SDK 3.1.1's
types (tests/contract/together-v2.schema.json): every answer the daemon reads, full and lean (closed in lean mode:
no property the types do not declare), and in lean mode only the required ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import together

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, fine_tune
from tests.daemon.sandbox.test_contract import Contract, call

SCHEMA_FILE = Path(__file__).parents[2] / "contract" / "together-v2.schema.json"


@pytest.fixture(params=[False, True], ids=["full", "lean"])
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[SandboxHandle]:
    """A fast sandbox, full or lean."""
    handle = await start_sandbox(speed=300.0, endpoint_startup_s=60.0, lean=request.param)
    yield handle
    await handle.close()


async def model_and_config(c: Contract, s: aiohttp.ClientSession, root: str, pid: str, name: str) -> dict[str, Any]:
    """The project's models, the model's configs and the instance types, validated; the deployment's body."""
    _, models = await call(s, "GET", f"{root}/v2/projects/{pid}/models")
    c.check("ModelList", models)
    model = next(m for m in models["data"] if m["name"] == name)
    path = f"projects/{model['projectId']}/models/{model['id']}"
    _, configs = await call(s, "GET", f"{root}/v2/projects/{pid}/configs?referenceModel={model.get('baseModel', path)}")
    c.check("ConfigList", configs)
    _, types = await call(s, "GET", f"{root}/v2/public/inference-instance-types")
    c.check("InstanceTypeList", types)
    offered = {t["name"] for t in types["data"] if t["regions"]}
    config = next(x for x in configs["data"] if "{accelerator_count}x{accelerator_type}".format_map(
        {sel["key"]: sel["value"] for sel in x["selectors"]}) in offered)  # fmt: skip
    config_path = f"projects/{config['projectId']}/configs/{config['id']}"
    return {"name": "d1", "model": path, "config": config_path, "autoscaling": {"minReplicas": 1, "maxReplicas": 1}}


async def test_every_v2_answer_the_daemon_reads_keeps_to_the_sdks_types(sandbox: SandboxHandle, tmp_path: Path) -> None:
    """whoami, models, configs, instance types, endpoint create/list/retrieve/route/delete, deployment
    create/list/retrieve/scale/delete: each answer validates; every schema definition is exercised."""
    c = Contract(lean=sandbox.sandbox.lean, schema_file=SCHEMA_FILE)
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0)
    try:
        name = await fine_tune(sdk, sandbox, tmp_path)
    finally:
        await sdk.close()
    root = sandbox.base_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        _, me = await call(s, "GET", f"{root}/v3/whoami")
        c.check("Whoami", me)
        pid = me["project"]["id"]
        body = await model_and_config(c, s, root, pid, name)
        eps = f"{root}/v2/projects/{pid}/endpoints"
        _, endpoint = await call(s, "POST", eps, {"name": "finetuned-contract"})
        c.check("Endpoint", endpoint)
        deps = f"{eps}/{endpoint['id']}/deployments"
        status, deployment = await call(s, "POST", deps, body)
        assert status == 200, deployment
        c.check("Deployment", deployment)
        split = {"trafficSplit": [{"deploymentId": deployment["id"], "weight": 1}]}
        c.check("Endpoint", (await call(s, "PATCH", f"{eps}/{endpoint['id']}?updateMask=trafficSplit", split))[1])
        c.check("EndpointList", (await call(s, "GET", f'{eps}?filter=name:"contract"'))[1])
        c.check("DeploymentList", (await call(s, "GET", deps))[1])
        async with asyncio.timeout(10):
            while deployment["status"]["state"] != "DEPLOYMENT_STATE_READY":
                await asyncio.sleep(0.02)
                deployment = (await call(s, "GET", f"{deps}/{deployment['id']}"))[1]
        c.check("Deployment", deployment)
        c.check("Endpoint", (await call(s, "GET", f"{eps}/{endpoint['id']}"))[1])
        stop = {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}
        c.check("Deployment", (await call(s, "PATCH", f"{deps}/{deployment['id']}", stop))[1])
        c.check("Deleted", (await call(s, "DELETE", f"{deps}/{deployment['id']}"))[1])
        c.check("Deleted", (await call(s, "DELETE", f"{eps}/{endpoint['id']}"))[1])
    parts = {"Autoscaling", "DeploymentSummary", "InstanceType", "Config", "Model"}  # checked inside the others
    assert set(c.checked) == set(json.loads(SCHEMA_FILE.read_text())["$defs"]) - parts
