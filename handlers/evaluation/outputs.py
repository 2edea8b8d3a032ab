"""The evaluate step's files: predictions-<model>.jsonl (one line per turn, with finish_reason and token counts)
and each model's metrics block with its completeness (answered, truncated, permanent errors, missing)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from daemon import fastjson
from daemon.spool.files import atomic_write_bytes
from handlers.evaluation import scoring
from handlers.evaluation.asking import Target, needs_asking
from handlers.evaluation.stories import EvalStory, item_id

# The finish_reason of an answer cut short by max_tokens or the context window.
TRUNCATED_FINISH = "length"


def safe_name(alias: str) -> str:
    """A file-name-safe form of a model alias (model names such as `org/model` contain slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", alias).lstrip(".") or "model"


def score_and_write(
    out_dir: Path,
    protocol: str,
    targets: list[Target],
    stories: list[EvalStory],
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Score every model and write its predictions file (blocking: run in a thread); returns metrics per alias."""
    gold = [scoring.GoldTurn(s.id, t.turn_id, s.source, t.answers) for s in stories for t in s.turns]
    questions = {(s.id, t.turn_id): t.question for s in stories for t in s.turns}
    per_model: dict[str, dict[str, Any]] = {}
    for target in targets:
        mine = [records[target.alias].get(item_id(*turn.key)) for turn in gold]
        predictions = {t.key: r["prediction"] for t, r in zip(gold, mine, strict=True) if r and r["error"] is None}
        metrics, turn_scores = scoring.model_metrics(gold, predictions, cookbook=protocol == "cookbook")
        endpoint = str(URL(target.endpoint.url).with_user(None).with_query(None))
        per_model[target.alias] = {"model": target.model, "endpoint": endpoint, **metrics, **counts(mine)}
        lines = (
            fastjson.dumps(prediction_line(turn, questions[turn.key], r, turn_scores.get(turn.key))) + b"\n"
            for turn, r in zip(gold, mine, strict=True)
        )
        data = b"".join(lines)
        atomic_write_bytes(out_dir / f"predictions-{safe_name(target.alias)}.jsonl", data)
    return per_model


def counts(records: list[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Completeness of one model: answered (and how many of those truncated), permanent errors by kind, missing
    (never asked, or last failed for a transient reason), and tokens."""
    final = [r for r in records if r is not None and not needs_asking(r)]
    kinds = Counter(str(r["error_kind"]) for r in final if r.get("error_kind"))
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in final)
    completion = sum(int(r.get("completion_tokens") or 0) for r in final)
    answered = [r for r in final if r.get("error") is None]
    missing = len(records) - len(final)
    return {
        "answered": len(answered),
        "truncated": sum(1 for r in answered if r.get("finish_reason") == TRUNCATED_FINISH),
        "errors": kinds.total(),
        "missing": missing,
        "error_kinds": dict(kinds),
        "completeness": {
            "items": len(records),
            "answered": len(answered),
            "permanent_errors": kinds.total(),
            "missing": missing,
            "missing_share": round(missing / max(1, len(records)), 4),
        },
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
    }


def prediction_line(
    turn: scoring.GoldTurn, question: str, record: Mapping[str, Any] | None, score: scoring.TurnScore | None
) -> dict[str, Any]:
    """One line of predictions-<model>.jsonl."""
    line: dict[str, Any] = {
        "id": turn.story_id,
        "turn_id": turn.turn_id,
        "question": question,
        "answers": list(turn.answers),
        "prediction": record.get("prediction") if record else None,
        "em": score.em if score else 0.0,
        "f1": score.f1 if score else 0.0,
    }
    if record is not None:
        line |= {k: record.get(k) for k in ("finish_reason", "prompt_tokens", "completion_tokens")}
    if record is None or record.get("error") is not None:
        line["error"] = record["error"] if record else "not asked"
        line["error_kind"] = "missing" if needs_asking(record) else (record or {}).get("error_kind")
    return line
