"""Tests of the `prepare` step: cookbook-identical CoQA mapping, formats, splits, options, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from together.lib import check_file

from daemon.errors import DatasetError
from daemon.spec import COOKBOOK_SYSTEM_PROMPT, DatasetSpec
from handlers import prepare
from handlers.dataset.jsonio import encode_line, read_json
from handlers.dataset.loading import read_hub
from handlers.dataset.mapping import CoqaMapper
from handlers.dataset.rules import check_messages
from tests.handlers.dataset_helpers import (
    coqa_rows,
    make_context,
    original_coqa,
    write_jsonl,
    write_parquet,
)

# The notebook's own template (positional `{}`), as opposed to the spec's `{story}`.
NOTEBOOK_PROMPT = "Read the story and extract answers for the questions.\nStory: {}"


def cookbook_jsonl(rows: list[dict[str, Any]], out: Path, *, content_first: bool) -> bytes:
    """Run the cookbook's cells (`map(map_fields)` + `to_json`) with `datasets`; return the file's bytes.

    `content_first` orders each message's keys as `datasets` 3.1 (the cookbook's pin) wrote them.
    """
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows)

    def map_fields(row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "system", "content": NOTEBOOK_PROMPT.format(row["story"])}]
        for q, a in zip(row["questions"], row["answers"]["input_text"], strict=False):
            messages.append({"role": "user", "content": q})
            messages.append({"role": "assistant", "content": a})
        return {"messages": messages}

    features = None
    if content_first:
        message = {"content": datasets.Value("string"), "role": datasets.Value("string")}
        features = datasets.Features({"messages": datasets.List(message)})
    mapped = ds.map(map_fields, remove_columns=ds.column_names, features=features)
    mapped.to_json(str(out))
    return out.read_bytes()


def run_prepare(tmp_path: Path, with_eval: bool = False, **spec: Any) -> dict[str, Any]:
    """prepare_dataset into tmp_path/out with a DatasetSpec built from keyword arguments."""
    return prepare.prepare_dataset(DatasetSpec(**spec), tmp_path / "out", tmp_path / "work", with_eval=with_eval)


def lines(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_coqa_bytes_equal_cookbook_to_json(tmp_path: Path, suffix: str) -> None:
    """The coqa mapping writes exactly the bytes the cookbook's map + to_json writes (datasets 3.1 key order)."""
    rows = coqa_rows()
    rows.append(dict(rows[0], questions=[*rows[0]["questions"], "An unanswered question?"]))  # zip truncates
    source = tmp_path / "data" / f"train.{suffix}"
    (write_parquet if suffix == "parquet" else write_jsonl)(source, rows)
    result = run_prepare(tmp_path, source=str(source), eval_split=None)
    expected = cookbook_jsonl(rows, tmp_path / "cookbook.jsonl", content_first=True)
    assert Path(result["train_file"]).read_bytes() == expected
    assert b'{"content":' in expected and b"\\/" in expected  # the format the cookbook's sample shows


def test_coqa_messages_equal_current_datasets_output(tmp_path: Path) -> None:
    """With today's `datasets` (role written first) the parsed messages are still identical, line for line."""
    rows = coqa_rows()
    source = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_prepare(tmp_path, source=str(source))
    theirs = cookbook_jsonl(rows, tmp_path / "cookbook.jsonl", content_first=False).decode().splitlines()
    assert lines(result["train_file"]) == [json.loads(line) for line in theirs]


def test_fast_path_equals_generic_encoder() -> None:
    """The CoQA fast path builds the same line as encoding its message list with encode_line."""
    mapper = CoqaMapper(COOKBOOK_SYSTEM_PROMPT)
    for row in coqa_rows():
        line, characters, messages, turns, checked = mapper.example(row, None)
        assert line == encode_line({"messages": mapper.messages(row)})
        assert (messages, turns) == (1 + 2 * len(row["questions"]), len(row["questions"]))
        assert characters == sum(len(m["content"]) for m in mapper.messages(row))
        assert checked is (check_messages(mapper.messages(row)) == [])


