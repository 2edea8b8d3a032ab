"""The spec model: the issue's example is accepted; every problem is reported with file, key path and line."""

from __future__ import annotations

import pytest

from daemon.errors import SpecError
from daemon.spec import JobSpec, parse_spec

EXAMPLE = b"""\
name: coqa-llama31-8b
dataset:
  source: stanfordnlp/coqa          # a hub id, or a local file/folder (json, jsonl, parquet, csv)
  format: coqa                      # coqa | messages | columns
  train_split: train
  eval_split: validation
  system_prompt: "Read the story and extract answers for the questions.\\nStory: {story}"
  limit: 200                        # optional: first N examples
finetune:
  model: meta-llama/Meta-Llama-3.1-8B-Instruct-Reference
  n_epochs: 3
  learning_rate: 1.0e-5
  lora: true
  lora_r: 16
  lora_alpha: 32
  batch_size: max
  train_on_inputs: auto
  suffix: coqa-demo
  max_price_usd: 25
evaluate:
  protocol: gold-history            # cookbook | gold-history | own-history
  models: [base, finetuned]
  limit: 50                         # stories
  concurrency: 16
  max_tokens: 64
  temperature: 0
"""


def problems_of(data: bytes, filename: str = "spec.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, filename)
    return info.value.problems


def test_issue_example_is_accepted_as_written() -> None:
    """The spec from the issue parses, with every value where it was written."""
    spec = parse_spec(EXAMPLE, "coqa.yaml")
    assert isinstance(spec, JobSpec)
    assert spec.dataset.system_prompt == "Read the story and extract answers for the questions.\nStory: {story}"
    assert spec.finetune is not None and spec.finetune.batch_size == "max" and spec.finetune.lora_r == 16
    assert spec.evaluate is not None and spec.evaluate.models == ["base", "finetuned"]
    assert spec.evaluate.protocol == "gold-history" and spec.evaluate.concurrency == 16


def test_unknown_key_names_key_path_and_line() -> None:
    """A misspelt key is an error naming the file, the dotted key path and its YAML line."""
    problems = problems_of(EXAMPLE.replace(b"lora_r: 16", b"lora_rank: 16"))
    assert problems == ["spec.yaml: line 14: finetune.lora_rank: unknown key (not part of the spec schema)"]


def test_every_problem_is_listed() -> None:
    """Wrong types and out-of-range values are all reported at once, each with its line."""
    bad = EXAMPLE.replace(b"n_epochs: 3", b"n_epochs: three").replace(b"concurrency: 16", b"concurrency: 0")
    problems = problems_of(bad)
    assert len(problems) == 2
    assert problems[0].startswith("spec.yaml: line 11: finetune.n_epochs:")
    assert problems[1].startswith("spec.yaml: line 24: evaluate.concurrency:")


def test_missing_section_and_yaml_syntax() -> None:
    """A missing required key and a YAML syntax error are located."""
    assert problems_of(b"name: x\n") == ["spec.yaml: dataset: required key is missing"]
    (problem,) = problems_of(b"name: x\ndataset: [1,\n")
    assert problem.startswith("spec.yaml: line 3, column 1: invalid YAML")


def test_json_spec_and_empty_file() -> None:
    """JSON specs parse with the same model; an empty or non-UTF-8 file is a clear error."""
    spec = parse_spec(b'{"name": "j", "dataset": {"source": "data/x.jsonl", "format": "messages"}}', "j.json")
    assert spec.dataset.format == "messages" and spec.finetune is None
    assert problems_of(b"  \n", "e.yaml") == ["e.yaml: the file is empty"]
    assert problems_of(b"\xff\xfe", "b.yaml") == ["b.yaml: not UTF-8 text (byte 0)"]
    (problem,) = problems_of(b'{"name": ', "j.json")
    assert problem.startswith("j.json: line 1, column 10: invalid JSON")


def test_names_cannot_escape_the_outbox() -> None:
    """Job names with path separators or leading dots are refused."""
    for name in (b"../etc", b"/abs", b".hidden", b"a/b"):
        (problem,) = problems_of(b"name: " + name + b"\ndataset: {source: x}\n")
        assert "name" in problem


def test_evaluate_needs_resolvable_models() -> None:
    """Evaluating `finetuned` without a finetune section, or `base` without a model, is refused."""
    (problem,) = problems_of(b"name: e\ndataset: {source: x}\nevaluate: {models: [finetuned]}\n")
    assert "finetuned" in problem
    spec = parse_spec(b"name: e\ndataset: {source: x}\nevaluate: {models: [base, org/m], base_model: org/b}\n")
    assert spec.resolve_model("base") == "org/b" and spec.resolve_model("org/m") == "org/m"


def test_roles_map_only_to_roles_the_dataset_may_hold() -> None:
    """A role rename to anything but system/user/assistant fails at the spec, not later at `validate`."""
    spec = parse_spec(b"name: r\ndataset: {source: x, format: messages, roles: {human: user, bot: assistant}}\n")
    assert spec.dataset.roles == {"human": "user", "bot": "assistant"}
    (problem,) = problems_of(b"name: r\ndataset:\n  source: x\n  roles: {fn: tool}\n")
    assert problem.startswith("spec.yaml: line 4: dataset.roles.fn:")


SWEEP_BASE = b"name: sw\ndataset: {source: x}\nfinetune: {model: m, n_epochs: 2}\n"


def test_sweep_grid_and_variants_expand_in_order_with_readable_names() -> None:
    """A grid gives every combination, explicit variants follow; each variant keeps the spec's other values."""
    spec = parse_spec(
        SWEEP_BASE + b"sweep:\n  grid: {learning_rate: [1.0e-5, 2.0e-5], lora_r: [8]}\n  variants: [{n_epochs: 5}]\n"
    )
    found = [(name, v.finetune.learning_rate, v.finetune.n_epochs, v.sweep) for name, _, v in spec.variants()]  # type: ignore[union-attr]
    assert found == [
        ("learning_rate-1e-05.lora_r-8", 1e-5, 2, None),
        ("learning_rate-2e-05.lora_r-8", 2e-5, 2, None),
        ("n_epochs-5", 1e-5, 5, None),
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (b"sweep:\n  grid: {learning_rate: [-1]}\n", "sweep variant learning_rate--1: finetune.learning_rate"),
        (b"sweep:\n  grid: {bogus: [1]}\n", "finetune.bogus: Extra inputs are not permitted"),
        (b"sweep:\n  grid: {suffix: [a, b]}\n", "sweep cannot vary suffix"),
        (b"sweep:\n  variants: [{n_epochs: 1}, {n_epochs: 1}]\n", "the same variant twice"),
        (b"sweep: {max_parallel: 2}\n", "between 1 and 64 variants"),
    ],
)
def test_sweep_problems_are_named(sweep: bytes, message: str) -> None:
    """A sweep that cannot run is rejected at intake with the variant and key at fault."""
    with pytest.raises(SpecError, match=message):
        parse_spec(SWEEP_BASE + sweep)


