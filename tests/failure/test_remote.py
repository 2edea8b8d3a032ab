"""Rows 7-9 of issue 12: reboots during a long poll, a storm of rate limits, one job's refusal; each remote job
created once per spec, nothing left billing after a failure, one job's refusal failing only that job."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from daemon.sandbox import start_sandbox
from tests.failure.conftest import launch
from tests.process import (
    daemon_env,
    run_daemon,
    sandbox_admin,
    spec_text,
    stats,
    statuses,
    wait_until,
    write_coqa,
)


def by_name(spool: Path) -> dict[str, dict[str, object]]:
    return {str(d["name"]): d for d in statuses(spool).values()}


def poll_starts(spool: Path) -> int:
    """How often the `poll` step has started, from the job's own log."""
    found = 0
    for log in (spool / "outbox").glob("*/log.jsonl"):
        found += sum('"step_started"' in line and '"step": "poll"' in line for line in log.read_text().splitlines())
    return found


async def test_reboots_while_polling_cost_no_attempt_one_remote_job(spool: Path) -> None:
    """Four kill -9 reboots while a job polls a long fine-tune: the job completes, following its one fine-tune."""
    slow = await start_sandbox(speed=10.0)  # the fine-tune takes ~20 s: long enough for four reboots mid-poll
    try:
        (spool / "inbox" / "long.yaml").write_text(spec_text("long", spool / "data"))
        env = daemon_env(spool, slow.base_url)
        for reboot in range(4):
            process = await launch(env)
            await wait_until(lambda n=reboot: poll_starts(spool) > n, timeout_s=60)
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        code, _, stderr = await run_daemon(env, timeout_s=120)
        assert code == 0, stderr
        assert by_name(spool)["long"]["status"] == "completed", by_name(spool)["long"]
        requests = await stats(slow.base_url)
        assert requests["POST /v1/fine-tunes"] == 1 and requests["POST /v1/files"] == 1
    finally:
        await slow.close()


async def test_a_job_failing_after_create_cancels_its_fine_tune(spool: Path) -> None:
    """A job that fails once its fine-tune exists (its poll deadline passes) cancels that fine-tune: nothing is
    billed after the failure."""
    slow = await start_sandbox(speed=5.0)
    try:
        text = spec_text("late", spool / "data").replace(
            "max_price_usd: 5\n", "max_price_usd: 5\n  poll_deadline_h: 0.0003\n"
        )
        (spool / "inbox" / "late.yaml").write_text(text)
        code, _, stderr = await run_daemon(daemon_env(spool, slow.base_url), timeout_s=60)
        assert code == 0, stderr
        late = by_name(spool)["late"]
        assert late["status"] == "failed" and "poll_deadline_h" in str(late["error"])
        (job,) = slow.sandbox.jobs.values()
        assert job.status(slow.sandbox.clock()) in {"cancel_requested", "cancelled"}
    finally:
        await slow.close()


async def test_rate_limit_storm_does_not_fail_the_upload(spool: Path) -> None:
    """36 consecutive 429s with Retry-After 0.5 s on upload: the job waits them out and completes, one upload."""
    sandbox = await start_sandbox(speed=2000.0)
    try:
        fault = {"kind": "429", "route": "POST /v1/files", "count": 36, "retry_after_s": 0.5}
        await sandbox_admin(sandbox.base_url, "faults", fault)
        (spool / "inbox" / "limited.yaml").write_text(spec_text("limited", spool / "data"))
        code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url), timeout_s=120)
        assert code == 0, stderr
        assert by_name(spool)["limited"]["status"] == "completed", by_name(spool)["limited"]
        requests = await stats(sandbox.base_url)
        assert requests["POST /v1/files"] == 1 and requests["POST /v1/fine-tunes"] == 1
    finally:
        await sandbox.close()


async def test_one_specs_price_refusal_fails_only_that_job(spool: Path) -> None:
    """A spec whose estimate exceeds the account's limit fails with that reason; another job runs at full speed
    and remote work is never paused."""
    sandbox = await start_sandbox(speed=2000.0, user_limit_usd=0.01)
    try:
        write_coqa(spool / "big", n_train=300)
        big = spec_text("big", spool / "big").replace("n_epochs: 1", "n_epochs: 20")
        (spool / "inbox" / "big.yaml").write_text(big.replace("max_price_usd: 5", "max_price_usd: 1000"))
        (spool / "inbox" / "small.yaml").write_text(spec_text("small", spool / "data"))
        env = daemon_env(spool, sandbox.base_url, FINETUNED_PAUSE_PROBE_S="30")
        code, out, stderr = await run_daemon(env, timeout_s=25)
        assert code == 0, stderr
        jobs = by_name(spool)
        assert jobs["big"]["status"] == "failed" and "refuses this job" in str(jobs["big"]["error"])
        assert jobs["small"]["status"] == "completed"
        assert '"remote_paused"' not in out
        assert (await stats(sandbox.base_url))["POST /v1/fine-tunes"] == 1
    finally:
        await sandbox.close()
