"""The typed boundary between the steps and a fine-tuning provider: a Protocol and its value types (no SDK here).

The upload/create/poll steps call `ctx.remote`, a `FineTuneAPI`; the Together adapter implements it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from daemon.spec import FinetuneSpec


class RemoteStatus(StrEnum):
    """A Together fine-tuning job's status (the SDK's list, which has `user_error` where the OpenAPI enum has not)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPRESSING = "compressing"
    UPLOADING = "uploading"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    ERROR = "error"
    USER_ERROR = "user_error"
    COMPLETED = "completed"


TERMINAL_STATUSES: frozenset[RemoteStatus] = frozenset(
    {RemoteStatus.COMPLETED, RemoteStatus.CANCELLED, RemoteStatus.ERROR, RemoteStatus.USER_ERROR}
)
FAILED_STATUSES: frozenset[RemoteStatus] = TERMINAL_STATUSES - {RemoteStatus.COMPLETED}


@dataclass(frozen=True)
class RemoteFile:
    """An uploaded file; `reused` when an existing upload of the same bytes was adopted instead."""

    id: str
    filename: str
    bytes: int
    reused: bool = False


@dataclass(frozen=True)
class PriceEstimate:
    """Together's estimate: dollars (float), token counts, and whether the account may proceed."""

    available: bool
    total_usd: float | None = None
    train_tokens: int | None = None
    eval_tokens: int | None = None
    allowed_to_proceed: bool | None = None
    user_limit_usd: float | None = None
    unavailable_reason: str | None = None


@dataclass(frozen=True)
class RemoteJob:
    """A fine-tuning job as the API reports it; `raw` is the JSON object (datetimes as ISO strings)."""

    id: str
    status: str
    model_output_name: str | None
    suffix: str | None
    raw: dict[str, Any]

    @property
    def known_status(self) -> RemoteStatus | None:
        """The status as a RemoteStatus, or None for a status this daemon does not know."""
        try:
            return RemoteStatus(self.status)
        except ValueError:
            return None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RemoteJob:
        """From the job's JSON object (full, truncated or cancel answer): only `id` and `status` are required."""
        return cls(str(raw["id"]), str(raw.get("status")), raw.get("model_output_name"), raw.get("suffix"), raw)


class EndpointState(StrEnum):
    """A dedicated endpoint's state (the contract's enum; the v2 surface's deployment states are mapped onto it)."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


# An endpoint in one of these no longer bills (or is about to stop): nothing left to stop, only to delete.
ENDPOINT_STOPPED_STATES: frozenset[EndpointState] = frozenset(
    {EndpointState.STOPPING, EndpointState.STOPPED, EndpointState.ERROR}
)


class Surface(StrEnum):
    """Which API an endpoint lives on: the SDK's project-scoped one, or the contract's `/v1/endpoints`."""

    V2 = "v2"  # /v2/projects/{project_id}/endpoints + deployments (SDK 3.1.1's typed methods)
    V1 = "v1"  # /v1/endpoints + /v1/hardware (the published OpenAPI contract)


@dataclass(frozen=True)
class RemoteEndpoint:
    """A dedicated endpoint: `id` manages it, `name` is the model name chat requests use while it is STARTED.
    `incomplete` when its set-up was interrupted (v2: an endpoint with no deployment routed yet): creating it again
    completes it. `created_s` is when it started billing and `observed_s` when this answer was made, both on the
    provider's clock (None if not given)."""

    id: str
    name: str
    state: str
    display_name: str
    model: str | None
    hardware: str | None
    raw: dict[str, Any]
    surface: Surface = Surface.V1
    deployment_id: str | None = None
    incomplete: bool = False
    created_s: float | None = None
    observed_s: float | None = None  # the provider's clock when it answered (its Date header), if given

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RemoteEndpoint:
        """From the contract's endpoint object (id, name, state, ...); `name` falls back to the id."""
        return cls(
            id=str(raw["id"]),
            name=str(raw.get("name") or raw["id"]),
            state=str(raw.get("state") or "PENDING").upper(),
            display_name=str(raw.get("display_name") or ""),
            model=raw.get("model"),
            hardware=raw.get("hardware"),
            raw=raw,
            created_s=epoch_s(raw.get("created_at")),
        )

    @property
    def reason(self) -> str:
        """Together's words for an ERROR (an `error`/`message`/`status_message` field), else the state."""
        error = self.raw.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "status_message"):
            if isinstance(self.raw.get(key), str) and self.raw[key]:
                return str(self.raw[key])
        return f"the endpoint is {self.state}"


