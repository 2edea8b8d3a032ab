"""daemon/jobs/index.py: outbox/index.md and index.html over a mixed batch run by the real service, the report of a
failed job, and the row and table helpers `finetuned status` shares.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from daemon.config import Settings
from daemon.jobs import index
from daemon.logs import JobLogs
from daemon.service import Service
from tests.daemon.test_service import STEPS, Probe, drop, statuses, wait_for


def index_rows(outbox: Path) -> dict[str, list[str]]:
    """The rows of index.md by job status (job name prefix -> cells)."""
    lines = (outbox / index.INDEX_MD).read_text().splitlines()[4:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0].rsplit("-", 1)[0]: row for row in rows}


async def test_index_lists_a_mixed_batch_with_links_that_resolve(settings: Settings, job_logs: JobLogs) -> None:
    """Completed, failed, rejected and running jobs each have a row; every link resolves; the failed one a report."""
    for name in ("good", "bad", "slow"):
        drop(settings, name)
    drop(settings, "syntax", b"name: x\ndataset: [1,\n")
    service = Service(settings, STEPS, job_logs=job_logs, remote=Probe())
    task = asyncio.create_task(service.run())
    try:

        def settled() -> bool:
            done = {d.get("name") or d.get("file"): d["status"] for d in statuses(settings).values()}
            return len(done) == 4 and done.get("slow") == "running" and "queued" not in done.values()

        await wait_for(settled)
        await wait_for(lambda: (settings.outbox / index.INDEX_MD).exists() and len(index_rows(settings.outbox)) == 4)
        expected = {"good": "completed", "bad": "failed", "syntax": "rejected", "slow": "running"}
        await wait_for(lambda: {k: r[1] for k, r in index_rows(settings.outbox).items()} == expected)
        await wait_for(lambda: index_rows(settings.outbox)["slow"][2] == "journal")
        await wait_for(lambda: "report.html" in index_rows(settings.outbox)["bad"][-1])  # the report of the failure
        rows = index_rows(settings.outbox)
        assert rows["bad"][1] == "failed" and rows["bad"][8]  # finished is filled for an ended job
        assert rows["slow"][2] == "journal" and rows["slow"][8] == ""
        markdown = (settings.outbox / index.INDEX_MD).read_text()
        for link in re.findall(r"\]\(([^)]+)\)", markdown):
            assert (settings.outbox / link).is_file(), link
        assert "report.html" in rows["good"][-1] and "status.json" in rows["syntax"][-1]
        page = (settings.outbox / index.INDEX_HTML).read_text()
        assert all((settings.outbox / href).is_file() for href in re.findall(r"href='([^']+)'", page))
        assert page.count("<tr class=") == 4
        failed = next(p for p in settings.outbox.glob("bad-*/report.md"))
        text = failed.read_text()
        assert "The job failed in step `journal` (BadInput):" in text and "the dataset is wrong on line 3" in text
        assert "What to do:" in text
    finally:
        service.stop.set()
        await asyncio.wait_for(task, 10)


def test_overview_row_reads_the_summary_and_progress(tmp_path: Path) -> None:
    """Headline first → last model, cost in dollars, the evaluation's per-model progress, and the report link."""
    folder = tmp_path / "job-1"
    folder.mkdir()
    summary = {"headline": {"base": {"f1": 23.2, "em": 4.3}, "ft": {"f1": 78.0, "em": 62.0}}, "cost_usd": 4.5}
    (folder / index.SUMMARY_FILE).write_text(json.dumps(summary))
    (folder / index.REPORT_FILE).write_text("<html></html>")
    progress = {"done": 10, "total": 40, "unit": "answers", "models": {"base": {"done": 10, "total": 20}}}
    document = {"job_id": "job-1", "status": "running", "step": "evaluate", "progress": progress, "created_at": "t0"}
    row = index.overview_row(document, index.read_json(folder / index.SUMMARY_FILE), folder)
    assert row == [
        "job-1",
        "running",
        "evaluate",
        "10/40 answers (base 10/20)",
        "23.2 → 78.0",
        "4.3 → 62.0",
        "$4.50",
        "t0",
        "",
        "job-1/report.html",
    ]


def test_text_table_aligns_numbers_right() -> None:
    """The cost and score columns are right-aligned, the others left-aligned."""
    rows = [["a", "done", "", "", "1.5", "2", "$10.00", "", "", "a/status.json"]]
    rows.append(["bbbb", "failed", "x", "", "12.25", "", "$1.00", "", "", "bbbb/status.json"])
    lines = index.text_table(rows)
    assert lines[0].startswith("job   status  step") and lines[1].startswith("a     done  ")
    for column, cell, line in (("cost", "$10.00", 1), ("cost", "$1.00", 2), ("F1", "1.5", 1), ("F1", "12.25", 2)):
        assert lines[0].index(column) + len(column) == lines[line].index(cell) + len(cell)


def test_headline_names_the_cookbook_scale() -> None:
    """Scores on the cookbook's 0-1 scale say so and keep three digits; a single model shows its score alone."""
    summary = {"scale": "0-1", "headline": {"base": {"f1": 0.346}, "ft": {"f1": 0.19047}}}
    assert index.headline(summary, "f1") == "0.346 → 0.190 (0-1)"
    assert index.headline({"headline": {"m": {"em": 12.5}, "n": {"em": 0.0}}}, "em") == "12.5 → 0.0"
    assert index.headline(None, "f1") == ""
