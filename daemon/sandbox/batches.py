"""Sandbox Batch API jobs: validated and answered when created (the same answers as real-time chat), then revealed
along the simulated clock like fine-tune jobs: status and progress follow from the time since creation."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.sandbox.completion import plan_chat
from daemon.sandbox.sim import Outcome, SandboxFile, checksum_of, iso

if TYPE_CHECKING:
    from daemon.sandbox.state import Sandbox

# Simulated seconds: VALIDATING for VALIDATE_S, then IN_PROGRESS for RUN_BASE_S + RUN_PER_REQUEST_S per request
# (ten requests: 30 s + 70 s, under two simulated minutes).
VALIDATE_S = 30.0
RUN_BASE_S = 60.0
RUN_PER_REQUEST_S = 1.0
COMPLETION_WINDOW_S = 24 * 3600.0  # best-effort 24 h window: a batch still running then EXPIRES
MAX_LINES = 50_000  # Together's per-batch limits
MAX_BYTES = 100 * 1_000_000
MAX_CUSTOM_ID_CHARS = 64
TERMINAL = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})
OWNER = "sandbox"


@dataclass
class SandboxBatch:
    """One batch job. `answers` are output-file lines (in input order), `rejected` the error-file lines found when
    validating; `failure` fails the whole file when VALIDATING ends."""

    id: str
    input_file_id: str
    file_size_bytes: int
    endpoint: str
    model_id: str | None
    created_at_s: float
    speed: float
    answers: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    outcome: Outcome | None = None
    cancel_at_s: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    files_made: bool = False

    @property
    def run_s(self) -> float:
        """Simulated seconds IN_PROGRESS."""
        return RUN_BASE_S + RUN_PER_REQUEST_S * len(self.answers)

    def elapsed_s(self, now_s: float) -> float:
        """Simulated seconds since creation."""
        return max(0.0, (now_s - self.created_at_s) * self.speed)

    def ending(self) -> tuple[float, str, str | None]:
        """(simulated offset, final status, error) of how this batch ends, the earliest cause first."""
        ends: list[tuple[float, str, str | None]] = [(VALIDATE_S + self.run_s, "COMPLETED", None)]
        if self.failure is not None:
            ends.append((VALIDATE_S, "FAILED", self.failure))
        if self.outcome is not None:
            at = VALIDATE_S + self.run_s * min(max(self.outcome.at, 0.0), 1.0)
            ends.append((at, self.outcome.status.upper(), self.outcome.message))
        if self.cancel_at_s is not None:
            ends.append(((self.cancel_at_s - self.created_at_s) * self.speed, "CANCELLED", None))
        ends.append((COMPLETION_WINDOW_S, "EXPIRED", "The batch did not finish within its 24h completion window"))
        return min(ends, key=lambda end: end[0])

    def status(self, now_s: float) -> str:
        """VALIDATING, IN_PROGRESS, or how it ended."""
        elapsed = self.elapsed_s(now_s)
        end_s, final, _ = self.ending()
        if elapsed >= end_s:
            return final
        return "VALIDATING" if elapsed < VALIDATE_S else "IN_PROGRESS"

    def progress(self, now_s: float) -> float:
        """Percent of the requests answered (0-100)."""
        end_s, final, _ = self.ending()
        if final == "COMPLETED" and self.elapsed_s(now_s) >= end_s:
            return 100.0
        elapsed = min(self.elapsed_s(now_s), end_s)
        return round(100.0 * min(max((elapsed - VALIDATE_S) / self.run_s, 0.0), 1.0), 2)

    def answered(self, now_s: float) -> int:
        """Requests answered so far (the lines of the output file once it ends; a FAILED batch keeps none)."""
        status = self.status(now_s)
        if status == "FAILED":
            return 0
        if status == "COMPLETED":
            return len(self.answers)
        return math.floor(self.progress(now_s) / 100.0 * len(self.answers))

    def cancel(self, now_s: float) -> None:
        """Cancel while VALIDATING or IN_PROGRESS; what was answered by then stays in the output file."""
        if self.cancel_at_s is None and self.status(now_s) not in TERMINAL:
            self.cancel_at_s = now_s

    def to_json(self, now_s: float) -> dict[str, Any]:
        """The BatchJob wire shape (openapi.yaml `BatchJob`, SDK `types/batch_job.py`)."""
        status = self.status(now_s)
        end_s, _, error = self.ending()
        done = status in TERMINAL
        return {
            "id": self.id,
            "user_id": OWNER,
            "input_file_id": self.input_file_id,
            "file_size_bytes": self.file_size_bytes,
            "status": status,
            "job_deadline": iso(self.created_at_s + COMPLETION_WINDOW_S / self.speed),
            "created_at": iso(self.created_at_s),
            "endpoint": self.endpoint,
            "progress": self.progress(now_s),
            "model_id": self.model_id,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "error": error if done else None,
            "completed_at": iso(self.created_at_s + end_s / self.speed) if done else None,
        }


def output_line(custom_id: str, reply: dict[str, Any]) -> dict[str, Any]:
    """One output-file line. Together documents only the error-file line; the output line is the OpenAI-compatible
    batch result that Together's clients read (`response.status_code` 200 and `response.body`, e.g. mozilla-ai/any-llm
    PR #1273's Together provider): {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}."""
    response = {"status_code": 200, "request_id": str(uuid.uuid4()), "body": reply}
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response, "error": None}


