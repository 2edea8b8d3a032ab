"""Steps name their handlers; a job imports them when it chooses its steps, and builds the provider only when one
of them is remote."""

from __future__ import annotations

import asyncio
import inspect
import threading

from daemon.config import Settings
from daemon.jobs.pipeline import STEPS
from daemon.jobs.steps import Step, load_handlers
from daemon.logs import JobLogs
from daemon.remote.api import FineTuneAPI
from daemon.remote.lazy import LazyRemote
from daemon.service import Service
from tests.daemon.test_service import STEPS as TEST_STEPS
from tests.daemon.test_service import Probe, drop, statuses, write_step


def test_every_named_handler_resolves() -> None:
    """Each production step names a coroutine function that exists, and each named cleanup too."""
    load_handlers(STEPS)
    for step in STEPS:
        assert inspect.iscoroutinefunction(step.run), step.name
        assert step.cleanup is None or inspect.iscoroutinefunction(step.cleanup), step.name
    assert {step.name for step in STEPS if step.cleanup is not None} == {"create", "serve", "sweep"}


def test_a_step_may_hold_its_handler_itself() -> None:
    """A handler given as a callable is used as it is (the tests' steps)."""
    step = Step("write", write_step, lambda spec: True)
    assert step.run is write_step and step.cleanup is None


class Counted:
    """Builds a Probe and counts how often it was asked to."""

    def __init__(self) -> None:
        self.built = 0
        self.on_loop_thread = False

    def __call__(self) -> FineTuneAPI:
        self.built += 1
        self.on_loop_thread |= threading.current_thread() is threading.main_thread()
        return Probe()  # type: ignore[return-value]


async def run_once(settings: Settings, job_logs: JobLogs, steps: tuple[Step, ...], build: Counted) -> None:
    service = Service(settings, steps, job_logs=job_logs, remote=LazyRemote(build), once=True)
    assert await asyncio.wait_for(service.run(), timeout=30) == 0


async def test_the_provider_is_built_only_for_a_job_with_a_remote_step(settings: Settings, job_logs: JobLogs) -> None:
    """A job of local steps never builds the provider; a job with a remote step builds it, once for all jobs."""
    build = Counted()
    drop(settings, "local")
    await run_once(settings, job_logs, TEST_STEPS[:1], build)
    assert build.built == 0
    drop(settings, "remote-a")
    drop(settings, "remote-b")
    await run_once(settings, job_logs, TEST_STEPS, build)
    assert build.built == 1
    assert {d["status"] for d in statuses(settings).values()} == {"completed"}


async def test_lazy_remote_builds_once_in_a_thread() -> None:
    """Concurrent first uses build one provider, off the event loop; closing one never built builds nothing."""
    build = Counted()
    lazy = LazyRemote(build)
    await lazy.close()
    first, second = await asyncio.gather(lazy.get(), lazy.get())
    assert first is second and build.built == 1 and not build.on_loop_thread
    await lazy.probe()
    assert build.built == 1
    ready = Probe()
    assert await LazyRemote.of(ready).get() is ready  # type: ignore[arg-type]
