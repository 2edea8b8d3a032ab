"""`finetuned check SPEC`: the spec, `prepare` and `validate` run offline into a temporary folder, and a summary."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, TextIO

from daemon.config import Settings
from daemon.errors import DatasetError, SpecError, TransientError
from daemon.remote import hosts
from daemon.spec import JobSpec, parse_spec
from daemon.spool.names import printable
from handlers.dataset.stats import TOKEN_ESTIMATE
from handlers.dataset.validator import FileReport, validate_file
from handlers.prepare import prepare_dataset


def check_spec(path: Path, settings: Settings, out: TextIO) -> int:
    """Check one spec file end to end without uploading anything; print what was found; 0 when all is well."""
    spec = _load_spec(path, settings, out)
    if spec is None:
        return 1
    dataset = spec.dataset
    out.write(
        f"spec {printable(str(path))}: ok (job name {spec.name!r}, format {dataset.format}, source {dataset.source})\n"
    )
    refused = hosts.endpoint_problems(spec.evaluate.endpoints if spec.evaluate else {}, settings)
    if refused:
        out.writelines(f"endpoint: {problem}\n" for problem in refused)
        return 1
    with tempfile.TemporaryDirectory(prefix="finetuned-check-") as tmp:
        try:
            prepared = prepare_dataset(
                spec.dataset, Path(tmp) / "out", Path(tmp) / "work", with_eval=spec.evaluate is not None
            )
        except (DatasetError, TransientError) as exc:
            out.write(f"dataset: {exc}\n")
            return 1
        reports = _validate(spec, prepared)
    _print_counts(prepared["counts"], out)
    failed = [r for r in reports if not r.valid]
    for report in failed:
        _print_problems(report, out)
    out.write("result: problems found\n" if failed else "result: ok, ready to submit\n")
    return 1 if failed else 0


def _load_spec(path: Path, settings: Settings, out: TextIO) -> JobSpec | None:
    shown = printable(str(path))  # a name that is not UTF-8 is shown escaped, not a UnicodeEncodeError
    try:
        size = path.stat().st_size
        if size > settings.max_spec_bytes:
            out.write(f"spec {shown}: {size} bytes, over the {settings.max_spec_bytes} byte limit\n")
            return None
        return parse_spec(path.read_bytes(), filename=printable(path.name))
    except OSError as exc:
        out.write(f"spec {shown}: cannot be read: {exc.strerror}\n")
    except SpecError as exc:
        out.write(f"spec {shown}: {len(exc.problems)} problem(s)\n")
        out.writelines(f"  {problem}\n" for problem in exc.problems)
    return None


def _validate(spec: JobSpec, prepared: dict[str, Any]) -> list[FileReport]:
    max_tokens = spec.finetune.max_seq_length if spec.finetune is not None else None
    reports = [
        validate_file(Path(prepared["train_file"]), min_examples=spec.dataset.min_examples, max_tokens=max_tokens)
    ]
    if prepared["validation_file"]:
        reports.append(validate_file(Path(prepared["validation_file"]), max_tokens=max_tokens))
    return reports


def _print_counts(counts: dict[str, Any], out: TextIO) -> None:
    for name in ("train", "validation"):
        figures = counts.get(name)
        if not figures:
            continue
        longest = figures["longest_example"] or {}
        out.write(
            f"{name}.jsonl: {_count(figures['examples'], 'example')}, {_count(figures['turns'], 'turn')}, "
            f"{_count(figures['characters'], 'character')}, ~{_count(figures['estimated_tokens'], 'token')}; "
            f"longest: line {longest.get('line')} (~{_count(longest.get('estimated_tokens', 0), 'token')}, "
            f"{_count(longest.get('turns', 0), 'turn')})\n"
        )
    if counts.get("eval"):
        ev = counts["eval"]
        out.write(f"eval.jsonl: {ev['items']:,} items, {ev['turns']:,} turns (split {ev['split']!r})\n")
    out.write(f"tokens are estimated: {TOKEN_ESTIMATE}\n")


def _print_problems(report: FileReport, out: TextIO) -> None:
    total = sum(report.kinds.values())
    out.write(f"{report.path.name}: {total} problem(s)\n")
    for problem in report.problems:
        where = f"line {problem['line']}" if problem["line"] is not None else "file"
        out.write(f"  {where}: {problem['kind']}: {problem['message']}\n")
    if total > len(report.problems):
        out.write(f"  ... and {total - len(report.problems)} more\n")
    out.write("  by kind: " + ", ".join(f"{kind} x{n}" for kind, n in report.kinds.most_common()) + "\n")


def _count(n: int, noun: str) -> str:
    """`1 turn`, `2,048 turns`."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
