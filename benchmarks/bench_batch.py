"""Batch mode against real-time mode on the same answers: the daemon as a subprocess against the sandbox.

Three runs on one sandbox (its answers are a pure function of the request, so both modes get the same ones):
real time, batch, and batch with a `kill -9` once the batch is submitted followed by a restart. Reported: wall time,
requests of each kind the sandbox received, whether predictions and metrics are identical, the evaluation price
of each mode from metrics.json and their ratio, and the batches created by the interrupted run.

    python benchmarks/bench_batch.py [--stories 20] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import write_section  # noqa: E402

from daemon.sandbox import start_sandbox  # noqa: E402
from tests.process import daemon_env, run_daemon, spec_text, start_daemon, stats, statuses, write_coqa  # noqa: E402

SECTION = "## batch evaluation"
CHAT, BATCHES = "POST /v1/chat/completions", "POST /v1/batches"


def drop(spool: Path, name: str, mode: str) -> None:
    """A fine-tune + gold-history evaluation spec in the given mode."""
    text = spec_text(name, spool / "data", evaluate=True).replace(
        "  concurrency: 4\n", f"  concurrency: 8\n  mode: {mode}\n"
    )
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


def outputs(spool: Path, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(predictions by model and item, metrics.json) of a job."""
    folder = spool / "outbox" / job_id
    predictions = {}
    for alias in ("base", "finetuned"):
        rows = [json.loads(line) for line in (folder / f"predictions-{alias}.jsonl").read_text().splitlines()]
        predictions[alias] = {f"{r['id']}:{r['turn_id']}": r["prediction"] for r in rows}
    return predictions, json.loads((folder / "metrics.json").read_text())


async def timed_run(spool: Path, url: str, name: str, mode: str) -> tuple[float, str]:
    """Run one spec to completion; (wall seconds, job id)."""
    drop(spool, name, mode)
    started = time.perf_counter()
    code, _, stderr = await run_daemon(daemon_env(spool, url), timeout_s=600)
    if code != 0:
        raise SystemExit(stderr[-2000:])
    job_id = next(j for j in statuses(spool) if j.startswith(f"{name}-"))
    return time.perf_counter() - started, job_id


async def interrupted(root: Path, stories: int) -> dict[str, int]:
    """A batch run killed with SIGKILL once its batch is submitted, then restarted: batches created in all."""
    spool = root / "interrupted"
    (spool / "inbox").mkdir(parents=True)
    write_coqa(spool / "data", n_train=6, n_validation=stories)
    sandbox = await start_sandbox(speed=20.0, retry_after_s=0.05)
    try:
        env = daemon_env(spool, sandbox.base_url)
        drop(spool, "killed", "batch")
        process = await start_daemon(env)
        async with asyncio.timeout(120):
            while (await stats(sandbox.base_url)).get(BATCHES, 0) < 1:
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        code, _, stderr = await run_daemon(env, timeout_s=600)
        if code != 0:
            raise SystemExit(stderr[-2000:])
        ((_, status),) = statuses(spool).items()
        return {"batches": (await stats(sandbox.base_url))[BATCHES], "completed": int(status["status"] == "completed")}
    finally:
        await sandbox.close()


async def measure(stories: int) -> dict[str, Any]:
    """The three runs; the figures as one document."""
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        spool = root / "spool"
        (spool / "inbox").mkdir(parents=True)
        write_coqa(spool / "data", n_train=6, n_validation=stories)
        sandbox = await start_sandbox(speed=5000.0, retry_after_s=0.05)
        try:
            live_s, live = await timed_run(spool, sandbox.base_url, "live", "realtime")
            after_live = await stats(sandbox.base_url)
            bulk_s, bulk = await timed_run(spool, sandbox.base_url, "bulk", "batch")
            after_bulk = await stats(sandbox.base_url)
        finally:
            await sandbox.close()
        (live_pred, live_metrics), (bulk_pred, bulk_metrics) = outputs(spool, live), outputs(spool, bulk)
        same_scores = all(
            live_metrics["models"][a]["overall"] == bulk_metrics["models"][a]["overall"] for a in ("base", "finetuned")
        )
        return {
            "stories": stories,
            "items": sum(len(v) for v in live_pred.values()),
            "live_s": live_s,
            "bulk_s": bulk_s,
            "live_chat": after_live[CHAT],
            "bulk_chat": after_bulk[CHAT] - after_live[CHAT],
            "bulk_batches": after_bulk.get(BATCHES, 0),
            "same_predictions": live_pred == bulk_pred,
            "same_scores": same_scores,
            "live_usd": live_metrics["price"]["total_usd"],
            "bulk_usd": bulk_metrics["price"]["total_usd"],
            "estimated": bulk_metrics["price"]["estimated"],
            "interrupted": await interrupted(root, stories),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    """The `## batch evaluation` section."""
    kill = r["interrupted"]
    return "\n".join(
        [
            SECTION,
            "",
            f"`benchmarks/bench_batch.py --stories {r['stories']}` on {platform.machine()} ({os.cpu_count()} cores) / "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}: the daemon as a subprocess against the "
            "sandbox (speed 5000), the same fine-tune + gold-history spec (base and fine-tuned, "
            f"{r['items']} items) once with `evaluate.mode: realtime` and once with `batch`.",
            "",
            "| mode | wall s | real-time chat requests | batches | evaluation price (metrics.json) |",
            "|:---|---:|---:|---:|---:|",
            f"| realtime | {r['live_s']:.1f} | {r['live_chat']} | 0 | ${r['live_usd']:.6f} |",
            f"| batch | {r['bulk_s']:.1f} | {r['bulk_chat']} | {r['bulk_batches']} | ${r['bulk_usd']:.6f} |",
            "",
            f"Identical predictions: **{'yes' if r['same_predictions'] else 'NO'}**; identical EM/F1: "
            f"**{'yes' if r['same_scores'] else 'NO'}**. Price batch / realtime: "
            f"**{r['bulk_usd'] / r['live_usd']:.2f}** (estimated before asking: ${r['estimated']['realtime_usd']:.6f} "
            f"realtime, ${r['estimated']['batch_usd']:.6f} batch). A batch run killed with SIGKILL once its batch was "
            f"submitted, then restarted: {kill['batches']} batch created in all, job "
            f"{'completed' if kill['completed'] else 'NOT completed'}. Wall time in batch mode is the sandbox's "
            "simulated batch clock (validation, then a per-request run time), not a cost of the daemon.",
            "",
        ]
    )


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stories", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    section = markdown(asyncio.run(measure(args.stories)))
    print(section)
    if args.write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
