"""The daemon as a subprocess evaluating a fine-tune Together serves only on a dedicated endpoint: one endpoint (on
the SDK's v2 surface: one deployment), always deleted, whatever happens to the job (completion, kill -9 while
starting or serving, cancel, failure); its cost is what the sandbox billed; the v1 fallback likewise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import (
    daemon_env,
    only_status,
    run_cli,
    run_daemon,
    spec_text,
    start_daemon,
    wait_until,
    write_coqa,
)

SPEED = 2000.0


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool with a tiny CoQA dataset."""
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data", n_train=6, n_validation=8)
    return tmp_path


async def dedicated_sandbox(**knobs: Any) -> SandboxHandle:
    """A fast sandbox serving no LoRA serverless (so every fine-tune needs a dedicated endpoint)."""
    return await start_sandbox(speed=SPEED, retry_after_s=0.05, serverless_lora="", **knobs)


def drop(spool: Path, name: str) -> None:
    """Drop a spec that fine-tunes and evaluates base and fine-tuned."""
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(spec_text(name, spool / "data", evaluate=True))
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


async def endpoints(sandbox: SandboxHandle) -> dict[str, Any]:
    """The sandbox's endpoint counters."""
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox.base_url}/_sandbox/stats") as response:
        counted: dict[str, Any] = (await response.json())["endpoints"]
    return counted


