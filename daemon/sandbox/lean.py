"""The `lean` knob: answer only the fields Together's published contract declares (openapi.yaml, v2.0.0), and on the
SDK's project-scoped surface (`/v2/...`) only the fields SDK 3.1.1's types require.

With it on, every successful JSON answer of a route listed here is pruned to its shape, so a client that works
against a lean sandbox needs nothing the contract (or the SDK's types) does not promise. A shape maps a key to None
(keep the value whole), to a nested shape (an object), or to a one-element list holding the shape of its items.
Routes not listed (the SDK-only upload calls, chat, models, batches, errors) are answered as they are.
"""

from __future__ import annotations

from typing import Any

Shape = dict[str, Any]


def _keep(*names: str) -> Shape:
    return dict.fromkeys(names)


FINETUNE_EVENT: Shape = _keep(
    "object",
    "created_at",
    "message",
    "type",
    "param_count",
    "token_count",
    "total_steps",
    "wandb_url",
    "step",
    "checkpoint_path",
    "model_path",
    "training_offset",
    "hash",
    "level",
)
FINETUNE: Shape = {
    **_keep(
        "id",
        "status",
        "model_output_name",
        "model_output_path",
        "training_file",
        "validation_file",
        "model",
        "n_epochs",
        "n_checkpoints",
        "n_evals",
        "batch_size",
        "learning_rate",
        "lr_scheduler",
        "warmup_ratio",
        "max_grad_norm",
        "weight_decay",
        "eval_steps",
        "train_on_inputs",
        "training_method",
        "training_type",
        "token_count",
        "param_count",
        "total_price",
        "epochs_completed",
        "queue_depth",
        "wandb_project_name",
        "wandb_url",
        "from_checkpoint",
        "from_hf_model",
        "hf_model_revision",
        "created_at",
        "updated_at",
        "started_at",
    ),
    "events": [FINETUNE_EVENT],
    "progress": _keep("estimate_available", "seconds_remaining"),
}
LIMITS: Shape = {
    **_keep(
        "model_name",
        "max_num_epochs",
        "max_num_evals",
        "max_learning_rate",
        "min_learning_rate",
        "supports_vision",
        "supports_tools",
        "supports_reasoning",
        "merge_output_lora",
    ),
    "lora_training": _keep("max_batch_size", "max_batch_size_dpo", "min_batch_size", "max_rank", "target_modules"),
    "full_training": _keep("max_batch_size", "max_batch_size_dpo", "min_batch_size"),
}
ESTIMATE: Shape = _keep(
    "estimated_total_price",
    "allowed_to_proceed",
    "user_limit",
    "estimated_train_token_count",
    "estimated_eval_token_count",
)
FILE: Shape = _keep("id", "object", "created_at", "filename", "bytes", "purpose", "FileType", "Processed", "LineCount")
CHECKPOINT: Shape = _keep("step", "path", "created_at", "checkpoint_type")
ENDPOINT: Shape = _keep(
    "object", "id", "name", "display_name", "model", "hardware", "type", "owner", "state", "autoscaling", "created_at"
)
HARDWARE: Shape = {
    **_keep("object", "id", "updated_at"),
    "pricing": _keep("cents_per_minute"),
    "specs": _keep("gpu_type", "gpu_link", "gpu_memory", "gpu_count"),
    "availability": _keep("status"),
}
# SDK 3.1.1's types, required fields only (types/endpoint.py, endpoint_deployment.py, deployment_status.py,
# endpoints/inference_instance_type.py, models/config.py, model.py, whoami_project_api_key.py)
SUMMARY_V2: Shape = {
    **_keep("id", "createdAt", "estimatedEffectiveTrafficShare", "model", "modelId", "name", "state", "trafficMode"),
    "autoscaling": {},
}
ENDPOINT_V2: Shape = {
    **_keep("id", "createdAt", "endpointType", "etag", "name", "projectId", "updatedAt", "visibility"),
    "trafficSplit": [_keep("deploymentId", "weight")],
    "deployments": [SUMMARY_V2],
}
DEPLOYMENT_V2: Shape = {
    **_keep(
        "id",
        "config",
        "configId",
        "createdAt",
        "endpointId",
        "etag",
        "hardware",
        "model",
        "modelId",
        "modelRevisionId",
        "name",
        "projectId",
        "trafficMode",
        "updatedAt",
    ),
    "autoscaling": {},
    "status": _keep("message", "state"),
}
INSTANCE_TYPE: Shape = {
    **_keep("id", "description", "gpuCount", "gpuMemoryGib", "gpuType", "name", "priceCentsPerHour"),
    "regions": [_keep("name")],
}
CONFIG_V2: Shape = {
    **_keep("id", "certifications", "projectId", "referenceModel", "referenceModelId"),
    "selectors": [_keep("key", "value")],
}
MODEL_V2: Shape = {**_keep("id", "name", "organizationId", "projectId", "visibility"), "weights": {}}
WHOAMI: Shape = {
    **_keep("type"),
    "api_key": _keep("id"),
    "organization": _keep("id", "name"),
    "project": _keep("id", "name", "slug"),
}
V2 = "/v2/projects/{project}"
SHAPES_V2: dict[str, Shape] = {
    "GET /v1/whoami": WHOAMI,
    "GET /v3/whoami": WHOAMI,
    "GET /v2/public/inference-instance-types": {"data": [INSTANCE_TYPE], **_keep("object")},
    f"GET {V2}/models": {"data": [MODEL_V2]},
    f"GET {V2}/configs": {"data": [CONFIG_V2]},
    f"POST {V2}/endpoints": ENDPOINT_V2,
    f"GET {V2}/endpoints": {"data": [ENDPOINT_V2]},
    f"GET {V2}/endpoints/{{id}}": ENDPOINT_V2,
    f"PATCH {V2}/endpoints/{{id}}": ENDPOINT_V2,
    f"POST {V2}/endpoints/{{endpoint}}/deployments": DEPLOYMENT_V2,
    f"GET {V2}/endpoints/{{endpoint}}/deployments": {"data": [DEPLOYMENT_V2]},
    f"GET {V2}/endpoints/{{endpoint}}/deployments/{{id}}": DEPLOYMENT_V2,
    f"PATCH {V2}/endpoints/{{endpoint}}/deployments/{{id}}": DEPLOYMENT_V2,
}

