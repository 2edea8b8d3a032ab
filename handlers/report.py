"""The `report` step, last in the job: report.md and report.html with charts (training loss, F1/EM by turn depth),
the metrics tables and the job's remote ids, written into the job's outbox folder.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon.jobs.context import REMOTE_ID_KEYS, JobContext, JournalKey, StepInputs, StepOutput
from daemon.money import usd
from daemon.spool.files import atomic_write_bytes
from handlers.training.curve import checkpoint_note, read_checkpoints, training_curve
from handlers.training.events import LossCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = structlog.get_logger()

SIMULATED_LINE = (
    "**SIMULATED RESULTS** — produced against the finetuned sandbox: the answers and the training are simulated."
)
# Besides the journal's remote ids, the step outputs name the output model under this key (before poll ends).
OUTPUT_MODEL_KEY = "model_output_name"
SANDBOX_MODEL_PREFIX = "sandbox/"


def loss_chart(curve: LossCurve) -> bytes:
    """PNG of the training (and eval) loss by step."""
    from matplotlib.figure import Figure  # imported where charts are drawn: it costs ~0.5 s at start-up

    figure = Figure(figsize=(7, 3.6), dpi=110)
    axes = figure.add_subplot()
    axes.plot(*zip(*curve.train, strict=True), label="training loss", color="#1f77b4")
    if curve.eval:
        axes.plot(*zip(*curve.eval, strict=True), "o--", label="evaluation loss", color="#ff7f0e")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _png(figure)


def depth_chart(models: Mapping[str, Mapping[str, Any]]) -> bytes:
    """PNG of F1 and EM by turn depth, one bar per model in each bucket."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.8), dpi=110)
    first = next(iter(models.values()))
    buckets = list(first["by_turn_depth"])
    width = 0.8 / max(1, len(models))
    for position, metric in enumerate(("f1", "em"), start=1):
        axes = figure.add_subplot(1, 2, position)
        for offset, (alias, metrics) in enumerate(models.items()):
            values = [metrics["by_turn_depth"][b][metric] for b in buckets]
            axes.bar([i + offset * width for i in range(len(buckets))], values, width, label=alias)
        axes.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(buckets))], buckets)
        axes.set_ylim(0, 1 if first.get("scale") == "0-1" else 100)
        axes.set_xlabel("turn depth")
        axes.set_title(f"{metric.upper()} by turn depth ({first.get('scale', '0-100')})")
        axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass
class ReportData:
    """Everything the report shows, gathered from the inputs and the outbox."""

    job_id: str
    name: str
    simulated: bool
    remote_ids: dict[str, str]
    metrics: dict[str, Any] | None
    curve: LossCurve
    charts: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def remote_ids(ctx: JobContext, inputs: StepInputs) -> dict[str, str]:
    """The job's remote ids (files, fine-tune, output model) from the step outputs and the journal."""
    found: dict[str, str] = {}
    for output in inputs.values():
        for key in (*REMOTE_ID_KEYS, OUTPUT_MODEL_KEY):
            value = output.get(key)
            if isinstance(value, str) and value and value not in found.values():
                found.setdefault(key, value)
    for key in REMOTE_ID_KEYS:
        value = ctx.journal.get(key)
        if value:
            found.setdefault(key, value)
    return found


def price_notes(inputs: StepInputs) -> list[str]:
    """What the fine-tune cost (poll: Together's total_price) or was estimated to cost (create)."""
    notes = []
    estimate = inputs.get("create", {}).get("estimated_price_usd")
    if isinstance(estimate, int | float):
        notes.append(f"Estimated price before training: {usd(estimate)}.")
    total = inputs.get("poll", {}).get("total_price_usd")
    if isinstance(total, int | float):
        notes.append(f"Price charged for the fine-tune: {usd(total)}.")
    if isinstance(serving := inputs.get("release", {}).get("note"), str):
        notes.append(serving)  # the dedicated endpoint's minutes and cost (handlers/serving.py)
    if isinstance(stopped := inputs.get("poll", {}).get("stopped"), dict):
        notes.append(
            f"Stopped early at step {stopped.get('steps_completed')}: {stopped.get('reason')}. The fine-tune was "
            "cancelled on Together and is not evaluated."
        )
    return notes