def epoch_s(value: Any) -> float | None:
    """A provider timestamp (ISO-8601, `Z` or offset, or epoch seconds) as epoch seconds; None when absent/bad."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class Clock(StrEnum):
    """Where an endpoint's billed minutes were read from (best first)."""

    PROVIDER = "provider"  # its own start and stop timestamps
    PROVIDER_DATE = "provider-date"  # its start timestamp, and the `Date` header of the answer that stopped it
    DAEMON = "daemon"  # the daemon's wall clock: journaled creation to release


@dataclass(frozen=True)
class EndpointUsage:
    """When a deleted endpoint billed, as far as the provider's answers tell: `started_s` (its creation) and
    `ended_s` (when it stopped: its stop timestamp, else the `Date` of the answer that stopped it), epoch seconds
    on the provider's clock, and which of the two `ended_s` is."""

    started_s: float | None
    ended_s: float | None
    end_clock: Clock = Clock.PROVIDER

    def minutes(self, journaled_start_s: float, now_s: float) -> tuple[int, Clock]:
        """Started minutes billed (at least one): on the provider's clock when both ends are known, else from the
        daemon's journaled creation to `now_s` (the daemon's clock)."""
        if self.started_s is not None and self.ended_s is not None:
            start, end, clock = self.started_s, self.ended_s, self.end_clock
        else:
            start, end, clock = journaled_start_s, now_s, Clock.DAEMON
        return max(1, math.ceil((end - start) / 60 - 1e-9)), clock


@dataclass(frozen=True)
class HardwareOption:
    """One hardware configuration an endpoint can run on, with its price per minute and availability; `config`
    is the provider's config revision that runs on it (v2), if any."""

    id: str
    cents_per_minute: float
    availability: str  # available | unavailable | insufficient (the contract's enum); "unknown" when not given
    gpu_count: int | None = None
    config: str | None = None

    @property
    def usd_per_minute(self) -> float:
        """The price of one replica for one minute, in dollars."""
        return self.cents_per_minute / 100


@dataclass(frozen=True)
class EndpointRequest:
    """Everything a create-endpoint call sends; `display_name` (with the job's tag) also names a v2 endpoint."""

    model: str
    hardware: str
    replicas: int
    display_name: str
    inactive_timeout_min: int | None = None
    config: str | None = None


BATCH_TERMINAL = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})


