"""Shared fixtures: a spool in tmp_path with millisecond timings, and spec-writing helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.logs import JobLogs, LogSetup, configure
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle, start_sandbox
from tests.daemon.sandbox.helpers import API_KEY as SANDBOX_KEY
from tests.process import write_coqa


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a spool under tmp_path with fast timings (no waiting in tests)."""
    return Settings(
        inbox=tmp_path / "inbox",
        outbox=tmp_path / "outbox",
        state_dir=tmp_path / "state",
        reconcile_interval_s=0.5,
        settle_s=0.3,
        poll_min_s=0.01,
        poll_max_s=0.05,
        pause_probe_s=0.05,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        shutdown_grace_s=2.0,
        max_spec_bytes=64 * 1024,
    )


def with_(settings: Settings, **changes: object) -> Settings:
    """A copy of settings with some fields changed."""
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


DATA_ONLY_SPEC = """\
name: {name}
dataset:
  source: {source}
  format: coqa
"""


@pytest.fixture(autouse=True)
def log_setup() -> LogSetup:
    """Configure logging as the CLI does (JSON lines, per-job log files), on this test's captured stdout."""
    import sys

    return configure("info", json_output=True, stream=sys.stdout)


@pytest.fixture
def job_logs(log_setup: LogSetup) -> JobLogs:
    """The per-job log files of this test's logging setup (what the CLI hands the service)."""
    return log_setup.job_logs


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A fast sandbox on loopback (short Retry-After so fault tests do not wait)."""
    handle = await start_sandbox(speed=1000.0, retry_after_s=0.02)
    yield handle
    await handle.close()


@pytest.fixture
def remote_settings(settings: Settings, sandbox: SandboxHandle) -> Settings:
    """Settings pointing the Together adapter at the sandbox."""
    return with_(settings, together_api_key=SANDBOX_KEY, together_base_url=sandbox.base_url, request_timeout_s=5.0)


@pytest.fixture
async def api(remote_settings: Settings) -> AsyncIterator[TogetherAPI]:
    """The Together adapter over the sandbox, with a W&B key available under WANDB_TEST_KEY."""
    adapter = TogetherAPI(remote_settings, secrets={"WANDB_TEST_KEY": "wandb-secret-value"})
    yield adapter
    await adapter.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool for the daemon as a subprocess: an inbox, and a tiny CoQA dataset (6 train, 4 validation stories)."""
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data", n_train=6, n_validation=4)
    return tmp_path
