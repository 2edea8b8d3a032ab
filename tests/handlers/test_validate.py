"""Tests of the `validate` step: every rule reported with its line, the report file, and the step's verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from together.lib import check_file

from daemon.errors import DatasetError
from daemon.spec import DatasetSpec
from handlers import prepare, validate
from handlers.dataset.validator import validate_file
from tests.handlers.dataset_helpers import coqa_rows, make_context, write_jsonl

OK = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def msgs(*pairs: Any) -> dict[str, Any]:
    """A conversation line from (role, content) pairs or raw message objects."""
    out = [p if not isinstance(p, tuple) else {"role": p[0], "content": p[1]} for p in pairs]
    return {"messages": out}


# One problem kind per line; the right-hand side is what the validator must report for that line.
BAD_LINES: list[tuple[bytes, set[str]]] = [
    (json.dumps({"messages": [{"role": "system", "content": "s"}, *OK]}).encode(), set()),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', {"not_utf8"}),
    (b'{"messages": [', {"invalid_json"}),
    (b"[1, 2]", {"not_object"}),
    (b'{"foo": 1}', {"no_format"}),
    (json.dumps({"messages": OK, "text": "x"}).encode(), {"multiple_formats"}),
    (json.dumps({"text": "hello"}).encode(), {"mixed_formats"}),
    (json.dumps({"messages": OK, "id": 3}).encode(), {"extra_key"}),
    (json.dumps({"messages": "hi"}).encode(), {"messages_not_list"}),
    (json.dumps({"messages": []}).encode(), {"messages_empty"}),
    (json.dumps(msgs(("user", "q"), "hi", ("assistant", "a"))).encode(), {"message_not_object"}),
    (
        json.dumps(msgs({"role": "user", "content": "q", "name": "bob"}, ("assistant", "a"))).encode(),
        {"message_extra_key"},
    ),
    (json.dumps(msgs(("user", "q"), ("bot", "x"), ("assistant", "a"))).encode(), {"bad_role"}),
    (json.dumps(msgs(("user", 5), ("assistant", "a"))).encode(), {"bad_content"}),
    (json.dumps(msgs(("user", "q"), ("assistant", "  "))).encode(), {"empty_content"}),
    (
        json.dumps(
            msgs({"role": "user", "content": "q", "weight": 2}, {"role": "assistant", "content": "a", "weight": True})
        ).encode(),
        {"bad_weight"},
    ),
    (json.dumps(msgs(("assistant", "a"), ("user", "q"))).encode(), {"bad_first_role"}),
    (json.dumps(msgs(("user", "q"), ("user", "q2"), ("assistant", "a"))).encode(), {"not_alternating"}),
    (json.dumps(msgs(("system", "s"), ("user", "q"))).encode(), {"no_assistant"}),
    (json.dumps(msgs(("user", "q" * 400), ("assistant", "a"))).encode(), {"too_long"}),
    (b"   ", set()),
]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    """Raw lines, newline-terminated."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_each_kind_of_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    """A file with one kind of problem per line: each kind is reported on exactly its line."""
    path = write_lines(tmp_path / "train.jsonl", [line for line, _ in BAD_LINES])
    report = validate_file(path, max_tokens=50, min_examples=100)
    found: dict[int | None, set[str]] = {}
    for problem in report.problems:
        found.setdefault(problem["line"], set()).add(problem["kind"])
    expected = {number: kinds for number, (_, kinds) in enumerate(BAD_LINES, 1) if kinds}
    assert found == expected
    assert report.kinds["too_few_examples"] == 1  # the 21st problem: counted, not listed in full
    assert not report.valid
    assert report.examples == len(BAD_LINES) - 1  # the blank line is skipped, as Together does
    assert report.kinds["bad_weight"] == 2


def test_first_twenty_in_full_then_counts(tmp_path: Path) -> None:
    """Only the first 20 problems are kept in full; every problem is counted by kind."""
    path = write_jsonl(tmp_path / "train.jsonl", [msgs(("user", ""))] * 30)
    document = validate_file(path).as_dict()
    assert len(document["problems"]) == 20
    assert document["problems"][19]["line"] == 10  # two problems per line
    assert document["problem_count"] == 60
    assert document["problems_by_kind"] == {"empty_content": 30, "no_assistant": 30}


def test_prepared_coqa_is_valid_and_together_agrees(tmp_path: Path) -> None:
    """What prepare writes passes our validator and the SDK's check; counts match dataset.json."""
    source = write_jsonl(tmp_path / "src.jsonl", coqa_rows(12))
    out = prepare.prepare_dataset(DatasetSpec(source=str(source)), tmp_path / "out", tmp_path / "work", with_eval=False)
    report = validate_file(Path(out["train_file"]), max_tokens=4096)
    assert report.valid, report.problems
    assert report.stats.as_dict() == out["counts"]["train"]
    assert check_file(Path(out["train_file"]))["is_check_passed"]


def test_empty_file(tmp_path: Path) -> None:
    """An empty file is one file-level problem."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"")
    report = validate_file(path)
    assert [(p["line"], p["kind"]) for p in report.problems] == [(None, "empty_file")]


def test_line_over_size_limit(tmp_path: Path) -> None:
    """A line over 16 MiB is reported by number and skipped without holding it; later lines are still read."""
    path = tmp_path / "train.jsonl"
    big = json.dumps(msgs(("user", "x" * (17 * 2**20)), ("assistant", "a"))).encode()
    write_lines(path, [json.dumps(msgs(*OK)).encode(), big, json.dumps({"messages": []}).encode()])
    report = validate_file(path)
    assert [(p["line"], p["kind"]) for p in report.problems] == [(2, "line_too_large"), (3, "messages_empty")]


def test_other_formats_checked(tmp_path: Path) -> None:
    """Instruction and text files are recognised; empty fields are reported."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "", "completion": "c"}])
    report = validate_file(path)
    assert report.format == "instruction"
    assert [(p["line"], p["kind"]) for p in report.problems] == [(2, "bad_field")]


