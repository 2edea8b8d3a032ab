"""Row 12 of issue 12: signals at any moment, invalid settings and unusable paths give clean exits and plain
messages, never a traceback or a killed process."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.failure.conftest import launch, stop
from tests.process import daemon_env, run_cli, wait_until


@pytest.mark.parametrize("delay_s", [0.1, 0.3, 0.8, 1.5])
async def test_sigterm_during_start_up_exits_zero(spool: Path, delay_s: float) -> None:
    """SIGTERM at any moment of start-up (imports, lock, database, recovery) ends the daemon with exit 0."""
    process = await launch(daemon_env(spool))
    await asyncio.sleep(delay_s)
    code, _, stderr = await stop(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_sighup_is_ignored_and_logged(spool: Path) -> None:
    """SIGHUP leaves a running daemon running (logged: settings are read at start); SIGTERM then stops it."""
    process = await launch(daemon_env(spool))
    await wait_until((spool / "state" / "state.db").exists, timeout_s=30)
    await asyncio.sleep(1.0)
    process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert process.returncode is None
    code, out, stderr = await stop(process)
    assert code == 0, stderr
    assert '"sighup_ignored"' in out


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("FINETUNED_MAX_CONCURRENT_JOBS", "0", "FINETUNED_MAX_CONCURRENT_JOBS=0: must be greater than 0"),
        ("FINETUNED_RECONCILE_INTERVAL_S", "-1", "FINETUNED_RECONCILE_INTERVAL_S=-1.0: must be greater than 0"),
        ("FINETUNED_SETTLE_S", "-5", "FINETUNED_SETTLE_S=-5.0: must not be negative"),
        ("FINETUNED_STATUS_PORT", "70000", "must be a TCP port"),
        ("FINETUNED_MAX_CONCURRENT_JOBS", "many", "is not a valid int"),
    ],
)
async def test_invalid_settings_are_refused_plainly(spool: Path, variable: str, value: str, needle: str) -> None:
    """A setting the daemon cannot work with stops `run` with exit 2 and a message naming the variable."""
    code, _, stderr = await run_cli(daemon_env(spool, **{variable: value}), "run", "--once")
    assert code == 2 and needle in stderr and "Traceback" not in stderr, stderr


async def test_cli_errors_are_messages_not_tracebacks(spool: Path) -> None:
    """An unusable --state-dir, a port in use, a bad --port and a status.json holding a list give plain answers."""
    env = daemon_env(spool)
    not_a_dir = spool / "plain-file"
    not_a_dir.write_text("x")
    code, _, stderr = await run_cli(env, "run", "--once", "--state-dir", str(not_a_dir))
    assert code == 2 and "cannot use" in stderr and "Traceback" not in stderr, stderr
    code, _, stderr = await run_cli(env, "sandbox", "--port", "99999")
    assert code == 2 and "--port 99999" in stderr and "Traceback" not in stderr, stderr
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        code, _, stderr = await run_cli(daemon_env(spool, FINETUNED_STATUS_PORT=str(port)), "run", "--once")
        assert code == 2 and "cannot serve status" in stderr and "Traceback" not in stderr, stderr
    finally:
        holder.close()
    (spool / "outbox" / "odd").mkdir(parents=True)
    (spool / "outbox" / "odd" / "status.json").write_text(json.dumps(["not", "a", "status"]))
    for args in (("status",), ("status", "--json"), ("status", "odd"), ("cancel", "odd")):
        code, _, stderr = await run_cli(env, *args)
        assert "Traceback" not in stderr and code in {0, 1}, (args, stderr)
