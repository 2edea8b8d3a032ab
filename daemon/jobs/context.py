"""What a step handler is given: the job's spec, folders and the runner-owned capabilities it may use (no I/O here).

Also the names of the job's journal entries, which the steps write and the status document and report read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from daemon.config import Settings
from daemon.errors import BadInput
from daemon.remote.api import FineTuneAPI
from daemon.spec import JobSpec

# A step's output: a JSON-able mapping, saved by the runner as the step's checkpoint.
StepOutput = dict[str, Any]
# What a step receives: the outputs of the steps before it, by step name.
StepInputs = Mapping[str, StepOutput]


class JournalKey(enum.StrEnum):
    """The journal's entries: an intent is written before a remote side effect, its id right after."""

    UPLOAD_INTENT = "upload.intent"  # sha256 of train.jsonl, before uploading it
    FILE_ID = "file_id"
    VALIDATION_UPLOAD_INTENT = "upload.validation_intent"
    VALIDATION_FILE_ID = "validation_file_id"
    CREATE_INTENT = "create.intent"  # the tag in the fine-tune's suffix, before creating it
    FINE_TUNE_ID = "fine_tune_id"
    POLL_DEADLINE = "poll.deadline_at"  # epoch seconds after which polling gives up
    POLL_STOPPED = "poll.stopped"  # JSON {reason, step}: a stop_when rule fired; recorded before the cancel
    MODEL = "model"  # the fine-tuned model's name, once the fine-tune completed
    ENDPOINT_INTENT = "serve.intent"  # the tag in the endpoint's display_name, before creating it
    ENDPOINT_SURFACE = "serve.surface"  # the API (v2 | v1) it is created on, with the intent; none journaled: v1
    ENDPOINT_ID = "endpoint_id"
    ENDPOINT_DEPLOYMENT = "serve.deployment_id"  # v2: the deployment under it, with the id
    ENDPOINT_PRICE = "serve.usd_per_minute"  # all replicas, journaled with the id
    ENDPOINT_CREATED_AT = "serve.created_at"  # epoch seconds: billing starts then
    ENDPOINT_DEADLINE = "serve.deadline_at"  # epoch seconds after which waiting for STARTED gives up
    ENDPOINT_RELEASED = "serve.released"  # JSON {minutes, cost_usd, ...} once the endpoint is deleted


# The remote ids a person looks for, in this order (the intents and deadlines are the daemon's own notes).
REMOTE_ID_KEYS = (
    JournalKey.FILE_ID,
    JournalKey.VALIDATION_FILE_ID,
    JournalKey.FINE_TUNE_ID,
    JournalKey.MODEL,
    JournalKey.ENDPOINT_ID,
)


def remote_ids(journal: Mapping[str, str]) -> dict[str, str]:
    """The remote ids recorded in a job's journal."""
    return {str(key): journal[key] for key in REMOTE_ID_KEYS if journal.get(key)}


class Journal(Protocol):
    """Durable key/value notes of one job, for remote side effects: intent before the call, the id right after.

    `record` returns only once the value is on disk, so a crash after it cannot lose it.
    """

    def get(self, key: str) -> str | None:
        """The recorded value (keys are `JournalKey`s, or a variant's prefixed ones), or None."""
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
    remote: FineTuneAPI | None = None  # the fine-tuning provider, when Together (or the sandbox) is configured

    def fine_tuning(self) -> FineTuneAPI:
        """The fine-tuning provider; a step that needs one fails clearly when none is configured."""
        if self.remote is None:
            raise BadInput("this step needs Together: set TOGETHER_API_KEY, or run with --sandbox to use the simulator")
        return self.remote

    def variant(
        self,
        name: str,
        spec: JobSpec,
        *,
        shared_groups: frozenset[str] = frozenset(),
        out_dir: Path | None = None,
        board: dict[str, dict[str, Any]] | None = None,
    ) -> JobContext:
        """The context of one variant of a sweep: its own folders, journal and items under this job's, same remote.

        Its job id is `<job id>.<name>` (so its fine-tune's tag differs from its siblings'); item groups named in
        `shared_groups` (the base model's answers) are the sweep's, read and written by every variant alike; with a
        `board`, its progress is published as every variant's latest fields together.
        """
        prefix = f"{name}/"

        async def progress(**fields: Any) -> None:
            if board is None:
                await self.progress(variant=name, **fields)
                return
            board[name] = fields  # the sweep's progress shows every variant's latest, not only the last one's
            await self.progress(variants=dict(board))

        return replace(
            self,
            job_id=f"{self.job_id}.{name}",
            spec=spec,
            out_dir=out_dir or self.out_dir / "variants" / name,
            work_dir=self.work_dir / "variants" / name,
            journal=PrefixedJournal(self.journal, prefix),
            items=PrefixedItems(self.items, prefix, shared_groups),
            progress=progress,
        )


@dataclass(frozen=True)
class PrefixedJournal:
    """A variant's journal: the sweep's journal with every key under `prefix`."""

    parent: Journal
    prefix: str

    def get(self, key: str) -> str | None:
        """The recorded value, or None."""
        return self.parent.get(self.prefix + key)

    async def record(self, key: str, value: str) -> None:
        """Durably record under the prefixed key."""
        await self.parent.record(self.prefix + key, value)


@dataclass(frozen=True)
class PrefixedItems:
    """A variant's item store: its own groups under `prefix`, the shared ones as they are."""

    parent: ItemStore
    prefix: str
    shared: frozenset[str]

    def _group(self, group: str) -> str:
        return group if group in self.shared else self.prefix + group

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        """Every saved item of the group."""
        return await self.parent.load(self._group(group))

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Durably save one item."""
        await self.parent.save(self._group(group), item_id, record)
