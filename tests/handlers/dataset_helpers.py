"""Fixtures for the prepare/validate/check tests: CoQA-shaped rows written for the tests, file writers, a context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from daemon.config import Settings
from daemon.jobs.context import JobContext
from daemon.spec import JobSpec
from tests.memory import DictJournal, MemoryItems, ProgressLog

# Stories chosen to exercise the bytes `datasets`/pandas write: slashes, non-ASCII, astral characters, quotes,
# backslashes, control characters, DEL, line separators, braces (the template is filled with .format).
STORIES = [
    (
        "mctest",
        'A cat named Tom/Tim lived in a café.\nHe liked "milk" and {cream}.',
        [("Who lived in the café?", "Tom/Tim"), ("What did he like?", "milk"), ("Anything else?", "{cream}")],
    ),
    (
        "cnn",
        "Prices rose 5% in 2014 \\ 2015 — naïve forecasts failed.\tAnalysts shrugged 😀.",
        [
            ("By how much?", "5%"),
            ("When?", "2014 \\ 2015"),
            ("What failed?", "naïve forecasts"),
            ("How did analysts react?", "they shrugged 😀"),
        ],
    ),
    (
        "wikipedia",
        "The river\u2028runs north\x7f past Zürich, Москва and 東京.",
        [("Which way does it run?", "north"), ("Past which cities?", "Zürich, Москва and 東京")],
    ),
    (
        "race",
        "Unicode controls \x01\x1f and a lone brace } stay as they are.",
        [
            ("What stays?", "controls"),
            ("Which brace?", "}"),
            ("Is it lone?", "yes"),
            ("Sure?", "unknown"),
            ("Really?", "yes"),
        ],
    ),
    ("gutenberg", "Short story.", [("Is it short?", "yes")]),
]


def coqa_rows(count: int | None = None) -> list[dict[str, Any]]:
    """Rows in the hub's schema (`stanfordnlp/coqa`): source, story, questions, answers{input_text, spans}."""
    rows = []
    for source, story, turns in STORIES:
        answers = [a for _, a in turns]
        rows.append(
            {
                "source": source,
                "story": story,
                "questions": [q for q, _ in turns],
                "answers": {
                    "input_text": answers,
                    "answer_start": [i for i in range(len(answers))],
                    "answer_end": [i + 3 for i in range(len(answers))],
                },
            }
        )
    if count is None:
        return rows
    return [dict(rows[i % len(rows)], story=f"{i}: {rows[i % len(rows)]['story']}") for i in range(count)]


def original_coqa(rows: list[dict[str, Any]], split: str = "dev") -> dict[str, Any]:
    """The same stories in the original CoQA json, with ids, turn ids and three additional answer sets."""
    data = []
    for index, row in enumerate(rows):
        answers = row["answers"]["input_text"]

        def answer(text: str, turn: int) -> dict[str, Any]:
            return {"span_start": 0, "span_end": 3, "span_text": "abc", "input_text": text, "turn_id": turn}

        data.append(
            {
                "source": row["source"],
                "id": f"{split}-story-{index}",
                "filename": f"story{index}.txt",
                "story": row["story"],
                "questions": [{"input_text": q, "turn_id": t} for t, q in enumerate(row["questions"], 1)],
                "answers": [answer(a, t) for t, a in enumerate(answers, 1)],
                "additional_answers": {
                    str(k): [answer(f"{a} ({k})", t) for t, a in enumerate(answers, 1)] for k in range(3)
                },
            }
        )
    return {"version": "1.0", "data": data}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One JSON value per line (UTF-8, non-ASCII kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a parquet file (types inferred by pyarrow, as the hub's converter does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_context(tmp_path: Path, spec: dict[str, Any]) -> JobContext:
    """A JobContext for one job of `spec` with its outbox and work folders under tmp_path."""
    job = JobSpec.model_validate(spec)
    out_dir, work_dir = tmp_path / "outbox" / job.name, tmp_path / "state" / job.name
    out_dir.mkdir(parents=True)
    work_dir.mkdir(parents=True)
    return JobContext(
        job_id=f"{job.name}-0000",
        spec=job,
        settings=Settings(),
        out_dir=out_dir,
        work_dir=work_dir,
        journal=DictJournal(),
        items=MemoryItems(),
        progress=ProgressLog(),
    )
