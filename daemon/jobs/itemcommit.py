"""Group commit of evaluation items for the state store (daemon/jobs/state.py): each save queues its row, one
committer task writes what is queued in one transaction at a time, and a save returns once its row is committed.
"""

from __future__ import annotations

import asyncio
import time

import aiosqlite

# At most one item commit per interval; saves arriving in between join the next one.
ITEM_COMMIT_INTERVAL_S = 0.02
# Items per multi-row INSERT (4 parameters each, well under SQLite's variable limit); larger batches use a transaction.
ITEM_ROWS_PER_STATEMENT = 200
_INSERT_ITEM = "INSERT OR REPLACE INTO items (job_id, grp, item_id, record) VALUES "

Row = tuple[str, str, str, str]  # job_id, group, item_id, record as JSON
Batch = list[tuple[Row, asyncio.Future[None]]]


class ItemCommits:
    """The queue of item rows and its committer task (started by a save when none runs; ends when the queue is empty).

    Saves that arrive while a commit is in flight, or less than ITEM_COMMIT_INTERVAL_S after the last one began, are
    committed together in the next transaction, so thousands of concurrent answers cost a few hundred fsyncs, not one
    each; a save after a quiet interval is committed at once. A save costs a future and nothing else: no task, lock
    or shield of its own. The committer is the store's, not the caller's: a save whose caller is cancelled is still
    committed, so a cancelled step never leaves half a write behind.
    """

    def __init__(self, db: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self._db = db
        self._lock = lock  # the store's: one statement or transaction at a time on the one connection
        self._queue: Batch = []
        self._committer: asyncio.Task[None] | None = None
        self._last_commit_s = 0.0

    async def save(self, row: Row) -> None:
        """Queue one row; returns once it is committed (raises what the commit raised if it failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, done))
        self._start()
        await done

    async def close(self) -> None:
        """Wait until every queued row is committed (or its commit failed)."""
        while self._committer is not None:
            await asyncio.wait([self._committer])

    def _start(self) -> None:
        if self._queue and (self._committer is None or self._committer.done()):
            self._committer = asyncio.get_running_loop().create_task(self._commit_queued())
            self._committer.add_done_callback(self._committer_ended)

    def _committer_ended(self, task: asyncio.Task[None]) -> None:
        if self._committer is task:
            self._committer = None
        if not task.cancelled():
            task.exception()  # retrieved: a failed commit was raised to each save of its batch, through its future
            self._start()  # rows queued as it ended, or during a failed commit, get a commit of their own

    async def _commit_queued(self) -> None:
        while self._queue:
            wait_s = self._last_commit_s + ITEM_COMMIT_INTERVAL_S - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # let the saves of the next few milliseconds join this commit
            async with self._lock:
                self._last_commit_s = time.monotonic()
                batch, self._queue = self._queue, []
                await self._commit(batch)

    async def _commit(self, batch: Batch) -> None:
        rows = [row for row, _ in batch]
        try:
            if len(rows) <= ITEM_ROWS_PER_STATEMENT:
                # Autocommit: one statement is one transaction, committed (WAL fsync) before execute returns.
                sql = _INSERT_ITEM + ",".join(["(?,?,?,?)"] * len(rows))
                await self._db.execute(sql, [value for row in rows for value in row])
            else:
                await self._db.execute("BEGIN IMMEDIATE")
                await self._db.executemany(_INSERT_ITEM + "(?,?,?,?)", rows)
                await self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("item save interrupted"))
            raise
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
