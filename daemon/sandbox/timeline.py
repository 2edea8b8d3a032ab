"""The sandbox job script: which status and which events come at which simulated second of a job's life."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.sandbox.sim import SandboxJob

# Simulated durations (seconds at speed 1); divide by `speed` for real time.
PENDING_S = 20.0
QUEUED_S = 40.0
SETUP_S = 10.0  # model + data download at the start of `running`
STEP_S = 3.0
COMPRESSING_S = 30.0
UPLOADING_S = 30.0
CANCEL_S = 5.0  # cancel_requested -> cancelled
LOSS_POINTS = 40  # about this many `training_progress` events per job

TERMINAL = frozenset({"completed", "cancelled", "error", "user_error"})


def _event(kind: str, message: str, level: str = "info", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "level": level, "message": message, **fields}


def happy_path(job: SandboxJob) -> tuple[list[tuple[float, str]], list[tuple[float, dict[str, Any]]]]:
    run = job.run_start_s
    train_end = job.step_offset_s(job.total_steps)
    transitions = [
        (0.0, "pending"),
        (PENDING_S, "queued"),
        (run, "running"),
        (train_end, "compressing"),
        (train_end + COMPRESSING_S, "uploading"),
        (train_end + COMPRESSING_S + UPLOADING_S, "completed"),
    ]
    events: list[tuple[float, dict[str, Any]]] = [
        (0.0, _event("job_pending", "Fine tune request created")),
        (run, _event("job_start", "Job started")),
        (run + 1, _event("model_downloading", f"Downloading model {job.request.get('model')}")),
        (run + 4, _event("model_download_complete", "Model download complete")),
        (run + 5, _event("training_data_downloading", "Downloading training data")),
        (run + 7, _event("training_data_download_complete", "Training data download complete")),
    ]
    if job.request.get("wandb_key"):
        events.append((run + 8, _event("wandb_init", "Weights & Biases run initialised")))
    events.append((run + SETUP_S, _event("training_start", "Training started")))
    events += _training_events(job)
    events += [
        (train_end, _event("training_complete", "Training completed")),
        (train_end, _event("model_compressing", "Compressing model")),
        (train_end + COMPRESSING_S, _event("model_compression_complete", "Model compression complete")),
        (train_end + COMPRESSING_S, _event("model_uploading", "Uploading model")),
        (train_end + COMPRESSING_S + UPLOADING_S, _event("model_upload_complete", "Model upload complete")),
        (
            train_end + COMPRESSING_S + UPLOADING_S,
            _event("job_complete", f"Job finished: model {job.output_name} is ready", model_path=job.output_name),
        ),
    ]
    return transitions, sorted(events, key=lambda pair: pair[0])


def _training_events(job: SandboxJob) -> list[tuple[float, dict[str, Any]]]:
    total = job.total_steps
    every = max(1, total // LOSS_POINTS)
    events = []
    for step in range(1, total + 1):
        at = job.step_offset_s(step)
        if step % every == 0 or step == total:
            loss = job.loss_at(step)
            message = f"Step {step}/{total}: train loss {loss:.4f}"
            events.append((at, _event("training_progress", message, step=step, total_steps=total, loss=loss)))
        if step % job.steps_per_epoch == 0:
            epoch = step // job.steps_per_epoch
            events.append((at, _event("epoch_complete", f"Epoch {epoch} completed, at step {step}", step=step)))
    events += _spread(job, int(job.request.get("n_checkpoints") or 1), "checkpoint_save")
    if job.request.get("validation_file"):
        events += _spread(job, int(job.request.get("n_evals") or 0), "eval_complete")
    return events


def _spread(job: SandboxJob, count: int, kind: str) -> list[tuple[float, dict[str, Any]]]:
    """`count` events of `kind` at evenly spaced steps (checkpoints, evaluations)."""
    events = []
    for i in range(1, count + 1):
        step = max(1, round(job.total_steps * i / count))
        if kind == "eval_complete":
            eval_loss = round(job.loss_at(step) + 0.08, 4)
            message = f"Evaluation at step {step}: eval loss {eval_loss:.4f}"
            events.append((job.step_offset_s(step), _event(kind, message, step=step, eval_loss=eval_loss)))
        else:
            path = f"s3://sandbox-models/{job.id}/checkpoint-{step}"
            message = f"Checkpoint saved at step {step}"
            events.append((job.step_offset_s(step), _event(kind, message, step=step, checkpoint_path=path)))
    return events


def cut(
    job: SandboxJob,
    transitions: list[tuple[float, str]],
    events: list[tuple[float, dict[str, Any]]],
    cut_s: float,
) -> tuple[list[tuple[float, str]], list[tuple[float, dict[str, Any]]]]:
    """End the script at `cut_s`: a cancel (cancel_requested then cancelled) or the scripted outcome."""
    if cut_s >= transitions[-1][0]:
        return transitions, events
    kept_t = [pair for pair in transitions if pair[0] < cut_s]
    kept_e = [pair for pair in events if pair[0] < cut_s]
    by_user = job.cancel_at_s is not None and cut_s == (job.cancel_at_s - job.created_at_s) * job.speed
    if by_user:
        kept_t += [(cut_s, "cancel_requested"), (cut_s + CANCEL_S, "cancelled")]
        kept_e += [
            (cut_s, _event("cancel_requested", "Cancel requested by the user")),
            (cut_s + CANCEL_S, _event("job_stopped", "Job cancelled by the user")),
        ]
        return kept_t, kept_e
    assert job.outcome is not None
    kind = {"error": "job_error", "user_error": "job_user_error", "cancelled": "job_stopped"}[job.outcome.status]
    kept_t.append((cut_s, job.outcome.status))
    kept_e.append((cut_s, _event(kind, job.outcome.message, level="error")))
    return kept_t, kept_e
