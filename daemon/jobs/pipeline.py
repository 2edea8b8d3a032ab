"""The job as a short linear list of checkpointed steps; which of them run follows from the spec's sections.

Handlers are named, not imported: a job imports the modules of the steps it runs (daemon/jobs/steps.py).
"""

from __future__ import annotations

from daemon.jobs.steps import Step
from daemon.spec import JobSpec


def _always(_spec: JobSpec) -> bool:
    return True


def _uploads(spec: JobSpec) -> bool:
    return spec.finetune is not None


def _finetunes(spec: JobSpec) -> bool:
    return spec.finetune is not None and spec.sweep is None


def _sweeps(spec: JobSpec) -> bool:
    return spec.sweep is not None


def _evaluates(spec: JobSpec) -> bool:
    return spec.evaluate is not None and spec.sweep is None


def _serves(spec: JobSpec) -> bool:
    """A sweep's variants each serve their own fine-tune (inside `sweep`)."""
    return spec.serves_finetune and spec.sweep is None


def _reports(spec: JobSpec) -> bool:
    """A sweep's report is its comparison, written by `sweep`; each variant has its own report."""
    return (spec.finetune is not None or spec.evaluate is not None) and spec.sweep is None


STEPS: tuple[Step, ...] = (
    Step("prepare", "handlers.prepare:run", _always),
    Step("validate", "handlers.validate:run", _always),
    Step("upload", "handlers.upload:run", _uploads, remote=True, needs_together=True),
    Step(
        "create", "handlers.create:run", _finetunes, remote=True, needs_together=True, on_end="handlers.create:cleanup"
    ),
    Step("poll", "handlers.poll:run", _finetunes, remote=True, needs_together=True, waits=True),
    Step(
        "serve",
        "handlers.serve:run",
        _serves,
        remote=True,
        needs_together=True,
        on_end="handlers.serve:cleanup",
        waits=True,
    ),
    Step("evaluate", "handlers.evaluate:run", _evaluates, remote=True),
    Step("release", "handlers.serve:release", _serves, remote=True, needs_together=True),
    Step(
        "sweep",
        "handlers.sweep:run",
        _sweeps,
        remote=True,
        needs_together=True,
        on_end="handlers.sweep:cleanup",
        waits=True,
    ),
    Step("report", "handlers.report:run", _reports),
)
