"""The sandbox's answers against JSON Schemas written from Together's published contract (tests/contract/).

Every operation the daemon uses is called and its JSON validated; in lean mode no object may carry a property
the contract does not declare.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import together

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, admin, write_chat_jsonl

SCHEMA_FILE = Path(__file__).parents[2] / "contract" / "together.schema.json"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
OTHER_BASE = "Qwen/Qwen2.5-7B-Instruct"  # no serverless LoRA in the sandbox's defaults


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties (not `x-open`)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in out and not out.get("x-open"):
        out["additionalProperties"] = False
    return out


class Contract:
    """Validates answers against one definition of the schema document."""

    def __init__(self, *, lean: bool, schema_file: Path = SCHEMA_FILE) -> None:
        document = json.loads(schema_file.read_text())
        self.document = closed(document) if lean else document
        jsonschema.Draft202012Validator.check_schema(self.document)
        self.validators: dict[str, jsonschema.Draft202012Validator] = {}
        self.checked: list[str] = []

    def check(self, name: str, body: Any) -> None:
        """Raise jsonschema.ValidationError unless `body` is a valid `name`."""
        if name not in self.validators:
            schema = {**copy.deepcopy(self.document), "$ref": f"#/$defs/{name}"}
            self.validators[name] = jsonschema.Draft202012Validator(schema)
        self.validators[name].validate(body)
        self.checked.append(name)


@pytest.fixture(params=[False, True], ids=["full", "lean"])
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[SandboxHandle]:
    """A fast sandbox, full or lean."""
    handle = await start_sandbox(speed=500.0, seed=3, lean=request.param)
    yield handle
    await handle.close()


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One raw request; (status, JSON body or None)."""
    async with session.request(method, url, json=body, headers=HEADERS) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def create_body(file_id: str, model: str) -> dict[str, Any]:
    """A create request as the SDK sends it."""
    return {
        "training_file": file_id,
        "validation_file": file_id,
        "model": model,
        "n_epochs": 1,
        "n_evals": 2,
        "n_checkpoints": 2,
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
        "suffix": "contract",
    }