def journal(spool: Path, key: str) -> str | None:
    """One journal value of the (only) job, read from the daemon's database."""
    try:
        with sqlite3.connect(spool / "state" / "state.db") as db:
            row = db.execute("SELECT value FROM journal WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def saved_items(spool: Path) -> int:
    """Evaluation answers saved so far."""
    try:
        with sqlite3.connect(spool / "state" / "state.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def kill9(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the daemon and reap it."""
    process.send_signal(signal.SIGKILL)
    await process.communicate()


async def assert_one_endpoint_deleted(sandbox: SandboxHandle) -> None:
    """Exactly one endpoint (and on v2 one deployment) was ever created, and none is billing now."""
    counted = await endpoints(sandbox)
    assert counted["created"] == 1 and counted["running"] == 0 and counted["deleted"] == 1, counted
    if sandbox.sandbox.v2_endpoints:
        assert counted["deployments"] == {"created": 1, "deleted": 1}, counted


async def assert_cost_is_the_bill(spool: Path, sandbox: SandboxHandle, surface: str) -> None:
    """Completed on `surface`; status.json, metrics.json and the report give the minutes and dollars the sandbox
    billed (on its clock, not the daemon's)."""
    status = only_status(spool)
    assert status["status"] == "completed", status.get("error")
    await assert_one_endpoint_deleted(sandbox)
    billed = await endpoints(sandbox)
    folder = spool / "outbox" / status["job_id"]
    metrics = json.loads((folder / "metrics.json").read_text())
    serving = metrics["serving"]
    assert set(metrics["models"]) == {"base", "finetuned"} and serving["surface"] == surface
    assert serving["clock"] == "provider" and serving["minutes"] == billed["minutes_billed"] > 1
    assert status["endpoint"]["cost_usd"] == serving["cost_usd"] == pytest.approx(billed["cost_usd"])
    assert status["endpoint"]["minutes"] == billed["minutes_billed"]
    assert status["remote"]["endpoint_id"] == serving["endpoint_id"]
    report = (folder / "report.md").read_text()
    assert f"{billed['minutes_billed']} min" in report and "Together's own creation and stop timestamps" in report


@pytest.mark.parametrize(("surface", "knobs"), [("v2", {"lean": True}), ("v1", {"v2_endpoints": False})])
async def test_a_base_without_serverless_lora_is_evaluated_on_one_endpoint(
    spool: Path, surface: str, knobs: dict[str, Any]
) -> None:
    """Base and fine-tuned are evaluated on one endpoint, deleted after: through the SDK's v2 surface (a lean
    sandbox: the SDK types' required fields only; one deployment), or, the sandbox's v2 surface off, through the
    /v1/endpoints fallback; the surface logged once; the cost in status, metrics and the report is the bill."""
    sandbox = await dedicated_sandbox(**knobs)
    try:
        drop(spool, "dedicated")
        code, stdout, stderr = await run_daemon(daemon_env(spool, sandbox.base_url), timeout_s=120)
        assert code == 0, stderr[-3000:]
        await assert_cost_is_the_bill(spool, sandbox, surface)
        chosen = [line for line in (stdout + stderr).splitlines() if '"endpoint_surface"' in line]
        assert len(chosen) == 1 and f'"{surface}"' in chosen[0], chosen
    finally:
        await sandbox.close()


@pytest.mark.parametrize("moment", ["starting", "serving"])
async def test_kill9_while_the_endpoint_starts_or_serves(spool: Path, moment: str) -> None:
    """kill -9 while the endpoint starts (adopted on restart) or while the evaluation runs on it: the job completes
    on the same endpoint, which is then deleted; never a second one."""
    startup_s, latency = (4.0 * SPEED, "0") if moment == "starting" else (0.2 * SPEED, "80")
    sandbox = await dedicated_sandbox(endpoint_startup_s=startup_s, latency_ms=latency)
    try:
        drop(spool, "crashy")
        env = daemon_env(spool, sandbox.base_url)
        process = await start_daemon(env, "--once")
        if moment == "starting":
            await wait_until(lambda: journal(spool, "endpoint_id") is not None, timeout_s=60)
        else:
            await wait_until(lambda: journal(spool, "serve.deadline_at") is not None and saved_items(spool) >= 30, 60)
        await kill9(process)
        assert (await endpoints(sandbox))["running"] == 1
        code, _, stderr = await run_daemon(env, timeout_s=120)
        assert code == 0, stderr[-3000:]
        assert only_status(spool)["status"] == "completed"
        await assert_one_endpoint_deleted(sandbox)
    finally:
        await sandbox.close()


async def test_cancel_while_the_endpoint_runs_deletes_it(spool: Path) -> None:
    """`finetuned cancel` while the job waits for its endpoint: cancelled, endpoint deleted."""
    sandbox = await dedicated_sandbox(endpoint_startup_s=30.0 * SPEED)
    try:
        drop(spool, "cancelled")
        env = daemon_env(spool, sandbox.base_url)
        process = await start_daemon(env)
        await wait_until(lambda: journal(spool, "endpoint_id") is not None, timeout_s=60)
        code, out, _ = await run_cli(env, "cancel", only_status(spool)["job_id"])
        assert code == 0 and "cancel requested" in out
        await wait_until(lambda: only_status(spool)["status"] == "cancelled", timeout_s=30)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 15)
        await assert_one_endpoint_deleted(sandbox)
    finally:
        await sandbox.close()


@pytest.mark.parametrize(("when", "v2"), [("starting", True), ("serving", True), ("starting", False)])
async def test_an_endpoint_in_error_ends_the_job_with_it_deleted(spool: Path, when: str, v2: bool) -> None:
    """The endpoint goes ERROR (v2: its deployment FAILED) while it starts (the job fails with Together's reason)
    or while it serves (the fine-tuned answers fail, the job ends): either way the endpoint is deleted and no second
    one is created; on the v1 fallback too."""
    sandbox = await dedicated_sandbox(latency_ms="40", v2_endpoints=v2)
    try:
        at_s = 60.0 if when == "starting" else 160.0 + 0.3 * SPEED
        async with aiohttp.ClientSession() as session:
            body = {"message": "GPU fell off the bus", "at_s": at_s}
            await session.post(f"{sandbox.base_url}/_sandbox/endpoint-failures", json=body)
        drop(spool, "failing")
        code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url), timeout_s=120)
        assert code == 0, stderr[-3000:]
        ended = only_status(spool)
        if when == "starting":
            assert ended["status"] == "failed" and "GPU fell off the bus" in ended["error"]["message"]
        else:
            assert ended["status"] in ("failed", "completed")
        await assert_one_endpoint_deleted(sandbox)
    finally:
        await sandbox.close()
