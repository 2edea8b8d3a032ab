"""What the runner tells: status documents for readers, status.json after every change, listeners, the end line.

The runner's base: it holds the live jobs and the state store; only the runner (its subclass) changes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.config import Settings
from daemon.jobs.context import remote_ids
from daemon.jobs.state import JobStatus, StateStore
from daemon.jobs.status import JobListener, status_document
from daemon.remote.gate import RemoteGate
from daemon.spool import outbox

log = structlog.get_logger()

PROGRESS_WRITE_INTERVAL_S = 1.0


@dataclass
class LiveJob:
    """What the runner knows about a job in memory: its task, its current step's progress, a cancel request."""

    task: asyncio.Task[None]
    progress: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    last_write: float = 0.0


class Publisher:
    """Answers readers and publishes job status; the runner sets the attributes below."""

    settings: Settings
    _store: StateStore
    _gate: RemoteGate
    _live: dict[str, LiveJob]
    _listeners: tuple[JobListener, ...]
    _on_change: Callable[[], None]

    # -- what readers (the service, the status server) may know -----------------------------------------------
    @property
    def busy(self) -> bool:
        """True while any job task is alive."""
        return bool(self._live)

    @property
    def active_jobs(self) -> int:
        """Jobs with a running task."""
        return len(self._live)

    async def document(self, job_id: str) -> dict[str, Any] | None:
        """One job's status document (as in its status.json), or None for an unknown job."""
        record = await self._store.job(job_id)
        if record is None:
            return None
        return status_document(record, self._progress_of(job_id), self._gate.reason)

    async def documents(self) -> list[dict[str, Any]]:
        """Every job's status document, oldest first."""
        found = [await self.document(job_id) for job_id in await self._store.job_ids()]
        return [d for d in found if d is not None]

    async def counts(self) -> Counter[str]:
        """How many jobs are in each status."""
        return Counter(str(d["status"]) for d in await self.documents())

    async def known(self, job_id: str) -> bool:
        """True if a job (or a rejected input) with this id exists."""
        return await self._store.job(job_id) is not None

    # -- status -----------------------------------------------------------------------------------------------
    async def _progress(self, job_id: str, fields: dict[str, Any]) -> None:
        live = self._live.get(job_id)
        if live is None:
            return
        live.progress = dict(fields)
        now = time.monotonic()
        if now - live.last_write >= PROGRESS_WRITE_INTERVAL_S:
            live.last_write = now
            await self.publish(job_id)

    def _progress_of(self, job_id: str) -> dict[str, Any]:
        live = self._live.get(job_id)
        return live.progress if live is not None else {}

    async def publish(self, job_id: str) -> None:
        """Rewrite the job's status.json from the state store (atomically)."""
        document = await self.document(job_id)
        if document is None:
            return
        await asyncio.to_thread(outbox.write_status, self.settings.outbox, job_id, document)
        self._on_change()
        await self._tell(document, final=False)

    async def _tell(self, document: dict[str, Any], *, final: bool) -> None:
        for listener in self._listeners:
            await listener.job_published(document, final=final)

    async def _finish(
        self, job_id: str, status: JobStatus, error: dict[str, Any] | None, duration_s: float | None = None
    ) -> None:
        await self._store.set_status(job_id, status, error=error)
        self._progress_of(job_id).clear()
        await self.publish(job_id)
        final = await self.document(job_id)
        if final is not None:
            await self._tell(final, final=True)
        record = await self._store.job(job_id)
        log.info(
            "job_finished",
            job_id=job_id,
            status=str(status),
            duration_s=round(duration_s, 3) if duration_s is not None else None,
            steps={
                n: round(s.finished_at - s.started_at, 3)
                for n, s in (record.steps.items() if record else ())
                if s.finished_at is not None and s.started_at is not None
            },
            remote=remote_ids(record.journal) if record else {},
            error_type=error["type"] if error else None,
        )

    async def _current_step(self, job_id: str) -> str | None:
        record = await self._store.job(job_id)
        return record.step if record else None
