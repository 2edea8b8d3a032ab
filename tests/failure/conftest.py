"""Failure injection: the real daemon as a subprocess over a real spool (and the real sandbox), hostile inputs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import ROOT, write_coqa

# Run the daemon as root without the capabilities that let root read and move anyone's files, like a daemon user.
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A fast sandbox on loopback."""
    handle = await start_sandbox(speed=2000.0, retry_after_s=0.02)
    yield handle
    await handle.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """An empty spool with a tiny CoQA dataset beside it."""
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data")
    return tmp_path


async def launch(env: dict[str, str], *args: str, prefix: Sequence[str] = ()) -> asyncio.subprocess.Process:
    """Start `python -m daemon ARGS` (default `run`) in the repo root, optionally under a wrapper command."""
    return await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "daemon",
        *(args or ("run",)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(process: asyncio.subprocess.Process, timeout_s: float = 20) -> tuple[int, str, str]:
    """SIGTERM a running daemon; returns (exit code, stdout, stderr)."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def deliver(inbox: Path, name: bytes | str, data: bytes) -> Path:
    """Write a hidden temp file and rename it into the inbox under `name` (bytes: any name the kernel accepts)."""
    raw = os.fsencode(name)
    tmp = os.path.join(os.fsencode(inbox), b"." + raw[:200] + b".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    target = os.path.join(os.fsencode(inbox), raw)
    os.rename(tmp, target)
    return Path(os.fsdecode(target))