async def finished(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Poll a job until it completes."""
    async with asyncio.timeout(10):
        while True:
            _, job = await call(session, "GET", url)
            if job["status"] == "completed":
                return dict(job)
            await asyncio.sleep(0.02)


async def fine_tune_operations(c: Contract, s: aiohttp.ClientSession, v1: str, file_id: str) -> str:
    """Files, limits, estimate, create, retrieve, list, events, metrics, checkpoints, cancel, delete; returns
    the output model of a completed job of OTHER_BASE."""
    c.check("FileResponse", (await call(s, "GET", f"{v1}/files/{file_id}"))[1])
    c.check("FileList", (await call(s, "GET", f"{v1}/files"))[1])
    c.check("ModelLimits", (await call(s, "GET", f"{v1}/fine-tunes/models/limits?model_name={OTHER_BASE}"))[1])
    c.check("SupportedModels", (await call(s, "GET", f"{v1}/fine-tunes/models/supported"))[1])
    c.check(
        "PriceEstimate", (await call(s, "POST", f"{v1}/fine-tunes/estimate-price", create_body(file_id, BASE_MODEL)))[1]
    )
    status, job = await call(s, "POST", f"{v1}/fine-tunes", create_body(file_id, OTHER_BASE))
    assert status == 200
    c.check("FinetuneResponse", job)
    done = await finished(s, f"{v1}/fine-tunes/{job['id']}")
    c.check("FinetuneResponse", done)
    assert done["events"] and done["model_output_name"]
    c.check("FinetuneList", (await call(s, "GET", f"{v1}/fine-tunes"))[1])
    _, events = await call(s, "GET", f"{v1}/fine-tunes/{job['id']}/events")
    c.check("FinetuneListEvents", events)
    for event in events["data"]:
        c.check("FineTuneEvent", event)
    _, metrics = await call(s, "GET", f"{v1}/fine-tunes/{job['id']}/metrics")
    c.check("Metrics", metrics)
    assert any("train/loss" in row for row in metrics["metrics"]) and any("eval/loss" in r for r in metrics["metrics"])
    _, checkpoints = await call(s, "GET", f"{v1}/fine-tunes/{job['id']}/checkpoints")
    c.check("Checkpoints", checkpoints)
    assert len(checkpoints["data"]) == 2
    _, other = await call(s, "POST", f"{v1}/fine-tunes", create_body(file_id, BASE_MODEL))
    c.check("FinetuneResponse", (await call(s, "POST", f"{v1}/fine-tunes/{other['id']}/cancel"))[1])
    c.check("DeleteFinetune", (await call(s, "DELETE", f"{v1}/fine-tunes/{other['id']}"))[1])
    status, missing = await call(s, "GET", f"{v1}/fine-tunes/{other['id']}")
    assert status == 404
    c.check("Error", missing)
    return str(done["model_output_name"])


async def endpoint_operations(c: Contract, s: aiohttp.ClientSession, v1: str, model: str) -> None:
    """Hardware, endpoint create/retrieve/list/stop/delete, chat on the endpoint's name and on the model."""
    _, hardware = await call(s, "GET", f"{v1}/hardware?model={model}")
    c.check("HardwareList", hardware)
    usable = [h for h in hardware["data"] if h["availability"]["status"] == "available"]
    cheapest = min(usable, key=lambda h: h["pricing"]["cents_per_minute"])
    body = {"model": model, "hardware": cheapest["id"], "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    status, endpoint = await call(s, "POST", f"{v1}/endpoints", {**body, "display_name": "contract-test"})
    assert status == 200
    c.check("Endpoint", endpoint)
    chat = {"model": endpoint["name"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    status, refused = await call(s, "POST", f"{v1}/chat/completions", chat)
    assert status == 400 and refused["error"]["code"] == "dedicated_endpoint_not_running"
    async with asyncio.timeout(10):
        while endpoint["state"] != "STARTED":
            await asyncio.sleep(0.02)
            endpoint = (await call(s, "GET", f"{v1}/endpoints/{endpoint['id']}"))[1]
    c.check("Endpoint", endpoint)
    status, answer = await call(s, "POST", f"{v1}/chat/completions", chat)
    assert status == 200
    c.check("ChatCompletionResponse", answer)
    status, not_serverless = await call(s, "POST", f"{v1}/chat/completions", {**chat, "model": model})
    assert status == 400
    c.check("Error", not_serverless)
    c.check("EndpointList", (await call(s, "GET", f"{v1}/endpoints?type=dedicated"))[1])
    c.check("Endpoint", (await call(s, "PATCH", f"{v1}/endpoints/{endpoint['id']}", {"state": "STOPPED"}))[1])
    assert (await call(s, "DELETE", f"{v1}/endpoints/{endpoint['id']}"))[0] == 204


async def test_every_answer_the_daemon_reads_keeps_to_the_contract(sandbox: SandboxHandle, tmp_path: Path) -> None:
    """Fine-tunes, files, metrics, checkpoints, hardware, endpoints, chat and errors validate against the schemas
    (closed to undeclared properties in lean mode); the sandbox counts one endpoint, none left running."""
    contract = Contract(lean=sandbox.sandbox.lean)
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY)
    try:
        uploaded = await sdk.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    finally:
        await sdk.close()
    v1 = f"{sandbox.base_url}/v1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        model = await fine_tune_operations(contract, session, v1, uploaded.id)
        await admin(sandbox.base_url, "POST", "/_sandbox/config", {"speed": 100.0})  # a start-up of 1.2 s
        await endpoint_operations(contract, session, v1, model)
    assert len(set(contract.checked)) == len(json.loads(SCHEMA_FILE.read_text())["$defs"])
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    assert counted["created"] == 1 and counted["running"] == 0 and counted["minutes_billed"] >= 2


async def test_lean_mode_drops_what_the_contract_does_not_declare(tmp_path: Path) -> None:
    """The lean limits answer has no lora_training.default_rank and the estimate no estimation_available."""
    handle = await start_sandbox(speed=500.0, lean=True)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{handle.base_url}/v1/fine-tunes/models/limits?model_name={BASE_MODEL}"
            _, limits = await call(session, "GET", url)
        assert "default_rank" not in limits["lora_training"] and "max_rank" in limits["lora_training"]
        await admin(handle.base_url, "POST", "/_sandbox/config", {"lean": False})
        async with aiohttp.ClientSession() as session:
            _, full = await call(session, "GET", url)
        assert full["lora_training"]["default_rank"] == 16
    finally:
        await handle.close()
