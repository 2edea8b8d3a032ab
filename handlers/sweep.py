"""Step `sweep`: several fine-tunes of the data the steps before it prepared, validated and uploaded once.

Each variant (`spec.sweep`: a grid and/or a list of finetune values) runs the usual create → poll → serve →
evaluate → release → report under its own folder `variants/<name>/`, with its own journal (so its fine-tune is
created exactly once and adopted after a crash, like a job's) and its steps checkpointed in it. Before anything is
created the estimates of all variants are summed against `sweep.max_price_usd`. The base model is evaluated once,
into `base/`, and every variant reads those answers. One variant failing does not stop the others. The step writes
`sweep.json` and the comparison report (report.md/html) in the sweep's folder.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.errors import FinetunedError, Paused, RemoteRejected
from daemon.jobs.context import JobContext, StepInputs, StepOutput
from daemon.money import usd
from daemon.spool.files import atomic_write_json
from handlers import create, evaluate, poll, report, serve
from handlers.experiment.compare import Row, row_from_folder, write_comparison

log = structlog.get_logger()

StepFn = Callable[[JobContext, StepInputs], Awaitable[StepOutput]]
BASE = "base"
PRICE_CHECKED = "sweep.price_checked"


@dataclass
class Variant:
    """One variant: its name, the finetune values it overrides, and its context."""

    name: str
    overrides: dict[str, Any]
    ctx: JobContext


def variants(ctx: JobContext, board: dict[str, dict[str, Any]] | None = None) -> list[Variant]:
    """The sweep's variants, each with a context whose base-model answers are the sweep's (and whose progress
    goes on `board`, the sweep's progress)."""
    shared = frozenset({BASE})  # each variant evaluates base too, from the sweep's answers: asked once in all
    return [
        Variant(name, overrides, ctx.variant(name, spec, shared_groups=shared, board=board))
        for name, overrides, spec in ctx.spec.variants()
    ]


async def check_sweep_price(ctx: JobContext, found: list[Variant], upload: dict[str, Any]) -> None:
    """Sum every variant's estimate; refuse the whole sweep above `sweep.max_price_usd` before creating any."""
    if ctx.journal.get(PRICE_CHECKED):
        return
    sweep = ctx.spec.sweep
    assert sweep is not None
    estimates = {}
    for variant in found:
        assert variant.ctx.spec.finetune is not None
        estimate = await create.estimate(variant.ctx, variant.ctx.spec.finetune, upload)
        create.check_price(estimate, variant.ctx.spec.finetune)
        estimates[variant.name] = estimate.total_usd
    known = [price for price in estimates.values() if price is not None]
    total = sum(known)
    log.info("sweep_price_estimated", variants=len(found), total_usd=round(total, 4), max_usd=sweep.max_price_usd)
    if sweep.max_price_usd is not None:
        if len(known) < len(estimates):
            raise RemoteRejected(
                f"sweep.max_price_usd is {usd(sweep.max_price_usd)} but Together gave no estimate for "
                f"{len(estimates) - len(known)} variant(s); no fine-tune was created"
            )
        if total > sweep.max_price_usd:
            each = ", ".join(f"{name} {usd(price or 0.0)}" for name, price in estimates.items())
            raise RemoteRejected(
                f"the {len(found)} variants are estimated at {usd(total)} together ({each}), above "
                f"sweep.max_price_usd {usd(sweep.max_price_usd)}; no fine-tune was created (raise the cap, or "
                "sweep fewer values)"
            )
    await ctx.journal.record(PRICE_CHECKED, json.dumps(estimates))


async def _checkpointed(ctx: JobContext, name: str, step: StepFn, inputs: dict[str, StepOutput]) -> None:
    """Run one step of a variant unless its output is already in the variant's journal; keep the output."""
    saved = ctx.journal.get(f"step:{name}")
    if saved is not None:
        inputs[name] = json.loads(saved)
        return
    for folder in (ctx.out_dir, ctx.work_dir):
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    log.info("variant_step_started", variant=ctx.job_id, step=name)
    inputs[name] = await step(ctx, inputs)
    await ctx.journal.record(f"step:{name}", json.dumps(inputs[name]))


async def run_variant(variant: Variant, shared: StepInputs, base_done: asyncio.Event, slots: asyncio.Semaphore) -> None:
    """create → poll → evaluate → report for one variant; its failure is recorded, never raised (but pauses are)."""
    ctx = variant.ctx
    if ctx.journal.get("outcome") is not None:
        return
    inputs: dict[str, StepOutput] = dict(shared)
    async with slots:
        try:
            await _checkpointed(ctx, "create", create.run, inputs)
            await ctx.progress(status="training", fine_tune_id=inputs["create"]["fine_tune_id"])
            await _checkpointed(ctx, "poll", poll.run, inputs)
            if not inputs["poll"].get("stopped"):
                await _evaluated(ctx, inputs, base_done)
            await _checkpointed(ctx, "report", report.run, inputs)
        except Paused:
            raise
        except FinetunedError as exc:
            log.warning("variant_failed", variant=variant.name, error=str(exc), error_type=type(exc).__name__)
            await serve.cleanup(ctx, "failed")  # no endpoint outlives its variant
            await ctx.journal.record("error", json.dumps({"type": type(exc).__name__, "message": str(exc)}))
            await ctx.journal.record("outcome", "failed")
            return
    stopped = inputs["poll"].get("stopped")
    if stopped:
        await ctx.journal.record("error", json.dumps({"type": "Stopped", "message": stopped["reason"]}))
    outcome = "stopped" if stopped else "completed"
    await ctx.journal.record("outcome", outcome)
    await ctx.progress(status=outcome)


async def _evaluated(ctx: JobContext, inputs: dict[str, StepOutput], base_done: asyncio.Event) -> None:
    """serve (a dedicated endpoint when the fine-tune needs one) → evaluate → release, as in a job's pipeline."""
    if ctx.spec.evaluate is None:
        return
    await base_done.wait()
    if ctx.spec.serves_finetune:
        await _checkpointed(ctx, "serve", serve.run, inputs)
    await _checkpointed(ctx, "evaluate", evaluate.run, inputs)
    if ctx.spec.serves_finetune:
        await _checkpointed(ctx, "release", serve.release, inputs)


async def evaluate_base(
    ctx: JobContext, shared: StepInputs, base_done: asyncio.Event, board: dict[str, dict[str, Any]]
) -> None:
    """The base model's answers, once for the sweep, into `base/`; variants wait for them (or go on without)."""
    try:
        spec = ctx.spec
        if spec.evaluate is None or BASE not in spec.evaluate.models or ctx.journal.get("base/step:evaluate"):
            return
        only_base = spec.model_copy(update={"evaluate": spec.evaluate.model_copy(update={"models": [BASE]})})
        base_ctx = ctx.variant(
            BASE, only_base, shared_groups=frozenset({BASE}), out_dir=ctx.out_dir / BASE, board=board
        )
        await _checkpointed(base_ctx, "evaluate", evaluate.run, dict(shared))
    except Paused:
        raise
    except FinetunedError as exc:  # not the sweep's end: each variant asks the base items still missing itself
        log.warning("base_evaluation_failed", error=str(exc), error_type=type(exc).__name__)
    finally:
        base_done.set()


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Run every variant (at most `sweep.max_parallel` at once) and write the comparison."""
    sweep = ctx.spec.sweep
    assert sweep is not None, "the pipeline runs `sweep` only for specs with a sweep section"
    board: dict[str, dict[str, Any]] = {}
    found = variants(ctx, board)
    await check_sweep_price(ctx, found, dict(inputs["upload"]))
    base_done, slots = asyncio.Event(), asyncio.Semaphore(sweep.max_parallel)
    async with asyncio.TaskGroup() as group:
        group.create_task(evaluate_base(ctx, inputs, base_done, board))
        for variant in found:
            group.create_task(run_variant(variant, inputs, base_done, slots))
    rows = [_row(ctx, variant) for variant in found]
    document = await asyncio.to_thread(_publish, ctx, rows, [*sweep.grid, *{k for v in sweep.variants for k in v}])
    if not any(row.status == "completed" for row in rows):
        raise RemoteRejected(f"every variant of the sweep failed; first: {rows[0].error}")
    return {"variants": len(rows), "completed": document["completed"], "best": document["best"]}


def _row(ctx: JobContext, variant: Variant) -> Row:
    error = variant.ctx.journal.get("error")
    create_output = json.loads(variant.ctx.journal.get("step:create") or "{}")
    return row_from_folder(
        variant.ctx.out_dir,
        name=variant.name,
        overrides=variant.overrides,
        status=variant.ctx.journal.get("outcome") or "unknown",
        error=json.loads(error)["message"] if error else None,
        price_usd=create_output.get("estimated_price_usd"),
        link=f"variants/{variant.name}/report.md",
    )


def _publish(ctx: JobContext, rows: list[Row], swept: list[str]) -> dict[str, Any]:
    sweep = ctx.spec.sweep
    assert sweep is not None
    keys = list(dict.fromkeys(swept))
    document = write_comparison(ctx.out_dir, rows, keys, metric=sweep.metric, title=f"Sweep {ctx.spec.name}")
    atomic_write_json(ctx.out_dir / "sweep.json", document)
    return document


async def cleanup(ctx: JobContext, outcome: str) -> None:
    """At any end of the sweep, every variant's endpoint is deleted; when cancelled, its fine-tune cancelled too."""
    if ctx.spec.sweep is None:
        return
    for variant in variants(ctx):
        await serve.cleanup(variant.ctx, outcome)
        await create.cleanup(variant.ctx, outcome)
