"""The start-up check of state.db against the outbox: lost rejections are re-recorded, lost or finished jobs stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.errors import StartupError
from daemon.jobs.consistency import check_matches_outbox
from daemon.jobs.state import JobStatus, StateStore


def publish(outbox: Path, job_id: str, status: str) -> None:
    folder = outbox / job_id
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"job_id": job_id, "status": status}))


async def test_state_db_against_the_outbox(tmp_path: Path) -> None:
    """A rejected input the db lost is recorded again; a completed job it does not know, or a job it believes
    queued that the outbox shows completed, is a StartupError naming the job and what to do."""
    outbox, db = tmp_path / "outbox", tmp_path / "state.db"
    store = await StateStore.open(db)
    try:
        await store.add_job("known-1", "known", "spec.yaml")
        publish(outbox, "known-1", "queued")
        publish(outbox, "bad-2", "rejected")
        await check_matches_outbox(store, outbox, db)
        assert (await store.job("bad-2")) is not None
        assert (await store.job("bad-2")).status is JobStatus.rejected  # type: ignore[union-attr]
        publish(outbox, "lost-3", "completed")
        with pytest.raises(StartupError, match=r"does not know \(lost-3 completed\).*Restore the database"):
            await check_matches_outbox(store, outbox, db)
        (outbox / "lost-3" / "status.json").unlink()
        (outbox / "known-1" / "status.json").write_text(json.dumps({"job_id": "known-1", "status": "completed"}))
        with pytest.raises(StartupError, match=r"believes unfinished have finished \(known-1 completed\)"):
            await check_matches_outbox(store, outbox, db)
    finally:
        await store.close()


async def test_a_folder_still_being_built_is_not_a_job(tmp_path: Path) -> None:
    """A `.staging-*` folder a kill left in the outbox (found by the soak) does not stop the start."""
    outbox, db = tmp_path / "outbox", tmp_path / "state.db"
    store = await StateStore.open(db)
    try:
        publish(outbox, ".staging-spec-1-1234", "queued")
        await check_matches_outbox(store, outbox, db)  # passes: a dot-folder is not a job
        publish(outbox, "spec-2-5678", "completed")
        with pytest.raises(StartupError):  # while a real job folder unknown to the database still stops it
            await check_matches_outbox(store, outbox, db)
    finally:
        await store.close()