def error_line(custom_id: str | None, message: str, code: str) -> dict[str, Any]:
    """One error-file line, as docs.together.ai/docs/batch-inference ("Error File Format") shows it:
    {"custom_id": "req-1", "error": {"message": "Invalid model specified", "code": "invalid_model"}}."""
    return {"custom_id": custom_id, "error": {"message": message, "code": code}}


def validate_input(sb: Sandbox, batch: SandboxBatch, content: bytes) -> None:
    """Fail an oversized file; otherwise answer every valid line now and put every invalid one in `rejected`."""
    lines = [(n, raw) for n, raw in enumerate(content.splitlines(), start=1) if raw.strip()]
    if len(content) > MAX_BYTES or len(lines) > MAX_LINES:
        batch.failure = (
            f"The input file has {len(lines)} requests and {len(content)} bytes; a batch takes at most "
            f"{MAX_LINES} requests and {MAX_BYTES // 1_000_000} MB"
        )
        return
    seen: set[str] = set()
    for number, raw in lines:
        line = _check_line(number, raw, seen, batch.model_id)
        if line.body is None:
            batch.rejected.append(error_line(line.custom_id, line.reason, line.code))
            continue
        plan = plan_chat(sb, line.body)
        if plan.error is not None:
            batch.rejected.append(error_line(line.custom_id, plan.error.message, plan.error.code or "invalid_request"))
        elif plan.reply is not None:
            batch.answers.append(output_line(line.custom_id or "", plan.reply))


@dataclass
class _Line:
    """One input line: its request `body`, or why it is rejected."""

    custom_id: str | None
    body: dict[str, Any] | None = None
    reason: str = ""
    code: str = "invalid_request"


def _check_line(number: int, raw: bytes, seen: set[str], model_id: str | None) -> _Line:
    try:
        row = json.loads(raw)
    except ValueError:
        return _Line(None, reason=f"line {number}: not valid JSON", code="invalid_json")
    custom_id = row.get("custom_id") if isinstance(row, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        return _Line(None, reason=f"line {number}: custom_id is required")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS or custom_id in seen:
        return _Line(custom_id, reason=f"line {number}: custom_id must be unique and at most 64 characters")
    seen.add(custom_id)
    body = row.get("body")
    if not isinstance(body, dict):
        return _Line(custom_id, reason=f"line {number}: body must be an object holding the chat request")
    if model_id is not None and body.setdefault("model", model_id) != model_id:
        reason = f"line {number}: model {body['model']!r} is not the batch's model {model_id!r}"
        return _Line(custom_id, reason=reason, code="invalid_model")
    return _Line(custom_id, body)


def settle_files(sb: Sandbox, batch: SandboxBatch, now_s: float) -> None:
    """Once a batch has ended, write its output file (the answered requests) and error file (the rejected lines,
    and for an EXPIRED batch the requests it never reached), readable at `GET /v1/files/{id}/content`."""
    status = batch.status(now_s)
    if batch.files_made or status not in TERMINAL:
        return
    batch.files_made = True
    answered = batch.answered(now_s)
    errors = list(batch.rejected)
    if status == "EXPIRED":
        message = "The batch expired before this request was processed"
        errors += [error_line(a["custom_id"], message, "batch_expired") for a in batch.answers[answered:]]
    batch.output_file_id = _file(sb, batch, "output", batch.answers[:answered])
    batch.error_file_id = _file(sb, batch, "errors", errors)


def _file(sb: Sandbox, batch: SandboxBatch, kind: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = SandboxFile(
        id=sb.new_id("file"),
        filename=f"batch_{batch.id}_{kind}.jsonl",
        purpose="batch-api",
        file_type="jsonl",
        checksum=checksum_of(content),
        created_at=int(sb.clock()),
        signature="",
        content=content,
    )
    file.report = {"valid": True, "file_id": file.id, "nlines": len(lines), "error": None}
    sb.files[file.id] = file
    return file.id
