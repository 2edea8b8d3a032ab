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
LOSS_POINTS = 40  # about this many rows of training metrics per job (GET /v1/fine-tunes/{id}/metrics)
EVAL_LOSS_GAP = 0.08  # the eval loss sits this far above the training loss at the same step

TERMINAL = frozenset({"completed", "cancelled", "error", "user_error"})


# The contract's FineTuneEvent requires these fields besides object, created_at, message and type.
EVENT_DEFAULTS: dict[str, Any] = {
    "param_count": 0,
    "token_count": 0,
    "total_steps": 0,
    "wandb_url": "",
    "step": 0,
    "checkpoint_path": "",
    "model_path": "",
    "training_offset": 0,
    "hash": "",
}


def _event(kind: str, message: str, level: str = "info", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "level": level, "message": message, **EVENT_DEFAULTS, **fields}


def metric_steps(job: SandboxJob) -> list[int]:
    """The steps at which training metrics are logged (about LOSS_POINTS of them, always the last one)."""
    every = max(1, job.total_steps // LOSS_POINTS)
    return [s for s in range(1, job.total_steps + 1) if s % every == 0 or s == job.total_steps]


def eval_steps(job: SandboxJob) -> list[int]:
    """The steps at which the validation set is evaluated (`n_evals` of them, when there is a validation file)."""
    count = int(job.request.get("n_evals") or 0) if job.request.get("validation_file") else 0
    return [max(1, round(job.total_steps * i / count)) for i in range(1, count + 1)]


def checkpoint_steps(job: SandboxJob) -> list[int]:
    """The steps at which a checkpoint is saved (`n_checkpoints`, evenly spread)."""
    count = int(job.request.get("n_checkpoints") or 1)
    return [max(1, round(job.total_steps * i / count)) for i in range(1, count + 1)]


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
    """Epoch ends and checkpoints, their messages carrying the loss (events have no loss field: the dense curve
    is the metrics operation's)."""
    total = job.total_steps
    events = []
    for step in range(job.steps_per_epoch, total + 1, job.steps_per_epoch):
        epoch = step // job.steps_per_epoch
        message = f"Epoch {epoch} completed, at step {step}: train loss {job.loss_at(step):.4f}"
        events.append((job.step_offset_s(step), _event("epoch_complete", message, step=step, total_steps=total)))
    for step in checkpoint_steps(job):
        path = f"s3://sandbox-models/{job.id}/checkpoint-{step}"
        message = f"Checkpoint saved at step {step}"
        saved = _event("checkpoint_save", message, step=step, total_steps=total, checkpoint_path=path)
        events.append((job.step_offset_s(step), saved))
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
    kind = {"error": "job_error", "user_error": "job_error", "cancelled": "job_stopped"}[job.outcome.status]
    kept_t.append((cut_s, job.outcome.status))
    kept_e.append((cut_s, _event(kind, job.outcome.message, level=job.outcome.level)))
    if job.outcome.restarted:
        kept_e.append((cut_s, _event("job_restarted", "Job restarted", level=job.outcome.level)))
    return kept_t, kept_e
