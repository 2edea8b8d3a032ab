"""Sandbox objects of the SDK's project-scoped surface (`/v2/projects/{id}/...`): who the caller is, endpoints as
named entry points with a traffic split, deployments (billed units, endpoints.py), instance types, configs, models.

Field names and required fields follow SDK 3.1.1's types (Endpoint, EndpointDeployment, InferenceInstanceType,
Config, Model, WhoamiProjectAPIKey); every timestamp is on the simulated clock, with microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.sandbox.endpoints import Hardware, SandboxEndpoint, iso_us

PROJECT_ID = "proj_sandbox"
PROJECT_SLUG = "sandbox"  # = sim.OWNER, so the fine-tunes' output names `sandbox/...` are this project's models
ORG_ID = "org_sandbox"
PUBLIC_PROJECT = "proj_together"  # owns the public base models and configs
STATES = {
    "PENDING": "DEPLOYMENT_STATE_PROVISIONING",
    "STARTING": "DEPLOYMENT_STATE_PROVISIONING",
    "STARTED": "DEPLOYMENT_STATE_READY",
    "STOPPING": "DEPLOYMENT_STATE_STOPPING",
    "STOPPED": "DEPLOYMENT_STATE_STOPPED",
    "ERROR": "DEPLOYMENT_STATE_FAILED",
}
REGION = "us-central-8"
_FILTER = re.compile(r'^\s*name\s*(:|=)\s*"?([^"]*)"?\s*$')


def whoami() -> dict[str, Any]:
    """The caller: a project API key (`WhoamiProjectAPIKey`)."""
    return {
        "type": "project_api_key",
        "api_key": {"id": "key_sandbox"},
        "organization": {"id": ORG_ID, "name": "Sandbox"},
        "project": {"id": PROJECT_ID, "name": "Sandbox", "slug": PROJECT_SLUG},
    }


@dataclass
class Entrypoint:
    """A v2 endpoint: a stable name chat requests use, routing by `traffic` [(deployment id, weight)]."""

    id: str
    name: str  # `<project slug>/<bare name>`
    created_at_s: float
    updated_at_s: float
    visibility: str = "VISIBILITY_PRIVATE"
    traffic: list[tuple[str, float]] = field(default_factory=list)
    version: int = 1
    deleted: bool = False

    @property
    def etag(self) -> str:
        """The opaque version tag."""
        return f"v{self.version}"

    def touch(self, now_s: float) -> None:
        """A change: new version, new `updatedAt`."""
        self.version += 1
        self.updated_at_s = now_s

    def to_json(self, deployments: list[SandboxEndpoint], now_s: float) -> dict[str, Any]:
        """The SDK's `Endpoint`, with summaries of its (not deleted) deployments."""
        weights = dict(self.traffic)
        total = sum(
            w for d, w in weights.items() if any(x.id == d and x.state(now_s) == "STARTED" for x in deployments)
        )
        return {
            "id": self.id,
            "name": self.name,
            "projectId": PROJECT_ID,
            "endpointType": "ENDPOINT_TYPE_DEDICATED",
            "visibility": self.visibility,
            "etag": self.etag,
            "createdAt": iso_us(self.created_at_s),
            "updatedAt": iso_us(self.updated_at_s),
            "trafficSplit": [{"deploymentId": d, "weight": w} for d, w in self.traffic],
            "deployments": [summary(d, now_s, weights.get(d.id, 0.0) / total if total else 0.0) for d in deployments],
        }


def _replicas(unit: SandboxEndpoint, now_s: float) -> int:
    return unit.min_replicas if unit.state(now_s) == "STARTED" else 0


def summary(unit: SandboxEndpoint, now_s: float, share: float) -> dict[str, Any]:
    """The SDK's `EndpointDeploymentSummary`."""
    return {
        "id": unit.id,
        "name": unit.name,
        "model": unit.extra.get("model_path", unit.model),
        "modelId": unit.extra.get("model_id", ""),
        "state": STATES[unit.state(now_s)],
        "trafficMode": "TRAFFIC_MODE_LIVE",
        "createdAt": iso_us(unit.created_at_s),
        "autoscaling": {"minReplicas": unit.min_replicas, "maxReplicas": unit.max_replicas},
        "estimatedEffectiveTrafficShare": share,
        "hardware": unit.hardware.id,
        "desiredReplicas": unit.min_replicas,
        "readyReplicas": _replicas(unit, now_s),
    }


