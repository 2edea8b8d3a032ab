"""Helpers for the Together tests: in-test journal/items/progress, a small chat JSONL, spec and context builders."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import together

from daemon.config import Settings
from daemon.jobs.context import JobContext
from daemon.sandbox import SandboxHandle
from daemon.spec import JobSpec
from tests.memory import DictJournal, MemoryItems, ProgressLog

API_KEY = "sk-test-SECRET-0123456789"
BASE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
STORY = (
    "Anna lived in a small red house by the river. She had a brown dog named Max. "
    "Every morning Max chased the ducks along the bank. On Sundays Anna baked apple pies for her grandmother."
)
QUESTIONS = [
    ("What was the dog's name?", "Max"),
    ("What color was the dog?", "brown"),
    ("What did Max chase?", "the ducks"),
    ("What did Anna bake?", "apple pies"),
]


def chat_line(story: str = STORY, turns: list[tuple[str, str]] | None = None, tag: str = "") -> str:
    """One CoQA-style conversational example as a JSONL line."""
    messages = [{"role": "system", "content": f"Read the story and extract answers for the questions.\nStory: {story}"}]
    for question, answer in turns or QUESTIONS:
        messages += [{"role": "user", "content": question + tag}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages})


def write_chat_jsonl(path: Path, lines: int = 12, tag: str = "") -> Path:
    """A small valid chat JSONL file (`tag` makes its bytes differ from another file's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(chat_line(tag=f"{tag}{i}" if tag else "") + "\n" for i in range(lines)))
    return path


def make_spec(**finetune: Any) -> JobSpec:
    """A spec with a dataset and a finetune section (extra finetune keys as given)."""
    return JobSpec.model_validate(
        {"name": "demo", "dataset": {"source": "unused"}, "finetune": {"model": BASE_MODEL, **finetune}}
    )


def make_ctx(tmp_path: Path, spec: JobSpec, settings: Settings, remote: Any, journal: DictJournal) -> JobContext:
    """A real JobContext with in-test journal, items and progress."""
    out_dir = tmp_path / "outbox" / "demo-0123abcd"
    work_dir = tmp_path / "state" / "jobs" / "demo-0123abcd"
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(
        job_id="demo-0123abcd",
        spec=spec,
        settings=settings,
        out_dir=out_dir,
        work_dir=work_dir,
        journal=journal,
        items=MemoryItems(),
        progress=ProgressLog(),
        remote=remote,
    )


async def admin(base_url: str, method: str, path: str, body: Any = None) -> Any:
    """Call the sandbox admin API and return its JSON."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, f"{base_url}{path}", json=body) as response,
    ):
        return await response.json()


async def stats(base_url: str) -> dict[str, Any]:
    """`GET /_sandbox/stats`."""
    result: dict[str, Any] = await admin(base_url, "GET", "/_sandbox/stats")
    return result


async def script_fault(base_url: str, **fault: Any) -> None:
    """Script one fault (see daemon.sandbox)."""
    await admin(base_url, "POST", "/_sandbox/faults", fault)


OTHER_BASE = "Qwen/Qwen2.5-7B-Instruct"  # not among the sandbox's serverless LoRA bases


async def fine_tune(sdk: together.AsyncTogether, sandbox: SandboxHandle, tmp_path: Path) -> str:
    """A completed fine-tune of OTHER_BASE (made with lean off: the SDK's create needs more than the contract);
    its output model's name."""
    lean, sandbox.sandbox.lean = sandbox.sandbox.lean, False
    try:
        return await _fine_tune(sdk, tmp_path)
    finally:
        sandbox.sandbox.lean = lean


async def _fine_tune(sdk: together.AsyncTogether, tmp_path: Path) -> str:
    uploaded = await sdk.files.upload(write_chat_jsonl(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = await sdk.fine_tuning.create(training_file=uploaded.id, model=OTHER_BASE, n_epochs=1, suffix="v2")
    async with asyncio.timeout(10):
        while (job := await sdk.fine_tuning.retrieve(job.id)).status != "completed":  # type: ignore[assignment]
            await asyncio.sleep(0.02)
    return str(job.x_model_output_name)
