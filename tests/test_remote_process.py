"""The daemon as a subprocess against the sandbox, for what goes wrong remotely: random faults, a revoked key,
a remote job that fails, a price above the cap, a cancel, and a crash in the middle of an evaluation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import (
    daemon_env,
    events,
    only_status,
    run_cli,
    run_daemon,
    sandbox_admin,
    spec_text,
    start_daemon,
    stats,
    statuses,
    wait_until,
    write_coqa,
)

CHAT = "POST /v1/chat/completions"
CREATE = "POST /v1/fine-tunes"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data", n_train=6, n_validation=8)
    return tmp_path


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    handle = await start_sandbox(speed=2000.0, retry_after_s=0.05)
    yield handle
    await handle.close()


def drop(spool: Path, name: str, text: str) -> None:
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


def turns_in(spool: Path, job_id: str) -> int:
    lines = (spool / "outbox" / job_id / "eval.jsonl").read_text().splitlines()
    return sum(len(json.loads(line)["turns"]) for line in lines)


def saved_items(spool: Path) -> int:
    """Evaluation answers in the daemon's database (0 while the daemon is still creating it)."""
    try:
        with sqlite3.connect(spool / "state" / "state.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def test_random_faults_full_job_completes_with_one_create(spool: Path) -> None:
    """With 30 % of API calls answered 429/5xx, fine-tune and evaluation complete: one create, no lost answers."""
    faulty = await start_sandbox(speed=2000.0, fault_rate=0.3, retry_after_s=0.05, seed=7)
    try:
        text = spec_text("faulty", spool / "data", evaluate=True).replace(
            "concurrency: 4\n", "concurrency: 4\n  max_attempts: 20\n"
        )
        drop(spool, "faulty", text)
        code, _, stderr = await run_daemon(daemon_env(spool, faulty.base_url), timeout_s=120)
        assert code == 0, stderr[-3000:]
        status = only_status(spool)
        assert status["status"] == "completed", status
        requests = await stats(faulty.base_url)
        assert requests[CREATE] == 1
        folder = spool / "outbox" / status["job_id"]
        total = turns_in(spool, status["job_id"])
        for model in ("base", "finetuned"):
            rows = [json.loads(line) for line in (folder / f"predictions-{model}.jsonl").read_text().splitlines()]
            assert len(rows) == total and not [r for r in rows if r.get("error")], model
    finally:
        await faulty.close()


async def test_revoked_key_pauses_then_resumes_without_burning_attempts(spool: Path, sandbox: SandboxHandle) -> None:
    """Scripted 401s on create pause remote work (logged with the reason); once calls succeed the job completes."""
    await sandbox_admin(sandbox.base_url, "faults", {"kind": "401", "route": CREATE, "count": 3})
    drop(spool, "locked", spec_text("locked", spool / "data"))
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0, stderr[-3000:]
    status = only_status(spool)
    assert status["status"] == "completed" and status["steps"]["create"]["attempts"] == 1
    names = [e["event"] for e in events(spool, status["job_id"])]
    assert "remote_paused" in names and "remote_resumed" in names
    requests = await stats(sandbox.base_url)
    assert requests[CREATE] == 1


async def test_remote_job_error_fails_the_job_with_the_remote_message(spool: Path, sandbox: SandboxHandle) -> None:
    """A fine-tune that ends in `error` fails the job cleanly, with Together's message in status.json."""
    await sandbox_admin(
        sandbox.base_url, "job-outcomes", {"outcome": "error", "message": "CUDA out of memory", "at": 0.5}
    )
    drop(spool, "doomed", spec_text("doomed", spool / "data"))
    code, _, _ = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0
    status = only_status(spool)
    assert status["status"] == "failed" and status["error"]["type"] == "RemoteJobFailed"
    assert "CUDA out of memory" in status["error"]["message"] and status["error"]["step"] == "poll"


async def test_price_above_the_cap_creates_nothing(spool: Path, sandbox: SandboxHandle) -> None:
    """An estimate above finetune.max_price_usd fails the job at create, with no fine-tune created."""
    drop(spool, "pricey", spec_text("pricey", spool / "data").replace("max_price_usd: 5", "max_price_usd: 0.000001"))
    code, _, _ = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0
    status = only_status(spool)
    assert status["status"] == "failed" and status["error"]["step"] == "create"
    assert "max_price_usd" in status["error"]["message"]
    assert CREATE not in await stats(sandbox.base_url)


async def test_cancel_stops_the_remote_job(spool: Path) -> None:
    """`finetuned cancel JOB` while polling cancels the remote fine-tune and ends the job cancelled."""
    slow = await start_sandbox(speed=5.0)
    try:
        drop(spool, "unwanted", spec_text("unwanted", spool / "data"))
        env = daemon_env(spool, slow.base_url)
        process = await start_daemon(env)
        await wait_until(lambda: any(s.get("step") == "poll" for s in statuses(spool).values()), timeout_s=60)
        job_id = only_status(spool)["job_id"]
        code, out, _ = await run_cli(env, "cancel", job_id)
        assert code == 0 and "cancel requested" in out
        await wait_until(lambda: only_status(spool)["status"] == "cancelled", timeout_s=30)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 15)
        requests = await stats(slow.base_url)
        assert requests["POST /v1/fine-tunes/{id}/cancel"] == 1
    finally:
        await slow.close()


async def test_kill9_mid_evaluation_asks_only_missing_items(spool: Path) -> None:
    """kill -9 halfway through an evaluation: the restart asks only the answers that were not saved."""
    slow_chat = await start_sandbox(speed=2000.0, latency_ms="60")
    try:
        text = spec_text("evalcrash", spool / "data", evaluate=True).replace("concurrency: 4", "concurrency: 2")
        drop(spool, "evalcrash", text)
        env = daemon_env(spool, slow_chat.base_url)
        process = await start_daemon(env)
        await wait_until(lambda: (spool / "state" / "state.db").exists() and saved_items(spool) >= 10, timeout_s=60)
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        saved = saved_items(spool)
        asked_before = (await stats(slow_chat.base_url))[CHAT]
        code, _, stderr = await run_daemon(env)
        assert code == 0, stderr[-3000:]
        status = only_status(spool)
        assert status["status"] == "completed"
        total = 2 * turns_in(spool, status["job_id"])
        assert 10 <= saved < total
        asked_after = (await stats(slow_chat.base_url))[CHAT] - asked_before
        assert asked_after == total - saved
    finally:
        await slow_chat.close()


async def test_once_gives_up_on_a_pause_that_does_not_clear(spool: Path, sandbox: SandboxHandle) -> None:
    """With --once, a key that stays refused ends the run with exit 3 and a paused job that resumes next time."""
    await sandbox_admin(sandbox.base_url, "faults", {"kind": "401", "route": "*", "count": 1000})
    drop(spool, "refused", spec_text("refused", spool / "data"))
    env = daemon_env(spool, sandbox.base_url)
    code, out, _ = await run_daemon(env)
    assert code == 3 and "remote_pause_unresolved" in out
    assert only_status(spool)["status"] == "paused" and "401" in only_status(spool)["paused"]
    async with __import__("aiohttp").ClientSession() as session:
        await session.delete(f"{sandbox.base_url}/_sandbox/faults")
    code, _, stderr = await run_daemon(env)
    assert code == 0, stderr[-2000:]
    assert only_status(spool)["status"] == "completed"
