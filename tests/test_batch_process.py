"""evaluate.mode batch end to end: the daemon as a subprocess against the sandbox's Batch API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from daemon.sandbox import start_sandbox
from tests.process import daemon_env, run_cli, run_daemon, sandbox_admin, spec_text, start_daemon, stats, statuses

BATCHES = "POST /v1/batches"
CHAT = "POST /v1/chat/completions"


def drop(spool: Path, name: str, *, mode: str, protocol: str = "gold-history") -> None:
    text = spec_text(name, spool / "data", evaluate=True).replace("protocol: gold-history", f"protocol: {protocol}")
    text = text.replace("  concurrency: 4\n", f"  concurrency: 4\n  mode: {mode}\n")
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


def predictions(spool: Path, job_id: str, alias: str) -> dict[str, str]:
    path = spool / "outbox" / job_id / f"predictions-{alias}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {f"{r['id']}:{r['turn_id']}": r["prediction"] for r in rows}


@pytest.mark.parametrize("protocol", ["gold-history", "own-history"])
async def test_batch_mode_gives_the_realtime_predictions_and_metrics(spool: Path, protocol: str) -> None:
    """The same spec in both modes: identical predictions and scores; batch mode sends no real-time chat."""
    sandbox = await start_sandbox(speed=5000.0, retry_after_s=0.05)
    try:
        env = daemon_env(spool, sandbox.base_url)
        drop(spool, "live", mode="realtime", protocol=protocol)
        assert (await run_daemon(env))[0] == 0
        chats_live = (await stats(sandbox.base_url))[CHAT]
        drop(spool, "bulk", mode="batch", protocol=protocol)
        code, _, stderr = await run_daemon(env, timeout_s=120)
        assert code == 0, stderr[-3000:]
        jobs = statuses(spool)
        live, bulk = (next(j for j in jobs if j.startswith(name)) for name in ("live-", "bulk-"))
        assert jobs[bulk]["status"] == "completed", jobs[bulk].get("error")
        counts = await stats(sandbox.base_url)
        assert counts[CHAT] == chats_live  # batch mode asked nothing in real time
        assert counts[BATCHES] >= 1 if protocol == "own-history" else counts[BATCHES] == 1
        for alias in ("base", "finetuned"):
            assert predictions(spool, bulk, alias) == predictions(spool, live, alias)
        metrics = {j: json.loads((spool / "outbox" / j / "metrics.json").read_text()) for j in (live, bulk)}
        for alias in ("base", "finetuned"):
            assert metrics[bulk]["models"][alias]["overall"] == metrics[live]["models"][alias]["overall"]
        assert metrics[bulk]["mode"] == "batch" and metrics[live]["mode"] == "realtime"
        live_usd, bulk_usd = (metrics[j]["price"]["total_usd"] for j in (live, bulk))
        assert live_usd > 0 and bulk_usd == pytest.approx(live_usd / 2, abs=2e-6)  # same tokens, half the price
        estimated = metrics[bulk]["price"]["estimated"]
        assert estimated["batch_usd"] == pytest.approx(estimated["realtime_usd"] / 2, abs=2e-6)
    finally:
        await sandbox.close()


async def test_kill9_while_the_batch_runs_submits_no_second_batch(spool: Path) -> None:
    """kill -9 once the batch is submitted; the restart adopts it and completes with exactly one batch."""
    sandbox = await start_sandbox(speed=20.0, retry_after_s=0.05)
    try:
        env = daemon_env(spool, sandbox.base_url)
        drop(spool, "bulk", mode="batch")
        process = await start_daemon(env)
        async with asyncio.timeout(60):
            while (await stats(sandbox.base_url)).get(BATCHES, 0) < 1:
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        code, _, stderr = await run_daemon(env, timeout_s=180)
        assert code == 0, stderr[-3000:]
        ((_, status),) = statuses(spool).items()
        assert status["status"] == "completed", status.get("error")
        assert (await stats(sandbox.base_url))[BATCHES] == 1
    finally:
        await sandbox.close()


async def test_a_failed_batch_fails_the_job_clearly_and_retry_sends_a_new_one(spool: Path) -> None:
    """A batch that fails as a whole fails the step with Together's words; `finetuned retry` submits the missing
    items in a new batch (the failed one is settled, not adopted again) and the job completes."""
    sandbox = await start_sandbox(speed=5000.0, retry_after_s=0.05)
    try:
        await sandbox_admin(sandbox.base_url, "batch-outcomes", {"outcome": "failed", "at": 0.0, "count": 1})
        env = daemon_env(spool, sandbox.base_url)
        drop(spool, "bulk", mode="batch")
        assert (await run_daemon(env, timeout_s=120))[0] == 0
        ((job_id, status),) = statuses(spool).items()
        assert status["status"] == "failed" and status["error"]["step"] == "evaluate"
        assert "batch" in status["error"]["message"] and "failed" in status["error"]["message"]
        args = ["--inbox", str(spool / "inbox"), "--outbox", str(spool / "outbox"), "--state-dir", str(spool / "state")]
        assert (await run_cli(env, "retry", job_id, *args))[0] == 0
        code, _, stderr = await run_daemon(env, timeout_s=120)
        assert code == 0, stderr[-3000:]
        assert statuses(spool)[job_id]["status"] == "completed", statuses(spool)[job_id].get("error")
        assert (await stats(sandbox.base_url))[BATCHES] == 2
    finally:
        await sandbox.close()
