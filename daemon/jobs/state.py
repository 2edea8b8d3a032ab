"""The state store: embedded SQLite (WAL, synchronous=FULL) holding jobs, step checkpoints, journal and eval items.

The runner owns the one writer connection; every write commits before it returns, so a crash loses nothing saved.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from daemon import fastjson
from daemon.errors import StartupError
from daemon.jobs.itemcommit import ItemCommits

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    spec_file   TEXT NOT NULL,
    step        TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    job_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    output      TEXT,
    started_at  REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS journal (
    job_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS items (
    job_id      TEXT NOT NULL,
    grp         TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (job_id, grp, item_id)
);
CREATE TABLE IF NOT EXISTS duplicates (
    job_id      TEXT NOT NULL,
    file        TEXT NOT NULL,
    at          REAL NOT NULL
);
"""


class JobStatus(enum.StrEnum):
    """Where a job is in its life; `TERMINAL` ones never change again."""

    queued = "queued"
    running = "running"
    paused = "paused"
    completed = "completed"
    failed = "failed"
    rejected = "rejected"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.rejected, JobStatus.cancelled})


class StepStatus(enum.StrEnum):
    """A step checkpoint's state."""

    running = "running"
    done = "done"
    failed = "failed"


@dataclass
class StepRecord:
    """One step checkpoint of one job."""

    step: str
    status: StepStatus
    attempts: int
    output: dict[str, Any] | None
    started_at: float | None
    finished_at: float | None


@dataclass
class JobRecord:
    """One job as the database holds it."""

    job_id: str
    name: str
    status: JobStatus
    spec_file: str
    step: str | None
    error: dict[str, Any] | None
    created_at: float
    updated_at: float
    steps: dict[str, StepRecord] = field(default_factory=dict)
    journal: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


