"""The fine-tuning provider, built the first time something needs it (the service, the gate, a job's remote steps).

Building the Together adapter imports the SDK (about 0.1 s); a daemon that only prepares data never pays for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemon.remote.api import FineTuneAPI


class LazyRemote:
    """A FineTuneAPI made by `build` on the first `get()`, in a thread (it imports), then the same one every time."""

    def __init__(self, build: Callable[[], FineTuneAPI]) -> None:
        self._build = build
        self._remote: FineTuneAPI | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, remote: FineTuneAPI) -> LazyRemote:
        """One that is built already."""
        lazy = cls(lambda: remote)
        lazy._remote = remote
        return lazy

    async def get(self) -> FineTuneAPI:
        """The provider, built now if it was not yet."""
        async with self._lock:
            if self._remote is None:
                self._remote = await asyncio.to_thread(self._build)
        return self._remote

    async def probe(self) -> None:
        """The remote gate's probe: the provider's cheap authenticated call."""
        await (await self.get()).probe()

    async def close(self) -> None:
        """Close the provider if it was ever built."""
        if self._remote is not None:
            await self._remote.close()
