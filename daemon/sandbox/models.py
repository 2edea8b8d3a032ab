"""What a chat `model` name maps to (base model, serverless LoRA fine-tune, or an error) and the priced models list."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.sandbox.flavours import ChatError, together_error

if TYPE_CHECKING:
    from daemon.sandbox.endpoints import SandboxEndpoint
    from daemon.sandbox.sim import SandboxJob
    from daemon.sandbox.state import Sandbox

# Together serves LoRA adapters serverless only on a few base models (docs: "LoRA inference"); these are the
# sandbox's defaults, changed with the `serverless_lora` knob.
DEFAULT_SERVERLESS_LORA = (
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
    "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference",
)
DEFAULT_MODELS = (
    *DEFAULT_SERVERLESS_LORA,
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "Qwen/Qwen2.5-7B-Instruct-Turbo",
)
# Dollars per million tokens (input and output alike) by parameter count in billions: Together's size tiers for
# serverless chat models (up to 4B, 8B, 21B, 41B, 80B, 110B, larger). A name without a size ("...-8B-...",
# "8x7B") is priced as an 8B model. A serverless LoRA fine-tune costs what its base model costs.
PRICE_TIERS_USD_PER_MTOK = ((4.0, 0.10), (8.0, 0.20), (21.0, 0.30), (41.0, 0.80), (80.0, 0.90), (110.0, 1.80))
LARGEST_PRICE_USD_PER_MTOK = 3.50
UNSIZED_BILLIONS = 8.0
NOMINAL_CONTEXT_TOKENS = 131072  # listed when no `context_tokens` limit is set (none is enforced then)
_SIZE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)B(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class ServedModel:
    """A model name that chat can answer: `base` is the model behind it, `fine_tuned` for a sandbox fine-tune."""

    name: str
    base: str
    fine_tuned: bool


def resolve_served_model(sb: Sandbox, model: str) -> ServedModel | ChatError:
    """What `model` in a chat request maps to. The one place that decides: a sandbox fine-tune's output name is
    served once its job completed, and only if it is served serverless (see serves_serverless); any other name is
    a base model. A dedicated endpoint's `name` is served (as its model) only while the endpoint is STARTED."""
    endpoint = sb.live_endpoint(model)
    if endpoint is not None:
        return _on_endpoint(sb, endpoint)
    job = sb.completed_output(model)
    if job is None:
        return ServedModel(model, model, fine_tuned=False)
    if job.status(sb.clock()) != "completed":
        message = f"Unable to access model {model}: its fine-tuning job {job.id} has not completed"
        return together_error(404, message, type_="invalid_request_error", code="model_not_available", param="model")
    if not serves_serverless(sb, job):
        message = (
            f"Unable to access non-serverless model {model}. Please visit https://api.together.ai/models/{model} "
            "to create and start a new dedicated endpoint for the model."
        )
        return together_error(400, message, type_="invalid_request_error", code="model_not_available")
    return ServedModel(model, str(job.request.get("model")), fine_tuned=True)


def _on_endpoint(sb: Sandbox, endpoint: SandboxEndpoint) -> ServedModel | ChatError:
    now = sb.sim_now()
    if endpoint.state(now) != "STARTED":
        message = f"The dedicated endpoint for {endpoint.model} is not running (state {endpoint.state(now)})."
        return together_error(400, message, type_="invalid_request_error", code="dedicated_endpoint_not_running")
    endpoint.last_used_s = now
    job = sb.completed_output(endpoint.model)
    base = str(job.request.get("model")) if job is not None else endpoint.model
    return ServedModel(endpoint.name, base, fine_tuned=job is not None)


def serves_serverless(sb: Sandbox, job: SandboxJob) -> bool:
    """A LoRA fine-tune of a `serverless_lora` base model is served serverless; a full fine-tune never is."""
    training_type = job.request.get("training_type")
    kind = training_type.get("type", "Lora") if isinstance(training_type, dict) else "Lora"
    return str(kind).lower() != "full" and job.request.get("model") in sb.serverless_lora


def price_usd_per_mtok(model: str) -> float:
    """The per-million-token price of a model, from the size in its name."""
    sizes = [float(n or 1) * float(b) for n, b in _SIZE.findall(model.rsplit("/", 1)[-1])]
    billions = max(sizes) if sizes else UNSIZED_BILLIONS
    return next((price for top, price in PRICE_TIERS_USD_PER_MTOK if billions <= top), LARGEST_PRICE_USD_PER_MTOK)


def models_list(sb: Sandbox) -> list[dict[str, Any]]:
    """`GET /v1/models`: the base models (defaults, then every other `org/name` used) and the serverless fine-tunes."""
    bases = list(DEFAULT_MODELS)
    used = {str(j.request.get("model")) for j in sb.jobs.values()} | sb.seen_models
    bases += sorted(m for m in used if "/" in m and m not in bases)
    created = int(sb.started_at_s)
    listed = [_model_object(sb, name, name, created) for name in bases]
    for job in sorted(sb.jobs.values(), key=lambda j: j.created_at_s):
        if job.status(sb.clock()) == "completed" and serves_serverless(sb, job):
            base = str(job.request.get("model"))
            listed.append(_model_object(sb, job.output_name, base, int(job.created_at_s)))
    return listed


def _model_object(sb: Sandbox, name: str, base: str, created: int) -> dict[str, Any]:
    """One model in Together's `ModelInfo` shape (openapi.yaml `GET /models`)."""
    organization, _, short = name.rpartition("/")
    price = price_usd_per_mtok(base)
    return {
        "id": name,
        "object": "model",
        "created": created,
        "type": "chat",
        "display_name": short.replace("-", " "),
        "organization": organization or "sandbox",
        "link": "",
        "license": "",
        "context_length": sb.context_tokens or NOMINAL_CONTEXT_TOKENS,
        "pricing": {"hourly": 0, "input": price, "output": price, "base": 0, "finetune": 0},
    }
