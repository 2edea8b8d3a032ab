"""The batch at a glance: outbox/index.md and outbox/index.html, one row per job (status, step, progress, headline
F1/EM first model → last model, cost, started/finished, link to its report), rewritten atomically as jobs move.

`OutboxIndex` is a JobListener. On a job's final publication it also writes the report of a job that ran steps but
has none (failed, cancelled, or a data-only job), so that every job that ran at least one step has a report.
The row-building functions are light (no daemon libraries): `finetuned status` prints the same table.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.money import usd
from daemon.spool.files import atomic_write_bytes, read_json

if TYPE_CHECKING:
    from daemon.jobs.state import StateStore

INDEX_MD = "index.md"
INDEX_HTML = "index.html"
SUMMARY_FILE = "summary.json"  # written by the report (handlers/reporting/render.py)
REPORT_FILE = "report.html"
HEADER = ["job", "status", "step", "progress", "F1", "EM", "cost", "started", "finished", "report"]
NUMERIC = frozenset({"F1", "EM", "cost"})
ENDED = ("completed", "failed", "cancelled", "rejected")
REPORTED_ENDS = ("completed", "failed", "cancelled")
# What writing a view (the index, a report) may raise from bad or missing files; logged, never raised to the runner.
VIEW_ERRORS = (OSError, ValueError, LookupError, TypeError, AttributeError, ArithmeticError, RuntimeError)
OutputsReader = Callable[[str], Awaitable[Mapping[str, Mapping[str, Any]]]]


def progress_text(progress: Any) -> str:
    """`done/total unit` of a step's progress, with each evaluated model's done/total when present."""
    if not isinstance(progress, dict) or "done" not in progress:
        return ""
    total = f"/{progress['total']}" if progress.get("total") is not None else ""
    text = f"{progress['done']}{total} {progress.get('unit') or ''}".strip()
    if progress.get("errors"):
        text += f", {progress['errors']} errors"
    models = progress.get("models")
    if isinstance(models, dict) and models:
        text += " (" + ", ".join(f"{a} {m.get('done')}/{m.get('total')}" for a, m in models.items()) + ")"
    return text


def headline(summary: Mapping[str, Any] | None, metric: str) -> str:
    """`first → last` model's score (a single model: its score), with the scale when it is 0-1; or empty."""
    scores = (summary or {}).get("headline")
    if not isinstance(scores, dict) or not scores:
        return ""
    fraction = (summary or {}).get("scale") == "0-1"
    values = [_score(s.get(metric), fraction) for s in scores.values() if isinstance(s, dict)]
    text = values[0] if len(values) == 1 else f"{values[0]} → {values[-1]}"
    return f"{text} (0-1)" if fraction else text


def _score(value: Any, fraction: bool) -> str:
    return f"{value:.3f}" if fraction and isinstance(value, int | float) else str(value)


def overview_row(document: Mapping[str, Any], summary: Mapping[str, Any] | None, folder: Path) -> list[str]:
    """One job's row of the index and of `finetuned status`."""
    status = str(document.get("status") or "?")
    cost = (summary or {}).get("cost_usd")
    report = REPORT_FILE if (folder / REPORT_FILE).exists() else "status.json"
    return [
        str(document.get("job_id") or folder.name),
        status,
        str(document.get("step") or ""),
        progress_text(document.get("progress")),
        headline(summary, "f1"),
        headline(summary, "em"),
        usd(cost) if isinstance(cost, int | float) else "",
        str(document.get("created_at") or ""),
        str(document.get("updated_at") or "") if status in ENDED else "",
        f"{folder.name}/{report}",
    ]


def overview(
    outbox: Path, documents: Sequence[Mapping[str, Any]], summaries: dict[str, dict[str, Any] | None] | None = None
) -> list[list[str]]:
    """Rows of every job, oldest first, with each job's summary.json where there is one (blocking).

    `summaries` caches them by job id: a job missing from it is read (and added).
    """
    cache: dict[str, dict[str, Any] | None] = summaries if summaries is not None else {}
    ordered = sorted(documents, key=lambda d: (str(d.get("created_at") or ""), str(d.get("job_id"))))
    rows = []
    for document in ordered:
        job_id = str(document.get("job_id"))
        folder = outbox / job_id
        if job_id not in cache:
            cache[job_id] = read_json(folder / SUMMARY_FILE)
        rows.append(overview_row(document, cache[job_id], folder))
    return rows


