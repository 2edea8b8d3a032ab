"""handlers/evaluate.py against the real sandbox and a recording server on loopback: protocols, resume, faults."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.config import Settings
from daemon.errors import Paused, RemoteRejected
from daemon.jobs.context import JobContext
from daemon.sandbox import SandboxHandle, start_sandbox
from daemon.spec import JobSpec
from handlers import evaluate
from handlers.evaluation import scoring
from handlers.evaluation.asking import heap_frozen
from handlers.evaluation.stories import EvalStory, EvalTurn, Prompts, build_messages, load_eval_file

SOURCES = ["mctest", "cnn", "race", "wikipedia", "gutenberg", ""]
COLORS = ["red", "blue", "green", "white", "black", "yellow", "purple", "orange", "pink", "brown", "gray", "gold"]
NAMES = ["Anna", "Ben", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo", "Kit", "Lou", "Max"]


# ---- in-test implementations of the runner's Protocols ---------------------------------------------------------


class MemoryItems:
    """An ItemStore in memory that counts saves."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, dict[str, Any]]] = {}
        self.saves = 0

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.groups.get(group, {}).items()}

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        self.groups.setdefault(group, {})[item_id] = json.loads(json.dumps(record))
        self.saves += 1


class MemoryJournal:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def record(self, key: str, value: str) -> None:
        self.values[key] = value


@dataclass
class ProgressLog:
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, **progress: Any) -> None:
        self.calls.append(progress)


