"""Notifications: one JSON POST to a webhook when a job completes, fails, is cancelled or is rejected.

`Webhook` is a JobListener: it posts to FINETUNED_WEBHOOK_URL and to the job's own `notify.webhook_url_env` (a
*_WEBHOOK_URL variable the spec names). A final publication is queued at once (the job never waits for the
network); its own task sends the queue in order, each POST retried with backoff through daemon/remote/backoff.py
and given up with a warning, never an error of the job. URLs and the token come from the environment (through the
settings), never from a spec, and are never logged. Format `json` (the fields of `payload`) or `slack`
(`{"text": summary}`, which Slack's incoming webhooks and most chat tools accept).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.config import Settings
from daemon.errors import FinetunedError, StartupError, TransientError
from daemon.remote.backoff import RetryPolicy, retry
from daemon.remote.classify import classify
from daemon.spec import JobSpec, parse_spec

if TYPE_CHECKING:
    import aiohttp

    from daemon.jobs.state import StateStore

log = structlog.get_logger()

FORMATS = ("json", "slack")
ENDINGS = ("completed", "failed", "cancelled", "rejected")
SUMMARY_FILE = "summary.json"  # written by the report (handlers/reporting/render.py)


def summary_line(document: dict[str, Any], summary: dict[str, Any] | None) -> str:
    """The report's one-line summary, or one made from the status document (status, step and error)."""
    if summary and isinstance(summary.get("summary"), str):
        return str(summary["summary"])
    line = f"{document.get('name') or document.get('job_id')}: {document.get('status')}"
    error = document.get("error")
    if isinstance(error, dict):
        line += f" in {error.get('step')}: {error.get('type')}: {str(error.get('message'))[:300]}"
    return line


def payload(outbox: Path, document: dict[str, Any], body_format: str) -> dict[str, Any]:
    """The POST body for one ended job (reads its summary.json: blocking)."""
    folder = outbox / str(document.get("job_id"))
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    report = folder / "report.html"
    line = summary_line(document, summary if isinstance(summary, dict) else None)
    where = str(report) if report.exists() else str(folder / "status.json")
    if body_format == "slack":
        return {"text": f"{line}\n{where}"}
    return {
        "event": f"job_{document.get('status')}",
        "job_id": document.get("job_id"),
        "name": document.get("name"),
        "status": document.get("status"),
        "summary": line,
        "report": where if report.exists() else None,
        "status_file": str(folder / "status.json"),
        "error": document.get("error"),
        "headline": (summary or {}).get("headline") if isinstance(summary, dict) else None,
    }


@dataclass(frozen=True)
class Target:
    """Where one notification goes (the URL is a secret: never logged)."""

    url: str = field(repr=False)
    format: str = "json"
    token: str | None = field(default=None, repr=False)


SpecReader = Callable[[str], Awaitable["JobSpec | None"]]


def store_specs(store: StateStore) -> SpecReader:
    """A job's spec from its state-store record (None when it cannot be read), for its own `notify` section."""

    async def read(job_id: str) -> JobSpec | None:
        record = await store.job(job_id)
        if record is None:
            return None
        path = Path(record.spec_file)
        try:
            return parse_spec(await asyncio.to_thread(path.read_bytes), path.name)
        except (OSError, FinetunedError):
            return None

    return read


class Webhook:
    """Posts job endings to the configured webhook and to a spec's own one, from its own task (a JobListener)."""

    def __init__(
        self, settings: Settings, *, specs: SpecReader | None = None, policy: RetryPolicy | None = None
    ) -> None:
        if settings.webhook_format not in FORMATS:
            raise StartupError(f"FINETUNED_WEBHOOK_FORMAT={settings.webhook_format!r}: use one of {', '.join(FORMATS)}")
        self._settings = settings
        self._specs = specs
        self._policy = policy or settings.retry_policy
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.given_up = 0

    async def job_published(self, document: dict[str, Any], *, final: bool) -> None:
        """Queue a job's ending (returns at once); other publications are ignored."""
        if not final or str(document.get("status")) not in ENDINGS:
            return
        self._queue.put_nowait(dict(document))
        if self._task is None:
            self._task = asyncio.create_task(self._send_all(), name="webhook")

    async def _send_all(self) -> None:
        while True:
            document = await self._queue.get()
            try:
                for target in await self._targets(document):
                    await self._send(target, document)
            finally:
                self._queue.task_done()

    async def _targets(self, document: dict[str, Any]) -> list[Target]:
        found = []
        if self._settings.webhook_url:
            found.append(
                Target(self._settings.webhook_url, self._settings.webhook_format, self._settings.webhook_token)
            )
        if self._specs is None or str(document.get("status")) == "rejected":
            return found
        spec = await self._specs(str(document.get("job_id")))
        if spec is not None and spec.notify is not None:
            url = self._settings.named_secrets.get(spec.notify.webhook_url_env)
            if url:
                found.append(Target(url, spec.notify.format))
            else:
                log.warning(
                    "webhook_variable_unset", job_id=document.get("job_id"), variable=spec.notify.webhook_url_env
                )
        return found

    async def _send(self, target: Target, document: dict[str, Any]) -> None:
        body = await asyncio.to_thread(payload, self._settings.outbox, document, target.format)
        try:
            status = await retry(lambda: self._post(target, body), policy=self._policy, what="webhook")
        except FinetunedError as exc:
            self.given_up += 1
            log.warning("webhook_failed", job_id=document.get("job_id"), error=self._scrub(str(exc)))
            return
        self.sent += 1
        log.info("webhook_sent", job_id=document.get("job_id"), status=document.get("status"), http_status=status)

    async def _client(self) -> aiohttp.ClientSession:
        """The HTTP session, made for the first notification: aiohttp (~0.1 s) is imported then, in a thread."""
        if self._session is None:
            client = await asyncio.to_thread(importlib.import_module, "aiohttp")
            self._session = client.ClientSession(timeout=client.ClientTimeout(total=self._settings.request_timeout_s))
        return self._session

    async def _post(self, target: Target, body: dict[str, Any]) -> int:
        session = await self._client()
        import aiohttp  # `_client` imported it (in a thread): this only names it

        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        try:
            async with session.post(target.url, json=body, headers=headers) as response:
                text = await response.text()
                if response.status >= 300:
                    raise classify("webhook", response.status, _body(text), response.headers)
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"webhook: {type(exc).__name__}") from None

    def _scrub(self, text: str) -> str:
        for secret in self._settings.secrets():
            text = text.replace(secret, "***")
        return text

    async def close(self, grace_s: float) -> None:
        """Let queued notifications go out for up to `grace_s`, then stop the task and the HTTP session."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=grace_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()


def _body(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text
