"""Completeness before completion: an outage mid-evaluation is waited out (probing, not hammering) and every item
is answered; an outage longer than the deadline fails the step with a clear reason, and a rerun asks only what
is missing. Models are interleaved item by item."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings
from daemon.errors import EvaluationIncomplete
from daemon.remote.chat import ChatClient
from daemon.remote.limit import LimitTuning
from daemon.sandbox import SandboxHandle, start_sandbox
from handlers import evaluate
from tests.handlers.test_evaluate import (
    MemoryItems,
    Recorder,
    make_ctx,
    read_jsonl,
    sandbox_settings,
    write_eval_file,
)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short request and round backoffs and probe delays, so outages of a second or two are enough."""
    monkeypatch.setattr(evaluate, "BACKOFF_BASE_S", 0.02)
    monkeypatch.setattr(evaluate, "BACKOFF_CAP_S", 0.2)
    monkeypatch.setattr(evaluate, "ROUND_BASE_S", 0.1)
    monkeypatch.setattr(evaluate, "ROUND_CAP_S", 0.5)
    monkeypatch.setattr(evaluate, "LIMIT_TUNING", LimitTuning(probe_base_s=0.1, probe_cap_s=0.4))


@pytest.fixture
async def queueing() -> Any:
    """A 2-slot queueing sandbox (like llama-server --parallel 2) answering in 5 ms."""
    handle = await start_sandbox(latency_ms="5", seed=3, slots=2, flavour="llama.cpp")
    yield handle
    await handle.close()


class RecordedClient(ChatClient):
    """The real chat client, remembered so a test can read how many requests it sent (refused ones too)."""

    instances: list[ChatClient] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        RecordedClient.instances.append(self)


async def run_with_outage(
    handle: SandboxHandle, ctx: Any, eval_file: Path, *, after_saves: int, seconds: float
) -> asyncio.Task[Any]:
    task = asyncio.create_task(evaluate.run(ctx, {"prepare": {"eval_file": str(eval_file)}}))
    async with asyncio.timeout(20):
        while ctx.items.saves < after_saves:
            await asyncio.sleep(0.005)
    await handle.outage(seconds, "refuse")
    return task


