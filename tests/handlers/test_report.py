"""handlers/report.py: report.md / report.html with charts from a real evaluation against the sandbox and events."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.sandbox import start_sandbox
from handlers import evaluate, report
from tests.handlers.test_evaluate import make_ctx, write_eval_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sandbox_events(steps: int = 20) -> list[dict[str, Any]]:
    """Events as the sandbox's poll step saves them: lifecycle messages, then loss in fields and in the text."""
    events: list[dict[str, Any]] = [
        {"type": "job_pending", "level": "info", "message": "Fine tune request created", "step": 0},
        {"type": "training_start", "level": "info", "message": "Training started"},
    ]
    for step in range(1, steps + 1):
        loss = 2.0 - step * 0.05
        events.append(
            {
                "type": "training_progress",
                "message": f"Step {step}/{steps}: train loss {loss:.4f}",
                "step": step,
                "loss": loss,
            }
        )
    events.append({"type": "eval_complete", "message": f"Evaluation at step {steps}: eval loss 1.1500", "step": steps})
    return events


async def test_report_after_sandbox_evaluation_is_marked_simulated_with_charts(tmp_path: Path) -> None:
    """Against the sandbox: first line says simulated, both charts are PNGs, tables carry metrics and remote ids."""
    handle = await start_sandbox(latency_ms="1")
    try:
        write_eval_file(tmp_path / "eval.jsonl", stories=3, turns=11)
        settings = Settings(together_base_url=handle.base_url, together_api_key="sandbox-key")
        spec = {"models": ["base", "org/other"], "base_model": "meta-llama/Base"}
        ctx = make_ctx(tmp_path, settings, spec)
        inputs: dict[str, Any] = {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
        inputs["evaluate"] = await evaluate.run(ctx, inputs)
    finally:
        await handle.close()
    inputs["upload"] = {"file_id": "file-1234"}
    inputs["create"] = {"fine_tune_id": "ft-abcd", "estimated_price_usd": 1.234}
    (ctx.out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sandbox_events()))

    output = await report.run(ctx, inputs)

    assert output["report"] == str(ctx.out_dir / "report.md")
    markdown = (ctx.out_dir / "report.md").read_text()
    assert markdown.splitlines()[0].startswith("**SIMULATED RESULTS**")
    assert (ctx.out_dir / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert (ctx.out_dir / "turn-depth.png").read_bytes().startswith(PNG_MAGIC)
    assert "![loss.png](loss.png)" in markdown and "![turn-depth.png](turn-depth.png)" in markdown
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    base = metrics["models"]["base"]
    assert f"| base | meta-llama/Base | {base['overall']['em']} | {base['overall']['f1']} | 33 | 0 |" in markdown
    assert "| file_id | file-1234 |" in markdown and "| fine_tune_id | ft-abcd |" in markdown
    assert "org/other - base" in markdown
    assert "Estimated price before training: $1.23." in markdown
    assert "| base | EM | 0.0 |" in markdown and " – |" not in markdown  # every depth bucket has turns here
    assert "2.0000" not in markdown and "1.9500 at step 1" in markdown and "1.0000 at step 20" in markdown

    page = (ctx.out_dir / "report.html").read_text()
    assert "SIMULATED RESULTS" in page.split("<h1>")[0]
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert output["simulated"] is True


async def test_report_without_events_or_evaluation(tmp_path: Path) -> None:
    """No events and no metrics: a plain report (not marked simulated) that says no loss was found, no charts."""
    ctx = make_ctx(tmp_path, Settings(), {"models": ["m"]})
    output = await report.run(ctx, {"poll": {"model": "org/ft-model", "fine_tune_id": "ft-1"}})
    assert output["report"] == str(ctx.out_dir / "report.md")
    markdown = (ctx.out_dir / "report.md").read_text()
    assert markdown.startswith("# Fine-tune report: evaljob")
    assert "No training loss" in markdown
    assert "| model | org/ft-model |" in markdown
    assert not (ctx.out_dir / "loss.png").exists() and not (ctx.out_dir / "turn-depth.png").exists()
    assert output["simulated"] is False
