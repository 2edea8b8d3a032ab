"""Intake: turns judged inbox entries into jobs (claim, record, publish), duplicates and rejections; and recovery.

Every input ends in exactly one outbox folder; nothing a user dropped is deleted.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Settings
from daemon.errors import SpecError
from daemon.jobs.faults import crash_point
from daemon.jobs.runner import Runner
from daemon.jobs.state import JobStatus, StateStore
from daemon.jobs.status import iso
from daemon.spec import parse_spec
from daemon.spool import inbox as spool
from daemon.spool import outbox
from daemon.spool.inbox import Arrival, Unsettled

log = structlog.get_logger()

CANCEL_DIR = "cancel"


class Intake:
    """Accepts what the spool finds; the runner runs it."""

    def __init__(self, settings: Settings, store: StateStore, runner: Runner) -> None:
        self.settings, self.store, self.runner = settings, store, runner

    async def scan_once(self) -> float | None:
        """Judge the inbox and accept what is ready; returns when to look again for unsettled files (epoch s)."""
        judged = await asyncio.to_thread(spool.scan, self.settings.inbox, self.settings)
        next_due: float | None = None
        for item in judged:
            if isinstance(item, Unsettled):
                next_due = item.due if next_due is None else min(next_due, item.due)
                log.debug("spec_not_settled", file=item.path.name, due_in_s=round(item.due - time.time(), 1))
                continue
            await self.accept(item)
        await self.handle_cancel_requests()
        return next_due

    async def accept(self, arrival: Arrival) -> None:
        """Claim a spec and start its job, report a duplicate, or publish a rejection."""
        existing = await self.store.job(arrival.job_id)
        if existing is not None:
            kept = await asyncio.to_thread(outbox.keep_duplicate, self.settings.outbox, arrival.job_id, arrival.path)
            await self.store.add_duplicate(arrival.job_id, str(kept.relative_to(self.settings.outbox)))
            await self.runner.publish(arrival.job_id)
            log.warning("duplicate_spec", file=arrival.path.name, job_id=arrival.job_id, status=str(existing.status))
            return
        if arrival.rejected:
            await self._reject(arrival)
            return
        await self._claim(arrival)

    async def _claim(self, arrival: Arrival) -> None:
        claimed = await asyncio.to_thread(spool.claim, arrival, self.settings.jobs_dir)
        crash_point(self.settings, "after:claim", arrival.job_id)
        await self.store.add_job(arrival.job_id, arrival.name, str(claimed.resolve()))
        await self._publish_new(arrival.job_id, claimed)
        log.info("spec_claimed", file=arrival.path.name, job_id=arrival.job_id)
        self.runner.start(arrival.job_id)

    async def _publish_new(self, job_id: str, claimed: Path) -> None:
        record = await self.store.job(job_id)
        assert record is not None
        initial = {"job_id": job_id, "name": record.name, "status": str(record.status), "created_at": iso(time.time())}
        await asyncio.to_thread(outbox.create_job_folder, self.settings.outbox, job_id, claimed, initial)
        await self.runner.publish(job_id)

    async def _reject(self, arrival: Arrival) -> None:
        error: dict[str, Any] = {
            "type": "SpecError",
            "message": "; ".join(arrival.problems),
            "step": "intake",
            "problems": arrival.problems,
        }
        document = {
            "job_id": arrival.job_id,
            "name": arrival.name,
            "status": str(JobStatus.rejected),
            "file": arrival.path.name,
            "created_at": iso(time.time()),
            "error": error,
            "problems": arrival.problems,
        }
        kept = await asyncio.to_thread(
            outbox.publish_rejected, self.settings.outbox, arrival.job_id, arrival.path, document
        )
        await self.store.add_job(
            arrival.job_id, arrival.name, str(kept.relative_to(self.settings.outbox)), JobStatus.rejected
        )
        await self.store.set_status(arrival.job_id, JobStatus.rejected, error=error)
        log.warning("spec_rejected", file=arrival.path.name, job_id=arrival.job_id, problems=arrival.problems)

    async def recover(self) -> list[str]:
        """Before READY: put half-claimed specs back, re-register claimed ones missing from the store, resume jobs."""
        await asyncio.to_thread(self._return_half_claims)
        for folder in await asyncio.to_thread(self._claimed_folders):
            if await self.store.job(folder.name) is None:
                await self._readopt(folder)
        unfinished = await self.store.job_ids(unfinished_only=True)
        for job_id in unfinished:
            self.runner.start(job_id)
        if unfinished:
            log.info("jobs_resumed", count=len(unfinished), job_ids=unfinished)
        return unfinished

    def _return_half_claims(self) -> None:
        for staging in self.settings.jobs_dir.glob(".claim-*"):
            for entry in staging.iterdir():
                os.rename(entry, self.settings.inbox / entry.name)
                log.warning("claim_rolled_back", file=entry.name)
            staging.rmdir()

    def _claimed_folders(self) -> list[Path]:
        return [p for p in self.settings.jobs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    async def _readopt(self, folder: Path) -> None:
        """A crash between the claim rename and the database insert: the claimed spec becomes its job again."""
        specs = await asyncio.to_thread(
            lambda: [p for p in folder.iterdir() if p.is_file() and spool.is_candidate(p.name)]
        )
        if not specs:
            return
        claimed = specs[0]
        try:
            spec = parse_spec(await asyncio.to_thread(claimed.read_bytes), claimed.name)
        except SpecError:
            log.error("claimed_spec_unreadable", folder=str(folder))
            return
        await self.store.add_job(folder.name, spec.name, str(claimed.resolve()))
        await self._publish_new(folder.name, claimed)
        log.warning("claim_readopted", job_id=folder.name)

    async def handle_cancel_requests(self) -> None:
        """Act on `finetuned cancel` requests (files in state/cancel/), then remove them."""
        folder = self.settings.state_dir / CANCEL_DIR
        requests = await asyncio.to_thread(lambda: sorted(folder.glob("*")) if folder.is_dir() else [])
        for request in requests:
            if not spool.is_candidate(request.name):
                continue
            done = await self.runner.request_cancel(request.name)
            log.info("cancel_requested", job_id=request.name, acted=done)
            request.unlink(missing_ok=True)
