"""What a step handler is given: the job's spec, folders and the runner-owned capabilities it may use (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.config import Settings
from daemon.spec import JobSpec

# A step's output: a JSON-able mapping, saved by the runner as the step's checkpoint.
StepOutput = dict[str, Any]
# What a step receives: the outputs of the steps before it, by step name.
StepInputs = Mapping[str, StepOutput]


class Journal(Protocol):
    """Durable key/value notes of one job, for remote side effects: intent before the call, the id right after.

    Keys in use: `upload.intent`, `file_id`, `upload.validation_intent`, `validation_file_id`, `create.intent`,
    `fine_tune_id`, `poll.deadline_at`, `model`.
    `record` returns only once the value is on disk, so a crash after it cannot lose it.
    """

    def get(self, key: str) -> str | None:
        """The recorded value, or None."""
        ...

    async def record(self, key: str, value: str) -> None:
        """Durably record `value` under `key` (overwrites)."""
        ...


class ItemStore(Protocol):
    """Durable per-item results (evaluation answers), so a restart only redoes what is missing."""

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        """Every saved item of `group` (e.g. a model alias), by item id."""
        ...

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Durably save one item; returns once it is committed."""
        ...


class Progress(Protocol):
    """Publishes a step's progress into status.json and the log (e.g. {"done": 10, "total": 50})."""

    async def __call__(self, **progress: Any) -> None:
        """Replace the current step's progress with these fields."""
        ...


@dataclass(frozen=True)
class JobContext:
    """Everything one step of one job may use. Handlers write artifacts into `out_dir` (atomically) and nothing else."""

    job_id: str
    spec: JobSpec
    settings: Settings
    out_dir: Path  # outbox/<job_id>/: the user-visible artifacts (train.jsonl, metrics.json, ...)
    work_dir: Path  # state/jobs/<job_id>/: scratch space that is not published
    journal: Journal
    items: ItemStore
    progress: Progress
    remote: Any = None  # daemon.remote.FineTuneAPI when the job talks to Together; typed there
