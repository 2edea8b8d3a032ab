"""The priced models list and serverless LoRA serving, through the real `together` SDK on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import together

from daemon.sandbox import SandboxHandle
from daemon.sandbox.models import price_usd_per_mtok
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, STORY, write_chat_jsonl

MESSAGES = [
    {"role": "system", "content": f"Read the story and extract answers for the questions.\nStory: {STORY}"},
    {"role": "user", "content": "What was the dog's name?"},
]


class Pricing(together.BaseModel):
    """Together's `Pricing` (openapi.yaml): every field required."""

    hourly: float
    input: float
    output: float
    base: float
    finetune: float


class ModelInfo(together.BaseModel):
    """Together's `ModelInfo` (openapi.yaml `GET /models`), with the fields the daemon would read required."""

    id: str
    object: str
    created: int
    type: str
    display_name: str
    context_length: int
    pricing: Pricing


async def listed_models(sandbox: SandboxHandle) -> list[ModelInfo]:
    """`GET /v1/models` through an SDK client that validates responses strictly (a wrong shape fails the parse)."""
    async with together.AsyncTogether(
        base_url=sandbox.base_url, api_key=API_KEY, _strict_response_validation=True
    ) as strict:
        return await strict.get("/v1/models", cast_to=list[ModelInfo])


async def completed(sdk: together.AsyncTogether, job_id: str) -> None:
    """Wait (5 s cap) until the job completed."""
    deadline = time.monotonic() + 5
    while (await sdk.fine_tuning.retrieve(job_id)).status != "completed":
        assert time.monotonic() < deadline, f"job {job_id} never completed"
        await asyncio.sleep(0.05)


async def fine_tune(sdk: together.AsyncTogether, tmp_path: Path, model: str, *, lora: bool, tag: str) -> str:
    """A completed fine-tune of `model`; returns its output model name."""
    train = await sdk.files.upload(write_chat_jsonl(tmp_path / f"{tag}.jsonl", tag=tag), purpose="fine-tune")
    job = await sdk.fine_tuning.create(training_file=train.id, model=model, lora=lora, train_on_inputs="auto")
    await completed(sdk, job.id)
    return job.x_model_output_name or ""


async def test_models_list_parses_through_the_sdk_with_prices(
    sandbox: SandboxHandle, client: together.AsyncTogether
) -> None:
    """`GET /v1/models` is a JSON list of Together ModelInfo objects with $/Mtok prices by model size."""
    await client.chat.completions.create(model="acme/Tiny-3B-Chat", messages=MESSAGES)
    models = await listed_models(sandbox)
    by_id = {m.id: m for m in models}
    assert {BASE_MODEL, "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference", "acme/Tiny-3B-Chat"} <= set(by_id)
    assert all(m.object == "model" and m.type == "chat" and m.context_length > 0 for m in models)
    assert by_id[BASE_MODEL].pricing.input == by_id[BASE_MODEL].pricing.output == 0.20
    assert by_id["meta-llama/Meta-Llama-3.1-70B-Instruct-Reference"].pricing.input == 0.90
    assert by_id["acme/Tiny-3B-Chat"].pricing.input == 0.10
    assert by_id[BASE_MODEL].pricing.hourly == by_id[BASE_MODEL].pricing.finetune == 0


def test_price_tiers_follow_model_size() -> None:
    """Prices rise with parameter count (Together's size tiers); a name without a size is priced as 8B."""
    assert [price_usd_per_mtok(f"org/M-{b}B") for b in (1, 7, 13, 34, 72, 100, 405)] == [
        0.10,
        0.20,
        0.30,
        0.80,
        0.90,
        1.80,
        3.50,
    ]
    assert price_usd_per_mtok("mistralai/Mixtral-8x7B-Instruct-v0.1") == 0.90  # 8 x 7B counts as 56B
    assert price_usd_per_mtok("deepseek-ai/DeepSeek-V3") == 0.20


async def test_serverless_lora_fine_tune_is_listed_and_answers(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """A LoRA fine-tune of a serverless_lora base answers chat and appears in the list at its base model's price."""
    name = await fine_tune(client, tmp_path, BASE_MODEL, lora=True, tag="lora")
    reply = await client.chat.completions.create(model=name, messages=MESSAGES)
    assert reply.choices[0].message.content == "Max"
    listed = {m.id: m for m in await listed_models(sandbox)}
    assert listed[name].pricing.input == 0.20


@pytest.mark.parametrize(("model", "lora"), [(BASE_MODEL, False), ("org/Other-7B-Instruct", True)])
async def test_non_serverless_fine_tune_gets_togethers_exact_error(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path, model: str, lora: bool
) -> None:
    """A full fine-tune, or a LoRA of a base not served serverless, answers Together's 400 model_not_available."""
    name = await fine_tune(client, tmp_path, model, lora=lora, tag=f"x{lora}")
    with pytest.raises(together.BadRequestError) as caught:
        await client.chat.completions.create(model=name, messages=MESSAGES)
    body = caught.value.body
    assert isinstance(body, dict) and body["id"]
    assert body["error"] == {
        "message": (
            f"Unable to access non-serverless model {name}. Please visit https://api.together.ai/models/{name} "
            "to create and start a new dedicated endpoint for the model."
        ),
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_available",
    }
    assert name not in {m.id for m in await listed_models(sandbox)}


async def test_serverless_lora_knob_changes_what_is_served(
    sandbox: SandboxHandle, client: together.AsyncTogether, tmp_path: Path
) -> None:
    """A LoRA fine-tune of another base is refused until `serverless_lora` names that base, then it answers."""
    other = "org/Other-7B-Instruct"
    name = await fine_tune(client, tmp_path, other, lora=True, tag="knob")
    with pytest.raises(together.BadRequestError):
        await client.chat.completions.create(model=name, messages=MESSAGES)
    await client.post("/_sandbox/config", body={"serverless_lora": [other]}, cast_to=object)
    assert (await client.chat.completions.create(model=name, messages=MESSAGES)).choices[0].message.content == "Max"
    assert sandbox.sandbox.serverless_lora == (other,)
