"""The read-only status endpoint (aiohttp, 127.0.0.1 by default): /healthz, /jobs, /jobs/{id}, /metrics."""

from __future__ import annotations

import structlog
from aiohttp import web

from daemon.config import Settings
from daemon.jobs.runner import Runner
from daemon.jobs.state import JobStatus
from daemon.metrics import CONTENT_TYPE, exposition
from daemon.remote.gate import RemoteGate

log = structlog.get_logger()
RUNNER = web.AppKey("runner", Runner)
GATE = web.AppKey("gate", RemoteGate)


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus whether remote work is paused."""
    runner, gate = request.app[RUNNER], request.app[GATE]
    return web.json_response(
        {"ok": True, "active_jobs": runner.active_jobs, "remote_paused": None if gate.is_open else gate.reason}
    )


async def jobs(request: web.Request) -> web.Response:
    """Every job's status document, oldest first."""
    return web.json_response({"jobs": await request.app[RUNNER].documents()})


async def job(request: web.Request) -> web.Response:
    """One job's status document."""
    document = await request.app[RUNNER].document(request.match_info["job_id"])
    if document is None:
        raise web.HTTPNotFound(text="no such job\n")
    return web.json_response(document)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (prometheus_client): jobs by status, steps, remote calls, retries, chat, money, pause."""
    runner, gate = request.app[RUNNER], request.app[GATE]
    counts = await runner.counts()
    body = exposition(dict(counts), [str(s) for s in JobStatus], runner.active_jobs, not gate.is_open)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_app(runner: Runner, gate: RemoteGate) -> web.Application:
    """The aiohttp application (GET only)."""
    app = web.Application()
    app[RUNNER] = runner
    app[GATE] = gate
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/jobs", jobs)
    app.router.add_get("/jobs/{job_id}", job)
    app.router.add_get("/metrics", metrics)
    return app


class StatusServer:
    """Runs the app on settings.status_host:status_port; port 0 disables it."""

    def __init__(self, settings: Settings, runner: Runner, gate: RemoteGate) -> None:
        self._settings, self._runner, self._gate = settings, runner, gate
        self._app_runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve (no-op when the port is 0)."""
        if not self._settings.status_port:
            return
        self._app_runner = web.AppRunner(make_app(self._runner, self._gate), access_log=None)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self._settings.status_host, self._settings.status_port)
        await site.start()
        self.port = self._settings.status_port
        log.info("status_server_started", url=f"http://{self._settings.status_host}:{self.port}/")

    async def stop(self) -> None:
        """Stop serving."""
        if self._app_runner is not None:
            await self._app_runner.cleanup()
