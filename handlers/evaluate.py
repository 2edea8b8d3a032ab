"""The `evaluate` step: ask every evaluated model every turn of the eval split (concurrently, resumable item by item),
score the answers like the official CoQA scorer, and write predictions-<model>.jsonl and metrics.json.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from yarl import URL

from daemon.errors import (
    ContextLengthExceeded,
    DatasetError,
    FinetunedError,
    Paused,
    RemoteRejected,
    SpecError,
    TransientError,
)
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.remote.backoff import RetryPolicy
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatReply, ChatRequest, chat_url
from daemon.spec import EvaluateSpec
from daemon.spool.files import atomic_write_bytes, write_json
from handlers.evaluation import scoring
from handlers.evaluation.stories import EvalStory, build_messages, item_id, load_eval_file
from handlers.serving import rearm_budget_guard

log = structlog.get_logger()

TOGETHER_INFERENCE_URL = "https://api.together.xyz/v1/chat/completions"
SIMULATED_NOTE = "The answers were simulated by the finetuned sandbox, not produced by a real model."
PROGRESS_INTERVAL_S = 1.0
# Backoff between attempts of one request without a Retry-After (full jitter, seconds), and the time cap of one item.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
ITEM_RETRY_MAX_S = 600.0


@dataclass(frozen=True)
class Target:
    """One evaluated model: its alias in the spec, the real model name and where to ask it."""

    alias: str
    model: str
    endpoint: ChatEndpoint


def resolve_targets(ctx: JobContext, evaluate: EvaluateSpec, finetuned_model: str | None) -> list[Target]:
    """Each alias of `evaluate.models` with its model name and endpoint (its own, else Together's / the sandbox)."""
    keys: Mapping[str, str] = ctx.settings.named_secrets
    targets: list[Target] = []
    for alias in evaluate.models:
        model = ctx.spec.resolve_model(alias, finetuned_model)
        custom = evaluate.endpoints.get(alias)
        if custom is None:
            base = ctx.settings.together_base_url
            url = chat_url(base) if base else TOGETHER_INFERENCE_URL
            targets.append(Target(alias, model, ChatEndpoint(url, ctx.settings.together_api_key)))
            continue
        key = None
        if custom.api_key_env:
            key = keys.get(custom.api_key_env)
            if not key:
                raise Paused(
                    f"evaluate.endpoints.{alias}.api_key_env: environment variable {custom.api_key_env} is unset"
                )
        targets.append(Target(alias, model, ChatEndpoint(chat_url(custom.base_url), key)))
    return targets


class Tracker:
    """Per-model done/total/error counts, published through ctx.progress at most once per interval."""

    def __init__(self, ctx: JobContext, totals: Mapping[str, int], interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._ctx = ctx
        self.models = {alias: {"done": 0, "total": total, "errors": 0} for alias, total in totals.items()}
        self._interval_s = interval_s
        self._published_at = 0.0

    def count(self, alias: str, *, error: bool) -> None:
        """One more answered (or failed) item of `alias`."""
        self.models[alias]["done"] += 1
        self.models[alias]["errors"] += int(error)

    async def publish(self, *, force: bool = False) -> None:
        """Send the counts to ctx.progress unless that was done less than an interval ago."""
        now = time.monotonic()
        if not force and now - self._published_at < self._interval_s:
            return
        self._published_at = now
        total = {k: sum(m[k] for m in self.models.values()) for k in ("done", "total", "errors")}
        await self._ctx.progress(**total, models={alias: dict(m) for alias, m in self.models.items()})


class Session:
    """One evaluation run: the client, the spec's generation settings, the saved records and the first error."""

    def __init__(self, ctx: JobContext, evaluate: EvaluateSpec, client: ChatClient, tracker: Tracker) -> None:
        self.ctx = ctx
        self.evaluate = evaluate
        self.client = client
        self.tracker = tracker
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.first_error: FinetunedError | None = None

    async def ask(self, target: Target, story: EvalStory, index: int, own: Mapping[int, str | None]) -> dict[str, Any]:
        """Ask one turn, save its record (answer or error item) and count it."""
        turn = story.turns[index]
        request = ChatRequest(
            model=target.model,
            messages=build_messages(self.evaluate.protocol, story, index, own),
            max_tokens=self.evaluate.max_tokens,
            temperature=self.evaluate.temperature,
            stop=self.evaluate.stop,
        )
        try:
            record = _answer_record(await self.client.complete(target.endpoint, request))
        except (TransientError, RemoteRejected) as exc:
            record = _error_record(exc)
            self.first_error = self.first_error or exc
        record |= {"story_id": story.id, "turn_id": turn.turn_id, "model": target.model}
        key = item_id(story.id, turn.turn_id)
        if record["error"] is not None:
            log.warning("eval_item_failed", model=target.alias, item=key, error=record["error"])
        await self.ctx.items.save(target.alias, key, record)
        self.records[target.alias][key] = record
        self.tracker.count(target.alias, error=record["error"] is not None)
        await self.tracker.publish()
        return record

    async def conversation(self, target: Target, story: EvalStory) -> None:
        """own-history: the turns of one story in order, each seeing the model's earlier answers (saved or new)."""
        saved = self.records[target.alias]
        own: dict[int, str | None] = {}
        for index, turn in enumerate(story.turns):
            record = saved.get(item_id(story.id, turn.turn_id))
            if record is None or _needs_asking(record):
                record = await self.ask(target, story, index, own)
            own[turn.turn_id] = record.get("prediction")


def _answer_record(reply: ChatReply) -> dict[str, Any]:
    record: dict[str, Any] = {
        "prediction": reply.content,
        "error": None,
        "error_kind": None,
        "retryable": False,
        "finish_reason": reply.finish_reason,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "attempts": reply.attempts,
        "simulated": reply.simulated,
    }
    if not reply.content or not reply.content.strip():
        record |= {"prediction": None, "error": "the response has no message content", "error_kind": "empty"}
    return record


def _error_record(exc: FinetunedError) -> dict[str, Any]:
    kind = "context_length" if isinstance(exc, ContextLengthExceeded) else "rejected"
    if isinstance(exc, TransientError):
        kind = "transient"
    return {
        "prediction": None,
        "error": str(exc),
        "error_kind": kind,
        "retryable": kind == "transient",  # re-asked after a restart; a rejected prompt would fail the same way
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "simulated": False,
    }


def _needs_asking(record: Mapping[str, Any]) -> bool:
    return bool(record.get("retryable"))


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Evaluate every model of the spec on the eval file; write predictions and metrics; return a summary."""
    evaluate = ctx.spec.evaluate
    if evaluate is None:
        raise SpecError(["evaluate: the spec has no evaluate section"])
    eval_file = inputs.get("prepare", {}).get("eval_file")
    if not eval_file:
        raise DatasetError("nothing to evaluate: the prepare step wrote no eval file (see dataset.eval_split)")
    stories = await asyncio.to_thread(load_eval_file, Path(eval_file), evaluate.limit)
    rearm_budget_guard(ctx, inputs.get("serve"))  # handlers/serving.py: max_endpoint_usd, also after a restart
    served = inputs.get("serve", {}).get("model")  # a dedicated endpoint's name when the model needs one
    targets = resolve_targets(ctx, evaluate, served or inputs.get("poll", {}).get("model"))
    turns_per_model = sum(len(story.turns) for story in stories)
    tracker = Tracker(ctx, {target.alias: turns_per_model for target in targets})
    async with ChatClient(
        concurrency=evaluate.concurrency,
        request_timeout_s=evaluate.request_timeout_s,
        retry_policy=RetryPolicy(
            attempts=evaluate.max_attempts, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, max_total_s=ITEM_RETRY_MAX_S
        ),
    ) as client:
        sandbox_urls = [url for url in {t.endpoint.url for t in targets} if await client.is_sandbox(url)]
        session = Session(ctx, evaluate, client, tracker)
        for target in targets:
            session.records[target.alias] = await ctx.items.load(target.alias)
        await _ask_missing(session, targets, stories)
        await tracker.publish(force=True)
    records = {t.alias: session.records[t.alias] for t in targets}
    _fail_if_nothing_answered(records, session.first_error)
    return await _write_outputs(ctx, evaluate, targets, stories, records, simulated=bool(sandbox_urls))


async def _ask_missing(session: Session, targets: Iterable[Target], stories: list[EvalStory]) -> None:
    """All missing items of all models concurrently; the client's bound decides what is on the wire."""
    own_history = session.evaluate.protocol == "own-history"
    for target in targets:
        kept = [r for r in session.records[target.alias].values() if not _needs_asking(r)]
        session.tracker.models[target.alias] |= {"done": len(kept), "errors": sum(1 for r in kept if r.get("error"))}
    await session.tracker.publish(force=True)
    try:
        async with asyncio.TaskGroup() as group:
            for target in targets:
                saved = session.records[target.alias]
                for story in stories:
                    if own_history:
                        group.create_task(session.conversation(target, story))
                        continue
                    for index, turn in enumerate(story.turns):
                        record = saved.get(item_id(story.id, turn.turn_id))
                        if record is None or _needs_asking(record):
                            group.create_task(session.ask(target, story, index, {}))
    except* Paused as paused:  # auth/quota: stop everything and let the runner pause remote work
        raise paused.exceptions[0] from None


def _fail_if_nothing_answered(records: Mapping[str, Mapping[str, Mapping[str, Any]]], first: Exception | None) -> None:
    """If no item of any model has an answer, the evaluation failed: raise the first error."""
    if any(r.get("error") is None for group in records.values() for r in group.values()):
        return
    if first is not None:
        raise first
    sample = next((r for group in records.values() for r in group.values()), None)
    raise RemoteRejected(f"every evaluation request failed: {sample['error'] if sample else 'nothing was asked'}")


def safe_name(alias: str) -> str:
    """A file-name-safe form of a model alias (model names such as `org/model` contain slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", alias).lstrip(".") or "model"


async def _write_outputs(
    ctx: JobContext,
    evaluate: EvaluateSpec,
    targets: list[Target],
    stories: list[EvalStory],
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    simulated: bool,
) -> StepOutput:
    """Score every model and write predictions-<alias>.jsonl (in a thread: scoring is CPU work), then metrics.json."""
    per_model = await asyncio.to_thread(_score_and_write, ctx.out_dir, evaluate.protocol, targets, stories, records)
    simulated = simulated or any(r.get("simulated") for group in records.values() for r in group.values())
    document: dict[str, Any] = {
        "protocol": evaluate.protocol,
        "simulated": simulated,
        **({"note": SIMULATED_NOTE} if simulated else {}),
        "stories": len(stories),
        "turns": sum(len(s.turns) for s in stories),
        "models": per_model,
        "deltas": scoring.deltas(per_model, targets[0].alias) if len(targets) > 1 else {},
    }
    metrics_path = ctx.out_dir / "metrics.json"
    await write_json(metrics_path, document)
    summary = {
        alias: {k: m["overall"][k] for k in ("em", "f1", "turns")} | {"errors": m["errors"]}
        for alias, m in per_model.items()
    }
    log.info(
        "evaluation_scored",
        protocol=evaluate.protocol,
        simulated=simulated,
        f1={a: s["f1"] for a, s in summary.items()},
    )
    return {"metrics": str(metrics_path), "protocol": evaluate.protocol, "simulated": simulated, "models": summary}


def _score_and_write(
    out_dir: Path,
    protocol: str,
    targets: list[Target],
    stories: list[EvalStory],
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    gold = [scoring.GoldTurn(s.id, t.turn_id, s.source, t.answers) for s in stories for t in s.turns]
    questions = {(s.id, t.turn_id): t.question for s in stories for t in s.turns}
    per_model: dict[str, dict[str, Any]] = {}
    for target in targets:
        mine = [records[target.alias].get(item_id(*turn.key)) for turn in gold]
        predictions = {t.key: r["prediction"] for t, r in zip(gold, mine, strict=True) if r and r["error"] is None}
        metrics, turn_scores = scoring.model_metrics(gold, predictions, cookbook=protocol == "cookbook")
        endpoint = str(URL(target.endpoint.url).with_user(None))
        per_model[target.alias] = {"model": target.model, "endpoint": endpoint, **metrics, **_counts(mine)}
        lines = (
            json.dumps(_prediction_line(turn, questions[turn.key], r, turn_scores.get(turn.key)), ensure_ascii=False)
            for turn, r in zip(gold, mine, strict=True)
        )
        data = "".join(line + "\n" for line in lines).encode()
        atomic_write_bytes(out_dir / f"predictions-{safe_name(target.alias)}.jsonl", data)
    return per_model


def _counts(records: list[Mapping[str, Any] | None]) -> dict[str, Any]:
    present = [r for r in records if r is not None]
    kinds = Counter(str(r["error_kind"]) for r in present if r.get("error_kind"))
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in present)
    completion = sum(int(r.get("completion_tokens") or 0) for r in present)
    tokens = {"prompt": prompt, "completion": completion, "total": prompt + completion}
    errors = {"errors": kinds.total(), "missing": len(records) - len(present), "error_kinds": dict(kinds)}
    return {"answered": sum(1 for r in present if r.get("error") is None), **errors, "tokens": tokens}


def _prediction_line(
    turn: scoring.GoldTurn, question: str, record: Mapping[str, Any] | None, score: scoring.TurnScore | None
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": turn.story_id,
        "turn_id": turn.turn_id,
        "question": question,
        "answers": list(turn.answers),
        "prediction": record.get("prediction") if record else None,
        "em": score.em if score else 0.0,
        "f1": score.f1 if score else 0.0,
    }
    if record is None or record.get("error") is not None:
        line["error"] = record["error"] if record else "not asked"
    return line
