"""At start-up: delete the dedicated endpoints this daemon created for jobs that have already ended.

Each endpoint carries its job's tag in `display_name` (handlers/serving.py), journaled before it was created with
the API it was created on (`serve.surface`; none journaled: v1); an endpoint whose tag belongs to a finished job of
this state store (its cleanup failed, or the daemon died in it) is looked up and deleted on that API. Endpoints of
unfinished jobs are left to the jobs (they resume and delete their own), and endpoints this store never journaled
(another daemon's) are never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from daemon.errors import FinetunedError
from daemon.jobs.context import JournalKey
from daemon.jobs.state import TERMINAL, StateStore
from daemon.remote.api import FineTuneAPI, Surface

DISPLAY_PREFIX = "finetuned-"  # as handlers/serving.py names them
log = structlog.get_logger()


async def finished_tags(store: StateStore) -> dict[str, tuple[str, Surface]]:
    """Endpoint tag -> (job id, surface), for every ended job that journaled an endpoint intent and no release."""
    tags: dict[str, tuple[str, Surface]] = {}
    for job_id in await store.job_ids():
        record = await store.job(job_id)
        if record is None or record.status not in TERMINAL:
            continue
        for key, tag in record.journal.items():  # a sweep's variants journal theirs as `<variant>/serve.intent`
            if key != JournalKey.ENDPOINT_INTENT and not key.endswith(f"/{JournalKey.ENDPOINT_INTENT}"):
                continue
            prefix = key.removesuffix(JournalKey.ENDPOINT_INTENT)
            if not record.journal.get(prefix + JournalKey.ENDPOINT_RELEASED):
                tags[tag] = (job_id, Surface(record.journal.get(prefix + JournalKey.ENDPOINT_SURFACE) or Surface.V1))
    return tags


async def sweep_endpoints(
    store: StateStore, provider: Callable[[], Awaitable[FineTuneAPI]], *, timeout_s: float
) -> list[str]:
    """Delete the endpoints of ended jobs (call it before any job resumes); returns their ids. Nothing is asked of
    Together, and the provider is not even built, when no ended job ever had an endpoint. One try within
    `timeout_s`: a failure is logged and the next start-up tries again."""
    tags = await finished_tags(store)
    if not tags:
        return []
    try:
        async with asyncio.timeout(timeout_s):
            remote = await provider()
            swept = []
            for surface in sorted({surface for _, surface in tags.values()}):
                for endpoint in await remote.find_endpoints(DISPLAY_PREFIX, surface=surface):
                    owner = tags.get(endpoint.display_name.removeprefix(DISPLAY_PREFIX))
                    if owner is not None and owner[1] == surface:
                        await remote.delete_endpoint(endpoint.id, surface=surface)
                        log.warning("endpoint_swept", endpoint_id=endpoint.id, job_id=owner[0], surface=surface)
                        swept.append(endpoint.id)
            return swept
    except (FinetunedError, TimeoutError) as exc:
        log.error("endpoint_sweep_failed", error=str(exc) or type(exc).__name__)
        return []
