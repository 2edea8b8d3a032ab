"""The iteration commands as a user runs them: `finetuned again` derives and submits the next run, `finetuned
compare` puts finished jobs side by side; the daemon as a subprocess against the sandbox."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp
import yaml

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import (
    API_KEY,
    daemon_env,
    run_cli,
    run_daemon,
    sandbox_admin,
    spec_text,
    stats,
    statuses,
)


def drop(spool: Path, name: str, text: str) -> None:
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


def spool_args(spool: Path) -> list[str]:
    return ["--inbox", str(spool / "inbox"), "--outbox", str(spool / "outbox"), "--state-dir", str(spool / "state")]


async def test_again_derives_the_next_run_and_compare_reports_both(spool: Path, sandbox: SandboxHandle) -> None:
    """again --set changes one value under a new name; compare shows that value for both jobs with their scores."""
    env = daemon_env(spool, sandbox.base_url)
    drop(spool, "iter", spec_text("iter", spool / "data", evaluate=True))
    assert (await run_daemon(env))[0] == 0
    (first,) = statuses(spool)
    code, out, err = await run_cli(env, "again", first, "--set", "finetune.learning_rate=3e-5", *spool_args(spool))
    assert code == 0, err
    (derived,) = (spool / "inbox").glob("*.yaml")
    data = yaml.safe_load(derived.read_text())
    assert (data["name"], data["finetune"]["learning_rate"]) == ("iter-2", 3e-5)
    assert (await run_daemon(env))[0] == 0
    second = next(job for job in statuses(spool) if job.startswith("iter-2-"))
    assert statuses(spool)[second]["status"] == "completed"
    code, out, err = await run_cli(env, "compare", first, second, *spool_args(spool))
    assert code == 0, err
    report_path = Path(out.split("wrote ", 1)[1].strip())
    report = await asyncio.to_thread(report_path.read_text)
    assert "| run | learning_rate | status |" in report
    assert "1e-05" in report and "3e-05" in report and "Best by F1" in report


async def test_again_refuses_a_change_that_makes_the_spec_invalid(spool: Path, sandbox: SandboxHandle) -> None:
    """A --set value the spec rejects: exit 1 naming the key, nothing delivered to the inbox."""
    env = daemon_env(spool, sandbox.base_url)
    drop(spool, "bad", spec_text("bad", spool / "data"))
    assert (await run_daemon(env))[0] == 0
    (job,) = statuses(spool)
    code, _, err = await run_cli(env, "again", job, "--set", "finetune.n_epochs=-1", *spool_args(spool))
    assert code == 1 and "finetune.n_epochs" in err
    assert not list((spool / "inbox").iterdir())


async def test_again_continue_trains_on_from_the_earlier_fine_tune(spool: Path, sandbox: SandboxHandle) -> None:
    """again --continue sets from_checkpoint to the earlier job; the create request carries its fine-tune id."""
    env = daemon_env(spool, sandbox.base_url)
    drop(spool, "base", spec_text("base", spool / "data"))
    assert (await run_daemon(env))[0] == 0
    (first,) = statuses(spool)
    first_fine_tune = statuses(spool)[first]["remote"]["fine_tune_id"]
    code, _, err = await run_cli(env, "again", first, "--continue", "--set", "finetune.n_epochs=2", *spool_args(spool))
    assert code == 0, err
    assert (await run_daemon(env))[0] == 0
    second = next(job for job in statuses(spool) if job != first)
    assert statuses(spool)[second]["status"] == "completed", statuses(spool)[second].get("error")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sandbox.base_url}/v1/fine-tunes", headers=headers) as r,
    ):
        jobs = {job["id"]: job for job in (await r.json())["data"]}
    continued = jobs[statuses(spool)[second]["remote"]["fine_tune_id"]]
    assert continued["from_checkpoint"] == first_fine_tune
    assert continued["n_epochs"] == 2


async def test_from_checkpoint_of_a_job_without_a_fine_tune_fails_clearly(spool: Path, sandbox: SandboxHandle) -> None:
    """Naming a data-only job as the checkpoint fails the new job at create, saying why; nothing is created."""
    env = daemon_env(spool, sandbox.base_url)
    drop(spool, "data-only", spec_text("data-only", spool / "data", finetune=False))
    assert (await run_daemon(env))[0] == 0
    (first,) = statuses(spool)
    text = spec_text("next", spool / "data").replace(
        "  suffix: test\n", f"  suffix: test\n  from_checkpoint: {first}\n"
    )
    drop(spool, "next", text)
    assert (await run_daemon(env))[0] == 0
    second = next(job for job in statuses(spool) if job != first)
    error = statuses(spool)[second]["error"]
    assert error["step"] == "create" and f"from_checkpoint names job {first}" in error["message"]


async def test_rising_eval_loss_stops_and_cancels_the_run_and_the_report_says_why(spool: Path) -> None:
    """A scripted overfitting run: stop_when's patience fires, the fine-tune is cancelled, nothing is evaluated."""
    slow = await start_sandbox(speed=100.0, retry_after_s=0.05)
    try:
        await sandbox_admin(slow.base_url, "eval-trends", {"eval_loss": "rising"})
        extra = "  validation_size: 2\n"
        text = spec_text("overfit", spool / "data", evaluate=True, extra=extra).replace(
            "  n_epochs: 1\n", "  n_epochs: 3\n  n_evals: 6\n  stop_when:\n    eval_loss_patience: 2\n"
        )
        drop(spool, "overfit", text)
        code, _, stderr = await run_daemon(daemon_env(spool, slow.base_url), timeout_s=120)
        assert code == 0, stderr[-3000:]
        ((job_id, status),) = statuses(spool).items()
        assert status["status"] == "completed", status.get("error")
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{slow.base_url}/v1/fine-tunes/{status['remote']['fine_tune_id']}"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
            remote = await response.json()
        assert remote["status"] == "cancelled"  # a job that had completed could not be cancelled any more
        assert (await stats(slow.base_url)).get("POST /v1/chat/completions", 0) == 0
        report = await asyncio.to_thread((spool / "outbox" / job_id / "report.md").read_text)
        # two evaluations without improvement at the least (a loaded machine may poll one evaluation later)
        assert re.search(r"Stopped early at step \d+: the eval loss has not improved for \d+ evaluations", report)
    finally:
        await slow.close()
