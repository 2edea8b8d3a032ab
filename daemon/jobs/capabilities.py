"""The runner's durable capabilities handed to steps through JobContext: the journal and the item store over SQLite.

Neither write is cut short by a cancelled step (shutdown, user cancel): the journal shields its write, and the item
store's committer task, not the saving step, commits every queued item (daemon/jobs/itemcommit.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.config import Settings
from daemon.jobs.faults import crash_point
from daemon.jobs.state import StateStore


class StoreJournal:
    """`Journal` over the state store, with the values cached in memory for `get`."""

    def __init__(self, store: StateStore, settings: Settings, job_id: str, values: dict[str, str]) -> None:
        self._store, self._settings, self._job_id, self._values = store, settings, job_id, values

    def get(self, key: str) -> str | None:
        """The recorded value, or None."""
        return self._values.get(key)

    async def record(self, key: str, value: str) -> None:
        """Durably record; the crash point `journal:<key>` fires just before, for the adopt-after-crash tests."""
        crash_point(self._settings, f"journal:{key}", self._job_id)
        await asyncio.shield(self._store.record(self._job_id, key, value))
        self._values[key] = value


class StoreItems:
    """`ItemStore` over the state store."""

    def __init__(self, store: StateStore, job_id: str) -> None:
        self._store, self._job_id = store, job_id

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        """Every saved item of `group`."""
        return await self._store.load_items(self._job_id, group)

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Durably save one item (committed even if this call is cancelled: no shield, and no task, per item)."""
        await self._store.save_item(self._job_id, group, item_id, record)
