"""The read-only status endpoint (aiohttp, 127.0.0.1 by default): /healthz, /jobs, /jobs/{id}, /metrics."""

from __future__ import annotations

from collections import Counter

import structlog
from aiohttp import web

from daemon.config import Settings
from daemon.jobs.runner import Runner
from daemon.jobs.state import JobStatus
from daemon.jobs.status import status_document

log = structlog.get_logger()
RUNNER = web.AppKey("runner", Runner)


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus whether remote work is paused."""
    runner = request.app[RUNNER]
    return web.json_response(
        {
            "ok": True,
            "active_jobs": len(runner.live),
            "remote_paused": runner.gate.reason if not runner.gate.is_open else None,
        }
    )


async def jobs(request: web.Request) -> web.Response:
    """Every job's status document, oldest first."""
    runner = request.app[RUNNER]
    documents = []
    for job_id in await runner.store.job_ids():
        record = await runner.store.job(job_id)
        if record is not None:
            documents.append(status_document(record, runner.live_progress(job_id), runner.gate.reason))
    return web.json_response({"jobs": documents})


async def job(request: web.Request) -> web.Response:
    """One job's status document."""
    runner = request.app[RUNNER]
    record = await runner.store.job(request.match_info["job_id"])
    if record is None:
        raise web.HTTPNotFound(text="no such job\n")
    return web.json_response(status_document(record, runner.live_progress(record.job_id), runner.gate.reason))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: jobs by status, active jobs, remote pause."""
    runner = request.app[RUNNER]
    counts: Counter[str] = Counter()
    for job_id in await runner.store.job_ids():
        record = await runner.store.job(job_id)
        if record is not None:
            counts[str(record.status)] += 1
    lines = ["# HELP finetuned_jobs Jobs known to the daemon, by status.", "# TYPE finetuned_jobs gauge"]
    lines += [f'finetuned_jobs{{status="{s}"}} {counts.get(str(s), 0)}' for s in JobStatus]
    lines += [
        "# HELP finetuned_active_jobs Jobs with a running task.",
        "# TYPE finetuned_active_jobs gauge",
        f"finetuned_active_jobs {len(runner.live)}",
        "# HELP finetuned_remote_paused 1 while remote work is paused (auth or quota).",
        "# TYPE finetuned_remote_paused gauge",
        f"finetuned_remote_paused {0 if runner.gate.is_open else 1}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def make_app(runner: Runner) -> web.Application:
    """The aiohttp application (GET only)."""
    app = web.Application()
    app[RUNNER] = runner
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/jobs", jobs)
    app.router.add_get("/jobs/{job_id}", job)
    app.router.add_get("/metrics", metrics)
    return app


class StatusServer:
    """Runs the app on settings.status_host:status_port; port 0 disables it."""

    def __init__(self, settings: Settings, runner: Runner) -> None:
        self._settings, self._runner = settings, runner
        self._app_runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve (no-op when the port is 0)."""
        if not self._settings.status_port:
            return
        self._app_runner = web.AppRunner(make_app(self._runner), access_log=None)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self._settings.status_host, self._settings.status_port)
        await site.start()
        self.port = self._settings.status_port
        log.info("status_server_started", url=f"http://{self._settings.status_host}:{self.port}/")

    async def stop(self) -> None:
        """Stop serving."""
        if self._app_runner is not None:
            await self._app_runner.cleanup()
