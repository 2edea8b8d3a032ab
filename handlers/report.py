"""The `report` step, last in the job: report.md, a self-contained report.html, the charts and summary.json, written
into the job's outbox folder (what is in them: handlers/reporting/). A job that fails or is cancelled gets its
report from the outbox index's listener instead (daemon/jobs/index.py), through the same code.
"""

from __future__ import annotations

import asyncio

import structlog

from daemon.jobs.context import JobContext, StepInputs, StepOutput
from handlers.reporting.data import gather
from handlers.reporting.render import SIMULATED_LINE, write_report

__all__ = ["SIMULATED_LINE", "run"]

log = structlog.get_logger()


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Write report.md, report.html, summary.json and the chart PNGs; return the report's path."""
    data = await asyncio.to_thread(gather, ctx.job_id, ctx.spec.name, ctx.out_dir, inputs)
    report = await asyncio.to_thread(write_report, data)
    log.info("report_written", path=str(report), simulated=data.simulated, charts=sorted(data.charts))
    return {"report": str(report), "html": str(ctx.out_dir / "report.html"), "simulated": data.simulated}
