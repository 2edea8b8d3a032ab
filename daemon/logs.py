"""Logging, configured once at start-up: JSON lines (console on a TTY), secrets redacted, each job's events teed
into its own `log.jsonl` through the `job_id` bound in contextvars.

`configure` returns the two pieces of state it installs (the redactor and the per-job files); the CLI hands them
to whoever needs them (the runner opens job logs, the Together adapter redacts errors), nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces every known secret in every string of an event (values, nested lists/dicts, tracebacks)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Register more secrets (e.g. per-endpoint keys found at run time); short strings are ignored."""
        self.secrets.update(s for s in secrets if s and len(s) >= 6)

    def scrub(self, value: Any) -> Any:
        """`value` with every secret replaced."""
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        """structlog processor."""
        return self.scrub(event) if self.secrets else event


class JobLogs:
    """Open per-job log files; the processor appends each event bound to a job to that job's file.

    A failing write (disk full) is reported once on stderr and then ignored: logging must never fail a job.
    """

    def __init__(self) -> None:
        self._files: dict[str, IO[str]] = {}
        self._warned = False

    async def open(self, job_id: str, path: Path) -> None:
        """Start teeing events of `job_id` into `path` (appending, so restarts continue the same log)."""
        if job_id not in self._files:
            # Closed in close(); opened in a thread because open() may block on a slow or full disk.
            self._files[job_id] = await asyncio.to_thread(open, path, "a", encoding="utf-8", buffering=1)

    async def close(self, job_id: str) -> None:
        """Stop teeing and close the file."""
        fh = self._files.pop(job_id, None)
        if fh is not None:
            with contextlib.suppress(OSError):  # the last line did not fit on a full disk: logging never fails a job
                await asyncio.to_thread(fh.close)

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        """structlog processor: tee the event (already redacted) to its job's file."""
        fh = self._files.get(str(event.get("job_id", "")))
        if fh is not None:
            try:
                fh.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    print(f"finetuned: cannot write a job log ({exc}); continuing without it", file=sys.stderr)
        return event


@dataclass(frozen=True)
class LogSetup:
    """What `configure` installed: the redactor every output goes through, and the per-job log files."""

    redactor: Redactor
    job_logs: JobLogs


# Tracebacks as data, without each frame's local variables: one crashed job's line stays a few KB instead of
# hundreds (a job context, its spec and settings in every frame), and no local value can carry a secret out.
_TRACEBACKS = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def configure(
    level: str = "info",
    *,
    secrets: Iterable[str | None] = (),
    json_output: bool | None = None,
    stream: TextIO | None = None,
) -> LogSetup:
    """Configure structlog and the stdlib root logger once; JSON unless writing to a TTY; `secrets` are redacted."""
    setup = LogSetup(Redactor(secrets), JobLogs())
    out = stream or sys.stdout
    use_json = (not out.isatty()) if json_output is None else json_output
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _TRACEBACKS if use_json else structlog.processors.StackInfoRenderer(),
        setup.redactor,
        setup.job_logs,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str) if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return setup
