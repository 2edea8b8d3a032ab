"""Step 2, `validate`: check the prepared JSONL line by line before anything is uploaded; the report names each line.

A file `prepare` checked as it wrote it (CoQA: see `Example`) and unchanged since is trusted without reading it.
Otherwise `validate_file` (`handlers/dataset/validator.py`, also used by `finetuned check`) reads every line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import DatasetError
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.spool.files import atomic_write_json
from handlers.dataset.stats import TOKEN_ESTIMATE, FileStats, file_identity
from handlers.dataset.validator import FileReport, validate_file

log = structlog.get_logger()


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
