"""The file validator behind `validate` and `finetuned check`: every line of a JSONL file, each problem with its line.

Each line is tried on the msgspec fast path (`typed.py`) first; a line it declines is checked by the rules in
`rules.py`, which name every problem, so the report is the same as line by line alone. A big file is split at line
boundaries into byte ranges, one per core: this process reads the first, `python -m handlers.dataset.validator`
processes read the others (the work is CPU-bound, so threads would not help), and their reports are merged in order.
Imports stay light (no pyarrow, no pydantic): the worker processes start in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from handlers.dataset.jsonio import MAX_ROW_BYTES
from handlers.dataset.rules import Kind, Problem, check_fields, detect_format
from handlers.dataset.stats import FileStats, estimate_tokens, measure
from handlers.dataset.typed import conversation_sizes

MAX_FILE_BYTES = int(50.1 * 2**30)  # the `together` SDK's upload limit
PROBLEMS_IN_FULL = 20
# Below this much per process, starting another (about 60 ms) costs more than it saves.
SPLIT_MIN_BYTES = 32 * 2**20
_SEEK_BYTES = 2**16
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `handlers`: where `-m` finds it


@dataclass
class FileReport:
    """What `validate_file` found in one file."""

    path: Path
    max_tokens: int | None
    min_examples: int
    method: str = "line by line"
    processes: int = 1
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

    def part(self, lines: int) -> dict[str, Any]:
        """What a worker hands back for its range of `lines` lines (numbered from 1): everything `absorb` needs."""
        return {
            "lines": lines,
            "format": self.format,
            "examples": self.examples,
            "stats": asdict(self.stats),
            "problems": self.problems,
            "kinds": dict(self.kinds),
        }

    def absorb(self, part: dict[str, Any], line_offset: int) -> None:
        """Add a worker's report on the range that follows this report's `line_offset` lines."""
        self.format = self.format or part["format"]
        self.examples += part["examples"]
        self.kinds.update(part["kinds"])
        room = max(0, PROBLEMS_IN_FULL - len(self.problems))
        self.problems.extend({**p, "line": p["line"] + line_offset} for p in part["problems"][:room])
        self.stats.absorb(FileStats(**part["stats"]), line_offset)


def validate_file(
    path: Path, *, min_examples: int = 1, max_tokens: int | None = None, fast: bool = True, processes: int = 0
) -> FileReport:
    """Check every line of a fine-tuning JSONL file; never raises for bad content (it is all in the report).

    `fast=False` checks with the rules alone, in this process (same report, slower). `processes`: how many processes
    share the work (0: one per usable core, as far as the file's size makes it worth it; tests force a split).
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
        if fast:
            report.processes = _check_split(fh, report, _ranges(fh, report.size_bytes, processes))
            report.method = "msgspec" + (f", {report.processes} processes" if report.processes > 1 else "")
        else:
            _check_range(fh, report, 0, report.size_bytes, first=1, fast=False)
    if report.size_bytes == 0 or report.examples == 0:
        report.add(None, Kind.EMPTY_FILE, "the file has no examples")
    elif report.examples < min_examples:
        report.add(None, Kind.TOO_FEW_EXAMPLES, f"{report.examples} examples; at least {min_examples} are required")
    return report


def _ranges(fh: IO[bytes], size: int, processes: int) -> list[tuple[int, int]]:
    """Byte ranges of about equal size, each starting at the beginning of a line; one per process."""
    parts = processes or min(_usable_cores(), max(1, size // SPLIT_MIN_BYTES))
    bounds = [0]
    for k in range(1, parts):
        bounds.append(_line_start(fh, max(bounds[-1], size * k // parts), size))
    bounds.append(size)
    return [(start, end) for start, end in zip(bounds, bounds[1:], strict=False) if start < end] or [(0, 0)]


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _line_start(fh: IO[bytes], at: int, size: int) -> int:
    """The first line start at or after byte `at` (`size` when there is none), found without holding a line."""
    if at == 0:
        return 0
    fh.seek(at - 1)
    while chunk := fh.read(_SEEK_BYTES):
        newline = chunk.find(b"\n")
        if newline != -1:
            return fh.tell() - len(chunk) + newline + 1
    return size


def _check_split(fh: IO[bytes], report: FileReport, ranges: list[tuple[int, int]]) -> int:
    """Check the first range here and the others in worker processes, merged in order; the processes that worked.

    A worker that fails, or whose range starts in another format than the file (its "mixed format" verdicts
    would be wrong), has its range checked here instead, so the report is always the line-by-line one.
    """
    workers = [_start_worker(report, start, end) for start, end in ranges[1:]]
    used = 1
    try:
        lines = _check_range(fh, report, *ranges[0], first=1, fast=True)
        for (start, end), worker in zip(ranges[1:], workers, strict=True):
            part = None if worker is None else _result(worker)
            if part is None or not _same_format(report, part):
                lines = _check_range(fh, report, start, end, first=lines + 1, fast=True)
                continue
            report.absorb(part, lines)
            lines += part["lines"]
            used += 1
    finally:
        for worker in workers:
            if worker is not None and worker.poll() is None:
                worker.kill()  # this process failed: the worker's answer is not wanted
                worker.communicate()
    return used


def _same_format(report: FileReport, part: dict[str, Any]) -> bool:
    """The worker's lines were judged against the file's format (its first format is the file's, or it has none)."""
    return part["format"] is None or report.format in (None, part["format"])


def _start_worker(report: FileReport, start: int, end: int) -> subprocess.Popen[bytes] | None:
    """A worker process for bytes [start, end); None when none can be started (the range is checked here)."""
    limit = "" if report.max_tokens is None else str(report.max_tokens)
    command = [sys.executable, "-m", "handlers.dataset.validator", str(report.path.resolve()), str(start), str(end)]
    try:
        return subprocess.Popen([*command, limit], cwd=_PACKAGE_ROOT, stdout=subprocess.PIPE)
    except OSError:
        return None


def _result(worker: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    """The worker's part, or None when it failed (its error went to stderr)."""
    out, _ = worker.communicate()
    if worker.returncode != 0:
        return None
    try:
        part: dict[str, Any] = json.loads(out)
    except ValueError:
        return None
    return part


def _check_range(fh: IO[bytes], report: FileReport, start: int, end: int, *, first: int, fast: bool) -> int:
    """Check the lines in bytes [start, end), numbered from `first`; returns the number of lines read."""
    number = first - 1
    for number, raw in enumerate(_lines(fh, start, end), start=first):
        if raw is None:
            report.examples += 1
            report.add(number, Kind.LINE_TOO_LARGE, f"the line is over {MAX_ROW_BYTES // 2**20} MiB")
            continue
        sizes = conversation_sizes(raw) if fast and report.format in (None, "conversation") else None
        if sizes is not None and (report.max_tokens is None or estimate_tokens(*sizes[:2]) <= report.max_tokens):
            report.examples += 1
            report.format = "conversation"
            report.stats.add(*sizes, line=number)
        elif raw.strip():
            report.examples += 1
            _check_line(number, raw, report)
    return number - first + 1


def _lines(fh: IO[bytes], start: int, end: int) -> Iterator[bytes | None]:
    """The lines in bytes [start, end); None for a line over MAX_ROW_BYTES, skipped without being held."""
    fh.seek(start)
    position = start
    while position < end:
        raw = fh.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        position += len(raw)
        if len(raw) <= MAX_ROW_BYTES:
            yield raw
            continue
        while not raw.endswith(b"\n"):
            raw = fh.readline(MAX_ROW_BYTES)
            if not raw:
                break
            position += len(raw)
        yield None


def _check_line(number: int, raw: bytes, report: FileReport) -> None:
    """Every rule on one line, each problem recorded with the line's number."""
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
    except RecursionError:
        report.add(number, Kind.INVALID_JSON, "not valid JSON: nested too deeply")
        return
    if not isinstance(record, dict):
        report.add(number, Kind.NOT_OBJECT, f"each line must be a JSON object, got {type(record).__name__}")
        return
    fmt, problems = detect_format(record)
    if fmt is not None:
        problems.extend(_format_problems(report, fmt))
        problems.extend(check_fields(fmt, record))
        if fmt == "conversation" and isinstance(record["messages"], list):
            problems.extend(_size_problems(report, number, record["messages"]))
    for kind, message in problems:
        report.add(number, kind, message)


def _format_problems(report: FileReport, fmt: str) -> list[Problem]:
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


def _worker(argv: list[str]) -> None:
    """A worker process: check the range `PATH START END [MAX_TOKENS]` and print its part as JSON."""
    path, start, end, limit = argv
    report = FileReport(path=Path(path), max_tokens=int(limit) if limit else None, min_examples=1)
    with open(path, "rb") as fh:
        lines = _check_range(fh, report, int(start), int(end), first=1, fast=True)
    sys.stdout.write(json.dumps(report.part(lines)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
