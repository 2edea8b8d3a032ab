"""The Together adapter between the upload/create/poll steps and the API: the only module that imports `together`.

The SDK (pinned 3.1.1) runs with its own retries off (`max_retries=0`), so daemon.remote.backoff is the only retry
layer; its errors become daemon.errors types (Paused / TransientError / RemoteRejected), never carrying the API key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog
import together
from together.lib import FileTypeError, check_file
from together.lib.resources.files import FileAlreadyExistsError
from together.lib.resources.fine_tuning import create_finetune_request
from together.types.finetune_model_limits import FinetuneModelLimits

from daemon import metrics
from daemon.config import Settings
from daemon.errors import BadInput, DatasetError, FinetunedError, Paused, RemoteRejected, TransientError
from daemon.logs import Redactor
from daemon.remote.api import (
    EndpointRequest,
    EndpointUsage,
    FineTuneRequest,
    HardwareOption,
    PriceEstimate,
    RemoteBatch,
    RemoteEndpoint,
    RemoteFile,
    RemoteJob,
    Surface,
)
from daemon.remote.batchwire import BatchWire
from daemon.remote.classify import classify
from daemon.remote.contract import checkpoint_rows, complete_limits, metric_rows, price_estimate
from daemon.remote.endpoints import EndpointWire, is_not_serverless
from daemon.remote.surfaces import Surfaces

T = TypeVar("T")
log = structlog.get_logger()

UPLOAD_MIN_BYTES_PER_S = 256 * 1024  # an upload may take request_timeout_s + size / this
CONTENT_CHUNK_BYTES = 1024 * 1024


def translate(exc: Exception, what: str) -> FinetunedError:
    """The daemon error for an SDK error raised by the call `what` (status, remote message, Retry-After)."""
    if isinstance(exc, together.APITimeoutError):
        return TransientError(f"{what}: the request timed out")
    if isinstance(exc, together.APIConnectionError):
        return TransientError(f"{what}: cannot reach the Together API ({type(exc.__cause__ or exc).__name__})")
    if isinstance(exc, FileTypeError):
        return DatasetError(f"{what}: the file was refused before upload: {str(exc)[:500]}")
    if isinstance(exc, together.APIStatusError):
        return classify(what, exc.status_code, exc.body, exc.response.headers)
    return RemoteRejected(f"{what}: {type(exc).__name__}: {str(exc)[:500]}")


class TogetherAPI:
    """FineTuneAPI over the `together` SDK.

    `secrets` maps env-var names to values (the CLI passes the environment) so that a spec's `wandb_api_key_env`
    can be resolved here, at the call, without the key ever passing through a step's output or the journal.
    `redactor` is the daemon's one list of secrets (the logs use it too): errors leave this class redacted.
    """

    def __init__(
        self, settings: Settings, *, secrets: Mapping[str, str] | None = None, redactor: Redactor | None = None
    ) -> None:
        if not settings.together_api_key:
            raise Paused("TOGETHER_API_KEY is not set")
        options: dict[str, Any] = {
            "api_key": settings.together_api_key,
            "max_retries": 0,
            "timeout": httpx.Timeout(settings.request_timeout_s, connect=min(10.0, settings.request_timeout_s)),
        }
        if settings.together_base_url:
            options["base_url"] = settings.together_base_url
        self._timeout_s = settings.request_timeout_s
        self._client = together.AsyncTogether(**options)
        # Upload runs whole in a thread: the SDK's upload hashes and reads the file synchronously.
        self._sync = together.Together(**options)
        self._secrets = dict(secrets) if secrets is not None else dict(settings.named_secrets)
        self._redactor = redactor if redactor is not None else Redactor(settings.secrets())
        self._limits: dict[str, FinetuneModelLimits] = {}
        self._endpoints = EndpointWire(self._client, self._call)
        self._surfaces = Surfaces(self._client, self._call, self._endpoints, settings.together_project_id)
        self._batches = BatchWire(self._client, self._call)
        self._uploaded: dict[str, RemoteFile] = {}

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
        """One SDK call under a deadline; every failure comes out as a daemon error."""
        try:
            async with asyncio.timeout(timeout_s or self._timeout_s):
                result = await call()
        except TimeoutError as exc:
            metrics.remote_call(what, exc)
            raise TransientError(f"{what}: no answer within {timeout_s or self._timeout_s:g} s") from exc
        except (together.TogetherError, FileTypeError) as exc:
            error = self._redact(translate(exc, what))
            metrics.remote_call(what, error)
            raise error from None
        metrics.remote_call(what)
        return result

    def _redact(self, error: FinetunedError) -> FinetunedError:
        error.args = tuple(self._redactor.scrub(list(error.args)))
        return error

    # -- files ------------------------------------------------------------------------------------------------
    async def upload(self, path: Path, *, sha256: str) -> RemoteFile:
        """Upload `path` unless the same bytes (sha256) were uploaded already; adopt the file on a 409."""
        cached = self._uploaded.get(sha256)
        if cached is not None and await self.get_file(cached.id) is not None:
            return dataclasses.replace(cached, reused=True)
        report = await asyncio.to_thread(check_file, path, "fine-tune")
        if not report.get("is_check_passed"):
            raise DatasetError(f"{path.name} fails Together's file check: {report.get('message')}")
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        deadline_s = self._timeout_s + size / UPLOAD_MIN_BYTES_PER_S

        async def put() -> RemoteFile:
            try:
                sent = await asyncio.to_thread(
                    self._sync.files.upload, path, purpose="fine-tune", check=False, raise_if_already_exists=True
                )
            except FileAlreadyExistsError as exc:
                log.info("upload_adopted_existing_file", file_id=exc.file_id, sha256=sha256)
                existing = await self._client.files.retrieve(exc.file_id)
                return RemoteFile(existing.id, existing.filename, existing.bytes, reused=True)
            return RemoteFile(sent.id, sent.filename, sent.bytes)

        uploaded = await self._call("upload", put, timeout_s=deadline_s)
        self._uploaded[sha256] = dataclasses.replace(uploaded, reused=False)
        return uploaded

    async def upload_batch_input(self, path: Path) -> str:
        """Upload a Batch API input file (purpose `batch-api`); returns its id."""
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        sent = await self._call(
            "upload batch input",
            lambda: asyncio.to_thread(self._sync.files.upload, path, purpose="batch-api", check=False),
            timeout_s=self._timeout_s + size / UPLOAD_MIN_BYTES_PER_S,
        )
        return str(sent.id)

    async def create_batch(self, input_file_id: str) -> RemoteBatch:
        """Submit the uploaded chat requests as one batch."""
        return await self._batches.create(input_file_id)

    async def get_batch(self, batch_id: str) -> RemoteBatch:
        """The batch as Together reports it now."""
        return await self._batches.get(batch_id)

    async def find_batch(self, input_file_id: str) -> RemoteBatch | None:
        """The batch made from this input file, if any."""
        return await self._batches.find(input_file_id)

    async def file_bytes(self, file_id: str) -> bytes:
        """A file's whole content (a batch's output or error file)."""

        async def read() -> bytes:
            response = await self._client.files.content(file_id)
            return b"".join([chunk async for chunk in response.iter_bytes(CONTENT_CHUNK_BYTES)])

        return await self._call("file content", read)

    async def get_file(self, file_id: str) -> RemoteFile | None:
        """The file's metadata, or None if Together does not have it (404)."""
        try:
            found = await self._call("get file", lambda: self._client.files.retrieve(file_id))
        except RemoteRejected as exc:
            if exc.http_status == 404:
                return None
            raise
        return RemoteFile(found.id, found.filename, found.bytes)

    async def find_file(self, filename: str, size_bytes: int, sha256: str) -> RemoteFile | None:
        """An uploaded file with these bytes: listed by name and size, confirmed by hashing its content."""
        listed = await self._call("list files", self._client.files.list)
        for candidate in listed.data:
            if candidate.filename != filename or candidate.bytes != size_bytes:
                continue
            if await self._call("file content", functools.partial(self._content_sha256, candidate.id)) == sha256:
                self._uploaded[sha256] = RemoteFile(candidate.id, candidate.filename, candidate.bytes)
                return RemoteFile(candidate.id, candidate.filename, candidate.bytes, reused=True)
        return None

    async def _content_sha256(self, file_id: str) -> str:
        digest = hashlib.sha256()
        response = await self._client.files.content(file_id)
        async for chunk in response.iter_bytes(CONTENT_CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()

    # -- fine-tunes -------------------------------------------------------------------------------------------
    async def _model_limits(self, request: FineTuneRequest) -> FinetuneModelLimits:
        """The model's limits (cached per model), completed where the contract promises less than the SDK reads."""
        model = request.model
        if model not in self._limits:
            self._limits[model] = await self._call(
                "model limits", lambda: self._client.fine_tuning.model_limits(model_name=model)
            )
        raw = complete_limits(self._limits[model].to_dict(mode="json"), max_seq_length=request.max_seq_length)
        return FinetuneModelLimits.construct(**raw)

    async def estimate_price(self, request: FineTuneRequest) -> PriceEstimate:
        """Limits (cached per model) then estimate-price, with the exact training type/method create will send."""
        limits = await self._model_limits(request)
        try:
            _, training_type, training_method = create_finetune_request(model_limits=limits, **request.sdk_kwargs())
        except ValueError as exc:
            raise RemoteRejected(f"the fine-tune parameters do not fit {request.model}'s limits: {exc}") from exc
        estimate = await self._call(
            "estimate price",
            lambda: self._client.fine_tuning.estimate_price(
                training_file=request.training_file,
                validation_file=request.validation_file or together.omit,
                model=request.model,
                n_epochs=request.n_epochs,
                n_evals=request.n_evals,
                training_type=training_type,
                training_method=training_method,
            ),
        )
        return price_estimate(estimate.to_dict())

    async def create(self, request: FineTuneRequest) -> RemoteJob:
        """Create the job (the SDK re-estimates, then POSTs once; nothing here retries it)."""
        limits = await self._model_limits(request)
        kwargs = request.sdk_kwargs()
        kwargs["wandb_api_key"] = self._wandb_key(request.wandb_api_key_env)
        try:
            job = await self._call(
                "create fine-tune", lambda: self._client.fine_tuning.create(model_limits=limits, **kwargs)
            )
        except ValueError as exc:
            raise RemoteRejected(f"the fine-tune parameters do not fit {request.model}'s limits: {exc}") from exc
        return _job(job)

    def _wandb_key(self, env_name: str | None) -> str | None:
        if env_name is None:
            return None
        value = self._secrets.get(env_name)
        if not value:
            raise BadInput(f"finetune.wandb_api_key_env names {env_name}, which is not set in the daemon's environment")
        self._redactor.add(value)
        return value

    async def find_job(self, tag: str) -> RemoteJob | None:
        """The newest job whose suffix ends with `tag` (or whose output name contains it), if any."""
        listed = await self._call("list fine-tunes", self._client.fine_tuning.list)
        jobs = [_job(job) for job in listed.data]
        matches = [j for j in jobs if (j.suffix or "").endswith(tag) or tag in (j.model_output_name or "")]
        return max(matches, key=lambda j: str(j.raw.get("created_at") or ""), default=None)

    async def retrieve(self, job_id: str) -> RemoteJob:
        """The job's current state."""
        return _job(await self._call("retrieve fine-tune", lambda: self._client.fine_tuning.retrieve(job_id)))

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every event of the job so far, oldest first, as JSON objects."""
        listed = await self._call("list events", lambda: self._client.fine_tuning.list_events(job_id))
        return [event.to_dict(mode="json", warnings=False) for event in listed.data]

    async def metrics(self, job_id: str) -> list[dict[str, float]] | None:
        """The job's recorded training metrics, oldest first; None when Together does not offer them (404/405)."""
        try:
            answer = await self._call("list metrics", lambda: self._client.fine_tuning.list_metrics(job_id))
        except RemoteRejected as exc:
            if exc.http_status in (404, 405, 501):
                return None
            raise
        return metric_rows(answer.to_dict(mode="json", warnings=False))

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's saved checkpoints (step, path, created_at, checkpoint_type); [] when none are listed."""
        answer = await self._call("list checkpoints", lambda: self._client.fine_tuning.list_checkpoints(job_id))
        return checkpoint_rows(answer.to_dict(mode="json", warnings=False))

    async def cancel(self, job_id: str) -> RemoteJob:
        """Ask Together to cancel the job."""
        return _job(await self._call("cancel fine-tune", lambda: self._client.fine_tuning.cancel(job_id)))

    # -- serving ----------------------------------------------------------------------------------------------
    async def model_prices(self) -> dict[str, tuple[float, float]]:
        """Model id -> (input, output) USD per million tokens, from the models list."""
        return await self._endpoints.prices()

    async def serves_serverless(self, model: str) -> bool:
        """Whether Together serves `model` serverless: listed by `GET /v1/models`, or answering a one-token chat
        request (a "non-serverless" / dedicated-endpoint refusal means it is not)."""
        if model in await self._endpoints.model_ids():
            return True
        messages: list[Any] = [{"role": "user", "content": "ping"}]
        try:
            await self._call(
                "probe model",
                lambda: self._client.chat.completions.create(model=model, messages=messages, max_tokens=1),
            )
        except RemoteRejected as exc:
            if is_not_serverless(exc):
                return False
            raise
        return True

    async def endpoint_surface(self) -> Surface:
        """The endpoint API this run uses (chosen once: v2 unless the server lacks it)."""
        return await self._surfaces.chosen()

    async def hardware(self, model: str, *, surface: Surface | None = None) -> list[HardwareOption]:
        """The hardware configurations compatible with `model`, priced."""
        return await (await self._surfaces.wire(surface)).hardware(model)

    async def create_endpoint(self, request: EndpointRequest, *, surface: Surface | None = None) -> RemoteEndpoint:
        """Create and start a dedicated endpoint (v2: completes a half-made one of the same name)."""
        return await (await self._surfaces.wire(surface)).create(request)

    async def get_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> RemoteEndpoint | None:
        """The endpoint, or None once it is gone."""
        return await (await self._surfaces.wire(surface)).get(endpoint_id)

    async def find_endpoints(self, tag: str, *, surface: Surface | None = None) -> list[RemoteEndpoint]:
        """The dedicated endpoints whose (display) name contains `tag`."""
        return await (await self._surfaces.wire(surface)).find(tag)

    async def stop_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> None:
        """Stop it (billing ends)."""
        await (await self._surfaces.wire(surface)).stop(endpoint_id)

    async def delete_endpoint(self, endpoint_id: str, *, surface: Surface | None = None) -> EndpointUsage | None:
        """Stop and delete it; when it billed (None when it was already gone)."""
        return await (await self._surfaces.wire(surface)).delete(endpoint_id)

    async def probe(self) -> None:
        """A cheap authenticated call; raises Paused while the key or the account is still refused."""
        await self._call("probe", self._client.files.list)

    async def close(self) -> None:
        """Close both HTTP clients."""
        await self._client.close()
        await asyncio.to_thread(self._sync.close)


def _job(job: Any) -> RemoteJob:
    """From any of the SDK's job models (full, truncated, cancel response)."""
    return RemoteJob.from_json(
        job.to_dict(mode="json", warnings=False)
    )  # the API may send types the SDK did not expect
