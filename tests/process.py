"""Helpers for tests that run the real daemon as a subprocess against the real sandbox on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "tk-test-0123456789abcdef"


def write_coqa(folder: Path, n_train: int = 6, n_validation: int = 3) -> Path:
    """A tiny CoQA dataset in the hub's column schema: folder/train.jsonl and folder/validation.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("validation", n_validation)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(count):
                story = (
                    f"Mara kept {i + 2} goats on the hill above the river. "
                    f"Every morning she walked them to the meadow near the old mill. "
                    f"Her brother Tomas sold their milk in the town of Vell on market day."
                )
                questions = ["How many goats did Mara keep?", "Where did she walk them?", "Who sold the milk?"]
                answers = [f"{i + 2}", "to the meadow near the old mill", "her brother Tomas"]
                row = {
                    "source": ["mctest", "race", "cnn"][i % 3],
                    "story": story,
                    "questions": questions,
                    "answers": {
                        "input_text": answers,
                        "answer_start": [0, 40, 90],
                        "answer_end": [20, 80, 130],
                    },
                }
                fh.write(json.dumps(row) + "\n")
    return folder


def spec_text(name: str, data: Path, *, finetune: bool = True, evaluate: bool = False, extra: str = "") -> str:
    """A spec for the tiny dataset; fine-tune and evaluation sections on request."""
    text = f"name: {name}\ndataset:\n  source: {data}\n  format: coqa\n{extra}"
    if finetune:
        text += (
            "finetune:\n  model: meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\n  n_epochs: 1\n"
            "  suffix: test\n  max_price_usd: 5\n"
        )
    if evaluate:
        text += "evaluate:\n  protocol: gold-history\n  models: [base, finetuned]\n  concurrency: 4\n"
    return text


def daemon_env(spool: Path, sandbox_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a daemon subprocess over a spool in `spool`, talking to the sandbox if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNED_", "TOGETHER_", "NOTIFY_SOCKET"))}
    env.update(
        FINETUNED_INBOX=str(spool / "inbox"),
        FINETUNED_OUTBOX=str(spool / "outbox"),
        FINETUNED_STATE_DIR=str(spool / "state"),
        FINETUNED_RECONCILE_INTERVAL_S="1",
        FINETUNED_SETTLE_S="0.5",
        FINETUNED_POLL_MIN_S="0.05",
        FINETUNED_POLL_MAX_S="0.2",
        FINETUNED_PAUSE_PROBE_S="0.2",
        FINETUNED_SHUTDOWN_GRACE_S="3",
        FINETUNED_REQUEST_TIMEOUT_S="5",
        FINETUNED_RETRY_BASE_S="0.02",
        FINETUNED_RETRY_CAP_S="0.2",
        PYTHONFAULTHANDLER="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(spool / "hf-home"),
    )
    if sandbox_url is not None:
        env.update(TOGETHER_BASE_URL=sandbox_url, TOGETHER_API_KEY=API_KEY)
    env.update(extra)
    return env


async def start_daemon(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start `python -m daemon run ARGS` in the repo root."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "run",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_daemon(env: dict[str, str], *args: str, timeout_s: float = 90) -> tuple[int, str, str]:
    """Run the daemon with `--once` to completion; returns (exit code, stdout, stderr)."""
    process = await start_daemon(env, "--once", *args)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """Run any `finetuned` command; returns (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, cwd=ROOT, env=env, stdout=-1, stderr=-1
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def statuses(spool: Path) -> dict[str, dict[str, Any]]:
    """Every job's status.json by job id."""
    found = {}
    for path in (spool / "outbox").glob("*/status.json"):
        if path.parent.name.startswith("."):
            continue  # a `.staging-*` folder: not published yet
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # replaced atomically, so this cannot happen; keep the helper total anyway
    return found


def only_status(spool: Path) -> dict[str, Any]:
    """The status of the one job in the spool."""
    (document,) = statuses(spool).values()
    return document


async def stats(sandbox_url: str) -> dict[str, int]:
    """Request counts per endpoint from the sandbox."""
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/_sandbox/stats") as response:
        body = await response.json()
    return dict(body["requests"])


async def sandbox_admin(sandbox_url: str, path: str, payload: dict[str, Any]) -> None:
    """POST a scripted fault or outcome to the sandbox admin API."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sandbox_url}/_sandbox/{path}", json=payload) as response,
    ):
        assert response.status < 300, await response.text()


def events(spool: Path, job_id: str) -> list[dict[str, Any]]:
    """The job's own log events."""
    text = (spool / "outbox" / job_id / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def wait_until(predicate: Any, timeout_s: float = 30, interval_s: float = 0.05) -> None:
    """Poll a condition on files another process writes (there is no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(interval_s)
