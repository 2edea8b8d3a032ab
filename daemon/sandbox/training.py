"""What a sandbox fine-tune has recorded so far: its training metrics and its checkpoints (pure functions of time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.sandbox.timeline import EVAL_LOSS_GAP, checkpoint_steps, eval_steps, metric_steps

if TYPE_CHECKING:
    from daemon.sandbox.sim import SandboxJob


def _reached(job: SandboxJob, now_s: float, step: int) -> bool:
    return step <= job.steps_completed(now_s) and job.step_offset_s(step) <= job.elapsed_s(now_s)


def _learning_rate(job: SandboxJob, step: int) -> float:
    """A linear decay from the request's learning rate (enough to give the row a second metric)."""
    base = float(job.request.get("learning_rate") or 1e-5)
    return base * (1.0 - (step - 1) / max(1, job.total_steps))


def metrics(job: SandboxJob, now_s: float) -> list[dict[str, float]]:
    """`GET /v1/fine-tunes/{id}/metrics` rows so far, by global step: train rows, then eval rows at their steps."""
    rows: list[tuple[int, int, dict[str, float]]] = []
    for step in metric_steps(job):
        if _reached(job, now_s, step):
            row = {"train/loss": job.loss_at(step), "train/learning_rate": _learning_rate(job, step)}
            rows.append((step, 0, {**row, "train/global_step": float(step)}))
    for index, step in enumerate(eval_steps(job)):
        if _reached(job, now_s, step):
            rows.append((step, 1, {"eval/loss": eval_loss(job, index, step), "eval/global_step": float(step)}))
    return [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]


def eval_loss(job: SandboxJob, index: int, step: int) -> float:
    """The validation loss at the `index`-th evaluation: just above the training loss, or (scripted `rising`)
    climbing by 0.15 per evaluation after the first, as an overfitting run's does."""
    if job.eval_trend == "rising":
        return round(job.loss_at(step) + EVAL_LOSS_GAP + 0.15 * index + 0.01 * index * index, 4)
    return round(job.loss_at(step) + EVAL_LOSS_GAP, 4)


def checkpoints(job: SandboxJob, now_s: float, iso: Any) -> list[dict[str, Any]]:
    """`GET /v1/fine-tunes/{id}/checkpoints`: the intermediate checkpoints saved so far and, once the job
    completed, the final one (the output model). `iso` formats epoch seconds."""
    out = []
    steps = checkpoint_steps(job)
    for step in steps[:-1]:
        if _reached(job, now_s, step):
            at = iso(job.created_at_s + job.step_offset_s(step) / job.speed)
            path = f"s3://sandbox-models/{job.id}/checkpoint-{step}"
            out.append({"step": step, "path": path, "created_at": at, "checkpoint_type": f"Intermediate (step {step})"})
    if job.status(now_s) == "completed":
        at = iso(job.created_at_s + job.script()[0][-1][0] / job.speed)
        path = f"s3://sandbox-models/{job.id}"
        out.append({"step": job.total_steps, "path": path, "created_at": at, "checkpoint_type": "Final"})
    return out