@dataclass(frozen=True)
class RemoteBatch:
    """A Batch API job as Together reports it (status in upper case: VALIDATING, IN_PROGRESS, COMPLETED, ...)."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None
    progress: float | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RemoteBatch:
        """From the job object; only `id` and `status` are relied on, the rest is optional."""
        progress = raw.get("progress")
        return cls(
            id=str(raw.get("id") or ""),
            status=str(raw.get("status") or "").upper(),
            input_file_id=raw.get("input_file_id"),
            output_file_id=raw.get("output_file_id") or None,
            error_file_id=raw.get("error_file_id") or None,
            error=str(raw["error"]) if raw.get("error") else None,
            progress=float(progress) if isinstance(progress, int | float) else None,
        )

    @property
    def ended(self) -> bool:
        """True once the batch will not change any more."""
        return self.status in BATCH_TERMINAL


@dataclass(frozen=True)
class FineTuneRequest:
    """Every parameter of a create call; the W&B key is named by env var and resolved by the adapter."""

    training_file: str
    model: str
    validation_file: str = ""
    suffix: str | None = None
    n_epochs: int = 1
    learning_rate: float = 1e-5
    lora: bool = True
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    lora_trainable_modules: str = "all-linear"
    batch_size: int | Literal["max"] = "max"
    warmup_ratio: float = 0.0
    lr_scheduler_type: Literal["linear", "cosine"] = "cosine"
    min_lr_ratio: float = 0.0
    scheduler_num_cycles: float = 0.5
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    train_on_inputs: bool | Literal["auto"] = "auto"
    n_checkpoints: int = 1
    n_evals: int = 0
    max_seq_length: int | None = None
    packing: bool = True
    random_seed: int | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    wandb_api_key_env: str | None = None
    from_checkpoint: str | None = None  # a Together fine-tune (`ft-…[:step]`); `model` then names only its base

    @classmethod
    def from_spec(cls, spec: FinetuneSpec, *, training_file: str, validation_file: str, suffix: str) -> FineTuneRequest:
        """Carry every parameter of the spec's `finetune` section."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"training_file", "validation_file", "suffix"}
        values = {name: getattr(spec, name) for name in fields if hasattr(spec, name)}
        values["lr_scheduler_type"] = spec.lr_scheduler
        return cls(training_file=training_file, validation_file=validation_file, suffix=suffix, **values)

    def sdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `fine_tuning.create` / `create_finetune_request` (without the W&B key)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["wandb_api_key_env"]
        if self.from_checkpoint:
            kwargs["model"] = None  # the SDK takes a model or a checkpoint, not both (the limits stay the base's)
        return kwargs


class FineTuneAPI(Protocol):
    """What the upload/create/poll steps use (as `ctx.remote`); daemon.remote.together.TogetherAPI implements it.

    Every method raises only daemon.errors types: Paused, TransientError, RemoteRejected, DatasetError, BadInput.
    The endpoint methods act on `surface` (None: the one this run chose, `endpoint_surface()`), so that an endpoint
    is always managed on the API that created it.
    """

    async def upload(self, path: Path, *, sha256: str) -> RemoteFile: ...
    async def get_file(self, file_id: str) -> RemoteFile | None: ...
    async def find_file(self, filename: str, size_bytes: int, sha256: str) -> RemoteFile | None: ...
    async def estimate_price(self, request: FineTuneRequest) -> PriceEstimate: ...
    async def create(self, request: FineTuneRequest) -> RemoteJob: ...
    async def find_job(self, tag: str) -> RemoteJob | None: ...
    async def retrieve(self, job_id: str) -> RemoteJob: ...
    async def events(self, job_id: str) -> list[dict[str, Any]]: ...
    async def metrics(self, job_id: str) -> list[dict[str, float]] | None: ...
    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]: ...
    async def cancel(self, job_id: str) -> RemoteJob: ...
    async def serves_serverless(self, model: str) -> bool: ...
    async def model_prices(self) -> dict[str, tuple[float, float]]: ...
    async def endpoint_surface(self) -> Surface: ...
    async def hardware(self, model: str, *, surface: Surface | None = None) -> list[HardwareOption]: ...
    async def create_endpoint(self, request: EndpointRequest, *, surface: Surface | None = None) -> RemoteEndpoint: ...
    async def get_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> RemoteEndpoint | None: ...
    async def find_endpoints(self, tag: str, *, surface: Surface | None = None) -> list[RemoteEndpoint]: ...
    async def stop_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> None: ...
    async def delete_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> EndpointUsage | None: ...
    async def upload_batch_input(self, path: Path) -> str: ...
    async def create_batch(self, input_file_id: str) -> RemoteBatch: ...
    async def get_batch(self, batch_id: str) -> RemoteBatch: ...
    async def find_batch(self, input_file_id: str) -> RemoteBatch | None: ...
    async def file_bytes(self, file_id: str) -> bytes: ...
    async def probe(self) -> None: ...
    async def close(self) -> None: ...