def test_checked_only_when_every_text_has_content() -> None:
    """A CoQA row with a blank answer (or no pairs) is not marked checked, so `validate` reads and names it."""
    mapper = CoqaMapper(COOKBOOK_SYSTEM_PROMPT)
    row = coqa_rows(1)[0]
    blank = {**row, "answers": {**row["answers"], "input_text": [" ", *row["answers"]["input_text"][1:]]}}
    assert mapper.example(row, None)[4] is True
    assert mapper.example(blank, None)[4] is False
    assert mapper.example({**row, "questions": []}, None)[4] is False


def test_output_passes_together_check_file(tmp_path: Path) -> None:
    """The JSONL prepare writes passes the `together` SDK's own file check."""
    source = write_parquet(tmp_path / "data" / "train.parquet", coqa_rows(30))
    result = run_prepare(tmp_path, source=str(tmp_path / "data"), eval_split=None, validation_size=5)
    for name in ("train_file", "validation_file"):
        report = check_file(Path(result[name]))
        assert report["is_check_passed"], report
    assert check_file(Path(result["train_file"]))["num_samples"] == 25
    assert source.exists()


def test_original_coqa_json_gives_eval_items_with_additional_answers(tmp_path: Path) -> None:
    """Original CoQA json: story ids, sources, turn ids, main gold then additional answers "0","1","2"."""
    rows = coqa_rows()
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", rows)
    (data / "validation.json").write_text(json.dumps(original_coqa(rows), indent=2), encoding="utf-8")
    result = run_prepare(tmp_path, with_eval=True, source=str(data))
    items = lines(result["eval_file"])
    assert [item["id"] for item in items] == [f"dev-story-{i}" for i in range(len(rows))]
    first = items[0]
    assert list(first) == ["id", "source", "system", "story", "turns"]
    assert first["source"] == "mctest"
    assert first["system"] == NOTEBOOK_PROMPT.format(rows[0]["story"])
    assert first["turns"][0] == {
        "turn_id": 1,
        "question": "Who lived in the café?",
        "answers": ["Tom/Tim", "Tom/Tim (0)", "Tom/Tim (1)", "Tom/Tim (2)"],
    }
    assert result["counts"]["eval"] == {"split": "validation", "items": 5, "turns": 15}


def test_original_json_trains_like_hub_schema(tmp_path: Path) -> None:
    """The same stories as original json or hub columns give the same training bytes."""
    rows = coqa_rows()
    (tmp_path / "orig.json").write_text(json.dumps(original_coqa(rows)), encoding="utf-8")
    hub = write_jsonl(tmp_path / "hub.jsonl", rows)
    from_json = run_prepare(tmp_path / "a", source=str(tmp_path / "orig.json"), eval_split=None)
    from_hub = run_prepare(tmp_path / "b", source=str(hub), eval_split=None)
    assert Path(from_json["train_file"]).read_bytes() == Path(from_hub["train_file"]).read_bytes()


def test_hub_schema_eval_ids_and_counts_file(tmp_path: Path) -> None:
    """Hub-schema stories have no id: eval items are `<split>-<row index>`; dataset.json holds the counts."""
    data = tmp_path / "data"
    write_parquet(data / "train-00000-of-00001.parquet", coqa_rows())
    write_parquet(data / "validation-00000-of-00001.parquet", coqa_rows()[:2])
    result = run_prepare(tmp_path, with_eval=True, source=str(data))
    assert [item["id"] for item in lines(result["eval_file"])] == ["validation-0", "validation-1"]
    assert lines(result["eval_file"])[0]["turns"][1]["answers"] == ["milk"]
    summary = json.loads((tmp_path / "out" / "dataset.json").read_text())
    train = summary["counts"]["train"]
    assert (train["examples"], train["turns"]) == (5, 15)
    assert train["longest_example"]["line"] == 2
    assert train["estimated_tokens"] > train["characters"] // 4
    assert "per message" in summary["token_estimate"]


