"""A step of a job's pipeline, and choosing the steps a spec runs (no handler imports here: see daemon/pipeline.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.spec import JobSpec

Handler = Callable[[JobContext, StepInputs], Awaitable[StepOutput]]


@dataclass(frozen=True)
class Step:
    """One checkpointed step: its name, its handler, and whether a given spec needs it."""

    name: str
    run: Handler
    applies: Callable[[JobSpec], bool]
    remote: bool = False  # talks to a remote API: waits at the remote gate while remote work is paused
    needs_together: bool = False  # cannot run without Together credentials (or the sandbox)


def steps_for(spec: JobSpec, steps: Sequence[Step]) -> list[Step]:
    """The steps this spec runs, in order."""
    return [step for step in steps if step.applies(spec)]
