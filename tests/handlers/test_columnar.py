"""The columnar fast path of `validate`: it proves valid files with the line-by-line counts, and nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from daemon.spec import DatasetSpec
from handlers import prepare
from handlers.dataset import columnar
from handlers.validate import validate_file
from tests.handlers.dataset_helpers import coqa_rows, write_jsonl
from tests.handlers.test_validate import BAD_LINES, OK, msgs, write_lines

GOOD = json.dumps(msgs(*OK)).encode()
# Lines the line-by-line rules reject that Arrow would read without complaint, or read differently.
SUBTLE: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "q", "weight": null}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "\\u3000\\u2028"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "\\u001c"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "system", '
    b'"content": "s"}]}',
    b'{"messages": [{"role": "user", "content": "q"}, null, {"role": "assistant", "content": "a"}]}',
    b'{"messages": null}',
    b"{}",
]


def slow(path: Path, max_tokens: int | None = None) -> dict[str, object]:
    """The line-by-line validator's report, without the columnar proof."""
    return validate_file(path, max_tokens=max_tokens, columnar=False).as_dict()


@pytest.mark.parametrize("bad", [line for line, kinds in BAD_LINES if kinds] + SUBTLE)
def test_never_proves_a_file_the_rules_reject(tmp_path: Path, bad: bytes) -> None:
    """One bad line among good ones: the proof declines, and the full report names the bad line as before."""
    path = write_lines(tmp_path / "train.jsonl", [GOOD, bad, GOOD])
    assert columnar.prove_valid(path, max_tokens=50) is None
    assert validate_file(path, max_tokens=50).as_dict() == slow(path, max_tokens=50)
    assert not slow(path, max_tokens=50)["valid"]


@pytest.mark.parametrize("layout", [b"\n\n", b"\n   \n"], ids=["blank line", "whitespace line"])
def test_blank_lines_go_line_by_line_so_numbers_stay_true(tmp_path: Path, layout: bytes) -> None:
    """Arrow skips blank lines; the proof declines them so the longest example's line number is the file's."""
    path = tmp_path / "train.jsonl"
    long_line = json.dumps(msgs(("user", "q" * 90), ("assistant", "a"))).encode()
    path.write_bytes(GOOD + layout + long_line + b"\n")
    assert columnar.prove_valid(path, max_tokens=None) is None
    assert validate_file(path).stats.longest["line"] == slow(path)["counts"]["longest_example"]["line"]  # type: ignore[index]


def test_prepared_coqa_proven_with_identical_counts_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prepare's output, read in many small chunks: proven valid, with exactly the line-by-line counts."""
    source = write_jsonl(tmp_path / "src.jsonl", coqa_rows(40))
    out = prepare.prepare_dataset(DatasetSpec(source=str(source)), tmp_path / "out", tmp_path / "work", with_eval=False)
    path = Path(out["train_file"])
    monkeypatch.setattr(columnar, "CHUNK_BYTES", 4096)
    proven = columnar.prove_valid(path, max_tokens=4096)
    assert proven is not None
    expected = slow(path, max_tokens=4096)
    assert proven.stats.as_dict() == expected["counts"]
    fast = validate_file(path, max_tokens=4096).as_dict()
    assert (fast.pop("method"), expected.pop("method")) == ("columnar", "line by line")
    assert fast == expected


def test_weights_system_crlf_and_no_final_newline_are_proven(tmp_path: Path) -> None:
    """Valid variants (weights 0/1, a system message, CRLF, no newline at the end) are proven like the rules say."""
    lines = [
        json.dumps(msgs(("system", "s"), *OK)).encode(),
        json.dumps(
            msgs({"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a", "weight": 1})
        ).encode(),
        GOOD + b"\r",
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines))
    proven = columnar.prove_valid(path, max_tokens=None)
    assert proven is not None and proven.examples == 3
    assert proven.stats.as_dict() == slow(path)["counts"]


def test_too_long_for_the_context_is_left_to_the_rules(tmp_path: Path) -> None:
    """An example over max_tokens is not proven; the rules report it with its line."""
    path = write_lines(
        tmp_path / "train.jsonl", [GOOD, json.dumps(msgs(("user", "q" * 400), ("assistant", "a"))).encode()]
    )
    assert columnar.prove_valid(path, max_tokens=50) is None
    assert columnar.prove_valid(path, max_tokens=5000) is not None
    assert [(p["line"], p["kind"]) for p in validate_file(path, max_tokens=50).problems] == [(2, "too_long")]


def test_whitespace_is_exactly_what_python_strips() -> None:
    """The trimmed characters are Python's whitespace, so both paths agree on what empty content is."""
    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == columnar.WHITESPACE
