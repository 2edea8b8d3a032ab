"""The training curve and checkpoints of a fine-tune as saved in the outbox by `poll`, read back by `report`.

The curve comes from Together's metrics operation (`GET /fine-tunes/{id}/metrics`, flat rows such as
`{"train/loss": 0.5, "train/global_step": 7}`) when it answered, from the events' messages otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from handlers.training.events import EVENTS_FILE, LossCurve, loss_curve, read_events

TRAINING_METRICS_FILE = "training_metrics.json"
CHECKPOINTS_FILE = "checkpoints.json"
_STEP_KEYS = ("train/global_step", "eval/global_step", "global_step", "train/step", "eval/step", "step")
_TRAIN_KEYS = ("train/loss", "train_loss", "loss")
_EVAL_KEYS = ("eval/loss", "eval/eval_loss", "eval_loss", "validation/loss")


def _first(row: Mapping[str, float], keys: Iterable[str]) -> float | None:
    return next((row[key] for key in keys if key in row), None)


def curve_from_metrics(rows: Iterable[Mapping[str, float]]) -> LossCurve:
    """Training and evaluation loss by global step (a row without a step counts by its position)."""
    curve = LossCurve()
    for index, row in enumerate(rows):
        step = _first(row, _STEP_KEYS)
        at = int(step) if step is not None else index
        if (train := _first(row, _TRAIN_KEYS)) is not None:
            curve.train.append((at, train))
        if (evaluation := _first(row, _EVAL_KEYS)) is not None:
            curve.eval.append((at, evaluation))
    curve.train.sort()
    curve.eval.sort()
    return curve


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except ValueError:
        return None


def training_curve(out_dir: Path) -> tuple[LossCurve, str]:
    """(curve, source): from the saved metrics when they have a training loss, else from events.jsonl
    (source "metrics", "events" or "none"). Blocking: call in a thread."""
    saved = _read_json(out_dir / TRAINING_METRICS_FILE)
    rows = saved.get("metrics") if isinstance(saved, dict) else None
    if isinstance(rows, list):
        curve = curve_from_metrics(row for row in rows if isinstance(row, dict))
        if curve.train:
            return curve, "metrics"
    curve = loss_curve(read_events(out_dir / EVENTS_FILE))
    return curve, "events" if curve.train else "none"


def read_checkpoints(out_dir: Path) -> list[dict[str, Any]]:
    """The checkpoints saved by `poll` ([] when there are none). Blocking: call in a thread."""
    saved = _read_json(out_dir / CHECKPOINTS_FILE)
    rows = saved.get("checkpoints") if isinstance(saved, dict) else None
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def checkpoint_note(checkpoints: list[dict[str, Any]]) -> str | None:
    """One report line listing the checkpoints (step and path), or None when there are none."""
    if not checkpoints:
        return None
    listed = ", ".join(f"step {c.get('step')} ({c.get('checkpoint_type') or 'checkpoint'})" for c in checkpoints)
    return f"Checkpoints on Together ({len(checkpoints)}, listed in {CHECKPOINTS_FILE}): {listed}."
