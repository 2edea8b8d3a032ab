"""handlers/training/events.py: loss figures parsed once from event messages, events.jsonl read back, the curve."""

from __future__ import annotations

from pathlib import Path

from handlers.training.events import EventLog, loss_curve, read_events, with_metrics


def test_loss_is_parsed_from_messages_when_not_a_field() -> None:
    """Train and eval losses written only in the message become fields; given fields are kept."""
    assert with_metrics({"message": "Step 5/10: train loss 1.25"})["loss"] == 1.25
    parsed = with_metrics({"message": "Evaluation at step 5: eval loss 0.9"})
    assert parsed["eval_loss"] == 0.9 and "loss" not in parsed
    assert with_metrics({"message": "loss=2e-1", "loss": 0.3})["loss"] == 0.3
    assert "loss" not in with_metrics({"message": "Training started"})


def test_loss_curve_reads_the_fields_the_poll_step_saved() -> None:
    """Loss comes from numeric fields (parsed from the text when saved); eval loss is kept apart; others skipped."""
    events = [
        {"message": "Training started", "step": 0},
        {"message": "Step 3/10: train loss 1.2500"},
        {"message": "whatever", "step": 5, "loss": 0.9},
        {"message": "Evaluation at step 5: eval loss 1.0500"},
        {"message": "Epoch completed at step 10"},
    ]
    curve = loss_curve(with_metrics(e) for e in events)
    assert curve.train == [(3, 1.25), (5, 0.9)]
    assert curve.eval == [(5, 1.05)]


async def test_event_log_saves_each_event_once_and_reads_back(tmp_path: Path) -> None:
    """Events seen twice are saved once, with their parsed loss; a broken line or a missing file loses nothing."""
    path = tmp_path / "events.jsonl"
    assert read_events(path) == []
    log = await EventLog.load(path)
    first = {"created_at": "t1", "type": "training_progress", "message": "Step 1/2: train loss 1.5"}
    assert await log.add([first]) == 1
    assert await log.add([first, {"created_at": "t2", "type": "job_complete", "message": "done"}]) == 1
    path.write_text(path.read_text() + "not json\n[1, 2]\n")
    again = await EventLog.load(path)
    assert [e["message"] for e in again.events] == ["Step 1/2: train loss 1.5", "done"]
    assert again.last_loss() == 1.5


def test_failure_message_prefers_the_failure_event_over_notices() -> None:
    """job_error (any level spelling) beats a later job_restarted; an error-level event of another type comes next;
    job_stopped last; life-cycle notices never count."""
    log = EventLog(Path("unused"), [])
    log.events = [
        {"type": "job_start", "level": "info", "message": "started"},
        {"type": "job_error", "level": "legacy_ierror", "message": "CUDA out of memory"},
        {"type": "job_restarted", "level": "legacy_ierror", "message": "Job restarted"},
    ]
    assert log.failure_message() == "CUDA out of memory"
    log.events = [
        {"type": "job_stopped", "level": "info", "message": "stopped"},
        {"type": "warning", "level": "legacy_ierror", "message": "disk full"},
        {"type": "job_restarted", "level": "error", "message": "Job restarted"},
    ]
    assert log.failure_message() == "disk full"
    log.events = [{"type": "job_stopped", "level": None, "message": "stopped by billing"}]
    assert log.failure_message() == "stopped by billing"
    log.events = [{"type": "job_restarted", "level": "error", "message": "Job restarted"}]
    assert log.failure_message() is None
