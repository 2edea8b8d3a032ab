"""The job as a short linear list of checkpointed steps; which of them run follows from the spec's sections."""

from __future__ import annotations

from daemon.jobs.steps import Step
from daemon.spec import JobSpec
from handlers import create, evaluate, poll, prepare, report, upload, validate


def _always(_spec: JobSpec) -> bool:
    return True


def _finetunes(spec: JobSpec) -> bool:
    return spec.finetune is not None


def _evaluates(spec: JobSpec) -> bool:
    return spec.evaluate is not None


def _reports(spec: JobSpec) -> bool:
    return spec.finetune is not None or spec.evaluate is not None


STEPS: tuple[Step, ...] = (
    Step("prepare", prepare.run, _always),
    Step("validate", validate.run, _always),
    Step("upload", upload.run, _finetunes, remote=True, needs_together=True),
    Step("create", create.run, _finetunes, remote=True, needs_together=True, cleanup=create.cleanup),
    Step("poll", poll.run, _finetunes, remote=True, needs_together=True, waits=True),
    Step("evaluate", evaluate.run, _evaluates, remote=True),
    Step("report", report.run, _reports),
)
