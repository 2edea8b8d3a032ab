"""Reading parquet for `prepare`: only the projected columns (of CoQA's answers, only `input_text`), a batch
decoded ahead in a helper thread, and that thread gone as soon as the reader is."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from daemon.errors import DatasetError
from handlers.dataset.loading import read_parquet
from handlers.dataset.mapping import CoqaMapper
from tests.handlers.dataset_helpers import coqa_rows, write_parquet
from tests.handlers.test_prepare import run_prepare

TEMPLATE = "Story: {story}"


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("parquet-read-ahead")]


def test_projection_reads_only_the_answer_texts(tmp_path: Path) -> None:
    """Over several batches, rows hold the projected columns, with the answers' `input_text` list in place."""
    rows = coqa_rows(2500)
    source = write_parquet(tmp_path / "train.parquet", rows)
    read = list(read_parquet(source, CoqaMapper(TEMPLATE).projection))
    assert [number for number, _ in read] == list(range(1, 2501))
    assert [set(row) for _, row in read[:1]] == [{"story", "questions", "answers"}]
    assert [row["answers"] for _, row in read] == [row["answers"]["input_text"] for row in rows]
    assert [row["story"] for _, row in read] == [row["story"] for row in rows]
    assert read_ahead_threads() == []


def test_without_projection_every_column_is_read(tmp_path: Path) -> None:
    """No projection (evaluation items) reads whole rows, structs as dicts."""
    rows = coqa_rows()
    source = write_parquet(tmp_path / "train.parquet", rows)
    assert [row for _, row in read_parquet(source)] == rows


def test_a_null_answers_struct_is_named(tmp_path: Path) -> None:
    """A row whose answers struct is null is reported with its row, as without the field projection."""
    rows = [dict(row, answers=None) if i == 2 else row for i, row in enumerate(coqa_rows())]
    source = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DatasetError, match=r"train\.parquet row 3: column 'answers' must be a list"):
        run_prepare(tmp_path, source=str(source))


def test_stopping_early_ends_the_read_ahead_thread(tmp_path: Path) -> None:
    """A reader closed after its first rows (a `limit`, an error, a cancel) leaves no helper thread behind."""
    source = write_parquet(tmp_path / "train.parquet", coqa_rows(5000))
    reader = read_parquet(source, CoqaMapper(TEMPLATE).projection)
    assert next(reader)[0] == 1
    assert len(read_ahead_threads()) == 1
    reader.close()
    assert read_ahead_threads() == []
