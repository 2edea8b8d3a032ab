"""Start-up check that the state database and the outbox tell the same story.

The outbox is what users see; the database is what the daemon acts on. A database that was emptied, replaced by an
old copy or damaged would re-run finished jobs (and pay for their fine-tunes again), so the daemon refuses to start
on one instead, with a message saying what to do.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import StartupError
from daemon.jobs.state import TERMINAL, JobStatus, StateStore
from daemon.spool.outbox import STATUS_FILE

log = structlog.get_logger()

EXAMPLES = 3


def _outbox_statuses(outbox: Path) -> dict[str, str]:
    """Job id -> status of every outbox folder with a readable status.json (blocking: run it in a thread)."""
    found: dict[str, str] = {}
    for path in outbox.glob(f"*/{STATUS_FILE}"):
        if path.parent.name.startswith("."):
            continue  # a folder still being built (`.staging-*`): removed at start-up, never a job
        try:
            document: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict):
            found[path.parent.name] = str(document.get("status", ""))
    return found


async def check_matches_outbox(store: StateStore, outbox: Path, db_path: Path) -> None:
    """Raise StartupError when the outbox holds jobs the database does not know, or finished jobs the database
    believes unfinished. Rejected inputs the database lost (a crash between publishing and recording) are
    recorded again instead."""
    published = await asyncio.to_thread(_outbox_statuses, outbox)
    known = set(await store.job_ids())
    unfinished = set(await store.job_ids(unfinished_only=True))
    lost = sorted(job_id for job_id, status in published.items() if job_id not in known)
    for job_id in [j for j in lost if published[j] == JobStatus.rejected]:
        await store.add_job(job_id, job_id, f"{job_id}/{STATUS_FILE}", JobStatus.rejected)
        log.warning("rejected_input_rerecorded", job_id=job_id)
    lost = [j for j in lost if published[j] != JobStatus.rejected]
    finished = sorted(j for j in unfinished if published.get(j) in {str(s) for s in TERMINAL})
    if not lost and not finished:
        return
    problems = []
    if lost:
        problems.append(f"the outbox holds {len(lost)} job(s) it does not know ({_examples(lost, published)})")
    if finished:
        problems.append(
            f"{len(finished)} job(s) it believes unfinished have finished ({_examples(finished, published)})"
        )
    raise StartupError(
        f"the state database {db_path} does not match the outbox {outbox}: " + "; ".join(problems) + ". It was "
        "emptied, replaced or restored from an older copy; starting would run finished jobs again (and pay for "
        "their fine-tunes twice). Restore the database that belongs to this outbox, or move the listed outbox "
        "folders (and their state/jobs/ folders) aside to start them afresh."
    )


def _examples(job_ids: list[str], published: dict[str, str]) -> str:
    shown = ", ".join(f"{j} {published.get(j, '?')}" for j in job_ids[:EXAMPLES])
    return shown + (f", and {len(job_ids) - EXAMPLES} more" if len(job_ids) > EXAMPLES else "")
