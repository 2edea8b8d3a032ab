"""The outbox: every input ends in exactly one `outbox/<job_id>/` folder, which appears atomically (staging + rename).

Only the runner calls these; files inside are replaced atomically, so readers never see half a status.json.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from daemon.spool.files import atomic_write_json, fsync_dir
from daemon.spool.names import kept_name

STATUS_FILE = "status.json"
LOG_FILE = "log.jsonl"
DUPLICATES_DIR = "duplicates"
TEMP_FILE = re.compile(r"^\..+\.\d+\.tmp$")  # files.atomic_write_bytes' temp files


def job_dir(outbox: Path, job_id: str) -> Path:
    """The job's folder (it may not exist yet)."""
    return outbox / job_id


def create_job_folder(outbox: Path, job_id: str, spec_copy: Path, status: dict[str, Any]) -> Path:
    """Publish `outbox/<job_id>/` holding a copy of the spec and status.json; a no-op if it already exists."""
    final = job_dir(outbox, job_id)
    if final.exists():
        return final
    staging = outbox / f".staging-{job_id}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        shutil.copy2(spec_copy, staging / spec_copy.name)
        atomic_write_json(staging / STATUS_FILE, status)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(staging, final)
    fsync_dir(outbox)
    return final


def publish_rejected(outbox: Path, job_id: str, original: Path, status: dict[str, Any]) -> Path:
    """Move a rejected input, with a status.json naming its problems, into its own outbox folder."""
    final = job_dir(outbox, job_id)
    if final.exists():
        return keep_duplicate(outbox, job_id, original)
    staging = outbox / f".staging-{job_id}-{os.getpid()}"
    name = kept_name(original.name)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        atomic_write_json(staging / STATUS_FILE, status)
        os.rename(original, staging / name)  # rename, never open: links and FIFOs move as they are
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-made stays behind; the input is still in place
        raise
    os.rename(staging, final)
    fsync_dir(outbox)
    return final / name


def keep_duplicate(outbox: Path, job_id: str, original: Path) -> Path:
    """Move a re-dropped input next to the job it duplicates: `outbox/<job_id>/duplicates/<time>-<name>`."""
    folder = job_dir(outbox, job_id) / DUPLICATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = folder / f"{stamp}-{time.monotonic_ns() % 10**6:06d}-{kept_name(original.name)}"
    os.rename(original, target)
    fsync_dir(folder)
    return target


def remove_leftovers(outbox: Path) -> list[str]:
    """Remove what a kill or a full disk can leave half-made: outbox folders being built (`.staging-*`) and the
    temp files of atomic writes (`.<name>.<pid>.tmp`) in the outbox (the index) and its job folders; returns what
    was removed (at start-up only: a running daemon's own writes are never touched)."""
    removed = []
    for staging in outbox.glob(".staging-*"):
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging.name)
    for pattern in (".*.tmp", "*/.*.tmp", "*/*/.*.tmp", "*/*/*/.*.tmp"):  # the index; job, base and variant folders
        for tmp in outbox.glob(pattern):
            if TEMP_FILE.match(tmp.name):
                tmp.unlink(missing_ok=True)
                removed.append(str(tmp.relative_to(outbox)))
    return removed


def write_status(outbox: Path, job_id: str, status: dict[str, Any]) -> None:
    """Atomically replace the job's status.json (blocking: call through asyncio.to_thread)."""
    folder = job_dir(outbox, job_id)
    if folder.is_dir():
        atomic_write_json(folder / STATUS_FILE, status)
