"""Tests of `finetuned check SPEC`: spec problems, dataset problems with their lines, counts, exit codes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from daemon.check import check_spec
from daemon.config import Settings
from tests.handlers.dataset_helpers import coqa_rows, original_coqa, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_check(path: Path, settings: Settings | None = None) -> tuple[int, str]:
    """check_spec's exit code and printed text."""
    out = io.StringIO()
    code = check_spec(path, settings or Settings(), out)
    return code, out.getvalue()


def write_spec(tmp_path: Path, dataset: dict[str, Any], **sections: Any) -> Path:
    """A JSON spec named job.json."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "job", "dataset": dataset, **sections}), encoding="utf-8")
    return path


def test_good_spec_prints_counts_and_exits_zero(tmp_path: Path) -> None:
    """A clean CoQA dataset: counts for train, validation and eval, estimated tokens, exit 0."""
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", coqa_rows(20))
    (data / "validation.json").write_text(json.dumps(original_coqa(coqa_rows())), encoding="utf-8")
    spec = write_spec(tmp_path, {"source": str(data), "validation_size": 4}, evaluate={"models": ["m"]})
    code, text = run_check(spec)
    assert code == 0, text
    assert "train.jsonl: 16 examples" in text
    assert "validation.jsonl: 4 examples" in text
    assert "eval.jsonl: 5 items, 15 turns" in text
    assert re.search(r"~[\d,]+ tokens", text)
    assert text.rstrip().endswith("result: ok, ready to submit")


def test_spec_problems_are_printed_with_lines(tmp_path: Path) -> None:
    """A spec with an unknown key and a bad value lists both, with their YAML lines, and exits 1."""
    path = tmp_path / "job.yaml"
    path.write_text("name: job\ndataset:\n  source: x\n  limit: -1\n  colour: blue\n", encoding="utf-8")
    code, text = run_check(path)
    assert code == 1
    assert "line 4: dataset.limit" in text
    assert "line 5: dataset.colour: unknown key" in text


def test_dataset_with_a_dozen_kinds_of_problems(tmp_path: Path) -> None:
    """A messages dataset with twelve kinds of problems: each is printed with its line, and the counts."""
    ok = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows: list[dict[str, Any]] = [
        {"messages": ok},  # line 1: fine
        {"messages": "hello"},  # 2 messages_not_list
        {"messages": []},  # 3 messages_empty
        {"messages": [ok[0], "hi", ok[1]]},  # 4 message_not_object
        {"messages": [{**ok[0], "name": "x"}, ok[1]]},  # 5 message_extra_key
        {"messages": [ok[0], {"role": "robot", "content": "x"}, ok[1]]},  # 6 bad_role
        {"messages": [{"role": "user", "content": ["q"]}, ok[1]]},  # 7 bad_content
        {"messages": [ok[0], {"role": "assistant", "content": ""}]},  # 8 empty_content
        {"messages": [{**ok[0], "weight": 0.5}, ok[1]]},  # 9 bad_weight
        {"messages": [ok[1], ok[0]]},  # 10 bad_first_role
        {"messages": [ok[0], ok[0], ok[1]]},  # 11 not_alternating
        {"messages": [ok[0]]},  # 12 no_assistant
        {"messages": [{"role": "user", "content": "q" * 4000}, ok[1]]},  # 13 too_long
    ]
    source = write_jsonl(tmp_path / "chats.jsonl", rows)
    spec = write_spec(
        tmp_path,
        {"source": str(source), "format": "messages", "eval_split": None, "min_examples": 50},
        finetune={"model": "m", "max_seq_length": 512},
    )
    code, text = run_check(spec)
    assert code == 1
    expected = [
        (2, "messages_not_list"),
        (3, "messages_empty"),
        (4, "message_not_object"),
        (5, "message_extra_key"),
        (6, "bad_role"),
        (7, "bad_content"),
        (8, "empty_content"),
        (9, "bad_weight"),
        (10, "bad_first_role"),
        (11, "not_alternating"),
        (12, "no_assistant"),
        (13, "too_long"),
    ]
    for line, kind in expected:
        assert re.search(rf"^  line {line}: {kind}: ", text, re.MULTILINE), (line, kind, text)
    assert "  file: too_few_examples: 13 examples; at least 50 are required" in text
    assert "train.jsonl: 13 problem(s)" in text
    assert text.rstrip().endswith("result: problems found")


def test_dataset_error_is_printed(tmp_path: Path) -> None:
    """A dataset that cannot be prepared prints the reason (file and line) and exits 1."""
    source = tmp_path / "train.jsonl"
    source.write_bytes(b'{"story": "ok", "questions": [], "answers": {"input_text": []}}\n{"story": \xff}\n')
    code, text = run_check(write_spec(tmp_path, {"source": str(source), "eval_split": None}))
    assert code == 1
    assert re.search(r"dataset: .*train\.jsonl: line 2 is not valid UTF-8", text)


def test_oversized_spec_is_refused(tmp_path: Path) -> None:
    """A spec over max_spec_bytes is not parsed."""
    spec = write_spec(tmp_path, {"source": "x" * 200})
    code, text = run_check(spec, Settings(max_spec_bytes=100))
    assert code == 1
    assert "over the 100 byte limit" in text


@pytest.mark.parametrize("name", ["coqa-demo.yaml", "data-only.yaml", "sharegpt.yaml"])
def test_shipped_examples_check_clean(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example spec checks clean from the repository root (relative sources resolve against the cwd)."""
    monkeypatch.chdir(EXAMPLES.parent)
    code, text = run_check(EXAMPLES / name)
    assert code == 0, text


def test_endpoints_the_operator_does_not_allow_are_reported(tmp_path: Path) -> None:
    """check names an endpoint key the operator has not allowed for that host and a metadata address; exit 1."""
    endpoints = {
        "a": {"base_url": "http://gw.lan:8000/v1", "api_key_env": "GW_KEY"},
        "b": {"base_url": "http://169.254.169.254/v1"},
    }
    spec = write_spec(tmp_path, {"source": "x"}, evaluate={"models": ["a", "b"], "endpoints": endpoints})
    code, text = run_check(spec)
    assert code == 1
    assert "evaluate.endpoints.a.api_key_env: GW_KEY may not be named by a spec" in text
    assert "evaluate.endpoints.b.base_url: 169.254.169.254 is a link-local / metadata address" in text
    code, text = run_check(spec, Settings(endpoint_keys="GW_KEY=gw.lan:8000", allow_link_local=True))
    assert "endpoint:" not in text
