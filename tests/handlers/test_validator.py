"""The fast path of `validate` (msgspec, a line at a time, in worker processes): the line-by-line report, faster."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

import pytest

from daemon.spec import DatasetSpec
from handlers import prepare
from handlers.dataset import typed
from handlers.dataset.rules import MESSAGE_KEYS, ROLES, check_messages
from handlers.dataset.stats import measure
from handlers.dataset.validator import validate_file
from tests.handlers.dataset_helpers import coqa_rows, write_jsonl
from tests.handlers.test_validate import BAD_LINES, OK, msgs, write_lines

GOOD = json.dumps(msgs(*OK)).encode()
A = b'{"role": "assistant", "content": "a"}'
# Lines the rules reject that a lenient decoder would accept, or read differently.
SUBTLE: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "q", "weight": null}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "weight": 1.0}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "weight": true}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "weight": 100000000000000000000001}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "\\u3000\\u2028"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "\\u001c"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": null}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q"}, ' + A + b', {"role": "system", "content": "s"}]}',
    b'{"messages": [{"role": "user", "content": "q"}, null, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "content": " "}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q"}, ' + A + b'], "messages": []}',
    b'{"messages": [{"role": "user", "content": "q"}, ' + A + b"]}\x0c",
    b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "q"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q\tq"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "weight": NaN}, ' + A + b"]}",
    b'{"messages": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    b'{"messages": null}',
    b"{}",
]
TOO_LONG = [line for line, kinds in BAD_LINES if kinds == {"too_long"}]
# Valid lines a strict decoder might decline; the report must still be the rules' (valid, same counts).
TRICKY_VALID: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "\\ud800"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 \\u00e9\xc3\xa9"}, ' + A + b"]}",
    b'{"messages": [{"role": "user", "content": "q", "weight": -0}, ' + A + b"]}",
    b'{"messages": [{"role": "bot", "role": "user", "content": "q"}, ' + A + b"]}",
    b'{"messages": [{"r\\u006fle": "\\u0075ser", "content": "q\x7f"}, ' + A + b"]}",
    b'{"messages": [], "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, ' + A + b"]}",
]


def slow(path: Path, max_tokens: int | None = None) -> dict[str, object]:
    """The line-by-line validator's report, without the fast path."""
    return validate_file(path, max_tokens=max_tokens, fast=False).as_dict()


def same_report(path: Path, max_tokens: int | None = None, processes: int = 0) -> dict[str, object]:
    """The fast report equals the line-by-line one but for its method; returns the line-by-line one."""
    fast = validate_file(path, max_tokens=max_tokens, processes=processes).as_dict()
    expected = slow(path, max_tokens=max_tokens)
    assert (fast.pop("method") or "").startswith("msgspec")
    expected.pop("method")
    assert fast == expected
    return expected


@pytest.mark.parametrize("bad", [line for line, kinds in BAD_LINES if kinds] + SUBTLE)
def test_never_accepts_a_line_the_rules_reject(tmp_path: Path, bad: bytes) -> None:
    """One bad line among good ones: the fast path declines it, and the report names it as the rules do."""
    if bad not in TOO_LONG:  # a context limit is the validator's to apply, not the line's
        assert typed.conversation_sizes(bad + b"\n") is None
    path = write_lines(tmp_path / "train.jsonl", [GOOD, bad, GOOD])
    assert not same_report(path, max_tokens=50)["valid"]


@pytest.mark.parametrize("line", TRICKY_VALID)
def test_what_it_accepts_has_no_problem_and_the_rules_sizes(tmp_path: Path, line: bytes) -> None:
    """Valid lines: whatever the fast path makes of them, the report is the rules' (valid, same counts)."""
    sizes = typed.conversation_sizes(line)
    if sizes is not None:
        record = json.loads(line)
        assert check_messages(record["messages"]) == [] and sizes == measure(record["messages"])
    path = write_lines(tmp_path / "train.jsonl", [GOOD, line, GOOD])
    assert same_report(path)["valid"]


def test_the_types_hold_the_rules_keys_and_roles() -> None:
    """The msgspec message type allows exactly the rules' keys and roles."""
    assert set(typed._Message.__struct_fields__) == MESSAGE_KEYS
    assert typing.get_args(typing.get_type_hints(typed._Message)["role"]) == ROLES


@pytest.mark.parametrize("layout", [b"\n\n", b"\n   \n"], ids=["blank line", "whitespace line"])
def test_blank_lines_keep_line_numbers_true(tmp_path: Path, layout: bytes) -> None:
    """Blank lines are skipped but counted as lines: the longest example's line number is the file's."""
    path = tmp_path / "train.jsonl"
    long_line = json.dumps(msgs(("user", "q" * 90), ("assistant", "a"))).encode()
    path.write_bytes(GOOD + layout + long_line + b"\n")
    assert same_report(path)["counts"]["longest_example"]["line"] == 3  # type: ignore[index]


