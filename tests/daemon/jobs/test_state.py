"""daemon/state.py item store on a real SQLite file: group commit keeps every save durable when it returns."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from daemon.jobs import itemcommit
from daemon.jobs.itemcommit import ItemCommits
from daemon.jobs.state import StateStore


def committed(path: Path) -> dict[str, dict[str, Any]]:
    """The items another connection sees: only what is committed."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT item_id, record FROM items WHERE job_id='j' AND grp='m'").fetchall()
    return {str(item): json.loads(record) for item, record in rows}


async def test_concurrent_saves_share_commits_and_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hundreds of concurrent saves take far fewer commits (big batches via one transaction) and all are stored."""
    store = await StateStore.open(tmp_path / "state.db")
    batches: list[int] = []
    commit = ItemCommits._commit

    async def counting(self: ItemCommits, batch: list[Any]) -> None:
        batches.append(len(batch))
        await commit(self, batch)

    monkeypatch.setattr(ItemCommits, "_commit", counting)
    saves = itemcommit.ITEM_ROWS_PER_STATEMENT * 2 + 50
    await asyncio.gather(*(store.save_item("j", "m", f"s{n}:1", {"prediction": f"a{n}"}) for n in range(saves)))
    assert sum(batches) == saves and len(batches) < 5
    assert max(batches) > itemcommit.ITEM_ROWS_PER_STATEMENT  # the transaction path, not only multi-row statements
    assert committed(tmp_path / "state.db") == {f"s{n}:1": {"prediction": f"a{n}"} for n in range(saves)}
    assert (await store.load_items("j", "m"))["s7:1"] == {"prediction": "a7"}
    await store.close()


async def test_each_save_is_visible_to_another_connection_when_it_returns(tmp_path: Path) -> None:
    """A save that returned is committed (another connection reads it); a later save of the same id replaces it."""
    store = await StateStore.open(tmp_path / "state.db")
    for n in range(3):
        await store.save_item("j", "m", "s1:1", {"prediction": f"v{n}"})
        assert committed(tmp_path / "state.db") == {"s1:1": {"prediction": f"v{n}"}}
    await store.close()


async def test_a_save_whose_caller_is_cancelled_is_still_committed(tmp_path: Path) -> None:
    """Cancelling the step that saved an item does not cancel its commit; the store's close waits for it."""
    store = await StateStore.open(tmp_path / "state.db")
    await store.save_item("j", "m", "s0:1", {"n": 0})  # the next commit now waits out the group-commit interval
    saves = [asyncio.create_task(store.save_item("j", "m", f"s{n}:1", {"n": n})) for n in (1, 2)]
    await asyncio.sleep(0)
    saves[0].cancel()
    await asyncio.wait_for(saves[1], 5)
    assert saves[0].cancelled()
    assert committed(tmp_path / "state.db") == {f"s{n}:1": {"n": n} for n in (0, 1, 2)}
    cancelled = asyncio.create_task(store.save_item("j", "m", "s3:1", {"n": 3}))
    await asyncio.sleep(0)
    cancelled.cancel()
    await store.close()
    assert committed(tmp_path / "state.db")["s3:1"] == {"n": 3}


async def test_a_failed_commit_fails_its_saves_and_the_next_ones_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit the disk refuses raises to every save of its batch; saves queued meanwhile get a commit of their own."""
    store = await StateStore.open(tmp_path / "state.db")
    execute = store._db.execute
    failures = [sqlite3.OperationalError("disk I/O error")]

    async def failing_once(sql: str, parameters: Any = None) -> Any:
        if failures and sql.startswith("INSERT OR REPLACE INTO items"):
            later.extend(asyncio.create_task(store.save_item("j", "m", f"t{n}:1", {"n": n})) for n in range(3))
            await asyncio.sleep(0.05)  # the disk takes its time to refuse; three more saves queue meanwhile
            raise failures.pop()
        return await execute(sql, parameters)

    later: list[asyncio.Task[None]] = []
    monkeypatch.setattr(store._db, "execute", failing_once)
    first = await asyncio.gather(
        *(store.save_item("j", "m", f"s{n}:1", {"n": n}) for n in range(2)), return_exceptions=True
    )
    assert [type(result) for result in first] == [sqlite3.OperationalError] * 2
    await asyncio.wait_for(asyncio.gather(*later), 5)
    assert committed(tmp_path / "state.db") == {f"t{n}:1": {"n": n} for n in range(3)}
    await store.close()


async def test_uncounted_restarts_keep_the_first_attempt(tmp_path: Path) -> None:
    """A waiting step restarted any number of times stays at attempt 1; a counted step's attempts grow."""
    store = await StateStore.open(tmp_path / "state.db")
    try:
        await store.add_job("j", "j", "spec.yaml")
        assert [await store.begin_step("j", "poll", count=False) for _ in range(5)] == [1] * 5
        await store.refund_attempt("j", "poll")  # a pause takes it back to 0; the next start makes it 1 again
        assert await store.begin_step("j", "poll", count=False) == 1
        assert [await store.begin_step("j", "prepare") for _ in range(3)] == [1, 2, 3]
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_is_a_startup_error(tmp_path: Path) -> None:
    """Random bytes where state.db should be: StartupError saying what to do, and no thread left running."""
    from daemon.errors import StartupError

    path = tmp_path / "state.db"
    path.write_bytes(b"\x13" * 4096)
    with pytest.raises(StartupError, match="cannot be read"):
        await StateStore.open(path)