def deployment(unit: SandboxEndpoint, now_s: float) -> dict[str, Any]:
    """The SDK's `EndpointDeployment`: its status, and `updatedAt` = the last change (a stop, a failure, ready)."""
    state = unit.state(now_s)
    message = unit.error_message if state == "ERROR" else f"The deployment is {state.lower()}"
    ready = _replicas(unit, now_s)
    return {
        "id": unit.id,
        "name": unit.name,
        "endpointId": unit.parent or "",
        "projectId": PROJECT_ID,
        "model": unit.extra.get("model_path", unit.model),
        "modelId": unit.extra.get("model_id", ""),
        "modelRevisionId": "",
        "config": unit.config,
        "configId": unit.config.rsplit("/", 1)[-1],
        "hardware": unit.hardware.id,
        "etag": f"v{int(unit.updated_at_s(now_s) * 1e6)}",
        "trafficMode": "TRAFFIC_MODE_LIVE",
        "createdAt": iso_us(unit.created_at_s),
        "updatedAt": iso_us(unit.updated_at_s(now_s)),
        "autoscaling": {"minReplicas": unit.min_replicas, "maxReplicas": unit.max_replicas},
        "status": {
            "state": STATES[state],
            "message": message,
            "readyReplicas": ready,
            "scheduledReplicas": unit.min_replicas if unit.billing(now_s) else 0,
            "details": {"region": [{"region": REGION, "readyReplicas": ready, "scheduledReplicas": ready}]},
        },
        "desiredReplicas": unit.min_replicas,
        "inactiveTimeout": unit.inactive_timeout_min or 0,
    }


def instance_name(hw: Hardware) -> str:
    """The deployable name the configs' selectors build: `<count>x<accelerator type>` (`1xnvidia-h100-80gb`)."""
    return f"{hw.gpu_count}x{accelerator(hw)}"


def accelerator(hw: Hardware) -> str:
    """The accelerator type of a config selector (`nvidia-h100-80gb`)."""
    return f"nvidia-{hw.gpu_type}-{hw.gpu_memory_gb}gb"


def instance_type(hw: Hardware) -> dict[str, Any]:
    """The SDK's `InferenceInstanceType`: price per hour, and headroom per region (none when not available)."""
    headroom = {"available": 4, "insufficient": 0}.get(hw.availability)
    regions = [] if headroom is None else [{"name": REGION, "headroom": {"relation": "RELATION_EQ", "value": headroom}}]
    return {
        "id": hw.id,
        "name": instance_name(hw),
        "description": f"{hw.gpu_count}x {hw.gpu_type.upper()} {hw.gpu_memory_gb}GB",
        "gpuCount": hw.gpu_count,
        "gpuMemoryGib": hw.gpu_memory_gb,
        "gpuType": hw.gpu_type.upper(),
        "priceCentsPerHour": round(hw.cents_per_minute * 60),
        "regions": regions,
    }


def config_path(hw: Hardware) -> str:
    """The config revision serving on this hardware (one per catalogue entry, public)."""
    return f"projects/{PUBLIC_PROJECT}/configs/cr_{hw.id}"


def config(hw: Hardware, reference_model: str) -> dict[str, Any]:
    """The SDK's `Config` for this hardware and model; its selectors name the instance type."""
    return {
        "id": f"cr_{hw.id}",
        "projectId": PUBLIC_PROJECT,
        "referenceModel": reference_model,
        "referenceModelId": reference_model.rsplit("/", 1)[-1],
        "certifications": [],
        "selectors": [
            {"key": "accelerator_type", "value": accelerator(hw)},
            {"key": "accelerator_count", "value": str(hw.gpu_count)},
        ],
    }


def model_id(name: str) -> str:
    """A stable `ml_...` id for a model name."""
    return "ml_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def public_model(base: str) -> str:
    """The resource name of a public base model."""
    return f"projects/{PUBLIC_PROJECT}/models/{model_id(base)}"


def project_model(name: str, base: str) -> dict[str, Any]:
    """The SDK's `Model` for a fine-tune's output (a model of this project, based on a public base)."""
    return {
        "id": model_id(name),
        "name": name,
        "organizationId": ORG_ID,
        "projectId": PROJECT_ID,
        "visibility": "VISIBILITY_PRIVATE",
        "weights": {"type": "WEIGHTS_TYPE_DEFAULT"},
        "baseModel": public_model(base),
        "baseModelId": model_id(base),
    }


def name_filter(expression: str) -> Callable[[str], bool] | None:
    """The `filter` of a list: `name:"part"` (substring) or `name="x"` (exact; `*` a wildcard), matched against
    the bare or the qualified name; None for anything else (answered 400)."""
    found = _FILTER.match(expression)
    if found is None:
        return None
    op, value = found.groups()
    if op == ":":
        return lambda name: value in name
    pattern = re.compile("^" + ".*".join(re.escape(p) for p in value.split("*")) + "$")
    return lambda name: bool(pattern.match(name) or pattern.match(name.rsplit("/", 1)[-1]))
