"""Step 2, `validate`: check the prepared JSONL line by line before anything is uploaded; the report names each line.

A file `prepare` checked as it wrote it (CoQA: see `Example`) and unchanged since is trusted without reading it.
Otherwise a valid conversation file is proven so column-wise first (`handlers/dataset/columnar.py`, Arrow on both
cores); whatever that proof cannot settle is checked line by line here, so every problem and line number comes from
here.

`validate_file` is a pure function over a path (used by `finetuned check` too); `run` is the step.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from daemon.errors import DatasetError
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.spool.files import atomic_write_json
from handlers.dataset.columnar import prove_valid
from handlers.dataset.jsonio import MAX_ROW_BYTES
from handlers.dataset.rules import Kind, Problem, check_fields, detect_format
from handlers.dataset.stats import TOKEN_ESTIMATE, FileStats, file_identity, measure

log = structlog.get_logger()

MAX_FILE_BYTES = int(50.1 * 2**30)  # the `together` SDK's upload limit
PROBLEMS_IN_FULL = 20


@dataclass
class FileReport:
    """What `validate_file` found in one file."""

    path: Path
    max_tokens: int | None
    min_examples: int
    method: str = "line by line"
    format: str | None = None
    examples: int = 0
    size_bytes: int = 0
    stats: FileStats = field(default_factory=FileStats)
    problems: list[dict[str, Any]] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def valid(self) -> bool:
        """True when nothing is wrong."""
        return not self.kinds

    def add(self, line: int | None, kind: Kind, message: str) -> None:
        """Record one problem (kept in full for the first PROBLEMS_IN_FULL, counted always)."""
        self.kinds[kind.value] += 1
        if len(self.problems) < PROBLEMS_IN_FULL:
            self.problems.append({"line": line, "kind": kind.value, "message": message})

    def summary(self) -> str:
        """One sentence for an error message: the file, the first problem with its line, and counts per kind."""
        first = self.problems[0]
        where = f"line {first['line']}: " if first["line"] is not None else ""
        counts = ", ".join(f"{kind} x{count}" for kind, count in self.kinds.most_common())
        return f"{self.path} is not a valid fine-tuning file: {where}{first['message']} ({counts})"

    def as_dict(self) -> dict[str, Any]:
        """The report as written to validation.json."""
        return {
            "file": str(self.path),
            "valid": self.valid,
            "method": self.method,
            "format": self.format,
            "examples": self.examples,
            "size_bytes": self.size_bytes,
            "max_tokens": self.max_tokens,
            "min_examples": self.min_examples,
            "counts": self.stats.as_dict(),
            "problem_count": sum(self.kinds.values()),
            "problems_by_kind": dict(self.kinds.most_common()),
            "problems": self.problems,
        }


def validate_file(
    path: Path, *, min_examples: int = 1, max_tokens: int | None = None, columnar: bool = True
) -> FileReport:
    """Check every line of a fine-tuning JSONL file; never raises for bad content (it is all in the report).

    `columnar=False` skips the columnar proof and checks line by line only (same report, slower).
    """
    report = FileReport(path=path, max_tokens=max_tokens, min_examples=min_examples)
    try:
        report.size_bytes = path.stat().st_size
        fh = open(path, "rb")  # noqa: SIM115 - closed just below
    except OSError as exc:
        report.add(None, Kind.UNREADABLE, f"cannot read the file: {exc.strerror}")
        return report
    with fh:
        if report.size_bytes > MAX_FILE_BYTES:
            report.add(None, Kind.FILE_TOO_LARGE, f"the file is {report.size_bytes} bytes; the limit is 50.1 GiB")
        proven = prove_valid(path, max_tokens=max_tokens) if columnar and report.size_bytes else None
        if proven is not None:
            report.format, report.examples, report.stats = "conversation", proven.examples, proven.stats
            report.method = "columnar"
        else:
            _check_lines(fh, report)
    if report.size_bytes == 0 or report.examples == 0:
        report.add(None, Kind.EMPTY_FILE, "the file has no examples")
    elif report.examples < min_examples:
        report.add(None, Kind.TOO_FEW_EXAMPLES, f"{report.examples} examples; at least {min_examples} are required")
    return report


def trust_checked(
    path: Path, counts: dict[str, Any], proof: dict[str, int] | None, *, min_examples: int, max_tokens: int | None
) -> FileReport | None:
    """The report of a file `prepare` checked line by line as it wrote it, if it is still that file and short enough.

    None (validate it by reading) when there is no proof, the file changed since, or its longest example is over
    `max_tokens` (then every long line must be named, which takes reading).
    """
    if proof is None or file_identity(path) != proof or counts["examples"] < min_examples:
        return None
    longest = counts["longest_example"]["estimated_tokens"]
    if max_tokens is not None and longest > max_tokens:
        return None
    report = FileReport(path=path, max_tokens=max_tokens, min_examples=min_examples, method="checked as written")
    report.format, report.examples, report.size_bytes = "conversation", counts["examples"], proof["size_bytes"]
    report.stats = FileStats(**{k: v for k, v in counts.items() if k != "longest_example"})
    report.stats.longest = dict(counts["longest_example"])
    return report


def _check_lines(fh: IO[bytes], report: FileReport) -> None:
    for number, raw in enumerate(iter(lambda: fh.readline(MAX_ROW_BYTES + 1), b""), start=1):
        if len(raw) > MAX_ROW_BYTES:
            report.examples += 1
            report.add(number, Kind.LINE_TOO_LARGE, f"the line is over {MAX_ROW_BYTES // 2**20} MiB")
            _skip_rest_of_line(fh, raw)
            continue
        if raw.strip():
            report.examples += 1
            _check_line(number, raw, report)


def _skip_rest_of_line(fh: IO[bytes], raw: bytes) -> None:
    while not raw.endswith(b"\n"):
        raw = fh.readline(MAX_ROW_BYTES)
        if not raw:
            return


def _check_line(number: int, raw: bytes, report: FileReport) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(number, Kind.NOT_UTF8, f"not valid UTF-8 (byte {exc.start} of the line)")
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        report.add(number, Kind.INVALID_JSON, f"not valid JSON: {exc.msg} (column {exc.colno})")
        return
    if not isinstance(record, dict):
        report.add(number, Kind.NOT_OBJECT, f"each line must be a JSON object, got {type(record).__name__}")
        return
    fmt, problems = detect_format(record)
    if fmt is not None:
        problems.extend(_format_problems(report, fmt, number))
        problems.extend(check_fields(fmt, record))
        if fmt == "conversation" and isinstance(record["messages"], list):
            problems.extend(_size_problems(report, number, record["messages"]))
    for kind, message in problems:
        report.add(number, kind, message)


def _format_problems(report: FileReport, fmt: str, number: int) -> list[Problem]:
    if report.format is None:
        report.format = fmt
        return []
    if fmt != report.format:
        return [(Kind.MIXED_FORMATS, f"the line is in {fmt} format but the file started in {report.format} format")]
    return []


def _size_problems(report: FileReport, number: int, messages: list[Any]) -> list[Problem]:
    valid = [m for m in messages if isinstance(m, dict)]
    tokens = report.stats.add(*measure(valid), line=number)
    if report.max_tokens is not None and tokens > report.max_tokens:
        return [(Kind.TOO_LONG, f"about {tokens} tokens, longer than the model's {report.max_tokens} token context")]
    return []


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Validate train.jsonl (and validation.jsonl) from `prepare`; write validation.json; fail on any problem."""
    prepared = inputs["prepare"]
    paths = [Path(prepared["train_file"])]
    if prepared.get("validation_file"):
        paths.append(Path(prepared["validation_file"]))
    max_tokens = ctx.spec.finetune.max_seq_length if ctx.spec.finetune is not None else None
    min_examples = ctx.spec.dataset.min_examples
    reports = []
    for path, split in zip(paths, ("train", "validation"), strict=False):
        minimum = min_examples if path == paths[0] else 1
        proof = prepared.get("checked_as_written", {}).get(split)
        counts = prepared.get("counts", {}).get(split)
        report = trust_checked(path, counts, proof, min_examples=minimum, max_tokens=max_tokens) if counts else None
        if report is None:
            report = await asyncio.to_thread(validate_file, path, min_examples=minimum, max_tokens=max_tokens)
        reports.append(report)
    document = report_document(reports)
    await asyncio.to_thread(atomic_write_json, ctx.out_dir / "validation.json", document)
    for report in reports:
        if not report.valid:
            log.warning("dataset_invalid", file=report.path.name, problems=sum(report.kinds.values()))
            raise DatasetError(report.summary())
    train = reports[0]
    log.info("dataset_valid", examples=train.examples, estimated_tokens=train.stats.estimated_tokens)
    return {
        "valid": True,
        "examples": train.examples,
        "validation_examples": reports[1].examples if len(reports) > 1 else None,
        "estimated_tokens": train.stats.estimated_tokens,
        "report_file": str((ctx.out_dir / "validation.json").resolve()),
    }


def report_document(reports: list[FileReport]) -> dict[str, Any]:
    """validation.json: overall verdict and one report per file."""
    return {
        "valid": all(r.valid for r in reports),
        "token_estimate": TOKEN_ESTIMATE,
        "files": {r.path.name: r.as_dict() for r in reports},
    }
