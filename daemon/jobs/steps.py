"""A step of a job's pipeline, and choosing the steps a spec runs (no handler imports here: see daemon/pipeline.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

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
    run: Handler
    applies: Callable[[JobSpec], bool]
    remote: bool = False  # talks to a remote API: waits at the remote gate while remote work is paused
    needs_together: bool = False  # cannot run without Together credentials (or the sandbox)
    # Only waits on the remote and resumes from the journal: a restart that interrupts it spends no attempt (a
    # reboot during hours of polling is not the step failing); its own errors still end the job.
    waits: bool = False
    cleanup: Cleanup | None = None


def steps_for(spec: JobSpec, steps: Sequence[Step]) -> list[Step]:
    """The steps this spec runs, in order."""
    return [step for step in steps if step.applies(spec)]
