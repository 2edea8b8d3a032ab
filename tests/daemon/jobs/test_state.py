"""daemon/state.py item store on a real SQLite file: group commit keeps every save durable when it returns."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from daemon.jobs import state
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
    commit = StateStore._commit_items

    async def counting(self: StateStore, batch: list[Any]) -> None:
        batches.append(len(batch))
        await commit(self, batch)

    monkeypatch.setattr(StateStore, "_commit_items", counting)
    saves = state.ITEM_ROWS_PER_STATEMENT * 2 + 50
    await asyncio.gather(*(store.save_item("j", "m", f"s{n}:1", {"prediction": f"a{n}"}) for n in range(saves)))
    assert sum(batches) == saves and len(batches) < 5
    assert max(batches) > state.ITEM_ROWS_PER_STATEMENT  # the transaction path, not only multi-row statements
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


async def test_a_save_cancelled_as_it_is_handed_the_lead_passes_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting save cancelled just as the previous commit hands it the lead passes the lead on: no save hangs."""
    store = await StateStore.open(tmp_path / "state.db")
    tasks: dict[str, asyncio.Task[None]] = {}
    hand_over = StateStore._hand_over_items

    def cancel_the_next_leader(self: StateStore, own: asyncio.Future[bool]) -> None:
        handed = next((fut for _, fut in self._pending_items if not fut.done() and fut is not own), None)
        hand_over(self, own)
        if handed is not None and "s1:1" in tasks:
            tasks.pop("s1:1").cancel()  # s1's save was given the lead and is cancelled before it runs

    monkeypatch.setattr(StateStore, "_hand_over_items", cancel_the_next_leader)
    first = asyncio.create_task(store.save_item("j", "m", "s0:1", {"n": 0}))
    await asyncio.sleep(0)  # s0 leads the first commit; the others wait behind it
    later = {f"s{n}:1": store.save_item("j", "m", f"s{n}:1", {"n": n}) for n in range(1, 4)}
    tasks.update({key: asyncio.create_task(save) for key, save in later.items()})
    waiting = list(tasks.values())
    await asyncio.wait_for(first, 5)
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert isinstance(results[0], asyncio.CancelledError) and results[1:] == [None, None]
    await asyncio.wait_for(store.save_item("j", "m", "s9:1", {"n": 9}), 5)
    assert committed(tmp_path / "state.db") == {f"s{n}:1": {"n": n} for n in (0, 1, 2, 3, 9)}
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
