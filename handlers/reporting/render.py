"""report.md (tables padded: text left, numbers right), a self-contained report.html (charts embedded), and
summary.json (the headline the outbox index and the notifications use); written atomically into the job folder.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.money import usd
from daemon.spool.files import atomic_write_bytes, atomic_write_json
from handlers.reporting import charts
from handlers.reporting.data import ReportData, first_model, gather
from handlers.reporting.sections import Section, Table, sections
from handlers.reporting.timeline import money

SIMULATED_LINE = (
    "**SIMULATED RESULTS** — produced against the finetuned sandbox: the answers and the training are simulated."
)
SUMMARY_FILE = "summary.json"
_NUMBER = re.compile(r"^[-+−]?\$?\d[\d,]*(\.\d+)?( ?%|×)?$")
_MISSING = ("", "–", "-")


def numeric_columns(rows: Table) -> list[bool]:
    """Per column: True when every filled cell below the header is a number (those are right-aligned)."""
    width = len(rows[0])
    found = []
    for column in range(width):
        cells = [row[column] for row in rows[1:] if column < len(row) and row[column] not in _MISSING]
        found.append(bool(cells) and all(_NUMBER.match(cell) for cell in cells))
    return found


def markdown_table(rows: Table) -> list[str]:
    """A padded markdown table: text left-aligned, numbers right-aligned (also in the alignment row)."""
    numeric = numeric_columns(rows)
    widths = [max(3, *(len(row[i]) for row in rows if i < len(row))) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [
            (cell.rjust(w) if right else cell.ljust(w)) for cell, w, right in zip(row, widths, numeric, strict=False)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            (("-" * (w + 1)) + ":") if right else (":" + "-" * (w + 1))
            for w, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return [line(rows[0]), rule, *[line(row) for row in rows[1:]], ""]


def _md_section(section: Section, chart_files: Mapping[str, bytes]) -> list[str]:
    lines = [f"## {section.title}", ""]
    lines += [p + "\n" for p in section.paragraphs]
    lines += [f"- {b}" for b in section.bullets] + ([""] if section.bullets else [])
    for rows in section.tables:
        lines += markdown_table(rows)
    for example in section.examples:
        lines += [f"> **{label}:** {text}  " for label, text in example] + [""]
    lines += [f"![{name}]({name})\n" for name in section.charts if name in chart_files]
    return lines + [p + "\n" for p in section.notes]


def render_markdown(data: ReportData) -> str:
    """report.md: charts linked as files next to it."""
    lines = [SIMULATED_LINE, ""] if data.simulated else []
    lines += [f"# Fine-tune report: {data.name}", ""]
    for section in sections(data):
        lines += _md_section(section, data.charts)
    return "\n".join(lines).rstrip() + "\n"


def _html_table(rows: Table) -> str:
    esc = html.escape
    numeric = numeric_columns(rows)
    align = ["num" if right else "text" for right in numeric]
    head = "".join(f"<th class='{a}'>{esc(c)}</th>" for c, a in zip(rows[0], align, strict=False))
    body = "".join(
        "<tr>" + "".join(f"<td class='{a}'>{esc(c)}</td>" for c, a in zip(row, align, strict=False)) + "</tr>"
        for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_section(section: Section, chart_files: Mapping[str, bytes]) -> list[str]:
    esc = html.escape
    body = [f"<h2>{esc(section.title)}</h2>"]
    body += [f"<p>{esc(p).replace('`', '')}</p>" for p in section.paragraphs]
    if section.bullets:
        body.append("<ul>" + "".join(f"<li>{esc(b)}</li>" for b in section.bullets) + "</ul>")
    body += [_html_table(rows) for rows in section.tables]
    for example in section.examples:
        items = "".join(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in example)
        body.append(f"<dl class='turn'>{items}</dl>")
    for name in (c for c in section.charts if c in chart_files):
        encoded = base64.b64encode(chart_files[name]).decode()
        body.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>")
    return body + [f"<p>{esc(p).replace('`', '')}</p>" for p in section.notes]


STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em}.num{text-align:right}.text{text-align:left}"
    ".simulated{background:#fff3cd;padding:.5em}dl.turn{border-left:3px solid #c66;padding:.2em 1em;margin:1em 0}"
    "dt{font-weight:bold;float:left;width:6em}dd{margin-left:7em}img{max-width:100%}"
)


def render_html(data: ReportData) -> str:
    """report.html: self-contained, charts embedded as base64 PNG."""
    esc = html.escape
    body = (
        [f"<p class='simulated'><strong>{esc(SIMULATED_LINE.replace('**', ''))}</strong></p>"] if data.simulated else []
    )
    body.append(f"<h1>Fine-tune report: {esc(data.name)}</h1>")
    for section in sections(data):
        body += _html_section(section, data.charts)
    title = esc(f"Fine-tune report: {data.name}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def summary(data: ReportData) -> dict[str, Any]:
    """The headline of the job: status, EM/F1 per model, the whole cost, and where the report is."""
    models = (data.metrics or {}).get("models") or {}
    headline = {
        str(alias): {k: m["overall"][k] for k in ("em", "f1") if k in (m.get("overall") or {})}
        for alias, m in models.items()
        if isinstance(m, dict)
    }
    cost = money(data).total_usd
    scores = " → ".join(f"{a} F1 {s.get('f1')} / EM {s.get('em')}" for a, s in headline.items())
    line = f"{data.name}: {data.status.get('status', 'completed')}" + (f"; {scores}" if scores else "")
    error = data.status.get("error")
    if isinstance(error, dict):
        line += f" in step {error.get('step')}: {str(error.get('message'))[:200]}"
    return {
        "job_id": data.job_id,
        "status": data.status.get("status"),
        "headline": headline,
        "scale": first_model(data.metrics).get("scale"),
        "cost_usd": round(cost, 6),
        "summary": f"{line}; cost {usd(cost)}",
        "report": "report.html",
        "simulated": data.simulated,
    }


def write_report(data: ReportData) -> Path:
    """Draw the charts, write them, report.html, summary.json and report.md (last); returns report.md's path."""
    data.charts = charts.draw_all(data.curve, data.metrics, data.analyses, simulated=data.simulated)
    for name, png in data.charts.items():
        atomic_write_bytes(data.out_dir / name, png)
    atomic_write_bytes(data.out_dir / "report.html", render_html(data).encode())
    atomic_write_json(data.out_dir / SUMMARY_FILE, summary(data))
    report = data.out_dir / "report.md"
    atomic_write_bytes(report, render_markdown(data).encode())
    return report


def write_failure_report(out_dir: Path, document: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]]) -> Path:
    """The report of a job that ended failed or cancelled, from its final status document (blocking)."""
    data = gather(str(document.get("job_id")), str(document.get("name") or ""), out_dir, inputs, document)
    return write_report(data)