SHAPES: dict[str, Shape] = {
    **SHAPES_V2,
    "GET /v1/fine-tunes/models/limits": LIMITS,
    "POST /v1/fine-tunes/estimate-price": ESTIMATE,
    "POST /v1/fine-tunes": FINETUNE,
    "GET /v1/fine-tunes": {"data": [FINETUNE]},
    "GET /v1/fine-tunes/{id}": FINETUNE,
    "POST /v1/fine-tunes/{id}/cancel": FINETUNE,
    "GET /v1/fine-tunes/{id}/events": {"data": [FINETUNE_EVENT]},
    "GET /v1/fine-tunes/{id}/checkpoints": {"data": [CHECKPOINT]},
    "GET /v1/fine-tunes/{id}/metrics": _keep("metrics"),
    "DELETE /v1/fine-tunes/{id}": _keep("message"),
    "GET /v1/fine-tunes/models/supported": _keep("models"),
    "GET /v1/files/{id}": FILE,
    "GET /v1/files": {"data": [FILE]},
    "POST /v1/files/{id}/preprocess": FILE,
    "POST /v1/endpoints": ENDPOINT,
    "GET /v1/endpoints": {**_keep("object"), "data": [ENDPOINT]},
    "GET /v1/endpoints/{id}": ENDPOINT,
    "PATCH /v1/endpoints/{id}": ENDPOINT,
    "GET /v1/hardware": {**_keep("object"), "data": [HARDWARE]},
}


def prune(value: Any, shape: Any) -> Any:
    """`value` with every key its shape does not declare removed (recursively)."""
    if shape is None:
        return value
    if isinstance(shape, list):
        return [prune(item, shape[0]) for item in value] if isinstance(value, list) else value
    if not isinstance(value, dict):
        return value
    return {key: prune(item, shape[key]) for key, item in value.items() if key in shape}


def lean_answer(route: str, body: Any) -> Any | None:
    """The pruned body for `route` (`METHOD /pattern`), or None when the route has no contract shape here."""
    shape = SHAPES.get(route)
    return None if shape is None else prune(body, shape)
