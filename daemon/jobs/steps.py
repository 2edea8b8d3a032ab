"""A step of a job's pipeline, and choosing the steps a spec runs (no handler imports here: see jobs/pipeline.py).

A step may name its handler as `"module:function"`: the module is imported when a job first chooses the step
(`load_handlers`, in a thread), so a data-only job never loads the evaluation, serving or SDK code it does not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.spec import JobSpec

Handler = Callable[[JobContext, StepInputs], Awaitable[StepOutput]]
# Releases what a step holds on the remote side once its job has ended; given how it ended: `completed`, `failed`
# or `cancelled`. Runs for every step of the job that has a cleanup (latest step first), whether or not that step
# ran, so it must look at the journal to see what there is to release; it must not raise for a remote failure
# (it logs it), and it may run again after a crash.
Cleanup = Callable[[JobContext, str], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One checkpointed step: its name, its handler, and whether a given spec needs it."""

    name: str
    handler: Handler | str  # the handler, or "module:function" to import when a job first chooses the step
    applies: Callable[[JobSpec], bool]
    remote: bool = False  # talks to a remote API: waits at the remote gate while remote work is paused
    needs_together: bool = False  # cannot run without Together credentials (or the sandbox)
    # Only waits on the remote and resumes from the journal: a restart that interrupts it spends no attempt (a
    # reboot during hours of polling is not the step failing); its own errors still end the job.
    waits: bool = False
    on_end: Cleanup | str | None = None  # its cleanup (see `Cleanup`), or "module:function"

    @property
    def run(self) -> Handler:
        """The handler (imported here if `load_handlers` has not imported it yet)."""
        run: Handler = _resolve(self.handler)
        return run

    @property
    def cleanup(self) -> Cleanup | None:
        """The cleanup, if the step has one."""
        cleanup: Cleanup | None = None if self.on_end is None else _resolve(self.on_end)
        return cleanup


def _resolve(target: Any) -> Any:
    """A named `module:function` (imported on first use, then from the module cache), or the callable itself."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load_handlers(steps: Iterable[Step]) -> None:
    """Import the modules of these steps' named handlers (blocking: call it in a thread, off the event loop)."""
    for step in steps:
        _resolve(step.handler)
        _resolve(step.on_end)


def steps_for(spec: JobSpec, steps: Sequence[Step]) -> list[Step]:
    """The steps this spec runs, in order."""
    return [step for step in steps if step.applies(spec)]