def _simulated(inputs: StepInputs, metrics: Mapping[str, Any] | None, ids: Mapping[str, str]) -> bool:
    if metrics is not None and metrics.get("simulated"):
        return True
    if any(output.get("simulated") for output in inputs.values()):
        return True
    return any(v.startswith(SANDBOX_MODEL_PREFIX) for k, v in ids.items() if k in (JournalKey.MODEL, OUTPUT_MODEL_KEY))


def gather(ctx: JobContext, inputs: StepInputs) -> ReportData:
    """Read metrics.json and events.jsonl (blocking: call in a thread) and draw the charts."""
    metrics_path = Path(inputs.get("evaluate", {}).get("metrics") or ctx.out_dir / "metrics.json")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else None
    ids = remote_ids(ctx, inputs)
    data = ReportData(ctx.job_id, ctx.spec.name, _simulated(inputs, metrics, ids), ids, metrics, LossCurve())
    data.curve, _source = training_curve(ctx.out_dir)
    data.notes = price_notes(inputs)
    if (checkpoints := checkpoint_note(read_checkpoints(ctx.out_dir))) is not None:
        data.notes.append(checkpoints)
    if data.curve.train:
        data.charts["loss.png"] = loss_chart(data.curve)
    if metrics and metrics.get("models"):
        data.charts["turn-depth.png"] = depth_chart(metrics["models"])
    return data


def _table(header: list[str], rows: list[list[Any]]) -> list[list[str]]:
    return [header, *[[str(v) for v in row] for row in rows]]


def sections(data: ReportData) -> list[tuple[str, list[str], list[list[list[str]]], list[str]]]:
    """(title, paragraphs, tables, chart file names) per section, shared by the markdown and the HTML."""
    out: list[tuple[str, list[str], list[list[list[str]]], list[str]]] = []
    ids = [[k, v] for k, v in data.remote_ids.items()]
    out.append(
        (
            "Job",
            [f"Job `{data.job_id}` (spec `{data.name}`).", *data.notes],
            [_table(["remote id", "value"], ids)] if ids else [],
            [],
        )
    )
    if data.curve.train:
        first, last = data.curve.train[0], data.curve.train[-1]
        text = f"Training loss {first[1]:.4f} at step {first[0]} → {last[1]:.4f} at step {last[0]}."
        out.append(("Training", [text], [], ["loss.png"]))
    else:
        out.append(
            ("Training", ["No training loss was found in the fine-tune's events (or there was no fine-tune)."], [], [])
        )
    if data.metrics and data.metrics.get("models"):
        out.append(_evaluation_section(data.metrics))
    return out


def _evaluation_section(metrics: Mapping[str, Any]) -> tuple[str, list[str], list[list[list[str]]], list[str]]:
    models: Mapping[str, Mapping[str, Any]] = metrics["models"]
    scale = next(iter(models.values())).get("scale", "0-100")
    text = [
        f"Protocol `{metrics.get('protocol')}`, {metrics.get('stories')} stories,"
        f" {metrics.get('turns')} turns per model;"
        f" scores on a {scale} scale ({'cookbook: main gold only' if scale == '0-1' else 'official CoQA scorer'})."
    ]
    overall = [_overall_row(a, m) for a, m in models.items()]
    text += [_limit_line(provider, limit) for provider, limit in (metrics.get("concurrency") or {}).items()]
    tables = [_table(["model", "name", "EM", "F1", "turns", "errors", "truncated", "missing", "tokens"], overall)]
    buckets = list(next(iter(models.values()))["by_turn_depth"])
    depth = [
        [a, metric.upper(), *[_depth_cell(m["by_turn_depth"][b], metric) for b in buckets]]
        for a, m in models.items()
        for metric in ("f1", "em")
    ]
    tables.append(_table(["model", "metric", *[f"turn {b}" for b in buckets]], depth))
    deltas = [
        [name, f"{d['overall']['em']:+g}", f"{d['overall']['f1']:+g}"]
        for name, d in (metrics.get("deltas") or {}).items()
    ]
    if deltas:
        tables.append(_table(["difference", "EM", "F1"], deltas))
    domains = [k for k, v in next(iter(models.values()))["official"].items() if v["turns"]]
    official = [
        [a, *[f"{m['official'][d]['f1']} / {m['official'][d]['em']}" for d in domains]] for a, m in models.items()
    ]
    tables.append(_table(["official F1 / EM", *domains], official))
    return ("Evaluation", text, tables, ["turn-depth.png"])