class StateStore:
    """The daemon's single SQLite connection; every method commits before returning."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()  # one statement or transaction at a time on the one connection
        self._items = ItemCommits(db, self._lock)

    @classmethod
    async def open(cls, path: Path) -> StateStore:
        """Open (creating if needed) the database with WAL and full fsync."""
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(SCHEMA)
            await db.execute_fetchall("SELECT job_id, status FROM jobs LIMIT 1")
        except sqlite3.DatabaseError as exc:
            await db.close()  # else its thread keeps the process from exiting
            raise StartupError(
                f"the state database {path} cannot be read ({exc}): it is damaged or not a finetuned database. "
                "Restore it from a backup, or move it aside together with the outbox and state/jobs/ folders to "
                "start afresh (finished jobs would otherwise run again)"
            ) from exc
        return cls(db)

    async def close(self) -> None:
        """Commit the items still queued, then close the connection (checkpoints the WAL)."""
        await self._items.close()
        await self._db.close()

    async def add_job(self, job_id: str, name: str, spec_file: str, status: JobStatus = JobStatus.queued) -> None:
        """Insert a job; a second insert of the same id is ignored."""
        now = time.time()
        await self._write(
            "INSERT OR IGNORE INTO jobs (job_id, name, status, spec_file, created_at, updated_at) VALUES (?,?,?,?,?,?)",
            (job_id, name, status, spec_file, now, now),
        )

    async def set_status(
        self, job_id: str, status: JobStatus, *, step: str | None = None, error: dict[str, Any] | None = None
    ) -> None:
        """Change a job's status (and current step / error); a failed job has no step left `running`."""
        await self._write(
            "UPDATE jobs SET status=?, step=COALESCE(?, step), error=?, updated_at=? WHERE job_id=?",
            (status, step, json.dumps(error) if error else None, time.time(), job_id),
        )
        if status is JobStatus.failed:
            await self._write(
                "UPDATE steps SET status=?, finished_at=? WHERE job_id=? AND status=?",
                (StepStatus.failed, time.time(), job_id, StepStatus.running),
            )

    async def begin_step(self, job_id: str, step: str, *, count: bool = True) -> int:
        """Count an attempt of `step` *before* it runs (without `count`, only the first start counts); returns the
        attempt number."""
        now = time.time()
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.execute(
                    "INSERT INTO steps (job_id, step, status, attempts, started_at) VALUES (?,?,?,1,?) "
                    "ON CONFLICT(job_id, step) DO UPDATE SET attempts=MAX(attempts+?, 1), status=excluded.status, "
                    "started_at=excluded.started_at, finished_at=NULL",
                    (job_id, step, StepStatus.running, now, 1 if count else 0),
                )
                await self._db.execute("UPDATE jobs SET step=?, updated_at=? WHERE job_id=?", (step, now, job_id))
                rows = list(
                    await self._db.execute_fetchall(
                        "SELECT attempts FROM steps WHERE job_id=? AND step=?", (job_id, step)
                    )
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
        return int(rows[0][0])

    async def reopen(self, job_id: str) -> None:
        """A failed job queued again (`finetuned retry`): its error cleared, the attempts of its unfinished steps
        reset; finished steps keep their outputs."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.execute(
                    "UPDATE steps SET attempts=0 WHERE job_id=? AND status!=?", (job_id, StepStatus.done)
                )
                await self._db.execute(
                    "UPDATE jobs SET status=?, error=NULL, updated_at=? WHERE job_id=?",
                    (JobStatus.queued, time.time(), job_id),
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def refund_attempt(self, job_id: str, step: str) -> None:
        """Take back an attempt that was interrupted by a shutdown or a pause, not by the step itself."""
        await self._write(
            "UPDATE steps SET attempts=MAX(attempts-1, 0) WHERE job_id=? AND step=?",
            (job_id, step),
        )

    async def fail_step(self, job_id: str, step: str) -> None:
        """Mark a step's attempt as failed (the job fails with it; the attempt stays counted)."""
        await self._write(
            "UPDATE steps SET status=?, finished_at=? WHERE job_id=? AND step=?",
            (StepStatus.failed, time.time(), job_id, step),
        )

    async def finish_step(self, job_id: str, step: str, output: dict[str, Any]) -> None:
        """Save a step's output: the checkpoint the next step starts from."""
        await self._write(
            "UPDATE steps SET status=?, output=?, finished_at=? WHERE job_id=? AND step=?",
            (StepStatus.done, json.dumps(output), time.time(), job_id, step),
        )

    async def record(self, job_id: str, key: str, value: str) -> None:
        """Durably note a remote intent or id in the job's journal."""
        await self._write(
            "INSERT INTO journal (job_id, key, value, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT(job_id, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            (job_id, key, value, time.time()),
        )

    async def save_item(self, job_id: str, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Durably save one evaluation item; returns once it is committed (group commit: see ItemCommits)."""
        await self._items.save((job_id, group, item_id, fastjson.dumps(record).decode()))

    async def load_items(self, job_id: str, group: str) -> dict[str, dict[str, Any]]:
        """Every saved item of one group of one job."""
        rows = await self._db.execute_fetchall(
            "SELECT item_id, record FROM items WHERE job_id=? AND grp=?", (job_id, group)
        )
        return {str(r[0]): fastjson.loads(r[1]) for r in rows}

    async def add_duplicate(self, job_id: str, file: str) -> None:
        """Note that the same bytes were dropped again (kept at `file`)."""
        await self._write("INSERT INTO duplicates (job_id, file, at) VALUES (?,?,?)", (job_id, file, time.time()))

    async def job(self, job_id: str) -> JobRecord | None:
        """One job with its steps, journal and duplicates, or None."""
        rows = list(await self._db.execute_fetchall("SELECT * FROM jobs WHERE job_id=?", (job_id,)))
        if not rows:
            return None
        record = _job_from_row(rows[0])
        for s in await self._db.execute_fetchall("SELECT * FROM steps WHERE job_id=? ORDER BY started_at", (job_id,)):
            record.steps[s[1]] = StepRecord(
                step=s[1],
                status=StepStatus(s[2]),
                attempts=s[3],
                output=json.loads(s[4]) if s[4] else None,
                started_at=s[5],
                finished_at=s[6],
            )
        for k in await self._db.execute_fetchall("SELECT key, value FROM journal WHERE job_id=?", (job_id,)):
            record.journal[k[0]] = k[1]
        dups = await self._db.execute_fetchall("SELECT file FROM duplicates WHERE job_id=? ORDER BY at", (job_id,))
        record.duplicates = [str(d[0]) for d in dups]
        return record

    async def job_ids(self, *, unfinished_only: bool = False) -> list[str]:
        """Ids of all jobs (or only those not in a terminal state), oldest first."""
        sql = "SELECT job_id, status FROM jobs ORDER BY created_at"
        rows = await self._db.execute_fetchall(sql)
        return [str(r[0]) for r in rows if not (unfinished_only and JobStatus(r[1]) in TERMINAL)]

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        async with self._lock:
            await self._db.execute(sql, params)


def _job_from_row(row: Any) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        name=row[1],
        status=JobStatus(row[2]),
        spec_file=row[3],
        step=row[4],
        error=json.loads(row[5]) if row[5] else None,
        created_at=row[6],
        updated_at=row[7],
    )
