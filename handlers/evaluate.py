"""The `evaluate` step: ask every evaluated model every turn of the eval split (models interleaved item by item,
resumable item by item, transient failures asked again in rounds until the deadline), score the answers like the
official CoQA scorer, and write predictions-<model>.jsonl and metrics.json (with each model's completeness).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import DatasetError, EvaluationIncomplete, Paused, RemoteRejected, SpecError
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.remote import hosts
from daemon.remote.backoff import RetryPolicy
from daemon.remote.chat import ChatClient, ChatEndpoint, chat_url
from daemon.remote.limit import LimitTuning
from daemon.spec import EvaluateSpec
from daemon.spool.files import write_json
from handlers.evaluation import pricing, scoring
from handlers.evaluation.asking import Rounds, Session, Target, Tracker, ask_until_complete
from handlers.evaluation.batch import BatchRounds
from handlers.evaluation.outputs import score_and_write
from handlers.evaluation.stories import EvalStory, Prompts, load_eval_file
from handlers.serving import rearm_budget_guard

log = structlog.get_logger()

TOGETHER_INFERENCE_URL = "https://api.together.xyz/v1/chat/completions"
SIMULATED_NOTE = "The answers were simulated by the finetuned sandbox, not produced by a real model."
# Backoff between attempts of one request without a Retry-After (full jitter, seconds), and the time cap of one item.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
ITEM_RETRY_MAX_S = 600.0
# Backoff between rounds that ask the transiently failed items again (full jitter, seconds).
ROUND_BASE_S = 1.0
ROUND_CAP_S = 60.0
# The per-provider limit's constants (initial limit, latency tolerance, probe delays while a provider is down).
LIMIT_TUNING = LimitTuning()


async def resolve_targets(ctx: JobContext, evaluate: EvaluateSpec, finetuned_model: str | None) -> list[Target]:
    """Each alias of `evaluate.models` with its model name and endpoint (its own, else Together's / the sandbox).

    A custom endpoint must be http(s) and not link-local / metadata, and gets a key only if the operator allows
    that variable for that host (daemon/remote/hosts.py); an allowed but unset key pauses.
    """
    targets: list[Target] = []
    for alias in evaluate.models:
        model = ctx.spec.resolve_model(alias, finetuned_model)
        custom = evaluate.endpoints.get(alias)
        if custom is None:
            base = ctx.settings.together_base_url
            url = chat_url(base) if base else TOGETHER_INFERENCE_URL
            targets.append(Target(alias, model, ChatEndpoint(url, ctx.settings.together_api_key)))
            continue
        what = f"evaluate.endpoints.{alias}"
        base_url = hosts.check_base_url(f"{what}.base_url", custom.base_url, ctx.settings)
        await hosts.check_resolved(f"{what}.base_url", base_url, ctx.settings)
        key = None
        if custom.api_key_env:
            hosts.check_key_for(f"{what}.api_key_env", custom.api_key_env, base_url, ctx.settings)
            key = hosts.key_value(custom.api_key_env, ctx.settings)
            if not key:
                raise Paused(f"{what}.api_key_env: environment variable {custom.api_key_env} is unset")
        targets.append(Target(alias, model, ChatEndpoint(chat_url(custom.base_url), key)))
    return targets


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Evaluate every model of the spec on the eval file; write predictions and metrics; return a summary.

    Fails with EvaluationIncomplete when, at `evaluate.deadline_min`, a model has more items missing than
    `evaluate.max_missing_share` allows (metrics.json is written first and says what is missing).
    """
    evaluate = ctx.spec.evaluate
    if evaluate is None:
        raise SpecError(["evaluate: the spec has no evaluate section"])
    eval_file = inputs.get("prepare", {}).get("eval_file")
    if not eval_file:
        raise DatasetError("nothing to evaluate: the prepare step wrote no eval file (see dataset.eval_split)")
    stopped = inputs.get("poll", {}).get("stopped")
    if stopped:  # a stop rule ended the fine-tune: there is no fine-tuned model to ask
        log.info("evaluation_skipped", reason=stopped["reason"])
        return {"skipped": f"the fine-tune was stopped: {stopped['reason']}", "models": {}}
    deadline_s = time.monotonic() + evaluate.deadline_min * 60.0
    stories = await asyncio.to_thread(load_eval_file, Path(eval_file), evaluate.limit)
    rearm_budget_guard(ctx, inputs.get("serve"))  # handlers/serving.py: max_endpoint_usd, also after a restart
    served = inputs.get("serve", {}).get("model")  # a dedicated endpoint's name when the model needs one
    targets = await resolve_targets(ctx, evaluate, served or inputs.get("poll", {}).get("model"))
    tracker = Tracker(ctx, {target.alias: sum(len(story.turns) for story in stories) for target in targets})
    prices = await _priced(ctx, targets, inputs)
    estimate = _estimate(evaluate, stories, targets, prices)
    log.info("evaluation_price_estimated", mode=evaluate.mode, **estimate)
    session, missing, limits, simulated = await _ask(ctx, evaluate, targets, stories, tracker, deadline_s=deadline_s)
    records = {t.alias: session.records[t.alias] for t in targets}
    if not any(missing.values()):
        _fail_if_nothing_answered(records, session.first_error)
    priced = {"prices": prices, "estimate": estimate}
    output = await _write_outputs(
        ctx, evaluate, targets, stories, records, limits=limits, simulated=simulated, priced=priced
    )
    _fail_if_incomplete(ctx, missing, tracker, session.last_transient)
    return output


async def _ask(
    ctx: JobContext,
    evaluate: EvaluateSpec,
    targets: list[Target],
    stories: list[EvalStory],
    tracker: Tracker,
    *,
    deadline_s: float,
) -> tuple[Session, dict[str, int], dict[str, Any], bool]:
    """Ask every missing item (real time or batch); (session, missing per model, limits, simulated)."""
    async with ChatClient(
        concurrency=evaluate.concurrency,
        request_timeout_s=evaluate.request_timeout_s,
        tuning=LIMIT_TUNING,
        secrets=ctx.settings.secrets(),
        retry_policy=RetryPolicy(
            attempts=evaluate.max_attempts, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, max_total_s=ITEM_RETRY_MAX_S
        ),
    ) as client:
        simulated = any([await client.is_sandbox(url) for url in {t.endpoint.url for t in targets}])
        session = Session(ctx, evaluate, client, tracker)
        for target in targets:
            session.records[target.alias] = await ctx.items.load(target.alias)
        rounds = Rounds(deadline_s, ROUND_BASE_S, ROUND_CAP_S)
        if evaluate.mode == "batch":
            missing = await BatchRounds(session, targets, stories, simulated=simulated).run(rounds)
        else:
            missing = await ask_until_complete(session, targets, stories, rounds)
        return session, missing, dict(client.limits()), simulated


def _fail_if_incomplete(ctx: JobContext, missing: Mapping[str, int], tracker: Tracker, last: Exception | None) -> None:
    """Raise EvaluationIncomplete naming every model whose missing share is over `evaluate.max_missing_share`."""
    evaluate = ctx.spec.evaluate
    assert evaluate is not None
    over = {
        alias: count
        for alias, count in missing.items()
        if count / max(1, tracker.models[alias]["total"]) > evaluate.max_missing_share
    }
    if not over:
        return
    parts = [f"{alias} {count} of {tracker.models[alias]['total']} items missing" for alias, count in over.items()]
    raise EvaluationIncomplete(
        f"evaluation incomplete at its deadline (evaluate.deadline_min {evaluate.deadline_min:g}, "
        f"{tracker.round - 1} round(s)): {'; '.join(parts)}, over evaluate.max_missing_share "
        f"{evaluate.max_missing_share:g}; last transient error: {last}. The answers so far are kept: "
        f"`finetuned retry {ctx.job_id}` asks only the missing items again"
    )


def _fail_if_nothing_answered(records: Mapping[str, Mapping[str, Mapping[str, Any]]], first: Exception | None) -> None:
    """If no item of any model has an answer, the evaluation failed: raise the first error."""
    if any(r.get("error") is None for group in records.values() for r in group.values()):
        return
    if first is not None:
        raise first
    sample = next((r for group in records.values() for r in group.values()), None)
    raise RemoteRejected(f"every evaluation request failed: {sample['error'] if sample else 'nothing was asked'}")


async def _write_outputs(
    ctx: JobContext,
    evaluate: EvaluateSpec,
    targets: list[Target],
    stories: list[EvalStory],
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    limits: Mapping[str, Any],
    simulated: bool,
    priced: Mapping[str, Any],
) -> StepOutput:
    """Score every model and write predictions-<alias>.jsonl (in a thread: scoring is CPU work), then metrics.json."""
    per_model = await asyncio.to_thread(score_and_write, ctx.out_dir, evaluate.protocol, targets, stories, records)
    simulated = simulated or any(r.get("simulated") for group in records.values() for r in group.values())
    document: dict[str, Any] = {
        "protocol": evaluate.protocol,
        "simulated": simulated,
        **({"note": SIMULATED_NOTE} if simulated else {}),
        "stories": len(stories),
        "turns": sum(len(s.turns) for s in stories),
        "models": per_model,
        "deltas": scoring.deltas(per_model, targets[0].alias) if len(targets) > 1 else {},
        "concurrency": dict(limits),
        "mode": evaluate.mode,
        "price": _price(priced, per_model, evaluate.mode),
    }
    metrics_path = ctx.out_dir / "metrics.json"
    await write_json(metrics_path, document)
    summary = {
        alias: {k: m["overall"][k] for k in ("em", "f1", "turns")}
        | {k: m[k] for k in ("answered", "truncated", "errors", "missing")}
        for alias, m in per_model.items()
    }
    log.info(
        "evaluation_scored",
        protocol=evaluate.protocol,
        simulated=simulated,
        f1={a: s["f1"] for a, s in summary.items()},
    )
    return {"metrics": str(metrics_path), "protocol": evaluate.protocol, "simulated": simulated, "models": summary}


async def _priced(ctx: JobContext, targets: list[Target], inputs: StepInputs) -> dict[str, tuple[float, float]]:
    """Per-token prices of the models Together serves serverless here (not custom servers, not an endpoint)."""
    together_url = (
        chat_url(ctx.settings.together_base_url) if ctx.settings.together_base_url else TOGETHER_INFERENCE_URL
    )
    dedicated = inputs.get("serve", {}).get("mode") == "dedicated"
    billed = {
        t.alias: t.model
        for t in targets
        if t.endpoint.url == together_url and not (dedicated and t.alias == "finetuned")
    }
    base = ctx.spec.finetune.model if ctx.spec.finetune else None
    return await pricing.price_table(ctx, billed, base_model=base)


def _estimate(
    evaluate: EvaluateSpec, stories: list[EvalStory], targets: list[Target], prices: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """The most the priced models can cost, realtime and batch (prompts from the gold history, max_tokens each)."""
    chars = 0
    items = 0
    prompts = Prompts(evaluate.protocol)
    for story in stories:
        for index in range(len(story.turns)):
            chars += sum(len(m["content"]) for m in prompts.messages(story, index, {}))
            items += 1
    prompt, completion = pricing.estimate_tokens(chars, items, evaluate.max_tokens)
    return {
        f"{mode}_usd": round(sum(pricing.cost_usd(p, prompt, completion, mode=mode) for p in prices.values()), 6)
        for mode in ("realtime", "batch")
    }


def _price(priced: Mapping[str, Any], per_model: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """metrics.json's `price`: charged per model for the tokens used, and the estimate made before asking."""
    tokens = {alias: m.get("tokens") or {} for alias, m in per_model.items()}
    return pricing.price_block(priced["prices"], tokens, mode=mode) | {"estimated": priced["estimate"]}
