"""Sandbox state: uploaded files and fine-tune jobs in memory; a job's status and events follow from its clock.

Nothing runs in the background: a job's status, events and loss curve are a pure function of the time elapsed
since it was created, multiplied by `speed` (the simulated seconds per real second), and of what was scripted.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daemon.sandbox.timeline import PENDING_S, QUEUED_S, SETUP_S, STEP_S, TERMINAL, cut, happy_path

BYTES_PER_TOKEN = 4  # the documented token-count formula: tokens = ceil(file bytes / 4)
PRICE_PER_MTOK_USD = {"Lora": 0.48, "Full": 0.54}  # Together's list price for models up to 16B parameters
NANODOLLARS_PER_USD = 1_000_000_000
MIN_STEPS_PER_EPOCH = 10
MAX_TOTAL_STEPS = 2000
OWNER = "sandbox"
MAX_BATCH_SIZE = 128  # lora_training.max_batch_size below


def iso(ts_s: float) -> str:
    """An ISO-8601 UTC timestamp with milliseconds, the way Together writes job times."""
    return datetime.fromtimestamp(ts_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_limits(model_name: str) -> dict[str, Any]:
    """The complete limits object the SDK validates a create request against (any `org/name` model)."""
    return {
        "model_name": model_name,
        "max_num_epochs": 20,
        "max_num_evals": 100,
        "max_learning_rate": 1,
        "min_learning_rate": 1e-8,
        "max_num_checkpoints": 20,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 256,
        "default_gradient_accumulation_steps": 1,
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": True,
        "supports_vision": False,
        "lora_training": {
            "default_rank": 16,
            "max_batch_size": MAX_BATCH_SIZE,
            "max_batch_size_dpo": 64,
            "max_rank": 64,
            "min_batch_size": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        "full_training": {"max_batch_size": 96, "max_batch_size_dpo": 48, "min_batch_size": 8},
    }


def token_count(n_bytes: int) -> int:
    """Tokens of a file by the sandbox's formula: one token per 4 bytes, rounded up."""
    return math.ceil(n_bytes / BYTES_PER_TOKEN)


def price_usd(train_tokens: int, eval_tokens: int, training_type: str) -> float:
    """Dollars for a job: (train tokens x epochs + eval tokens x evals) / 1M x the per-million price."""
    rate = PRICE_PER_MTOK_USD.get(training_type, PRICE_PER_MTOK_USD["Lora"])
    return round((train_tokens + eval_tokens) / 1_000_000 * rate, 6)