def test_shuffle_limit_and_validation_size(tmp_path: Path) -> None:
    """A seeded shuffle is reproducible, seed-dependent, and the held-out and train parts do not overlap."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows(40))

    def stories(seed: int, out: str) -> tuple[list[str], list[str]]:
        result = run_prepare(tmp_path / out, source=str(source), shuffle=True, seed=seed, limit=20, validation_size=5)
        pick = [m["messages"][0]["content"] for m in lines(result["train_file"])]
        held = [m["messages"][0]["content"] for m in lines(result["validation_file"])]
        return pick, held

    first, again, other = stories(1, "a"), stories(1, "b"), stories(2, "c")
    assert first == again
    assert first != other
    assert (len(first[0]), len(first[1])) == (20, 5)
    assert not set(first[0]) & set(first[1])
    assert not (tmp_path / "a" / "work" / ".prepare-shuffle").exists()


def test_shuffle_without_limit_is_a_permutation(tmp_path: Path) -> None:
    """Shuffling all rows keeps every example exactly once."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows(300))
    plain = run_prepare(tmp_path / "a", source=str(source))
    mixed = run_prepare(tmp_path / "b", source=str(source), shuffle=True)
    a, b = Path(plain["train_file"]).read_text().splitlines(), Path(mixed["train_file"]).read_text().splitlines()
    assert a != b
    assert sorted(a) == sorted(b)


def test_limit_without_shuffle_keeps_the_first_rows(tmp_path: Path) -> None:
    """Without shuffle, validation_size takes the first rows and limit the next ones."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows(10))
    result = run_prepare(tmp_path, source=str(source), limit=3, validation_size=2)
    starts = [m["messages"][0]["content"].split("Story: ")[1].split(":")[0] for m in lines(result["train_file"])]
    assert starts == ["2", "3", "4"]
    assert result["counts"]["validation"]["examples"] == 2


def test_max_turns_and_system_prompt(tmp_path: Path) -> None:
    """max_turns keeps that many question/answer pairs; system_prompt is filled with the row's columns."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows())
    result = run_prepare(tmp_path, source=str(source), max_turns=2, system_prompt="[{source}] {story}")
    example = lines(result["train_file"])[1]["messages"]
    assert [m["role"] for m in example] == ["system", "user", "assistant", "user", "assistant"]
    assert example[0]["content"].startswith("[cnn] Prices rose")


def test_messages_format_renames_roles(tmp_path: Path) -> None:
    """`format: messages` passes messages through, renaming roles and keeping weights."""
    rows = [{"id": 1, "messages": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "yo", "weight": 0}]}]
    source = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_prepare(
        tmp_path, source=str(source), format="messages", roles={"human": "user", "bot": "assistant"}, eval_split=None
    )
    assert lines(result["train_file"]) == [
        {"messages": [{"content": "hi", "role": "user"}, {"content": "yo", "role": "assistant", "weight": 0}]}
    ]


def test_columns_format_sharegpt_with_eval(tmp_path: Path) -> None:
    """`format: columns` maps ShareGPT conversations; each assistant turn becomes an evaluation turn."""
    conversation = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
        {"from": "human", "value": "3+3?"},
        {"from": "gpt", "value": "6", "markdown": False},
    ]
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [{"conversations": conversation}] * 3)
    write_jsonl(data / "test.jsonl", [{"conversations": conversation}])
    result = run_prepare(tmp_path, with_eval=True, source=str(data), format="columns", eval_split="test")
    assert lines(result["train_file"])[0]["messages"][-1] == {"content": "6", "role": "assistant"}
    assert lines(result["eval_file"]) == [
        {
            "id": "test-0",
            "source": "",
            "system": "Be brief.",
            "story": "",
            "turns": [
                {"turn_id": 1, "question": "2+2?", "answers": ["4"]},
                {"turn_id": 2, "question": "3+3?", "answers": ["6"]},
            ],
        }
    ]


def test_csv_goes_through_datasets(tmp_path: Path) -> None:
    """A CSV file is read with `datasets`; list columns stored as JSON text are decoded."""
    csv = tmp_path / "train.csv"
    messages = json.dumps([{"role": "user", "content": "a, b"}, {"role": "assistant", "content": "c"}])
    csv.write_text('messages\n"' + messages.replace('"', '""') + '"\n', encoding="utf-8")
    result = run_prepare(tmp_path, source=str(csv), format="messages", eval_split=None)
    assert lines(result["train_file"])[0]["messages"][0] == {"content": "a, b", "role": "user"}


