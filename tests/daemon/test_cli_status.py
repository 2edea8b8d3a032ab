"""`finetuned status` on a terminal (a real pseudo-terminal): the jobs table, one job's detail; --json unchanged."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.process import ROOT


def run_on_tty(tmp_path: Path, *args: str) -> str:
    """Run `python -m daemon status ...` with stdout on a pseudo-terminal; returns what it printed."""
    leader, follower = pty.openpty()
    spool = ["--inbox", str(tmp_path / "in"), "--outbox", str(tmp_path / "out"), "--state-dir", str(tmp_path / "st")]
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "status", *args, *spool], cwd=ROOT, stdout=follower, stderr=err
        )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=30) == 0, errors.read_text()
    return b"".join(chunks).decode().replace("\r\n", "\n")


def write_job(out: Path, job_id: str, document: dict[str, object], summary: dict[str, object] | None = None) -> None:
    """A job folder with its status.json (and summary.json, as the report writes it)."""
    (out / job_id).mkdir(parents=True)
    (out / job_id / "status.json").write_text(json.dumps({"job_id": job_id, **document}))
    if summary is not None:
        (out / job_id / "summary.json").write_text(json.dumps(summary))


def test_status_on_a_terminal_prints_the_table(tmp_path: Path) -> None:
    """Every job is a row with status, step, evaluation progress, F1/EM base → fine-tuned and cost."""
    out = tmp_path / "out"
    headline = {"base": {"f1": 23.2, "em": 4.3}, "ft": {"f1": 78.0, "em": 62.0}}
    write_job(
        out,
        "done-1",
        {"status": "completed", "created_at": "2026-01-01T00:00:00Z"},
        {"headline": headline, "cost_usd": 4.5},
    )
    progress = {"done": 7, "total": 20, "unit": "answers"}
    write_job(
        out, "busy-2", {"status": "running", "step": "evaluate", "progress": progress, "created_at": "2026-01-02"}
    )
    lines = run_on_tty(tmp_path).splitlines()
    assert lines[0].split() == [
        "job",
        "status",
        "step",
        "progress",
        "F1",
        "EM",
        "cost",
        "started",
        "finished",
        "report",
    ]
    assert lines[1].split()[:7] == ["done-1", "completed", "23.2", "→", "78.0", "4.3", "→"]
    assert (
        "$4.50" in lines[1] and "7/20 answers" in lines[2] and lines[2].split()[:3] == ["busy-2", "running", "evaluate"]
    )


def test_status_of_one_job_on_a_terminal_shows_steps_ids_error(tmp_path: Path) -> None:
    """One job: its steps table, remote ids and the error in its own words; --json still prints the document."""
    steps = {"prepare": {"status": "done", "attempts": 1, "started_at": "t0", "duration_s": 0.5}}
    error = {"type": "RemoteRejected", "message": "400: model not found", "step": "create"}
    document = {"status": "failed", "step": "create", "steps": steps, "remote": {"file_id": "file-9"}, "error": error}
    write_job(tmp_path / "out", "bad-1", document)
    text = run_on_tty(tmp_path, "bad-1")
    assert "prepare  done" in text and "file_id: file-9" in text
    assert "error in create: RemoteRejected: 400: model not found" in text
    assert json.loads(run_on_tty(tmp_path, "bad-1", "--json"))["error"] == error