def _limit_line(provider: str, limit: Mapping[str, Any]) -> str:
    """How the adaptive in-flight limit of one provider moved (metrics.json `concurrency`)."""
    history = limit.get("history") or [[0, limit.get("final")]]
    over_time = ", ".join(f"{value} at {t:g} s" for t, value in history[:: max(1, len(history) // 8)])
    return (
        f"In-flight limit for `{provider}` (ceiling {limit.get('ceiling')}): between {limit.get('min')} and"
        f" {limit.get('max')}, {limit.get('final')} at the end; over time: {over_time}."
    )


def _overall_row(alias: str, m: Mapping[str, Any]) -> list[Any]:
    """One model's row of the overall table (truncated answers and missing items included)."""
    overall = m["overall"]
    counts = [m["errors"], m.get("truncated", 0), m.get("missing", 0), m["tokens"]["total"]]
    return [alias, m["model"], overall["em"], overall["f1"], overall["turns"], *counts]


def _depth_cell(block: Mapping[str, Any], metric: str) -> str:
    return str(block[metric]) if block["turns"] else "–"


def render_markdown(data: ReportData) -> str:
    """report.md: charts linked as files next to it."""
    lines = [SIMULATED_LINE, ""] if data.simulated else []
    lines += [f"# Fine-tune report: {data.name}", ""]
    for title, paragraphs, tables, charts in sections(data):
        lines += [f"## {title}", "", *[p + "\n" for p in paragraphs]]
        for table in tables:
            lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
            lines += ["| " + " | ".join(row) + " |" for row in table[1:]] + [""]
        lines += [f"![{name}]({name})\n" for name in charts if name in data.charts]
    return "\n".join(lines).rstrip() + "\n"


def render_html(data: ReportData) -> str:
    """report.html: self-contained, charts embedded as base64 PNG."""
    esc = html.escape
    body = (
        [f"<p class='simulated'><strong>{esc(SIMULATED_LINE.replace('**', ''))}</strong></p>"] if data.simulated else []
    )
    body.append(f"<h1>Fine-tune report: {esc(data.name)}</h1>")
    for title, paragraphs, tables, charts in sections(data):
        body.append(f"<h2>{esc(title)}</h2>")
        body += [f"<p>{esc(p).replace('`', '')}</p>" for p in paragraphs]
        for table in tables:
            head = "".join(f"<th>{esc(c)}</th>" for c in table[0])
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        for name in (c for c in charts if c in data.charts):
            encoded = base64.b64encode(data.charts[name]).decode()
            body.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}.simulated{background:#fff3cd;padding:.5em}"
    )
    title = esc(f"Fine-tune report: {data.name}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _write_all(ctx: JobContext, data: ReportData) -> Path:
    for name, png in data.charts.items():
        atomic_write_bytes(ctx.out_dir / name, png)
    atomic_write_bytes(ctx.out_dir / "report.html", render_html(data).encode())
    report = ctx.out_dir / "report.md"
    atomic_write_bytes(report, render_markdown(data).encode())
    return report


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Write report.md, report.html and the chart PNGs; return the report's path."""
    data = await asyncio.to_thread(gather, ctx, inputs)
    report = await asyncio.to_thread(_write_all, ctx, data)
    log.info("report_written", path=str(report), simulated=data.simulated, charts=sorted(data.charts))
    return {"report": str(report), "html": str(ctx.out_dir / "report.html"), "simulated": data.simulated}
