"""The real daemon as a subprocess against the real sandbox: crash at every checkpoint boundary, SIGTERM, poison
steps, a second instance, the notify protocol, and every kind of inbox input through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import (
    API_KEY,
    ROOT,
    daemon_env,
    events,
    only_status,
    run_cli,
    run_daemon,
    spec_text,
    start_daemon,
    stats,
    statuses,
    wait_until,
    write_coqa,
)

FINETUNE_STEPS = ("prepare", "validate", "upload", "create", "poll", "report")


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    handle = await start_sandbox(speed=2000.0)
    yield handle
    await handle.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data")
    return tmp_path


def drop(spool: Path, name: str, text: str) -> None:
    tmp = spool / "inbox" / f".{name}.yaml.tmp"
    tmp.write_text(text)
    os.rename(tmp, spool / "inbox" / f"{name}.yaml")


def step_finishes(spool: Path, job_id: str) -> Counter[str]:
    return Counter(e["step"] for e in events(spool, job_id) if e["event"] == "step_finished")


async def test_finetune_job_end_to_end(spool: Path, sandbox: SandboxHandle) -> None:
    """dataset + finetune runs to completion with --once; status.json names file id, fine-tune id and model."""
    drop(spool, "e2e", spec_text("e2e", spool / "data"))
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0, stderr
    status = only_status(spool)
    assert status["status"] == "completed", status
    assert status["remote"]["file_id"].startswith("file-") and status["remote"]["fine_tune_id"].startswith("ft-")
    assert status["remote"]["model"].startswith("sandbox/")
    requests = await stats(sandbox.base_url)
    assert requests["POST /v1/files"] == 1 and requests["POST /v1/fine-tunes"] == 1
    folder = spool / "outbox" / status["job_id"]
    assert (folder / "train.jsonl").is_file() and (folder / "events.jsonl").is_file()
    (finished,) = [e for e in events(spool, status["job_id"]) if e["event"] == "job_finished"]
    assert finished["remote"] == status["remote"]  # the ids a user looks for, not the journal's intents


BOUNDARIES = [
    "after:claim",
    *(f"{when}:{step}" for step in FINETUNE_STEPS for when in ("before", "after")),
    "journal:file_id",
    "journal:fine_tune_id",
    "journal:model",
]


@pytest.mark.parametrize("point", BOUNDARIES)
async def test_kill9_at_every_boundary_runs_each_step_once(spool: Path, sandbox: SandboxHandle, point: str) -> None:
    """kill -9 at a checkpoint boundary, restart: the job completes, one upload and one create, each step once."""
    drop(spool, "crash", spec_text("crash", spool / "data"))
    code, _, _ = await run_daemon(daemon_env(spool, sandbox.base_url, FINETUNED_CRASH_AT=point))
    assert code == -signal.SIGKILL
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0, stderr
    status = only_status(spool)
    assert status["status"] == "completed", status
    requests = await stats(sandbox.base_url)
    assert requests["POST /v1/files"] == 1 and requests["POST /v1/fine-tunes"] == 1
    finished = step_finishes(spool, status["job_id"])
    assert set(finished) == set(FINETUNE_STEPS) and set(finished.values()) == {1}, finished


async def test_sigterm_mid_poll_exits_zero_and_resumes(spool: Path) -> None:
    """SIGTERM while polling: exit 0 within the grace period; the restart follows the same remote job to the end."""
    slow = await start_sandbox(speed=20.0)  # the remote job takes ~10 s: long enough to be stopped mid-poll
    try:
        drop(spool, "term", spec_text("term", spool / "data"))
        env = daemon_env(spool, slow.base_url)
        process = await start_daemon(env)
        await wait_until(lambda: any(s.get("step") == "poll" for s in statuses(spool).values()), timeout_s=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 15)
        assert process.returncode == 0 and time.monotonic() - started < 5
        assert only_status(spool)["status"] in {"running", "queued"}
        code, _, stderr = await run_daemon(env)
        assert code == 0, stderr
        assert only_status(spool)["status"] == "completed"
        requests = await stats(slow.base_url)
        assert requests["POST /v1/fine-tunes"] == 1
    finally:
        await slow.close()


async def test_poison_step_fails_the_job_after_n_attempts(spool: Path, sandbox: SandboxHandle) -> None:
    """A step that kills the process every time fails its job after N attempts; the daemon and other jobs go on."""
    drop(spool, "poison", spec_text("poison", spool / "data", finetune=False))
    env = daemon_env(
        spool, sandbox.base_url, FINETUNED_CRASH_AT="before:validate@poison", FINETUNED_MAX_STEP_ATTEMPTS="2"
    )
    for _ in range(2):
        code, _, _ = await run_daemon(env)
        assert code == -signal.SIGKILL
    drop(spool, "healthy", spec_text("healthy", spool / "data", finetune=False))
    code, _, stderr = await run_daemon(env)
    assert code == 0, stderr
    docs = {d["name"]: d for d in statuses(spool).values()}
    assert docs["poison"]["status"] == "failed"
    assert docs["poison"]["error"]["type"] == "AttemptsExhausted" and docs["poison"]["error"]["step"] == "validate"
    assert docs["poison"]["steps"]["validate"]["status"] == "failed" and "progress" not in docs["poison"]
    assert docs["healthy"]["status"] == "completed"


async def test_second_instance_is_refused(spool: Path) -> None:
    """A second daemon on the same spool exits non-zero with a clear message; the first is unaffected."""
    env = daemon_env(spool)
    first = await start_daemon(env)
    await wait_until(lambda: (spool / "state" / "finetuned.lock").exists() and (spool / "state" / "state.db").exists())
    await asyncio.sleep(0.3)
    code, _, stderr = await run_daemon(env)
    assert code == 2 and "another finetuned" in stderr and "already running" in stderr
    first.send_signal(signal.SIGTERM)
    await asyncio.wait_for(first.communicate(), 15)
    assert first.returncode == 0


async def test_a_data_job_imports_no_remote_code(spool: Path) -> None:
    """A data-only job completes, with a Together key set, without importing the SDK, aiohttp, the sandbox or the
    evaluation and serving steps: they load only for the jobs that use them."""
    drop(spool, "data", spec_text("data", spool / "data", finetune=False))
    env = daemon_env(spool, "http://127.0.0.1:9")  # nothing listens there: nothing is asked
    listing = spool / "modules.json"
    script = "import json, sys; from daemon.cli import main; code = main(sys.argv[2:]); "
    script += "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules))); sys.exit(code)"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, listing, "run", "--once", cwd=ROOT, env=env
    )
    assert await asyncio.wait_for(process.wait(), 90) == 0
    assert only_status(spool)["status"] == "completed"
    imported = set(json.loads(listing.read_text()))
    assert {"handlers.prepare", "handlers.validate"} <= imported
    remote = {"together", "aiohttp", "daemon.remote.together", "daemon.sandbox", "handlers.evaluate", "handlers.serve"}
    assert imported & remote == set()


async def test_notify_protocol(spool: Path, tmp_path: Path) -> None:
    """READY=1 after recovery, WATCHDOG=1 pings, a STATUS line, STOPPING=1 on SIGTERM, exit 0."""
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.setblocking(False)
    env = daemon_env(spool, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
    process = await start_daemon(env)
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def collect_until(needle: str) -> None:
        while not any(needle in message for message in received):
            received.append((await asyncio.wait_for(loop.sock_recv(server, 4096), 20)).decode("utf-8"))

    await collect_until("READY=1")
    await collect_until("WATCHDOG=1")
    process.send_signal(signal.SIGTERM)
    await collect_until("STOPPING=1")
    await asyncio.wait_for(process.communicate(), 15)
    server.close()
    assert process.returncode == 0
    assert received[0].startswith("READY=1")
    assert any(line.startswith("STATUS=") for message in received for line in message.splitlines())


async def test_cli_once_over_every_kind_of_bad_input(spool: Path, tmp_path: Path) -> None:
    """`finetuned run --once` over good, broken, unknown-key, empty, symlink, FIFO and 100 MB inputs: exit 0 in
    seconds, each input in its own outbox folder with a message naming the problem, nothing blocks on the FIFO."""
    inbox = spool / "inbox"
    drop(spool, "good", spec_text("good", spool / "data", finetune=False))
    (inbox / "syntax.yaml").write_text("name: x\ndataset: [1,\n")
    (inbox / "unknown.yaml").write_text(f"name: u\ndataset:\n  source: {spool / 'data'}\n  colour: red\n")
    (inbox / "empty.yaml").write_bytes(b"")
    (tmp_path / "elsewhere.yaml").write_text("name: t\n")
    (inbox / "link.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    os.mkfifo(inbox / "pipe.yaml")
    with open(inbox / "huge.yaml", "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    old = time.time() - 60  # dropped a minute ago: past the settle window
    for name in ("syntax.yaml", "unknown.yaml", "empty.yaml"):
        os.utime(inbox / name, (old, old))
    started = time.monotonic()
    code, _, stderr = await run_daemon(daemon_env(spool), timeout_s=30)
    assert code == 0, stderr
    assert time.monotonic() - started < 20
    docs = {d["name"]: d for d in statuses(spool).values()}
    assert docs["good"]["status"] == "completed"
    needles = {
        "syntax": "line 3, column 1: invalid YAML",
        "unknown": "line 4: dataset.colour: unknown key",
        "empty": "the file is empty",
        "link": "symbolic link",
        "pipe": "FIFO",
        "huge": "104857600 bytes",
    }
    for name, needle in needles.items():
        assert docs[name]["status"] == "rejected" and needle in docs[name]["error"]["message"], docs[name]
    assert sorted(p.name for p in inbox.iterdir()) == []
    code, out, _ = await run_cli(daemon_env(spool), "status")
    assert code == 0 and out.count("rejected") == 6 and "completed" in out


async def test_inputs_before_start_while_down_and_duplicates(spool: Path) -> None:
    """Specs present at start and dropped while the daemon is down all run once; re-dropped bytes are duplicates."""
    drop(spool, "first", spec_text("first", spool / "data", finetune=False))
    assert (await run_daemon(daemon_env(spool)))[0] == 0
    drop(spool, "second", spec_text("second", spool / "data", finetune=False))
    drop(spool, "first-again", spec_text("first", spool / "data", finetune=False))
    assert (await run_daemon(daemon_env(spool)))[0] == 0
    docs = {d["name"]: d for d in statuses(spool).values()}
    assert set(docs) == {"first", "second"}
    assert all(d["status"] == "completed" for d in docs.values())
    assert len(docs["first"]["duplicates"]) == 1
    assert step_finishes(spool, docs["first"]["job_id"])["prepare"] == 1


async def test_slow_writer_and_recreated_inbox(spool: Path) -> None:
    """A file written slowly straight into the inbox runs once when complete; a deleted and re-created inbox
    keeps working."""
    env = daemon_env(spool, FINETUNED_SETTLE_S="1.5")
    process = await start_daemon(env)
    try:
        await wait_until((spool / "state" / "state.db").exists)
        text = spec_text("slow", spool / "data", finetune=False).encode()
        with open(spool / "inbox" / "slow.yaml", "wb") as fh:
            for i in range(0, len(text), 12):
                fh.write(text[i : i + 12])
                fh.flush()
                await asyncio.sleep(0.1)
        await wait_until(
            lambda: any(d["name"] == "slow" and d["status"] == "completed" for d in statuses(spool).values())
        )
        assert len(statuses(spool)) == 1
        os.rename(spool / "inbox", spool / "inbox-old")
        (spool / "inbox").mkdir()
        await asyncio.sleep(0.3)
        drop(spool, "after", spec_text("after", spool / "data", finetune=False))
        await wait_until(lambda: any(d["name"] == "after" for d in statuses(spool).values()), timeout_s=20)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0


async def test_api_key_never_leaks(spool: Path, sandbox: SandboxHandle) -> None:
    """The API key appears in no log line, outbox file, status output or state file."""
    drop(spool, "secret", spec_text("secret", spool / "data"))
    env = daemon_env(spool, sandbox.base_url)
    code, out, err = await run_daemon(env)
    assert code == 0
    _, status_out, _ = await run_cli(env, "status", "--json")
    assert API_KEY not in out + err + status_out
    for path in [*spool.joinpath("outbox").rglob("*"), *spool.joinpath("state").rglob("*")]:
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


async def test_second_signal_forces_a_prompt_exit(spool: Path) -> None:
    """A second SIGTERM skips the grace period: running steps are cancelled (state kept) and the daemon exits."""
    slow = await start_sandbox(speed=5.0)
    try:
        drop(spool, "impatient", spec_text("impatient", spool / "data"))
        env = daemon_env(spool, slow.base_url, FINETUNED_SHUTDOWN_GRACE_S="60")
        process = await start_daemon(env)
        await wait_until(lambda: any(s.get("step") == "poll" for s in statuses(spool).values()), timeout_s=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0 and time.monotonic() - started < 10
        assert only_status(spool)["status"] in {"running", "queued"}
    finally:
        await slow.close()


async def test_eval_only_spec_against_the_sandbox(spool: Path, sandbox: SandboxHandle) -> None:
    """A spec with dataset + evaluate naming an existing model runs prepare, validate, evaluate and report."""
    text = spec_text("evalonly", spool / "data", finetune=False) + (
        "evaluate:\n  models: [base]\n  base_model: meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo\n  limit: 2\n"
    )
    drop(spool, "evalonly", text)
    code, _, stderr = await run_daemon(daemon_env(spool, sandbox.base_url))
    assert code == 0, stderr[-2000:]
    status = only_status(spool)
    assert status["status"] == "completed" and set(status["steps"]) == {"prepare", "validate", "evaluate", "report"}
    folder = spool / "outbox" / status["job_id"]
    assert len((folder / "predictions-base.jsonl").read_text().splitlines()) == 6  # 2 stories x 3 turns
    assert (folder / "report.md").read_text().startswith("**SIMULATED RESULTS**")
    requests = await stats(sandbox.base_url)
    assert "POST /v1/files" not in requests and requests["POST /v1/chat/completions"] == 6