def test_sweep_needs_a_finetune_section() -> None:
    """Without a finetune section there is nothing to vary."""
    with pytest.raises(SpecError, match="sweep needs a finetune section"):
        parse_spec(b"name: sw\ndataset: {source: x}\nsweep:\n  grid: {n_epochs: [1, 2]}\n")


def alias_bomb(levels: int = 9, width: int = 9) -> bytes:
    """A 'billion laughs' YAML document: `levels` anchors, each listing the previous one `width` times."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return ("\n".join([*lines, f"name: *a{levels}"]) + "\n").encode()


def test_yaml_bombs_are_refused_without_expanding() -> None:
    """An alias bomb, a deeply nested document and a deeply nested JSON file are refused in milliseconds with a
    located reason; a document using a few aliases still parses."""
    import time

    started = time.monotonic()
    for data, name, needle in (
        (alias_bomb(), "bomb.yaml", "once its aliases are expanded"),
        (b"[" * 10_000, "deep.yaml", "nesting deeper than"),
        (b"[" * 100_000, "deep.json", "nested too deeply"),
    ):
        with pytest.raises(SpecError) as err:
            parse_spec(data, name)
        assert needle in err.value.problems[0], err.value.problems
    assert time.monotonic() - started < 2
    spec = parse_spec(b"name: &n ok\ndataset: {source: &s /data, config: *n}\n", "few.yaml")
    assert spec.dataset.config == "ok"
