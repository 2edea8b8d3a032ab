"""The daemon as a subprocess against a lean sandbox (contract fields only): the demo spec runs end to end."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.sandbox import SandboxHandle, start_sandbox
from tests.process import ROOT, daemon_env, only_status, run_daemon, stats


@pytest.fixture
async def lean() -> AsyncIterator[SandboxHandle]:
    """A fast sandbox answering only the fields Together's contract declares."""
    handle = await start_sandbox(speed=2000.0, retry_after_s=0.05, lean=True)
    yield handle
    await handle.close()


async def test_demo_spec_completes_against_the_lean_sandbox(tmp_path: Path, lean: SandboxHandle) -> None:
    """examples/coqa-demo.yaml (price cap on) completes: one create, a loss chart from the metrics operation,
    evaluation metrics for both models and the checkpoints listed."""
    (tmp_path / "inbox").mkdir()
    spec = (ROOT / "examples" / "coqa-demo.yaml").read_text()
    assert "max_price_usd" in spec
    spec = spec.replace("source: examples/data", f"source: {ROOT / 'examples' / 'data'}")
    tmp = tmp_path / "inbox" / ".coqa-demo.yaml.tmp"
    tmp.write_text(spec)
    os.rename(tmp, tmp_path / "inbox" / "coqa-demo.yaml")
    code, _, stderr = await run_daemon(daemon_env(tmp_path, lean.base_url), timeout_s=240)
    assert code == 0, stderr[-3000:]
    status = only_status(tmp_path)
    assert status["status"] == "completed", status.get("error")
    folder = tmp_path / "outbox" / status["job_id"]
    assert (folder / "loss.png").stat().st_size > 1000
    training = json.loads((folder / "training_metrics.json").read_text())["metrics"]
    assert len([row for row in training if "train/loss" in row]) >= 5
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "finetuned"}
    assert json.loads((folder / "checkpoints.json").read_text())["checkpoints"]
    report = (folder / "report.md").read_text()
    assert "Training loss" in report and "Checkpoints on Together" in report
    counted = await stats(lean.base_url)
    assert counted["POST /v1/fine-tunes"] == 1 and counted["GET /v1/fine-tunes/{id}/metrics"] == 1
