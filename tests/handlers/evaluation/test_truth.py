"""What the evaluate step writes is true: finish_reason and token counts per prediction, truncated answers
counted per model, and context overflows of a llama.cpp-like server filed as context_length, not `rejected`."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.config import Settings
from daemon.sandbox import start_sandbox
from handlers import evaluate, report
from tests.handlers.test_evaluate import Recorder, make_ctx, read_jsonl, sandbox_settings, write_eval_file


async def test_predictions_carry_finish_reason_and_tokens_and_truncation_is_counted(tmp_path: Path) -> None:
    """max_tokens 3 cuts every verbose sandbox answer: each line says finish_reason "length" with its token
    counts, metrics.json counts them as truncated per model, and the report's table shows the count."""
    handle = await start_sandbox(seed=1)
    try:
        write_eval_file(tmp_path / "eval.jsonl", stories=2, turns=4)
        spec = {"models": ["m-short", "m-long"], "max_tokens": 3}
        ctx = make_ctx(tmp_path, sandbox_settings(handle), spec)
        output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    finally:
        await handle.close()
    await report.run(ctx, {"evaluate": output})
    table = (ctx.out_dir / "report.md").read_text()
    assert "| errors | truncated | missing |" in table and "| m-short | m-short |" in table
    assert f"In-flight limit for `{handle.base_url}` (ceiling 16)" in table
    row = next(line for line in table.splitlines() if line.startswith("| m-short |"))
    assert [cell.strip() for cell in row.split(" | ")[6:8]] == ["8", "0"]  # truncated, missing (right-aligned)
    lines = read_jsonl(ctx.out_dir / "predictions-m-short.jsonl")
    assert len(lines) == 8
    assert {line["finish_reason"] for line in lines} == {"length"}
    assert all(line["completion_tokens"] == 3 and line["prompt_tokens"] > 10 for line in lines)
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    model = metrics["models"]["m-short"]
    assert (model["answered"], model["truncated"], model["errors"], model["missing"]) == (8, 8, 0, 0)
    (limit,) = metrics["concurrency"].values()
    assert limit["ceiling"] == 16 and 1 <= limit["min"] <= limit["final"] <= limit["max"] <= 16 and limit["history"]
    assert model["completeness"] == {"items": 8, "answered": 8, "permanent_errors": 0, "missing": 0, "missing_share": 0}


async def test_llama_cpp_context_overflow_is_a_context_length_item(tmp_path: Path) -> None:
    """A llama.cpp-like server refuses prompts that fill its context: those items are context_length errors
    (permanent, scored 0, counted), answers that run into the context end are counted truncated."""
    handle = await start_sandbox(seed=1, flavour="llama.cpp", context_tokens=150)
    try:
        write_eval_file(tmp_path / "eval.jsonl", stories=2, turns=12)
        ctx = make_ctx(tmp_path, sandbox_settings(handle), {"models": ["m"], "protocol": "gold-history"})
        output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    finally:
        await handle.close()
    model = json.loads((ctx.out_dir / "metrics.json").read_text())["models"]["m"]
    assert set(model["error_kinds"]) == {"context_length"} and model["errors"] > 0
    assert model["answered"] + model["errors"] == 24 and model["missing"] == 0
    assert model["truncated"] > 0
    lines = read_jsonl(ctx.out_dir / "predictions-m.jsonl")
    refused = [line for line in lines if line.get("error")]
    assert refused and all(
        line["error_kind"] == "context_length" and "exceeds the available context size" in line["error"]
        for line in refused
    )
    assert output["models"]["m"]["truncated"] == model["truncated"]


async def test_content_filter_is_a_permanent_error_item(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """A content-filter 400 is an error item of kind content_filter: scored 0, counted, not missing, not re-asked."""
    rec, base_url = recorder
    row = {"id": "s", "source": "cnn", "system": "SYS", "story": "x"}
    row["turns"] = [{"turn_id": n, "question": q, "answers": ["a"]} for n, q in enumerate(["Q1", "FILTERED"], 1)]
    (tmp_path / "eval.jsonl").write_text(json.dumps(row) + "\n")
    spec = {"models": ["m"], "endpoints": {"m": {"base_url": base_url}}}
    ctx = make_ctx(tmp_path, Settings(), spec)
    output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    model = json.loads((ctx.out_dir / "metrics.json").read_text())["models"]["m"]
    assert model["error_kinds"] == {"content_filter": 1} and (model["answered"], model["missing"]) == (1, 0)
    assert output["models"]["m"]["errors"] == 1
    assert sum(1 for body in rec.bodies if body["messages"][-1]["content"] == "FILTERED") == 1