def prepared_context(tmp_path: Path, rows: list[Any], **dataset: Any) -> tuple[Any, dict[str, Any]]:
    """A job context and a prepare output pointing at files written from `rows` (split in train/validation)."""
    ctx = make_context(tmp_path, {"name": "v", "dataset": {"source": "unused", **dataset}})
    train = write_jsonl(ctx.out_dir / "train.jsonl", rows[:-2])
    validation = write_jsonl(ctx.out_dir / "validation.jsonl", rows[-2:])
    return ctx, {"prepare": {"train_file": str(train), "validation_file": str(validation)}}


async def test_run_passes_and_writes_report(tmp_path: Path) -> None:
    """A clean dataset: the step returns valid with counts and writes validation.json for both files."""
    ctx, inputs = prepared_context(tmp_path, [msgs(*OK)] * 6)
    result = await validate.run(ctx, inputs)
    assert result["valid"] is True
    assert (result["examples"], result["validation_examples"]) == (4, 2)
    document = json.loads((ctx.out_dir / "validation.json").read_text())
    assert document["valid"] is True
    assert sorted(document["files"]) == ["train.jsonl", "validation.jsonl"]


async def test_run_fails_naming_file_line_and_counts(tmp_path: Path) -> None:
    """A bad validation file fails the step; the error names the file, the first line and counts per kind."""
    rows = [msgs(*OK)] * 4 + [msgs(("user", "q")), msgs(("assistant", "a"))]
    ctx, inputs = prepared_context(tmp_path, rows)
    with pytest.raises(DatasetError) as caught:
        await validate.run(ctx, inputs)
    message = str(caught.value)
    assert "validation.jsonl is not a valid fine-tuning file: line 1: no assistant message" in message
    assert "(no_assistant x1, bad_first_role x1)" in message
    document = json.loads((ctx.out_dir / "validation.json").read_text())
    assert document["valid"] is False
    assert document["files"]["train.jsonl"]["valid"] is True


async def test_run_applies_min_examples_and_context(tmp_path: Path) -> None:
    """min_examples comes from the dataset spec; the context limit from finetune.max_seq_length."""
    ctx = make_context(
        tmp_path,
        {"name": "v", "dataset": {"source": "x", "min_examples": 3}, "finetune": {"model": "m", "max_seq_length": 20}},
    )
    train = write_jsonl(ctx.out_dir / "train.jsonl", [msgs(("user", "q" * 200), ("assistant", "a"))])
    with pytest.raises(DatasetError, match=r"line 1: about 61 tokens.*too_long x1, too_few_examples x1"):
        await validate.run(ctx, {"prepare": {"train_file": str(train), "validation_file": None}})


async def prepared_by_prepare(
    tmp_path: Path, rows: list[Any], dataset: dict[str, Any] | None = None, **finetune: Any
) -> tuple[Any, dict[str, Any]]:
    """A job context and the real `prepare` step's output for CoQA `rows` (more `dataset` keys if given)."""
    source = write_jsonl(tmp_path / "src.jsonl", rows)
    spec: dict[str, Any] = {"name": "v", "dataset": {"source": str(source), "validation_size": 2, **(dataset or {})}}
    if finetune:
        spec["finetune"] = {"model": "m", **finetune}
    ctx = make_context(tmp_path, spec)
    return ctx, {"prepare": await prepare.run(ctx, {})}


@pytest.mark.parametrize("max_turns", [None, 2])
async def test_prepared_coqa_is_trusted_unchanged_with_the_full_reports_counts(
    tmp_path: Path, max_turns: int | None
) -> None:
    """CoQA checked as prepare wrote it (also cut to max_turns) is not read again; its report is the full one."""
    ctx, inputs = await prepared_by_prepare(tmp_path, coqa_rows(12), {"max_turns": max_turns})
    await validate.run(ctx, inputs)
    files = json.loads((ctx.out_dir / "validation.json").read_text())["files"]
    for name, document in files.items():
        assert document.pop("method") == "checked as written"
        full = validate_file(ctx.out_dir / name, fast=False, min_examples=document["min_examples"]).as_dict()
        full.pop("method")
        assert document == full


async def test_a_file_changed_after_prepare_is_read_and_its_bad_line_named(tmp_path: Path) -> None:
    """Appending a bad line after prepare voids the proof: validate reads the file and names the line."""
    ctx, inputs = await prepared_by_prepare(tmp_path, coqa_rows(12))
    train = Path(inputs["prepare"]["train_file"])
    with open(train, "ab") as fh:
        fh.write(b'{"messages": []}\n')
    with pytest.raises(
        DatasetError, match=r"train.jsonl is not a valid fine-tuning file: line 11: 'messages' is empty"
    ):
        await validate.run(ctx, inputs)


async def test_examples_over_the_context_are_each_named_despite_the_proof(tmp_path: Path) -> None:
    """A proof says nothing about context length beyond the longest example: too-long lines are read and named."""
    ctx, inputs = await prepared_by_prepare(tmp_path, coqa_rows(12), max_seq_length=64)
    long_lines = validate_file(Path(inputs["prepare"]["train_file"]), max_tokens=64, fast=False).kinds["too_long"]
    assert long_lines > 1
    with pytest.raises(DatasetError, match=rf"too_long x{long_lines}\)"):
        await validate.run(ctx, inputs)
    files = json.loads((ctx.out_dir / "validation.json").read_text())["files"]
    assert files["train.jsonl"]["method"] == "msgspec"  # read, not trusted
