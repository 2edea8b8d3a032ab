"""Intake: judges what the inbox holds and decides — claim it as a job, file it as a duplicate, or reject it — and
recovers half-done claims at start-up. The runner records and publishes each decision (it owns state and outbox).

Every input ends in exactly one outbox folder; nothing a user dropped is deleted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import SpecError
from daemon.jobs.faults import crash_point
from daemon.jobs.runner import Runner
from daemon.spec import parse_spec
from daemon.spool import inbox, outbox
from daemon.spool.inbox import Arrival, Unsettled
from daemon.spool.names import is_candidate, kept_name, printable
from daemon.spool.space import is_disk_full

log = structlog.get_logger()


class Intake:
    """Accepts what the inbox scan finds; the runner records and runs it."""

    def __init__(self, settings: Settings, runner: Runner) -> None:
        self.settings, self.runner = settings, runner
        self.sightings = inbox.Sightings()
        self._left_alone: dict[tuple[str, inbox.Identity | None], str] = {}  # inputs that cannot even be moved
        self._orphans = False  # a claim may have missed its database row (disk full): re-adopt once there is space

    async def scan_once(self) -> float | None:
        """Judge the inbox and accept what is ready; returns when to look again for unsettled files (epoch s)."""
        if not await self.runner.space.check():
            # A full disk: claim nothing (the inputs wait in the inbox), look again after the probe interval.
            return time.time() + self.runner.space.probe_interval_s
        if self._orphans:
            self._orphans = False
            await self.readopt_orphans()
        judged = await asyncio.to_thread(inbox.scan, self.settings.inbox, self.settings, self.sightings)
        present = {item.path.name for item in judged}
        self._left_alone = {key: why for key, why in self._left_alone.items() if key[0] in present}
        next_due: float | None = None
        for item in judged:
            if isinstance(item, Unsettled):
                next_due = item.due if next_due is None else min(next_due, item.due)
                log.debug("spec_not_settled", file=printable(item.path.name), due_in_s=round(item.due - time.time(), 2))
                continue
            if (item.path.name, item.identity) not in self._left_alone:
                await self.accept_safely(item)
        await self.handle_cancel_requests()
        await self.handle_retry_requests()
        return next_due

    async def accept_safely(self, arrival: Arrival) -> None:
        """Accept one input; whatever goes wrong is that input's failure: it is rejected with the reason, or, when
        even that fails, left where it is with the reason logged (once), and intake goes on."""
        failure = await _failure_of(self.accept(arrival))
        if failure is None:
            return
        reason = f"finetuned could not take this input in: {type(failure).__name__}: {failure}"[:500]
        log.error("intake_failed", file=printable(arrival.path.name), job_id=arrival.job_id, error=reason)
        if is_disk_full(failure):
            self.runner.space.found_full(reason)
            self._orphans = True  # not the input's fault: it is taken in (or re-adopted) once there is space
            return
        if not await asyncio.to_thread(os.path.lexists, arrival.path):
            return  # it was claimed before the failure: the job folder is re-adopted at the next start
        job_id = f"{arrival.job_id}-intake"
        move_failure = await _failure_of(self.runner.reject(job_id, arrival.name, arrival.path, [reason]))
        if move_failure is not None:
            self._left_alone[(arrival.path.name, arrival.identity)] = reason
            log.error(
                "input_left_in_inbox", file=printable(arrival.path.name), reason=reason, move_error=str(move_failure)
            )

    async def accept(self, arrival: Arrival) -> None:
        """Claim a spec and start its job, report a duplicate, or publish a rejection."""
        file = printable(arrival.path.name)
        if await self.runner.known(arrival.job_id):
            await self.runner.file_duplicate(arrival.job_id, arrival.path)
            log.warning("duplicate_spec", file=file, job_id=arrival.job_id)
            return
        if arrival.rejected:
            await self.runner.reject(arrival.job_id, arrival.name, arrival.path, arrival.problems)
            log.warning("spec_rejected", file=file, job_id=arrival.job_id, problems=arrival.problems)
            return
        claimed = await asyncio.to_thread(inbox.claim, arrival, self.settings.jobs_dir)
        crash_point(self.settings, "after:claim", arrival.job_id)
        log.info("spec_claimed", file=file, job_id=arrival.job_id)
        await self.runner.admit(arrival.job_id, arrival.name, claimed)

    async def recover(self) -> list[str]:
        """Before READY: put half-claimed specs back, re-admit claimed ones missing from the store, resume jobs."""
        await asyncio.to_thread(self._return_half_claims)
        removed = await asyncio.to_thread(outbox.remove_leftovers, self.settings.outbox)
        if removed:
            log.warning("outbox_leftovers_removed", count=len(removed), examples=removed[:5])
        await self.readopt_orphans()
        unfinished = await self.runner.resume_unfinished()
        if unfinished:
            log.info("jobs_resumed", count=len(unfinished), job_ids=unfinished)
        return unfinished

    async def readopt_orphans(self) -> None:
        """Claimed folders the database does not know (a crash, or a full disk, between claim and record) become
        their jobs again; one that cannot is logged and left (it never stops the daemon)."""
        for folder in await asyncio.to_thread(self._claimed_folders):
            if await self.runner.known(folder.name):
                continue
            failure = await _failure_of(self._readopt(folder))
            if failure is not None:
                log.error(
                    "claim_readopt_failed", folder=printable(folder.name), error=f"{type(failure).__name__}: {failure}"
                )
                self._orphans = self._orphans or is_disk_full(failure)

    def _return_half_claims(self) -> None:
        for staging in self.settings.jobs_dir.glob(".claim-*"):
            try:
                for entry in staging.iterdir():
                    os.rename(entry, self.settings.inbox / entry.name)
                    log.warning("claim_rolled_back", file=printable(entry.name))
                staging.rmdir()
            except OSError as exc:
                log.error("claim_rollback_failed", folder=printable(staging.name), error=str(exc))

    def _claimed_folders(self) -> list[Path]:
        return [p for p in self.settings.jobs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    async def _readopt(self, folder: Path) -> None:
        """A crash between the claim rename and the database insert: the claimed spec becomes its job again."""
        specs = await asyncio.to_thread(lambda: [p for p in folder.iterdir() if p.is_file() and is_candidate(p.name)])
        if not specs:
            return
        claimed = specs[0]
        if kept_name(claimed.name) != claimed.name:  # claimed by an older version under its raw name
            renamed = claimed.with_name(kept_name(claimed.name))
            await asyncio.to_thread(os.rename, claimed, renamed)
            claimed = renamed
        try:
            spec = parse_spec(await asyncio.to_thread(claimed.read_bytes), claimed.name)
        except SpecError:
            log.error("claimed_spec_unreadable", folder=printable(folder.name))
            return
        log.warning("claim_readopted", job_id=folder.name)
        await self.runner.admit(folder.name, spec.name, await asyncio.to_thread(claimed.resolve))

    async def handle_retry_requests(self) -> None:
        """Act on `finetuned retry` requests (files in state/retry/), then remove them."""
        folder = self.settings.retry_dir
        requests = await asyncio.to_thread(lambda: sorted(folder.glob("*")) if folder.is_dir() else [])
        for request in requests:
            if is_candidate(request.name):
                done = await self.runner.request_retry(request.name)
                log.info("retry_requested", job_id=request.name, acted=done)
            await asyncio.to_thread(request.unlink, missing_ok=True)

    async def handle_cancel_requests(self) -> None:
        """Act on `finetuned cancel` requests (files in state/cancel/), then remove them."""
        folder = self.settings.cancel_dir
        requests = await asyncio.to_thread(lambda: sorted(folder.glob("*")) if folder.is_dir() else [])
        for request in requests:
            if not is_candidate(request.name) or printable(request.name) != request.name:
                continue  # not a request `finetuned cancel` writes (a job id is printable UTF-8)
            done = await self.runner.request_cancel(request.name)
            log.info("cancel_requested", job_id=request.name, acted=done)
            await asyncio.to_thread(request.unlink, missing_ok=True)


async def _failure_of(step: Awaitable[None]) -> Exception | None:
    """Await one input's step; None when it went well, else what went wrong (the intake boundary: one input's
    failure is never the daemon's)."""
    try:
        await step
    except Exception as exc:  # noqa: BLE001 - the intake boundary, as the runner's is per job
        log.debug("intake_step_failed", exc_info=True)
        return exc
    return None
