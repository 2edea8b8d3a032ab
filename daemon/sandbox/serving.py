"""Chat serving slots, like llama-server's `--parallel`, vLLM or TGI: N requests at once, the rest queue FIFO."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any


class ChatServing:
    """At most `slots` chat requests are served at once (0 = no limit); the others wait in a FIFO queue, never 429.

    A waiter that is cancelled (its client hung up) leaves the queue; a slot handed to a waiter that was cancelled
    at that very moment passes on to the next one.
    """

    def __init__(self, slots: int = 0) -> None:
        self.slots = max(0, slots)
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.clear()

    def clear(self) -> None:
        """Zero the counters (requests being served or queued stay where they are)."""
        self.peak_queue_depth = len(self._waiters)
        self.served = 0
        self.queued = 0
        self.abandoned = 0
        self.unavailable = 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    def resize(self, slots: int) -> None:
        """Change the number of slots; waiters that now fit are let in at once."""
        self.slots = max(0, slots)
        while self._waiters and (self.slots == 0 or self.busy < self.slots):
            self.busy += 1
            self._wake_next()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body (waiting in the queue first if all are busy)."""
        await self._acquire()
        try:
            yield
            self.served += 1
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self.slots == 0 or (self.busy < self.slots and not self._waiters):
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued += 1
        self.peak_queue_depth = max(self.peak_queue_depth, len(self._waiters))
        try:
            await waiter
        except asyncio.CancelledError:
            self.abandoned += 1
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release()  # the slot was already ours: pass it on
            raise

    def _release(self) -> None:
        """Hand the slot to the longest waiter, or free it (a shrunk pool frees it instead)."""
        if self._waiters and (self.slots == 0 or self.busy <= self.slots):
            self._wake_next()
            return
        self.busy -= 1

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1  # nobody was left to take it

    def to_json(self) -> dict[str, Any]:
        """The `chat` part of `GET /_sandbox/stats`."""
        return {
            "slots": self.slots,
            "in_service": self.busy,
            "queue_depth": self.queue_depth,
            "peak_queue_depth": self.peak_queue_depth,
            "queued": self.queued,
            "served": self.served,
            "abandoned": self.abandoned,
            "unavailable": self.unavailable,
        }