def test_json_reader_layouts(tmp_path: Path) -> None:
    """A .json file may be a list of rows, a CoQA object (any key order) or JSON Lines."""
    rows = [{"a": i, "s": "x" * 100} for i in range(3)]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "coqa.json").write_text(json.dumps({"data": rows, "version": "1.0"}))
    (tmp_path / "late.json").write_text(json.dumps({"version": {"v": [1, 2]}, "data": rows}, indent=4))
    write_jsonl(tmp_path / "lines.json", rows)
    for name in ("list", "coqa", "late", "lines"):
        assert [row for _, row in read_json(tmp_path / f"{name}.json")] == rows


def test_json_reader_reports_broken_json(tmp_path: Path) -> None:
    """A truncated CoQA json fails with the file and the character position."""
    path = tmp_path / "broken.json"
    path.write_text('{"version": "1.0", "data": [{"story": "a"}, {"story": ')
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON near character \d+"):
        list(read_json(path))


async def test_run_writes_outbox_and_publishes_progress(tmp_path: Path) -> None:
    """The step runs off the loop, writes its files into the outbox and reports progress."""
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", coqa_rows(4100))
    write_jsonl(data / "validation.jsonl", coqa_rows(2))
    spec = {
        "name": "demo",
        "dataset": {"source": str(data), "validation_size": 100},
        "evaluate": {"models": ["some/model"]},
    }
    ctx = make_context(tmp_path, spec)
    result = await prepare.run(ctx, {})
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [
        "dataset.json",
        "eval.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert result["train_file"] == str((ctx.out_dir / "train.jsonl").resolve())
    assert result["counts"]["train"]["examples"] == 4000
    assert [call["done"] for call in ctx.progress.calls] == [2000, 4000]  # type: ignore[attr-defined]


# --- bad input: each a DatasetError naming what and where -------------------------------------------------


def test_missing_columns_named(tmp_path: Path) -> None:
    """A CoQA dataset without `questions` names the missing column, the columns it has, and the file."""
    source = write_jsonl(tmp_path / "train.jsonl", [{"story": "s", "answers": {"input_text": ["a"]}}])
    with pytest.raises(DatasetError, match=r"missing column\(s\) questions; the data has: answers, story.*line 1"):
        run_prepare(tmp_path, source=str(source))


def test_wrong_type_names_row_and_column(tmp_path: Path) -> None:
    """A row whose `questions` is a number fails with its file, line and column."""
    rows = coqa_rows()
    rows[2] = dict(rows[2], questions=7)
    source = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DatasetError, match=r"train\.jsonl line 3: column 'questions' must be a list.*got int"):
        run_prepare(tmp_path, source=str(source))


def test_wrong_item_type_in_parquet(tmp_path: Path) -> None:
    """A story that is not a string is reported with the parquet file and row."""
    rows = [dict(row, story=None) if i == 1 else row for i, row in enumerate(coqa_rows())]
    source = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DatasetError, match=r"train\.parquet row 2: column 'story' must be a string, got nothing"):
        run_prepare(tmp_path, source=str(source))


def test_missing_split_lists_what_exists(tmp_path: Path) -> None:
    """An eval split with no file says which names were looked for and what the folder holds."""
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", coqa_rows())
    with pytest.raises(DatasetError, match=r"split 'validation' not found in .*data.*found: train\.jsonl"):
        run_prepare(tmp_path, with_eval=True, source=str(data))


