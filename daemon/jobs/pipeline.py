"""The job as a short linear list of checkpointed steps; which of them run follows from the spec's sections."""

from __future__ import annotations

from daemon.jobs.steps import Step
from daemon.spec import JobSpec
from handlers import create, evaluate, poll, prepare, report, serve, sweep, upload, validate


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
    return serve.applies(spec) and spec.sweep is None


def _reports(spec: JobSpec) -> bool:
    """A sweep's report is its comparison, written by `sweep`; each variant has its own report."""
    return (spec.finetune is not None or spec.evaluate is not None) and spec.sweep is None


STEPS: tuple[Step, ...] = (
    Step("prepare", prepare.run, _always),
    Step("validate", validate.run, _always),
    Step("upload", upload.run, _uploads, remote=True, needs_together=True),
    Step("create", create.run, _finetunes, remote=True, needs_together=True, cleanup=create.cleanup),
    Step("poll", poll.run, _finetunes, remote=True, needs_together=True, waits=True),
    Step("serve", serve.run, _serves, remote=True, needs_together=True, cleanup=serve.cleanup, waits=True),
    Step("evaluate", evaluate.run, _evaluates, remote=True),
    Step("release", serve.release, _serves, remote=True, needs_together=True),
    Step("sweep", sweep.run, _sweeps, remote=True, needs_together=True, cleanup=sweep.cleanup, waits=True),
    Step("report", report.run, _reports),
)