def test_weights_system_crlf_and_no_final_newline_are_accepted(tmp_path: Path) -> None:
    """Valid variants (weights 0/1, a system message, CRLF, no newline at the end) go the fast way, as the rules say."""
    lines = [
        json.dumps(msgs(("system", "s"), *OK)).encode(),
        json.dumps(
            msgs({"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a", "weight": 1})
        ).encode(),
        GOOD + b"\r",
    ]
    assert all(typed.conversation_sizes(line) is not None for line in lines)
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines))
    assert same_report(path)["examples"] == 3


def test_too_long_for_the_context_is_left_to_the_rules(tmp_path: Path) -> None:
    """An example over max_tokens is reported by the rules with its line."""
    path = write_lines(
        tmp_path / "train.jsonl", [GOOD, json.dumps(msgs(("user", "q" * 400), ("assistant", "a"))).encode()]
    )
    assert same_report(path, max_tokens=5000)["valid"]
    assert [(p["line"], p["kind"]) for p in validate_file(path, max_tokens=50).problems] == [(2, "too_long")]


def test_prepared_coqa_in_several_processes_has_the_line_by_line_counts(tmp_path: Path) -> None:
    """Prepare's output split over three processes: valid, with exactly the line-by-line counts."""
    source = write_jsonl(tmp_path / "src.jsonl", coqa_rows(40))
    out = prepare.prepare_dataset(DatasetSpec(source=str(source)), tmp_path / "out", tmp_path / "work", with_eval=False)
    path = Path(out["train_file"])
    assert validate_file(path, processes=3).method == "msgspec, 3 processes"
    assert same_report(path, max_tokens=4096, processes=3)["counts"] == out["counts"]["train"]


def mixed_file(path: Path) -> Path:
    """Problems all over the file: bad lines, blank lines, a too-large line in a later part, ties for the longest."""
    longest = json.dumps(msgs(("user", "q" * 8000), ("assistant", "a"))).encode()
    padding = json.dumps(msgs(("user", "p" * 4000), ("assistant", "a"))).encode()
    big = json.dumps(msgs(("user", "x" * (17 * 2**20)), ("assistant", "a"))).encode()
    lines = [b"not json", longest, *[GOOD] * 30, b"", *[b'{"messages": []}'] * 12, longest, b"  ", *[padding] * 600]
    return write_lines(path, [*lines, big, *[GOOD] * 30, *[bad for bad, kinds in BAD_LINES if kinds], longest, GOOD])


@pytest.mark.parametrize("processes", [2, 3, 5, 12])
def test_parts_merge_into_the_line_by_line_report(tmp_path: Path, processes: int) -> None:
    """Split anywhere, the merged report has the same problems, first 20 in full, counts and longest line."""
    report = same_report(mixed_file(tmp_path / "train.jsonl"), max_tokens=50, processes=processes)
    assert report["problem_count"] > 20 and report["counts"]["longest_example"]["line"] == 2  # type: ignore[index]


@pytest.mark.parametrize("processes", [2, 3])
def test_a_part_starting_in_another_format_is_checked_in_order(tmp_path: Path, processes: int) -> None:
    """Text lines after conversation lines are mixed formats wherever the split falls (parts are redone in order)."""
    text = json.dumps({"text": "hello"}).encode()
    path = write_lines(tmp_path / "train.jsonl", [b"[1]", *[GOOD] * 5, *[text] * 10, *[GOOD] * 5])
    report = same_report(path, processes=processes)
    assert report["problems_by_kind"] == {"mixed_formats": 10, "not_object": 1}


def test_a_first_part_without_format_takes_the_next_parts(tmp_path: Path) -> None:
    """When the first part has no line of a known format, the file's format is the next part's."""
    text = json.dumps({"text": "hello"}).encode()
    path = write_lines(tmp_path / "train.jsonl", [b"[1]"] * 10 + [text] * 10 + [GOOD] * 5)
    assert same_report(path, processes=2)["problems_by_kind"] == {"not_object": 10, "mixed_formats": 5}


def test_a_failed_worker_has_its_part_checked_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot run (here: exits 1 at once) costs speed, not the report."""
    path = mixed_file(tmp_path / "train.jsonl")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    report = validate_file(path, max_tokens=50, processes=3)
    monkeypatch.undo()
    assert report.method == "msgspec"
    expected = slow(path, max_tokens=50)
    assert {**report.as_dict(), "method": expected["method"]} == expected