def write_eval_file(path: Path, stories: int, turns: int = 12) -> list[dict[str, Any]]:
    """An eval JSONL in the prepare step's schema; stories whose sentences answer their questions."""
    rows = []
    for n in range(stories):
        names = [NAMES[(n + t) % len(NAMES)] + str(t) for t in range(turns)]
        colors = [COLORS[(n * 5 + t) % len(COLORS)] for t in range(turns)]
        story = " ".join(f"The hat of {name} was {color}." for name, color in zip(names, colors, strict=True))
        rows.append(
            {
                "id": f"story-{n}",
                "source": SOURCES[n % len(SOURCES)],
                "system": f"Read the story and extract answers for the questions.\nStory: {story}",
                "story": story,
                "turns": [
                    {
                        "turn_id": t + 1,
                        "question": f"What color was the hat of {names[t]}?",
                        "answers": [colors[t], f"{colors[t]} hat", colors[t]],
                    }
                    for t in range(turns)
                ],
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def make_ctx(
    tmp_path: Path, settings: Settings, evaluate_spec: dict[str, Any], items: MemoryItems | None = None
) -> JobContext:
    spec = JobSpec.model_validate({"name": "evaljob", "dataset": {"source": "local"}, "evaluate": evaluate_spec})
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    return JobContext(
        job_id="evaljob-00000000",
        spec=spec,
        settings=settings,
        out_dir=out,
        work_dir=tmp_path,
        journal=MemoryJournal(),
        items=items or MemoryItems(),
        progress=ProgressLog(),
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    handle = await start_sandbox(latency_ms="2", seed=1, retry_after_s=0.05)
    yield handle
    await handle.close()


def sandbox_settings(handle: SandboxHandle) -> Settings:
    return Settings(together_base_url=handle.base_url, together_api_key="sandbox-key")


def chat_requests(handle: SandboxHandle) -> int:
    return handle.sandbox.stats.requests["POST /v1/chat/completions"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- a recording OpenAI-compatible server ------------------------------------------------------------------------


@dataclass
class Recorder:
    """Answers `ans:<last question>`; `LONG` questions get a context-length 400, `EMPTY` ones an empty answer and
    `FLAKY` ones a 502 (every time), `FILTERED` ones a content-filter 400."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    status: int = 200
    in_flight: int = 0
    peak: int = 0
    latency_s: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        question = body["messages"][-1]["content"]
        if self.status != 200:
            return web.json_response({"error": {"message": f"refused {question}", "type": "x"}}, status=self.status)
        if "FILTERED" in question:
            error = {"message": "The response was filtered due to the prompt", "code": "content_filter"}
            return web.json_response({"error": error}, status=400)
        if "FLAKY" in question:
            return web.json_response({"error": {"message": "bad gateway", "type": "server_error"}}, status=502)
        if "LONG" in question:
            message = "This model's maximum context length is 8192 tokens"
            return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)
        content = "" if "EMPTY" in question else f"ans:{question}"
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 3}})


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield rec, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


def small_stories(path: Path) -> list[dict[str, Any]]:
    rows = [
        {
            "id": "s1",
            "source": "cnn",
            "system": "SYS one",
            "story": "one",
            "turns": [
                {"turn_id": 1, "question": "Q1", "answers": ["A1", "a1"]},
                {"turn_id": 2, "question": "Q2", "answers": ["A2"]},
                {"turn_id": 3, "question": "Q3", "answers": ["A3"]},
            ],
        },
        {
            "id": "s2",
            "source": "race",
            "system": "SYS two",
            "story": "two",
            "turns": [
                {"turn_id": 1, "question": "LONG question", "answers": ["B1"]},
                {"turn_id": 2, "question": "EMPTY question", "answers": ["B2"]},
                {"turn_id": 3, "question": "last", "answers": ["ans:last"]},
            ],
        },
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def prompt_of(rec: Recorder, question: str) -> list[dict[str, str]]:
    return next(body["messages"] for body in rec.bodies if body["messages"][-1]["content"] == question)


# ---- tests ----------------------------------------------------------------------------------------------------------


async def test_eval_only_spec_against_sandbox_writes_predictions_and_metrics(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    """Two models, gold history: every turn asked once per model, files written, metrics equal the scorer's."""
    rows = write_eval_file(tmp_path / "eval.jsonl", stories=6)
    spec = {"models": ["base", "org/other-model"], "base_model": "meta-llama/Base", "concurrency": 8}
    ctx = make_ctx(tmp_path, sandbox_settings(sandbox), spec)
    output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})

    turns = sum(len(r["turns"]) for r in rows)
    assert chat_requests(sandbox) == 2 * turns
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert metrics["simulated"] is True and "simulated" in metrics["note"]
    assert set(metrics["models"]) == {"base", "org/other-model"}
    base = metrics["models"]["base"]
    assert base["model"] == "meta-llama/Base"
    assert (base["answered"], base["errors"], base["overall"]["turns"]) == (turns, 0, turns)
    assert base["tokens"]["total"] > 0
    assert list(base["by_turn_depth"]) == ["1", "2-3", "4-6", "7-10", "11+"]
    assert base["official"]["other"]["turns"] == 12  # the story with no CoQA source
    assert "org/other-model - base" in metrics["deltas"]
    assert output["models"]["base"]["f1"] == base["overall"]["f1"]
    assert output["simulated"] is True

    lines = read_jsonl(ctx.out_dir / "predictions-base.jsonl")
    assert len(lines) == turns and (ctx.out_dir / "predictions-org_other-model.jsonl").exists()
    assert {"id", "turn_id", "question", "answers", "prediction", "em", "f1"} <= set(lines[0])
    assert lines[0]["prediction"].startswith("According to the story")
    # The metrics equal the official scorer run on the same predictions.
    gold = [scoring.GoldTurn(r["id"], t["turn_id"], r["source"], tuple(t["answers"])) for r in rows for t in r["turns"]]
    preds = {(line["id"], line["turn_id"]): line["prediction"] for line in lines}
    assert base["official"] == scoring.domain_scores(gold, scoring.score_turns(gold, preds))
    progress = ctx.progress.calls[-1]  # type: ignore[attr-defined]
    assert (progress["done"], progress["total"], progress["errors"]) == (2 * turns, 2 * turns, 0)
    assert progress["models"]["base"] == {"done": turns, "total": turns, "errors": 0, "missing": 0}


async def test_resume_asks_only_missing_items(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """Items already in the store are not asked again: the sandbox sees exactly the missing ones."""
    rows = write_eval_file(tmp_path / "eval.jsonl", stories=4, turns=5)
    spec = {"models": ["m-one"], "concurrency": 4}
    items = MemoryItems()
    first = make_ctx(tmp_path, sandbox_settings(sandbox), spec, items)
    await evaluate.run(first, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    assert chat_requests(sandbox) == 20
    # Forget 7 answers, as if the process had died before they arrived.
    forgotten = sorted(items.groups["m-one"])[:7]
    for key in forgotten:
        del items.groups["m-one"][key]
    sandbox.sandbox.stats.clear()
    second = make_ctx(tmp_path, sandbox_settings(sandbox), spec, items)
    await evaluate.run(second, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    assert chat_requests(sandbox) == 7
    assert sorted(items.groups["m-one"]) == sorted(f"{r['id']}:{t['turn_id']}" for r in rows for t in r["turns"])


async def test_cancelled_midway_then_restarted_loses_and_repeats_nothing(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    """A run cancelled in the middle keeps its saved answers; the rerun asks exactly the rest."""
    write_eval_file(tmp_path / "eval.jsonl", stories=6, turns=10)
    await sandbox_config(sandbox, latency_ms="20")
    items = MemoryItems()
    spec = {"models": ["m-one"], "concurrency": 4}
    ctx = make_ctx(tmp_path, sandbox_settings(sandbox), spec, items)
    task = asyncio.create_task(evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}))
    async with asyncio.timeout(10):
        while items.saves < 20:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = len(items.groups["m-one"])
    assert 20 <= saved < 60
    sandbox.sandbox.stats.clear()
    await evaluate.run(
        make_ctx(tmp_path, sandbox_settings(sandbox), spec, items),
        {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}},
    )
    assert chat_requests(sandbox) == 60 - saved
    assert len(items.groups["m-one"]) == 60


async def sandbox_config(handle: SandboxHandle, **knobs: Any) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{handle.base_url}/_sandbox/config", json=knobs) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_random_faults_complete_with_no_lost_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 30 % random 429 (Retry-After) / 5xx answers the evaluation still gets every item, without errors."""
    monkeypatch.setattr(evaluate, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(evaluate, "BACKOFF_CAP_S", 0.1)
    handle = await start_sandbox(latency_ms="1", fault_rate=0.3, seed=7, retry_after_s=0.02)
    try:
        write_eval_file(tmp_path / "eval.jsonl", stories=5, turns=8)
        spec = {"models": ["m-one", "m-two"], "concurrency": 8, "max_attempts": 12}
        ctx = make_ctx(tmp_path, sandbox_settings(handle), spec)
        output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
        stats = handle.sandbox.stats
        assert sum(stats.faults.values()) > 10  # faults really happened
        assert stats.requests["POST /v1/chat/completions"] == 80  # every item answered exactly once
    finally:
        await handle.close()
    assert output["models"]["m-one"]["errors"] == output["models"]["m-two"]["errors"] == 0
    assert len(ctx.items.groups["m-one"]) == len(ctx.items.groups["m-two"]) == 40  # type: ignore[attr-defined]


async def test_protocol_prompts(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """cookbook: questions only; gold-history: gold pairs before the question; own-history: the model's answers."""
    rec, base_url = recorder
    small_stories(tmp_path / "eval.jsonl")
    inputs = {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
    for protocol in ("cookbook", "gold-history", "own-history"):
        rec.bodies.clear()
        spec = {"protocol": protocol, "models": ["m"], "endpoints": {"m": {"base_url": base_url}}, "temperature": None}
        await evaluate.run(make_ctx(tmp_path / protocol, Settings(), spec), inputs)
        third = prompt_of(rec, "Q3")
        assert third[0] == {"role": "system", "content": "SYS one"}
        if protocol == "cookbook":
            assert [m["content"] for m in third[1:]] == ["Q1", "Q2", "Q3"]
            assert {m["role"] for m in third[1:]} == {"user"}
        elif protocol == "gold-history":
            assert [m["content"] for m in third[1:]] == ["Q1", "A1", "Q2", "A2", "Q3"]
            assert [m["role"] for m in third[1:]] == ["user", "assistant", "user", "assistant", "user"]
        else:
            assert [m["content"] for m in third[1:]] == ["Q1", "ans:Q1", "Q2", "ans:Q2", "Q3"]
            # A failed turn (context length, empty answer) is left out of the history.
            assert [m["content"] for m in prompt_of(rec, "last")[1:]] == ["last"]
        assert "temperature" not in rec.bodies[0] and rec.bodies[0]["max_tokens"] == 64


async def test_error_items_are_counted_scored_zero_and_kept(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """A context-length 400 and an empty answer become error items scored 0; the rest is scored normally."""
    rec, base_url = recorder
    small_stories(tmp_path / "eval.jsonl")
    spec = {"protocol": "cookbook", "models": ["m"], "endpoints": {"m": {"base_url": base_url}}}
    ctx = make_ctx(tmp_path, Settings(), spec)
    output = await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    model = json.loads((ctx.out_dir / "metrics.json").read_text())["models"]["m"]
    assert model["error_kinds"] == {"context_length": 1, "empty": 1}
    assert (model["answered"], model["errors"]) == (4, 2)
    assert model["scale"] == "0-1"
    assert model["overall"] == {"em": round(1 / 6, 4), "f1": round(1 / 6, 4), "turns": 6}  # only "last" is right
    assert output["models"]["m"]["errors"] == 2
    lines = {(line["id"], line["turn_id"]): line for line in read_jsonl(ctx.out_dir / "predictions-m.jsonl")}
    assert "context length" in lines[("s2", 1)]["error"] and lines[("s2", 1)]["f1"] == 0.0
    assert lines[("s2", 3)]["em"] == 1.0
    assert ctx.items.groups["m"]["s2:1"]["error_kind"] == "context_length"  # type: ignore[attr-defined]
    assert json.loads((ctx.out_dir / "metrics.json").read_text())["simulated"] is False


async def test_own_history_resumes_with_saved_answers(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """own-history after a restart asks only missing turns and feeds them the saved earlier answers."""
    rec, base_url = recorder
    small_stories(tmp_path / "eval.jsonl")
    items = MemoryItems()
    saved = {"prediction": "remembered", "error": None, "retryable": False, "story_id": "s1", "turn_id": 1}
    await items.save("m", "s1:1", saved)
    await items.save("m", "s1:2", saved | {"turn_id": 2, "prediction": None, "error": "boom", "retryable": True})
    spec = {"protocol": "own-history", "models": ["m"], "endpoints": {"m": {"base_url": base_url}}}
    await evaluate.run(
        make_ctx(tmp_path, Settings(), spec, items), {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
    )
    asked = [body["messages"][-1]["content"] for body in rec.bodies]
    assert "Q1" not in asked and "Q2" in asked  # a saved transient failure is asked again
    assert [m["content"] for m in prompt_of(rec, "Q3")[1:]] == ["Q1", "remembered", "Q2", "ans:Q2", "Q3"]
    assert len(rec.bodies) == 5


async def test_bound_holds_across_models_and_limit_takes_first_stories(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    """Two models share the concurrency bound (server peak == bound); `limit` evaluates the first N stories."""
    rec, base_url = recorder
    rec.latency_s = 0.01
    write_eval_file(tmp_path / "eval.jsonl", stories=5, turns=6)
    endpoints = {"a": {"base_url": base_url}, "b": {"base_url": base_url}}
    spec = {"models": ["a", "b"], "endpoints": endpoints, "concurrency": 3, "limit": 4}
    ctx = make_ctx(tmp_path, Settings(), spec)
    await evaluate.run(ctx, {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})
    assert rec.peak == 3
    assert len(rec.bodies) == 2 * 4 * 6
    assert {line["id"] for line in read_jsonl(ctx.out_dir / "predictions-a.jsonl")} == {f"story-{n}" for n in range(4)}


async def test_every_request_failing_fails_with_the_first_error(tmp_path: Path, recorder: tuple[Recorder, str]) -> None:
    """When no item gets an answer the step raises the first error; 401 pauses instead."""
    rec, base_url = recorder
    small_stories(tmp_path / "eval.jsonl")
    spec = {"models": ["m"], "endpoints": {"m": {"base_url": base_url}}, "concurrency": 1}
    inputs = {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
    rec.status = 404
    with pytest.raises(RemoteRejected, match="HTTP 404: refused Q1"):
        await evaluate.run(make_ctx(tmp_path / "a", Settings(), spec), inputs)
    rec.status = 401
    with pytest.raises(Paused, match="HTTP 401"):
        await evaluate.run(make_ctx(tmp_path / "b", Settings(), spec), inputs)


async def test_a_refused_key_while_a_large_round_starts_pauses_and_leaves_no_task(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    """A 401 answered while a round is still starting its tasks (more than START_BATCH of them) pauses the step:
    Paused is raised, the rest of the round is never asked, and no task is left running."""
    rec, base_url = recorder
    rec.status = 401
    write_eval_file(tmp_path / "eval.jsonl", stories=40)  # 480 items, started 64 at a time
    spec = {"models": ["m"], "endpoints": {"m": {"base_url": base_url}}, "concurrency": 8}
    with pytest.raises(Paused, match="HTTP 401"):
        await evaluate.run(
            make_ctx(tmp_path, Settings(), spec), {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
        )
    assert 0 < len(rec.bodies) < 480
    assert [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("Session.")] == []


async def test_missing_endpoint_key_pauses(tmp_path: Path) -> None:
    """An endpoint whose (allowed) api_key_env is not available pauses instead of sending unauthenticated requests."""
    small_stories(tmp_path / "eval.jsonl")
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "MY_PROVIDER_KEY"}
    spec = {"models": ["m"], "endpoints": {"m": endpoint}}
    settings = Settings(endpoint_keys="MY_PROVIDER_KEY=127.0.0.1")
    with pytest.raises(Paused, match="MY_PROVIDER_KEY"):
        await evaluate.run(make_ctx(tmp_path, settings, spec), {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}})


def test_eval_file_errors_name_the_line(tmp_path: Path) -> None:
    """A malformed eval line is a DatasetError naming file and line."""
    path = tmp_path / "eval.jsonl"
    path.write_text('{"id": "a", "system": "s", "turns": []}\n{"id": "b"}\n')
    with pytest.raises(Exception, match=r"eval.jsonl:2"):
        load_eval_file(path)


def test_prompts_built_once_per_story_are_the_prompts_of_build_messages() -> None:
    """Prompts (history built once per story) gives build_messages' prompts for every protocol and turn, an empty
    gold answer (left out of gold-history) included, and shares no list between two prompts."""
    turns = tuple(EvalTurn(n, f"Q{n}", (answer, "alt")) for n, answer in enumerate(["A0", "", "A2", "A3"], start=1))
    stories = [EvalStory("s1", "race", "SYS", turns), EvalStory("s1", "race", "other", turns[:2])]  # same id twice
    own = {1: "mine", 2: None, 3: "", 4: "x"}
    for protocol in ("cookbook", "gold-history", "own-history"):
        prompts = Prompts(protocol)
        for _ in range(2):  # built, then from the cache
            for story in stories:
                for upto in range(len(story.turns)):
                    assert prompts.messages(story, upto, own) == build_messages(protocol, story, upto, own)
        assert prompts.messages(stories[0], 3) is not prompts.messages(stories[0], 3)


def test_a_round_freezes_the_heap_it_found_and_thaws_it_after() -> None:
    """heap_frozen moves the objects that exist before a round out of the collector's way and back after it, also
    when the round fails."""
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), heap_frozen():
        assert gc.get_freeze_count() > 0
        raise RuntimeError("the round failed")
    assert gc.get_freeze_count() == 0


def test_overlapping_rounds_keep_the_heap_frozen_until_the_last_ends() -> None:
    """Two jobs' rounds at once: the first to end leaves the heap frozen for the other; the last thaws it."""
    with heap_frozen():
        with heap_frozen():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