async def test_outage_mid_two_model_evaluation_completes_every_item(
    tmp_path: Path, queueing: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.5 s refused-connection outage in the middle of a two-model run: the job's step completes with every
    item of both models answered once (no zeros), and the down provider is probed, not hammered."""
    write_eval_file(tmp_path / "eval.jsonl", stories=6, turns=8)
    monkeypatch.setattr(evaluate, "ChatClient", RecordedClient)
    ctx = make_ctx(tmp_path, sandbox_settings(queueing), {"models": ["base-a", "base-b"], "base_model": "x"})
    task = await run_with_outage(queueing, ctx, tmp_path / "eval.jsonl", after_saves=30, seconds=1.5)
    output = await asyncio.wait_for(task, 30)
    for alias in ("base-a", "base-b"):
        assert output["models"][alias] | {"em": 0, "f1": 0} == {
            "em": 0,
            "f1": 0,
            "turns": 48,
            "answered": 48,
            "truncated": 0,
            "errors": 0,
            "missing": 0,
        }
        lines = read_jsonl(ctx.out_dir / f"predictions-{alias}.jsonl")
        assert all(line["prediction"] and "error" not in line for line in lines)
    # Every item answered once; only the requests the outage cut off (at most the in-flight limit) were repeated.
    assert 96 <= queueing.sandbox.stats.requests["POST /v1/chat/completions"] <= 96 + 16
    # 1.5 s down at probe delays of 0.1-0.4 s: a handful of probes (plus the requests cut by the outage), far
    # from the ~96 items x 6 attempts that hammering would spend.
    (client,) = RecordedClient.instances[-1:]
    failed = client.requests_sent - queueing.sandbox.serving.served
    assert 0 < failed <= 30, failed


async def test_outage_longer_than_the_deadline_fails_clearly_then_a_rerun_finishes(
    tmp_path: Path, queueing: SandboxHandle
) -> None:
    """An outage outlasting evaluate.deadline_min: the step raises EvaluationIncomplete naming what is missing,
    metrics.json states each model's completeness, and a second run (as `finetuned retry` does) asks exactly the
    missing items and completes."""
    write_eval_file(tmp_path / "eval.jsonl", stories=4, turns=8)
    items = MemoryItems()
    spec = {"models": ["m-one", "m-two"], "deadline_min": 0.03}  # 1.8 s
    ctx = make_ctx(tmp_path, sandbox_settings(queueing), spec, items)
    task = await run_with_outage(queueing, ctx, tmp_path / "eval.jsonl", after_saves=20, seconds=4.0)
    with pytest.raises(EvaluationIncomplete, match=r"m-one \d+ of 32 items missing.*finetuned retry"):
        await asyncio.wait_for(task, 30)
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    done = {alias: m["answered"] for alias, m in metrics["models"].items()}
    for model in metrics["models"].values():
        assert model["missing"] > 0 and model["errors"] == 0
        assert model["completeness"]["answered"] + model["completeness"]["missing"] == 32
    await asyncio.sleep(4.0)  # the server is back
    queueing.sandbox.stats.clear()
    again = make_ctx(tmp_path, sandbox_settings(queueing), spec, items)
    output = await evaluate.run(again, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    assert queueing.sandbox.stats.requests["POST /v1/chat/completions"] == 64 - sum(done.values())
    assert all(output["models"][a]["answered"] == 32 and output["models"][a]["missing"] == 0 for a in done)


async def test_missing_share_within_the_allowance_completes_and_is_reported(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    """With max_missing_share 0.5, items that keep failing transiently (a 502 every time) are asked again in rounds
    until the deadline, then the step completes with them counted as missing, not as errors; with the default
    share 0 the same run fails as incomplete."""
    rec, base_url = recorder
    row = {"id": "s", "source": "cnn", "system": "SYS", "story": "x"}
    row["turns"] = [{"turn_id": n, "question": q, "answers": ["a"]} for n, q in enumerate(["Q1", "FLAKY", "Q3"], 1)]
    (tmp_path / "eval.jsonl").write_text(json.dumps(row) + "\n")
    inputs = {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
    spec = {"models": ["m"], "endpoints": {"m": {"base_url": base_url}}, "deadline_min": 0.01, "max_attempts": 2}
    output = await evaluate.run(make_ctx(tmp_path / "a", Settings(), spec | {"max_missing_share": 0.5}), inputs)
    assert (output["models"]["m"]["answered"], output["models"]["m"]["missing"]) == (2, 1)
    assert output["models"]["m"]["errors"] == 0
    flaky = [body for body in rec.bodies if body["messages"][-1]["content"] == "FLAKY"]
    assert len(flaky) > 2  # more than one round of max_attempts 2
    with pytest.raises(EvaluationIncomplete, match="m 1 of 3 items missing"):
        await evaluate.run(make_ctx(tmp_path / "b", Settings(), spec), inputs)


async def test_models_are_interleaved_item_by_item(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """Two models on one server at concurrency 1: the requests alternate a, b, a, b ... in story/turn order, so a
    slowdown falls on both alike (own-history too: per story, each model's conversation in turn)."""
    rec, base_url = recorder
    write_eval_file(tmp_path / "eval.jsonl", stories=3, turns=4)
    endpoints = {"a": {"base_url": base_url}, "b": {"base_url": base_url}}
    for protocol in ("gold-history", "cookbook"):
        rec.bodies.clear()
        spec = {"models": ["a", "b"], "endpoints": endpoints, "concurrency": 1, "protocol": protocol}
        await evaluate.run(
            make_ctx(tmp_path / protocol, Settings(), spec), {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
        )
        order = [body["model"] for body in rec.bodies]
        assert order == ["a", "b"] * 12, protocol
        questions = [body["messages"][-1]["content"] for body in rec.bodies]
        assert questions[0::2] == questions[1::2]  # the same item, model after model
