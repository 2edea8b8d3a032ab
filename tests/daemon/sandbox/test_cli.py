"""`python -m daemon.sandbox` as a real subprocess: serves the API, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_module_serves_until_sigterm() -> None:
    """The module entry point answers /_sandbox/config with its flags (serving ones too) and exits 0 on SIGTERM."""
    port = free_port()
    flags = "--speed 250 --latency-ms 5-10 --fault-rate 0.1 --slots 2 --context-tokens 4096 --flavour llama.cpp"
    flags += " --rate-limit-rpm 120 --serverless-lora org/a,org/b --lean --no-v2-endpoints"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.sandbox",
        "--port",
        str(port),
        *flags.split(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        config = None
        async with asyncio.timeout(20), aiohttp.ClientSession() as session:
            while config is None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/_sandbox/config") as response:
                        config = await response.json()
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        assert config == {
            "speed": 250.0,
            "latency_ms": "5-10",
            "fault_rate": 0.1,
            "retry_after_s": 1.0,
            "user_limit_usd": 100.0,
            "slots": 2,
            "context_tokens": 4096,
            "flavour": "llama.cpp",
            "rate_limit_rpm": 120,
            "rate_limit_tpm": 0,
            "serverless_lora": ["org/a", "org/b"],
            "lean": True,
            "endpoint_startup_s": 120.0,
            "v2_endpoints": False,
        }
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            stdout, _ = await process.communicate()
        assert process.returncode == 0
        assert b"SIMULATED" in stdout
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
