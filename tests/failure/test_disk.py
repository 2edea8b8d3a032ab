"""Rows 10-11 of issue 12: a full disk pauses writing and resumes when space returns; a damaged or mismatched state
database stops the start (exit 2) instead of re-running finished jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.failure.conftest import launch, stop
from tests.process import daemon_env, run_daemon, spec_text, stats, statuses, wait_until, write_coqa


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs for the whole spool (skipped where this process may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]
    done = subprocess.run(command, check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to give the space back)."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def damage_db(db: Path, content: bytes) -> None:
    """Replace the state database (and drop its WAL files) with `content`."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(content)


def leftovers(spool: Path) -> list[str]:
    """Half-made outbox folders and temp files anywhere in the spool."""
    return [str(p) for p in spool.rglob("*") if p.name.startswith((".staging-", ".claim-")) or p.name.endswith(".tmp")]


def drop_all(inbox: Path, names: list[str]) -> None:
    for name in names:
        os.rename(inbox / f".{name}.yaml.tmp", inbox / f"{name}.yaml")


@pytest.mark.parametrize("min_free", ["0", "1048576"])
async def test_full_disk_pauses_writing_and_resumes_when_space_returns(
    small_disk: Path, tmp_path: Path, min_free: str
) -> None:
    """The spool's disk fills while specs arrive (writes failing mid-way, or claims held back below
    FINETUNED_MIN_FREE_BYTES): the daemon stays up, no job fails or is left running, nothing half-made is visible;
    once space returns every job completes."""
    spool, data = small_disk, write_coqa(tmp_path / "data")
    (spool / "inbox").mkdir()
    names = [f"full-{i}" for i in range(3)]
    for name in names:
        (spool / "inbox" / f".{name}.yaml.tmp").write_text(spec_text(name, data, finetune=False))
    process = await launch(daemon_env(spool, FINETUNED_MIN_FREE_BYTES=min_free))
    await wait_until((spool / "state" / "state.db").exists, timeout_s=30)
    await asyncio.sleep(1.0)
    filler = fill(spool)
    drop_all(spool / "inbox", names)
    await asyncio.sleep(4.0)
    assert process.returncode is None
    assert not [d for d in statuses(spool).values() if d["status"] in {"failed", "rejected"}]
    if min_free != "0":
        assert len(os.listdir(spool / "inbox")) == len(names)  # nothing claimed while the disk is full
    filler.unlink()
    await wait_until(
        lambda: sum(d["status"] == "completed" for d in statuses(spool).values()) == len(names), timeout_s=60
    )
    code, out, stderr = await stop(process)
    assert code == 0, stderr
    assert '"disk_full_paused"' in out
    assert leftovers(spool) == [] and os.listdir(spool / "inbox") == []


async def test_emptied_or_damaged_state_db_refuses_to_start_and_pays_nothing_twice(spool: Path, sandbox: Any) -> None:
    """After a completed fine-tune job, an emptied state.db and then one of random bytes each stop the start with
    exit 2 and a message saying what to do, quickly; no second fine-tune, the job's results untouched."""
    (spool / "inbox" / "paid.yaml").write_text(spec_text("paid", spool / "data"))
    env = daemon_env(spool, sandbox.base_url)
    code, _, stderr = await run_daemon(env)
    assert code == 0, stderr
    (done,) = statuses(spool).values()
    assert done["status"] == "completed"
    db = spool / "state" / "state.db"
    for damage, needle in ((b"", "does not match the outbox"), (os.urandom(8192), "cannot be read")):
        damage_db(db, damage)
        code, _, stderr = await run_daemon(env, timeout_s=30)
        assert code == 2 and needle in stderr and "Traceback" not in stderr, stderr
    assert (await stats(sandbox.base_url))["POST /v1/fine-tunes"] == 1
    assert statuses(spool)[str(done["job_id"])] == done
