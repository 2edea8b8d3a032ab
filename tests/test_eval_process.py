"""The daemon as a subprocess, evaluating against a sandbox that is down for longer than the step's deadline: the
job fails with a clear reason (status.json: step `failed`, no stale progress), and `finetuned retry` finishes it
later by asking only the missing items."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from daemon.sandbox import start_sandbox
from tests.process import daemon_env, only_status, run_cli, run_daemon, stats, write_coqa

EVAL_ONLY = """\
name: evalretry
dataset:
  source: {data}
  format: coqa
evaluate:
  models: [m-one, m-two]
  concurrency: 4
  deadline_min: 0.03
"""


async def test_outage_past_the_deadline_fails_clearly_and_retry_finishes(tmp_path: Path) -> None:
    """Down for the whole first run: the job is `failed` (EvaluationIncomplete, reason names `finetuned retry`),
    its evaluate step `failed` and no progress left; once the server is back, `finetuned retry` and another run
    complete it with every item answered, each asked once."""
    (tmp_path / "inbox").mkdir()
    write_coqa(tmp_path / "data", n_train=4, n_validation=3)
    handle = await start_sandbox(latency_ms="2", slots=2, flavour="llama.cpp")
    try:
        env = daemon_env(tmp_path, handle.base_url)
        spec = tmp_path / "inbox" / ".evalretry.yaml.tmp"
        spec.write_text(EVAL_ONLY.format(data=tmp_path / "data"))
        os.rename(spec, tmp_path / "inbox" / "evalretry.yaml")
        await handle.outage(12.0, "refuse")
        down_until = time.monotonic() + 12.0
        code, _, stderr = await run_daemon(env)
        assert code == 0, stderr
        failed = only_status(tmp_path)
        assert failed["status"] == "failed", failed
        assert failed["error"]["type"] == "EvaluationIncomplete" and failed["error"]["step"] == "evaluate"
        assert "m-one 9 of 9 items missing" in failed["error"]["message"]
        assert "finetuned retry" in failed["error"]["message"]
        assert failed["steps"]["evaluate"]["status"] == "failed" and "progress" not in failed
        job_id = failed["job_id"]
        metrics = json.loads((tmp_path / "outbox" / job_id / "metrics.json").read_text())
        assert metrics["models"]["m-one"]["completeness"]["missing"] == 9

        code, _, _ = await run_cli(env, "retry", "no-such-job")
        assert code == 1
        while time.monotonic() < down_until + 0.5:
            await asyncio.sleep(0.2)
        code, out, stderr = await run_cli(env, "retry", "evalretry")
        assert code == 0, stderr
        assert job_id in out
        code, _, stderr = await run_daemon(env)
        assert code == 0, stderr
        done = only_status(tmp_path)
        assert done["status"] == "completed", done
        metrics = json.loads((tmp_path / "outbox" / job_id / "metrics.json").read_text())
        assert {a: (m["answered"], m["missing"]) for a, m in metrics["models"].items()} == {
            "m-one": (9, 0),
            "m-two": (9, 0),
        }
        assert (await stats(handle.base_url))["POST /v1/chat/completions"] == 18
        code, _, stderr = await run_cli(env, "retry", job_id)
        assert code == 1 and "only a failed job" in stderr
    finally:
        await handle.close()
