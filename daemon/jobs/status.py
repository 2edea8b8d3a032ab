"""The status document of one job, as written to `outbox/<job_id>/status.json` and served by the status endpoint."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Protocol

from daemon.jobs.context import remote_ids
from daemon.jobs.state import JobRecord, JobStatus


def iso(epoch_s: float | None) -> str | None:
    """UTC ISO-8601 with seconds, or None."""
    if epoch_s is None:
        return None
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_document(record: JobRecord, progress: dict[str, Any], pause_reason: str | None) -> dict[str, Any]:
    """Everything a person or a program wants to know about a job, from its state-store record."""
    steps: dict[str, Any] = {}
    for name, step in record.steps.items():
        finished = step.finished_at if step.output is not None else None
        steps[name] = {
            "status": str(step.status),
            "attempts": step.attempts,
            "started_at": iso(step.started_at),
            "finished_at": iso(finished),
            "duration_s": round(finished - step.started_at, 3) if finished and step.started_at else None,
        }
    document: dict[str, Any] = {
        "job_id": record.job_id,
        "name": record.name,
        "status": str(record.status),
        "step": record.step,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "steps": steps,
        "remote": remote_ids(record.journal),
    }
    if progress:
        document["progress"] = progress
    if released := record.journal.get("serve.released"):
        document["endpoint"] = json.loads(released)  # the dedicated endpoint's minutes and cost, once deleted
    if record.status is JobStatus.paused and pause_reason:
        document["paused"] = pause_reason
    if record.error:
        document["error"] = record.error
        if "problems" in record.error:
            document["problems"] = record.error["problems"]
    if record.duplicates:
        document["duplicates"] = record.duplicates
    return document


class JobListener(Protocol):
    """Told every time a job's status document is published (`final` once, when the job has ended or the input
    was rejected); e.g. the outbox index or a notifier. A listener handles its own errors: it must not raise."""

    async def job_published(self, document: dict[str, Any], *, final: bool) -> None:
        """React to a job's new status document."""
        ...


def error_info(exc: BaseException, step: str | None) -> dict[str, Any]:
    """The `error` block of a failed job's status: type, message, step, and the HTTP/remote status if any."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "step": step}
    for attr in ("http_status", "remote_status", "problems"):
        value = getattr(exc, attr, None)
        if value is not None:
            info[attr] = value
    return info
