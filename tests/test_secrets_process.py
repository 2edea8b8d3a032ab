"""Issue 12 row 5, with the daemon as a subprocess: a chat gateway that echoes the Authorization header in its 500
bodies and in its answers never gets the key written anywhere (status.json, predictions, metrics, state.db, the
job log, `finetuned status --json`), because the chat client scrubs everything it returns or raises."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.process import daemon_env, only_status, run_cli, run_daemon, write_coqa

GATEWAY_KEY = "gw-leaky-secret-4242"


@pytest.fixture
async def leaky_gateway() -> AsyncIterator[tuple[str, list[str]]]:
    """An OpenAI-compatible gateway that echoes the request's Authorization header: in a 500 body for questions
    about goats, in the answer for the others."""
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        question = (await request.json())["messages"][-1]["content"]
        if "goats" in question:
            message = f"upstream error; request headers: {{'Authorization': '{auth}'}}"
            return web.json_response({"error": {"message": message, "type": "server_error"}}, status=500)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"echo {auth}"}}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    await runner.cleanup()


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


async def test_gateway_echoing_the_key_leaks_it_nowhere(tmp_path: Path, leaky_gateway: tuple[str, list[str]]) -> None:
    """The gateway really got the key; afterwards no file of the spool, no log line and no status output holds it,
    and the echoed places say [REDACTED]."""
    base_url, seen = leaky_gateway
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data", n_train=4, n_validation=2)
    spec = (
        f"name: leaky\ndataset:\n  source: {tmp_path / 'data'}\n  format: coqa\nevaluate:\n  models: [gw]\n"
        f"  deadline_min: 0.02\n  max_attempts: 2\n  endpoints:\n    gw:\n      base_url: {base_url}\n"
        "      api_key_env: MY_GATEWAY_KEY\n"
    )
    (tmp_path / "inbox" / ".leaky.yaml.tmp").write_text(spec)
    os.rename(tmp_path / "inbox" / ".leaky.yaml.tmp", tmp_path / "inbox" / "leaky.yaml")
    env = daemon_env(tmp_path, MY_GATEWAY_KEY=GATEWAY_KEY, FINETUNED_ENDPOINT_KEYS="MY_GATEWAY_KEY=127.0.0.1")
    code, stdout, stderr = await run_daemon(env)
    assert code == 0, stderr
    assert seen and set(seen) == {f"Bearer {GATEWAY_KEY}"}  # the key did go to the gateway
    status = only_status(tmp_path)
    assert status["status"] == "failed" and "[REDACTED]" in status["error"]["message"]
    predictions = (tmp_path / "outbox" / status["job_id"] / "predictions-gw.jsonl").read_text()
    assert "echo Bearer [REDACTED]" in predictions
    _, status_json, _ = await run_cli(env, "status", "--json")
    secret = GATEWAY_KEY.encode()
    assert files_holding(tmp_path, secret) == []
    assert GATEWAY_KEY not in stdout + stderr + status_json