def test_single_file_has_no_eval_split(tmp_path: Path) -> None:
    """A single file is the train split; asking it for an eval split says how to fix the spec."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows())
    with pytest.raises(DatasetError, match=r"train split only.*eval_split: null"):
        run_prepare(tmp_path, with_eval=True, source=str(source))


def test_missing_source(tmp_path: Path) -> None:
    """A path that does not exist names itself and where relative paths resolve."""
    with pytest.raises(DatasetError, match=r"nope\.jsonl.*no such file or folder.*working directory"):
        run_prepare(tmp_path, source=str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_empty_dataset(tmp_path: Path, suffix: str) -> None:
    """A split with no rows is an error naming the split and file."""
    path = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        path.write_text("\n\n")
    else:
        write_parquet(path, coqa_rows()[:0] or [coqa_rows()[0]])
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DatasetError, match=rf"split 'train' \(.*train\.{suffix}\) is empty"):
        run_prepare(tmp_path, source=str(path))


def test_validation_size_larger_than_data(tmp_path: Path) -> None:
    """Holding out every row leaves nothing to train on: a clear error."""
    source = write_jsonl(tmp_path / "train.jsonl", coqa_rows())
    with pytest.raises(DatasetError, match=r"validation_size is 9 but .* has only 5 rows"):
        run_prepare(tmp_path, source=str(source), validation_size=9)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    """Invalid UTF-8 in a JSONL source names the file and the line."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(coqa_rows()[0]).encode() + b'\n{"story": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"train\.jsonl: line 2 is not valid UTF-8"):
        run_prepare(tmp_path, source=str(path))


def test_fifty_megabyte_jsonl_row(tmp_path: Path) -> None:
    """A 50 MB line is refused by size, naming the line, without reading it whole."""
    path = tmp_path / "train.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(coqa_rows()[0]) + "\n")
        fh.write(json.dumps(dict(coqa_rows()[0], story="x" * 50_000_000)) + "\n")
    with pytest.raises(DatasetError, match=r"train\.jsonl: line 2 is longer than 16 MiB"):
        run_prepare(tmp_path, source=str(path))


def test_fifty_megabyte_parquet_row(tmp_path: Path) -> None:
    """A 50 MB story in parquet is refused once mapped, naming the row."""
    rows = [coqa_rows()[0], dict(coqa_rows()[0], story="y" * 50_000_000)]
    source = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DatasetError, match=r"train\.parquet row 2: the example is 47\.7 MiB, over the 16 MiB"):
        run_prepare(tmp_path, source=str(source))
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_unreachable_hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In offline mode an uncached hub id fails at once, saying how to use local files."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match=r"cannot reach the Hugging Face hub.*point dataset\.source at the local"):
        run_prepare(tmp_path, source="finetuned-tests-no-such-org/no-such-dataset")


@pytest.mark.timeout(30)
def test_unreachable_hub_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub endpoint unreachable, the connection probe fails fast instead of `datasets` retrying."""
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match=r"cannot reach the Hugging Face hub.*127\.0\.0\.1:9"):
        run_prepare(tmp_path, source="finetuned-tests-no-such-org/no-such-dataset")


def test_hub_loader_code_path_on_a_local_folder(tmp_path: Path) -> None:
    """read_hub is the real load_dataset path; on a local folder in the hub layout it streams rows."""
    write_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet", coqa_rows())
    rows = list(read_hub(str(tmp_path / "ds"), None, "train"))
    assert [index for index, _ in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1]["answers"]["input_text"] == ["Tom/Tim", "milk", "{cream}"]
    with pytest.raises(DatasetError, match=r"cannot load split 'validation'.*Bad split"):
        list(read_hub(str(tmp_path / "ds"), None, "validation"))


def test_cookbook_line_matches_encoder_on_random_text() -> None:
    """Seeded fuzz: the CoQA line builder equals encoding the message list, for any text and uneven turns."""
    import random

    rng = random.Random(4)
    plain = "ab /{}"
    alphabets = [plain, plain + "\\\"'\n\t\x00\x01\x7f\u2028é😀"]
    mapper = CoqaMapper(COOKBOOK_SYSTEM_PROMPT)

    def text(alphabet: str) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    for index in range(600):
        alphabet = alphabets[index % 2]
        turns = rng.randint(0, 4)
        questions = [text(alphabet) for _ in range(turns)]
        answers = [text(alphabet) for _ in range(max(0, turns - rng.randint(0, 1)))]  # zip may truncate
        row = {"story": text(alphabet), "questions": questions, "answers": answers}
        line, characters, messages, *_ = mapper.example(row, None)
        expected = mapper.messages(row)
        assert line == encode_line({"messages": expected})
        assert (characters, messages) == (sum(len(m["content"]) for m in expected), len(expected))