def text_table(
    rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER, numeric: frozenset[str] = NUMERIC
) -> list[str]:
    """A padded plain-text table: text left-aligned, the `numeric` columns right-aligned."""
    every = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]
    lines = []
    for row in every:
        cells = [c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(row, widths, header, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_md(rows: Sequence[Sequence[str]]) -> str:
    """index.md: a markdown table whose last column links each job's report."""
    rule = ["---:" if h in NUMERIC else ":---" for h in HEADER]
    lines = ["# finetuned: jobs", "", "| " + " | ".join(HEADER) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        cells = [*row[:-1], f"[{row[-1].split('/')[-1]}]({row[-1]})"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_html(rows: Sequence[Sequence[str]]) -> str:
    """index.html: the same table, self-contained, refreshing itself every 30 s."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = []
    for row in rows:
        cells = [
            f"<td class='{'num' if h in NUMERIC else 'text'}'>{esc(c)}</td>" for c, h in zip(row, HEADER, strict=False)
        ]
        cells[-1] = f"<td class='text'><a href='{esc(row[-1])}'>{esc(row[-1].split('/')[-1])}</a></td>"
        body.append(f"<tr class='{esc(row[1])}'>{''.join(cells)}</tr>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.3em .6em}.num{text-align:right}.text{text-align:left}tr.failed,tr.rejected{background:#fde2e2}"
        "tr.completed{background:#e6f4e6}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><meta http-equiv='refresh' content='30'>"
        f"<title>finetuned: jobs</title><style>{style}</style></head>\n<body><h1>finetuned: jobs</h1>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></body></html>\n"
    )


def store_outputs(store: StateStore) -> OutputsReader:
    """The saved step outputs of a job, from the state store (for the report of a job that did not finish)."""

    async def read(job_id: str) -> Mapping[str, Mapping[str, Any]]:
        record = await store.job(job_id)
        steps = record.steps.items() if record is not None else ()
        return {name: step.output for name, step in steps if step.output is not None}

    return read


def ran_a_step(document: Mapping[str, Any]) -> bool:
    """True when at least one step of the job was started."""
    steps = document.get("steps")
    return isinstance(steps, dict) and any(isinstance(s, dict) and s.get("attempts") for s in steps.values())


class OutboxIndex:
    """Keeps outbox/index.md and index.html current (a JobListener); writes missing reports of ended jobs."""

    def __init__(self, outbox: Path, outputs: OutputsReader | None = None) -> None:
        self._outbox = outbox
        self._outputs = outputs
        self._documents: dict[str, dict[str, Any]] | None = None
        self._summaries: dict[str, dict[str, Any] | None] = {}  # read once, and again when the job ends
        self._lock = asyncio.Lock()

    async def job_published(self, document: dict[str, Any], *, final: bool) -> None:
        """Record the job's new document, write its report if it ended without one, and rewrite the index."""
        import structlog

        log = structlog.get_logger()
        try:
            async with self._lock:
                if self._documents is None:
                    self._documents = await asyncio.to_thread(self._load)
                self._documents[str(document.get("job_id"))] = dict(document)
                if final:
                    await self._report_if_missing(document)
                    self._summaries.pop(str(document.get("job_id")), None)
                documents = list(self._documents.values())
                rows = await asyncio.to_thread(overview, self._outbox, documents, self._summaries)
                await asyncio.to_thread(self._write, rows)
        except VIEW_ERRORS as exc:  # a listener must not raise: the index is a view, the job goes on
            log.warning("outbox_index_failed", job_id=document.get("job_id"), error=repr(exc))

    def _load(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in self._outbox.glob("*/status.json"):
            if path.parent.name.startswith("."):  # an outbox folder still being built, not a job
                continue
            document = read_json(path)
            if document is not None:
                found[str(document.get("job_id") or path.parent.name)] = document
        return found

    async def _report_if_missing(self, document: Mapping[str, Any]) -> None:
        folder = self._outbox / str(document.get("job_id"))
        if str(document.get("status")) not in REPORTED_ENDS or not ran_a_step(document):
            return
        if (folder / "report.md").exists() and str(document.get("status")) == "completed":
            return
        from handlers.reporting.render import write_failure_report  # the report's libraries load only when needed

        inputs = await self._outputs(str(document.get("job_id"))) if self._outputs is not None else {}
        await asyncio.to_thread(write_failure_report, folder, document, inputs)

    def _write(self, rows: list[list[str]]) -> None:
        atomic_write_bytes(self._outbox / INDEX_HTML, render_html(rows).encode())
        atomic_write_bytes(self._outbox / INDEX_MD, render_md(rows).encode())


def job_detail(outbox: Path, document: dict[str, Any]) -> list[str]:
    """One job: its row, its steps, remote ids, error and metrics."""
    lines = [*text_table(overview(outbox, [document])), ""]
    raw_steps = document.get("steps")
    steps: dict[str, Any] = raw_steps if isinstance(raw_steps, dict) else {}
    rows = [
        [
            name,
            str(s.get("status")),
            str(s.get("attempts")),
            str(s.get("started_at") or ""),
            str(s.get("duration_s") or ""),
        ]
        for name, s in steps.items()
        if isinstance(s, dict)
    ]
    if rows:
        header = ["step", "status", "attempts", "started", "duration s"]
        lines += [*text_table(rows, header, frozenset({"attempts", "duration s"})), ""]
    for key, value in (document.get("remote") or {}).items():
        lines.append(f"{key}: {value}")
    error = document.get("error")
    if isinstance(error, dict):
        lines.append(f"error in {error.get('step')}: {error.get('type')}: {error.get('message')}")
    summary = read_json(outbox / str(document.get("job_id")) / SUMMARY_FILE)
    for alias, scores in ((summary or {}).get("headline") or {}).items():
        lines.append(f"{alias}: F1 {scores.get('f1')}, EM {scores.get('em')}")
    if summary and summary.get("cost_usd") is not None:
        lines.append(f"cost: ${summary['cost_usd']:.2f}")
    return lines
