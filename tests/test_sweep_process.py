"""Sweeps end to end: the daemon as a subprocess against the sandbox, its request counts proving what is shared."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import daemon_env, only_status, run_daemon, sandbox_admin, start_daemon, stats

CHAT = "POST /v1/chat/completions"
CREATE = "POST /v1/fine-tunes"
UPLOAD = "POST /v1/files"
SWEEP = """
sweep:
  grid:
    learning_rate: [1.0e-5, 3.0e-5]
    n_epochs: [1, 2]
  max_parallel: 2
  max_price_usd: {cap}
"""


def sweep_spec(spool: Path, *, cap: float = 50.0) -> None:
    """Drop a 2x2 sweep (learning rate x epochs) with a base + fine-tuned evaluation into the inbox."""
    text = (
        f"name: sweep\ndataset:\n  source: {spool / 'data'}\n  format: coqa\n"
        "finetune:\n  model: meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\n  suffix: sw\n"
        "evaluate:\n  protocol: gold-history\n  models: [base, finetuned]\n  concurrency: 4\n" + SWEEP.format(cap=cap)
    )
    tmp = spool / "inbox" / ".sweep.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / "sweep.yaml")


def eval_turns(spool: Path, job_id: str) -> int:
    lines = (spool / "outbox" / job_id / "eval.jsonl").read_text().splitlines()
    return sum(len(json.loads(line)["turns"]) for line in lines)


async def test_2x2_sweep_uploads_once_evaluates_base_once_and_compares(spool: Path, sandbox: SandboxHandle) -> None:
    """Four variants: one upload, four fine-tunes, base asked once, four reports and the comparison."""
    sweep_spec(spool)
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url), timeout_s=120)
    assert code == 0, stderr[-3000:]
    status = only_status(spool)
    assert status["status"] == "completed", status.get("error")
    counts = await stats(sandbox.base_url)
    turns = eval_turns(spool, status["job_id"])
    assert (counts[UPLOAD], counts[CREATE]) == (1, 4)
    assert counts[CHAT] == turns * (1 + 4)  # the base model once, each fine-tuned model once
    folder = spool / "outbox" / status["job_id"]
    document = json.loads((folder / "sweep.json").read_text())
    assert document["completed"] == 4 and document["best"] in {v["name"] for v in document["variants"]}
    assert {v["status"] for v in document["variants"]} == {"completed"}
    for variant in document["variants"]:
        assert (folder / variant["link"]).is_file()
        metrics = json.loads((folder / "variants" / variant["name"] / "metrics.json").read_text())
        assert set(metrics["models"]) == {"base", "finetuned"}
    report = (folder / "report.md").read_text()
    assert "learning_rate" in report and "n_epochs" in report and "Best by F1" in report
    assert (folder / "compare-learning_rate.png").stat().st_size > 1000


async def test_summed_estimate_over_the_sweep_cap_creates_nothing(spool: Path, sandbox: SandboxHandle) -> None:
    """The four estimates together above sweep.max_price_usd: the job fails saying so, no fine-tune is created."""
    sweep_spec(spool, cap=0.000001)
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0, stderr[-3000:]
    status = only_status(spool)
    assert status["status"] == "failed"
    assert "above sweep.max_price_usd" in status["error"]["message"]
    assert "no fine-tune was created" in status["error"]["message"]
    assert (await stats(sandbox.base_url)).get(CREATE, 0) == 0


async def test_kill9_mid_sweep_creates_no_variant_twice(spool: Path) -> None:
    """kill -9 while the first fine-tunes train; the restart adopts them and finishes with exactly four."""
    slow = await start_sandbox(speed=200.0, retry_after_s=0.05)
    try:
        sweep_spec(spool)
        env = daemon_env(spool, slow.base_url)
        process = await start_daemon(env)

        async def created() -> int:
            return (await stats(slow.base_url)).get(CREATE, 0)

        async with asyncio.timeout(60):
            while await created() < 1:
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        before = await created()
        assert 1 <= before < 4
        code, _, stderr = await run_daemon(env, timeout_s=180)
        assert code == 0, stderr[-3000:]
        status = only_status(spool)
        assert status["status"] == "completed", status.get("error")
        assert await created() == 4
        document = json.loads((spool / "outbox" / status["job_id"] / "sweep.json").read_text())
        assert document["completed"] == 4
    finally:
        await slow.close()


async def test_a_variant_stopped_by_its_rule_is_marked_and_its_sibling_completes(spool: Path) -> None:
    """The first variant's eval loss rises (scripted): it is stopped and cancelled, marked `stopped` in the
    comparison; the second variant completes and is the best."""
    slow = await start_sandbox(speed=100.0, retry_after_s=0.05)
    try:
        await sandbox_admin(slow.base_url, "eval-trends", {"eval_loss": "rising", "count": 1})
        text = (
            f"name: sweep\ndataset:\n  source: {spool / 'data'}\n  format: coqa\n  validation_size: 2\n"
            "finetune:\n  model: meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\n  suffix: sw\n  n_evals: 6\n"
            "  n_epochs: 3\n  stop_when:\n    eval_loss_patience: 2\n"
            "evaluate:\n  protocol: gold-history\n  models: [base, finetuned]\n  concurrency: 4\n"
            "sweep:\n  grid:\n    learning_rate: [1.0e-5, 3.0e-5]\n  max_parallel: 1\n"
        )
        tmp = spool / "inbox" / ".sweep.yaml.tmp"
        tmp.write_text(text)
        os.rename(tmp, spool / "inbox" / "sweep.yaml")
        code, _, stderr = await run_daemon(daemon_env(spool, slow.base_url), timeout_s=180)
        assert code == 0, stderr[-3000:]
        status = only_status(spool)
        assert status["status"] == "completed", status.get("error")
        folder = spool / "outbox" / status["job_id"]
        document = json.loads((folder / "sweep.json").read_text())
        outcome = {v["name"]: v["status"] for v in document["variants"]}
        assert outcome == {"learning_rate-1e-05": "stopped", "learning_rate-3e-05": "completed"}
        assert document["best"] == "learning_rate-3e-05"
        report = (folder / "report.md").read_text()
        assert "learning_rate-1e-05 stopped: the eval loss has not improved" in report
    finally:
        await slow.close()
