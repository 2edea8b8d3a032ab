"""The sandbox's listening socket, and outages that take it away: refuse connections for a while, then come back."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

RESTART_RETRY_S = 0.05
log = structlog.get_logger()


class Listener:
    """Serves `runner` on `host:port` (0 = a free port, then kept) and can stop listening for a while.

    During a refuse outage nothing listens on the port and every open connection is dropped, so clients get
    "connection refused" (or a reset) the way they do when a server process is down. The admin API is on the same
    socket, so it is unreachable too. The restart is an owned task, cancelled by `close`.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._restart: asyncio.Task[None] | None = None
        self.outages = 0

    @property
    def listening(self) -> bool:
        """True unless a refuse outage is under way."""
        return self._site is not None

    async def start(self, runner: web.AppRunner) -> None:
        """Listen (SO_REUSEADDR, so a restart can bind the same port at once) and remember the bound port."""
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = site.port

    async def refuse(self, seconds: float) -> None:
        """Stop listening and drop every connection now; listen again on the same host:port after `seconds`.
        A second outage during one replaces its end."""
        assert self._runner is not None, "start() first"
        await self._cancel_restart()
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
        server = self._runner.server
        for connection in server.connections if server is not None else []:
            connection.force_close()  # data already written (an admin answer) is flushed before the close
        self.outages += 1
        log.info("sandbox_outage", mode="refuse", seconds=seconds, port=self.port)
        self._restart = asyncio.create_task(self._listen_again(seconds))

    async def _listen_again(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
        assert self._runner is not None
        while True:
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:  # the port is busy a moment longer: try again
                await site.stop()
                log.warning("sandbox_relisten_failed", port=self.port, error=str(exc))
                await asyncio.sleep(RESTART_RETRY_S)
                continue
            self._site = site
            log.info("sandbox_outage_over", port=self.port)
            return

    async def _cancel_restart(self) -> None:
        task, self._restart = self._restart, None
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def close(self) -> None:
        """Cancel a pending restart (the runner's cleanup stops the site)."""
        await self._cancel_restart()


LISTENER = web.AppKey("listener", Listener)
