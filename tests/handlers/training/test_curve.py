"""handlers/training/curve.py: the curve from saved metrics rows first, from events.jsonl otherwise; checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from handlers.training.curve import (
    CHECKPOINTS_FILE,
    TRAINING_METRICS_FILE,
    checkpoint_note,
    curve_from_metrics,
    read_checkpoints,
    training_curve,
)
from handlers.training.events import EVENTS_FILE


def test_metrics_rows_give_train_and_eval_loss_by_global_step() -> None:
    """Train rows and eval rows are told apart by their keys and sorted by global step."""
    curve = curve_from_metrics(
        [
            {"train/loss": 1.0, "train/global_step": 20.0},
            {"train/loss": 2.0, "train/global_step": 10.0, "train/learning_rate": 1e-5},
            {"eval/loss": 1.5, "eval/global_step": 20.0},
        ]
    )
    assert curve.train == [(10, 2.0), (20, 1.0)] and curve.eval == [(20, 1.5)]


def test_training_curve_prefers_metrics_and_falls_back_to_events(tmp_path: Path) -> None:
    """With a metrics file holding a training loss the source is metrics; without one, events; with neither, none."""
    assert training_curve(tmp_path)[1] == "none"
    (tmp_path / EVENTS_FILE).write_text(json.dumps({"type": "epoch_complete", "step": 5, "loss": 0.7}) + "\n")
    assert training_curve(tmp_path) == (curve_from_metrics([{"loss": 0.7, "step": 5}]), "events")
    (tmp_path / TRAINING_METRICS_FILE).write_text(
        json.dumps({"metrics": [{"train/loss": 0.4, "train/global_step": 9}]})
    )
    curve, source = training_curve(tmp_path)
    assert source == "metrics" and curve.train == [(9, 0.4)]
    (tmp_path / TRAINING_METRICS_FILE).write_text(json.dumps({"metrics": []}))
    assert training_curve(tmp_path)[1] == "events"


def test_checkpoints_are_read_back_and_listed_in_one_line(tmp_path: Path) -> None:
    """The saved checkpoints come back as written; the report line names each step and type."""
    assert read_checkpoints(tmp_path) == [] and checkpoint_note([]) is None
    rows = [{"step": 5, "path": "s3://a", "checkpoint_type": "Intermediate"}, {"step": 10, "checkpoint_type": "Final"}]
    (tmp_path / CHECKPOINTS_FILE).write_text(json.dumps({"checkpoints": rows}))
    assert read_checkpoints(tmp_path) == rows
    note = checkpoint_note(rows)
    assert note is not None and "step 5 (Intermediate)" in note and "step 10 (Final)" in note
