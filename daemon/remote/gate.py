"""The remote gate: auth or spending errors (401/403/402, quota) close it for the whole daemon; a probe reopens it.

Jobs wait at the gate instead of retrying or failing, so a bad key or an empty balance never burns their attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from daemon.errors import FinetunedError, Paused, TransientError

log = structlog.get_logger()

Probe = Callable[[], Awaitable[None]]


class RemoteGate:
    """Open unless remote work is paused; `pause()` closes it and starts one owned probe loop."""

    def __init__(
        self, probe: Probe | None, probe_interval_s: float, *, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self._probe = probe
        self._interval_s = probe_interval_s
        self._on_change = on_change
        self._open = asyncio.Event()
        self._open.set()
        self._task: asyncio.Task[None] | None = None
        self.reason: str | None = None
        self.paused_since: float | None = None  # loop time the gate closed, None while open

    @property
    def is_open(self) -> bool:
        """True when remote calls may be made."""
        return self._open.is_set()

    async def wait_open(self) -> None:
        """Return once remote work is allowed."""
        await self._open.wait()

    def pause(self, error: Paused) -> None:
        """Close the gate with `error` as the reason, and start probing (once) until a call succeeds again."""
        self.reason = str(error)
        if self._open.is_set():
            self._open.clear()
            self.paused_since = asyncio.get_running_loop().time()
            log.error("remote_paused", reason=self.reason, http_status=error.http_status)
            self._on_change()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._probe_until_open(), name="remote-gate-probe")

    async def _probe_until_open(self) -> None:
        while not self._open.is_set():
            await asyncio.sleep(self._interval_s)
            try:
                # Without a probe (no Together client, e.g. a custom chat endpoint paused us), the waiting step
                # itself is the probe: reopen and let it try again after the interval.
                if self._probe is not None:
                    await self._probe()
            except (Paused, TransientError) as exc:
                log.info("remote_still_paused", error=str(exc)[:300])
                continue
            except FinetunedError as exc:
                # Any other answer means the credentials work again; the job sees the error itself.
                log.info("remote_probe_answered", error=str(exc)[:300])
            self.reason = None
            self.paused_since = None
            self._open.set()
            log.info("remote_resumed")
            self._on_change()

    async def close(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
