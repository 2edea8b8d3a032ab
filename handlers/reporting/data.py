"""What a report shows, read from the job's outbox folder (dataset.json, validation.json, metrics.json, the
predictions, eval.jsonl, events.jsonl, status.json) and from the step outputs when the report is a step.
Blocking file reads: call in a thread. Every file is optional and read defensively (a failed job has few).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.jobs.context import REMOTE_ID_KEYS, JournalKey
from daemon.spool.files import read_json
from handlers.reporting.analysis import ModelAnalysis, analyse, turns_from_lines
from handlers.training.curve import read_checkpoints, training_curve
from handlers.training.events import LossCurve

# Besides the journal's remote ids, the step outputs name the output model under this key (before poll ends).
OUTPUT_MODEL_KEY = "model_output_name"
SANDBOX_MODEL_PREFIX = "sandbox/"
LOWEST_TURNS = 5


@dataclass
class ReportData:
    """Everything the report shows."""

    job_id: str
    name: str
    out_dir: Path
    status: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    remote_ids: dict[str, str]
    dataset: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    curve: LossCurve = field(default_factory=LossCurve)
    curve_source: str = "none"  # metrics | events | none (handlers/training/curve.py)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    analyses: list[ModelAnalysis] = field(default_factory=list)
    stories: dict[str, str] = field(default_factory=dict)  # story id -> story text (for excerpts)
    simulated: bool = False
    charts: dict[str, bytes] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when the job ended without completing (the report then leads with what went wrong)."""
        return str(self.status.get("status")) in ("failed", "cancelled")


def first_model(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The first model's block of metrics.json (its scale is every model's), or {}."""
    models = (metrics or {}).get("models")
    first = next(iter(models.values()), None) if isinstance(models, dict) else None
    return first if isinstance(first, dict) else {}


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The object lines of a JSONL file (none when it is missing; bad lines skipped)."""
    try:
        fh = path.open(encoding="utf-8")
    except OSError:
        return
    with fh:
        for line in fh:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


def remote_ids(inputs: Mapping[str, Mapping[str, Any]], status: Mapping[str, Any]) -> dict[str, str]:
    """The job's remote ids (files, fine-tune, output model) from the step outputs and the status' journal ids."""
    found: dict[str, str] = {}
    for output in inputs.values():
        for key in (*REMOTE_ID_KEYS, OUTPUT_MODEL_KEY):
            value = output.get(key)
            if isinstance(value, str) and value and value not in found.values():
                found.setdefault(key, value)
    remote = status.get("remote")
    for key, value in remote.items() if isinstance(remote, dict) else ():
        if isinstance(value, str) and value:
            found.setdefault(str(key), value)
    return found


def _simulated(data: ReportData) -> bool:
    if data.metrics is not None and data.metrics.get("simulated"):
        return True
    if any(output.get("simulated") for output in data.inputs.values()):
        return True
    models = (v for k, v in data.remote_ids.items() if k in (JournalKey.MODEL, OUTPUT_MODEL_KEY))
    return any(v.startswith(SANDBOX_MODEL_PREFIX) for v in models)


def safe_name(alias: str) -> str:
    """The file-name-safe form of a model alias, as the evaluate step names predictions-<alias>.jsonl."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", alias).lstrip(".") or "model"


def _analyses(out_dir: Path, metrics: Mapping[str, Any], sources: Mapping[str, str]) -> list[ModelAnalysis]:
    analyses = []
    for alias in metrics.get("models") or {}:
        lines = read_jsonl(out_dir / f"predictions-{safe_name(str(alias))}.jsonl")
        turns = turns_from_lines(lines, sources)
        if turns:
            analyses.append(analyse(str(alias), turns, LOWEST_TURNS))
    return analyses


def _stories(eval_file: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(story id -> source, story id -> story text) from the prepare step's eval.jsonl."""
    sources: dict[str, str] = {}
    texts: dict[str, str] = {}
    for row in read_jsonl(eval_file):
        story_id = str(row.get("id"))
        sources[story_id] = str(row.get("source") or "")
        text = row.get("story") or str(row.get("system") or "").partition("Story:")[2] or row.get("system")
        texts[story_id] = str(text or "").strip()
    return sources, texts


def gather(
    job_id: str,
    name: str,
    out_dir: Path,
    inputs: Mapping[str, Mapping[str, Any]],
    status: Mapping[str, Any] | None = None,
) -> ReportData:
    """Read every artifact of the job's folder; `status` defaults to its status.json."""
    document = dict(status) if status is not None else read_json(out_dir / "status.json") or {}
    steps = {str(k): dict(v) for k, v in inputs.items()}
    data = ReportData(job_id, name, out_dir, document, steps, remote_ids(steps, document))
    data.dataset = read_json(out_dir / "dataset.json")
    data.validation = read_json(out_dir / "validation.json")
    metrics_file = steps.get("evaluate", {}).get("metrics")
    data.metrics = read_json(Path(metrics_file) if metrics_file else out_dir / "metrics.json")
    data.curve, data.curve_source = training_curve(out_dir)
    data.checkpoints = read_checkpoints(out_dir)
    if data.metrics and data.metrics.get("models"):
        eval_file = steps.get("prepare", {}).get("eval_file")
        sources, data.stories = _stories(Path(eval_file) if eval_file else out_dir / "eval.jsonl")
        data.analyses = _analyses(out_dir, data.metrics, sources)
    data.simulated = _simulated(data)
    return data