@dataclass
class SandboxFile:
    """One uploaded file; `content` stays None until the presigned PUT arrives."""

    id: str
    filename: str
    purpose: str
    file_type: str
    checksum: str
    created_at: int
    signature: str
    content: bytes | None = None
    report: dict[str, Any] | None = None

    @property
    def lines(self) -> int:
        """Non-blank lines of the content."""
        return sum(1 for line in (self.content or b"").splitlines() if line.strip())

    def to_json(self) -> dict[str, Any]:
        """The FileResponse wire shape."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content or b""),
            "created_at": self.created_at,
            "filename": self.filename,
            "FileType": self.file_type,
            "purpose": self.purpose,
            "Processed": self.report is not None,
            "LineCount": self.lines,
            "processing_status": self.processing_status,
        }
        if self.report is not None:
            body["validation_report"] = self.report
        return body

    @property
    def processing_status(self) -> str:
        """COMPLETED once validated and valid, INVALID_FORMAT when validation failed, PENDING before."""
        if self.report is None:
            return "PENDING"
        return "COMPLETED" if self.report["valid"] else "INVALID_FORMAT"

    def validate(self) -> dict[str, Any]:
        """Server-side validation: every non-blank line a JSON object with a non-empty `messages` list (a
        `batch-api` file only needs JSON objects: its lines are checked when a batch validates it)."""
        error = None
        for number, line in enumerate((self.content or b"").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                error = f"line {number}: not valid JSON"
                break
            if not isinstance(row, dict):
                error = f"line {number}: expected a JSON object"
                break
            if self.purpose != "batch-api" and (not isinstance(row.get("messages"), list) or not row["messages"]):
                error = f"line {number}: expected an object with a non-empty 'messages' list"
                break
        if error is None and self.lines == 0:
            error = "the file has no samples"
        self.report = {
            "valid": error is None,
            "file_id": self.id,
            "nlines": self.lines,
            "dataset_format": "CONVERSATION" if error is None and self.purpose != "batch-api" else None,
            "dataset_has_message_weights": False,
            "dataset_has_tools": False,
            "error": error,
            "error_type": None if error is None else "INVALID_FORMAT",
        }
        return self.report


@dataclass
class Outcome:
    """A scripted end for a job: `status` (error, user_error, cancelled) at fraction `at` of its training."""

    status: str
    message: str
    at: float = 0.5
    level: str = "error"  # the failure event's level: any of the contract's spellings (e.g. legacy_ierror)
    restarted: bool = False  # a `job_restarted` notice follows the failure event (as Together sends)


@dataclass
class SandboxJob:
    """One fine-tune job; everything observable is computed from `created_at_s`, `speed` and the script."""

    id: str
    request: dict[str, Any]
    created_at_s: float
    speed: float
    output_name: str
    total_steps: int
    steps_per_epoch: int
    train_tokens: int
    price_usd: float
    seed: int
    outcome: Outcome | None = None
    cancel_at_s: float | None = None
    eval_trend: str = "falling"  # "rising": the validation loss climbs from its second evaluation (overfitting)
    _script: tuple[list[tuple[float, str]], list[tuple[float, dict[str, Any]]]] | None = field(default=None, repr=False)

    # -- the script: status transitions and events at simulated offsets --------------------------------------
    @property
    def run_start_s(self) -> float:
        """Simulated offset at which the job starts running."""
        return PENDING_S + QUEUED_S

    def step_offset_s(self, step: int) -> float:
        """Simulated offset at which training step `step` (1-based) finishes."""
        return self.run_start_s + SETUP_S + step * STEP_S

    def loss_at(self, step: int) -> float:
        """A plausible falling training loss with a little deterministic noise."""
        noise = random.Random(f"{self.seed}:{self.id}:{step}").uniform(-0.03, 0.03)
        return round(0.35 + 1.55 * math.exp(-4.0 * step / self.total_steps) + noise, 4)

    def script(self) -> tuple[list[tuple[float, str]], list[tuple[float, dict[str, Any]]]]:
        """Transitions and events of the full run, cut short by a scripted outcome or a cancel."""
        if self._script is None:
            transitions, events = happy_path(self)
            cut_s = self._cut_offset_s()
            if cut_s is not None:
                transitions, events = cut(self, transitions, events, cut_s)
            self._script = (transitions, events)
        return self._script

    def _cut_offset_s(self) -> float | None:
        offsets = []
        if self.outcome is not None:
            training_s = self.step_offset_s(self.total_steps) - self.run_start_s
            offsets.append(self.run_start_s + training_s * min(max(self.outcome.at, 0.0), 1.0))
        if self.cancel_at_s is not None:
            offsets.append((self.cancel_at_s - self.created_at_s) * self.speed)
        return min(offsets) if offsets else None

    def set_outcome(self, outcome: Outcome) -> None:
        """Script how this (already created) job ends; its status and events are re-planned."""
        self.outcome = outcome
        self._script = None

    def cancel(self, now_s: float) -> None:
        """Record a cancel request (ignored once the job has ended)."""
        if self.cancel_at_s is None and self.status(now_s) not in TERMINAL:
            self.cancel_at_s = now_s
            self._script = None

    # -- what a client sees ------------------------------------------------------------------------------
    def elapsed_s(self, now_s: float) -> float:
        """Simulated seconds since creation."""
        return max(0.0, (now_s - self.created_at_s) * self.speed)

    def status(self, now_s: float) -> str:
        """The status at `now_s`."""
        elapsed = self.elapsed_s(now_s)
        current = "pending"
        for offset, status in self.script()[0]:
            if offset <= elapsed:
                current = status
        return current

    def events(self, now_s: float) -> list[dict[str, Any]]:
        """Events emitted so far, oldest first."""
        elapsed = self.elapsed_s(now_s)
        out = []
        for offset, event in self.script()[1]:
            if offset <= elapsed:
                created = iso(self.created_at_s + offset / self.speed)
                out.append({"object": "fine-tune-event", "created_at": created, **event})
        return out

    def steps_completed(self, now_s: float) -> int:
        """Training steps done at `now_s`."""
        elapsed = self.elapsed_s(now_s) - self.run_start_s - SETUP_S
        done = max(0, min(self.total_steps, int(elapsed // STEP_S)))
        if self.status(now_s) in TERMINAL - {"completed"}:
            cut = self._cut_offset_s() or 0.0
            done = min(done, max(0, int((cut - self.run_start_s - SETUP_S) // STEP_S)))
        return done

    def to_json(self, now_s: float, *, full: bool) -> dict[str, Any]:
        """The job object; `full` adds the events (retrieve), the truncated form is used by list/create/cancel."""
        status = self.status(now_s)
        steps = self.steps_completed(now_s)
        req = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "user_id": OWNER,
            "created_at": iso(self.created_at_s),
            "updated_at": iso(now_s),
            "model": req.get("model"),
            "model_output_name": self.output_name,
            "model_output_path": f"s3://sandbox-models/{self.id}",
            "suffix": req.get("suffix"),
            "training_file": req.get("training_file"),
            "validation_file": req.get("validation_file", ""),
            "token_count": self.train_tokens,
            "total_price": round(self.price_usd * NANODOLLARS_PER_USD),
            "epochs_completed": steps // self.steps_per_epoch,
            "steps_completed": steps,
            "total_steps": self.total_steps,
            "queue_depth": 0,
            "progress": {"estimate_available": status == "running", "seconds_remaining": self._remaining_s(now_s)},
        }
        for key in _ECHOED_KEYS:
            if key in req:
                body[key] = req[key]
        if body.get("batch_size") == "max":
            body["batch_size"] = MAX_BATCH_SIZE  # the API reports the batch size it resolved "max" to
        if full:
            body["events"] = self.events(now_s)
        return body

    def _remaining_s(self, now_s: float) -> int:
        end = self.script()[0][-1][0]
        return max(0, int((end - self.elapsed_s(now_s)) / self.speed))


_ECHOED_KEYS = (
    "n_epochs",
    "n_checkpoints",
    "n_evals",
    "batch_size",
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "max_grad_norm",
    "weight_decay",
    "training_type",
    "training_method",
    "packing",
    "max_seq_length",
    "random_seed",
    "wandb_project_name",
    "wandb_name",
    "from_checkpoint",
)


def plan_steps(lines: int, n_epochs: int, batch_size: Any, max_batch_size: int) -> tuple[int, int]:
    """(steps per epoch, total steps): ceil(lines / batch), at least 10 per epoch, at most 2000 in total."""
    batch = batch_size if isinstance(batch_size, int) and batch_size > 0 else max_batch_size
    per_epoch = max(MIN_STEPS_PER_EPOCH, math.ceil(lines / batch))
    total = min(MAX_TOTAL_STEPS, per_epoch * max(1, n_epochs))
    return per_epoch, total


def output_name(model: str, suffix: str | None, job_id: str) -> str:
    """`sandbox/<base model>-<suffix>-<8 hex of the job id>`, like Together's `<org>/<model>-<suffix>-<hash>`."""
    short = model.rsplit("/", 1)[-1]
    tail = job_id.removeprefix("ft-")[:8]
    return f"{OWNER}/{short}-{suffix}-{tail}" if suffix else f"{OWNER}/{short}-{tail}"


def checksum_of(data: bytes) -> str:
    """sha256 hex, the checksum the SDK declares when it asks for an upload URL."""
    return hashlib.sha256(data).hexdigest()
