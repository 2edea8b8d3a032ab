"""Comparing runs side by side: a sweep's variants (step `sweep`) or any finished jobs (`finetuned compare`).

Each run is a folder with the usual outputs (metrics.json, events.jsonl, status.json); the comparison is a table
(parameters, price, final losses, EM/F1 overall and by turn depth, status), a chart of the chosen metric against
each varied parameter, and the best run by that metric, written as report.md/report.html (self-contained) and
returned as a JSON-able document.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.money import usd
from daemon.spool.files import atomic_write_bytes
from handlers.training.curve import training_curve

MODEL = "finetuned"  # the model whose numbers a run is judged by


@dataclass
class Row:
    """One run in a comparison."""

    name: str
    overrides: dict[str, Any]
    status: str
    link: str
    error: str | None = None
    price_usd: float | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    overall: dict[str, float] = field(default_factory=dict)  # {"f1": .., "em": ..} of the fine-tuned model
    base: dict[str, float] = field(default_factory=dict)
    by_turn_depth: dict[str, dict[str, float]] = field(default_factory=dict)
    simulated: bool = False


def row_from_folder(folder: Path, **row: Any) -> Row:
    """A run's row from its folder's metrics.json and training curve (absent files leave the numbers empty)."""
    found = Row(**row)
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        models = metrics.get("models", {})
        tuned: dict[str, Any] = models.get(MODEL) or next(iter(models.values()), {})
        found.overall = {k: tuned.get("overall", {}).get(k) for k in ("f1", "em")}
        found.base = {k: models.get("base", {}).get("overall", {}).get(k) for k in ("f1", "em")}
        found.by_turn_depth = tuned.get("by_turn_depth", {})
        found.simulated = bool(metrics.get("simulated"))
    curve, _source = training_curve(folder)  # Together's training metrics when saved, else the events
    found.final_loss = curve.train[-1][1] if curve.train else None
    found.final_eval_loss = curve.eval[-1][1] if curve.eval else None
    return found


def best(rows: list[Row], metric: str) -> Row | None:
    """The completed run with the highest `metric` of the fine-tuned model (ties: the first)."""
    scored = [r for r in rows if r.status == "completed" and r.overall.get(metric) is not None]
    return max(scored, key=lambda r: r.overall[metric]) if scored else None


def write_comparison(out_dir: Path, rows: list[Row], keys: list[str], *, metric: str, title: str) -> dict[str, Any]:
    """Write report.md, report.html and one chart per varied key into `out_dir`; return the comparison document."""
    winner = best(rows, metric)
    drawn = {f"compare-{key}.png": _chart(rows, key, metric) for key in keys}
    charts = {name: png for name, png in drawn.items() if png is not None}
    table = _table(rows, keys)
    notes = _notes(rows, winner, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, png in charts.items():
        atomic_write_bytes(out_dir / name, png)
    atomic_write_bytes(out_dir / "report.md", _markdown(title, notes, table, rows, charts).encode())
    atomic_write_bytes(out_dir / "report.html", _html(title, notes, table, rows, charts).encode())
    return {
        "metric": metric,
        "keys": keys,
        "best": winner.name if winner else None,
        "completed": sum(1 for r in rows if r.status == "completed"),
        "variants": [asdict(r) for r in rows],
    }


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(rows: list[Row], keys: list[str]) -> list[list[str]]:
    depths = list(next((r.by_turn_depth for r in rows if r.by_turn_depth), {}))
    header = ["run", *keys, "status", "price", "final loss", "final eval loss", "F1", "EM", "base F1"]
    header += [f"F1 @{d}" for d in depths]
    body = []
    for r in rows:
        cells = [r.name, *[str(r.overrides.get(k, "")) for k in keys], r.status]
        cells += ["—" if r.price_usd is None else usd(r.price_usd)]
        cells += [_number(r.final_loss, 3), _number(r.final_eval_loss, 3)]
        cells += [_number(r.overall.get("f1")), _number(r.overall.get("em")), _number(r.base.get("f1"))]
        cells += [_number(r.by_turn_depth.get(d, {}).get("f1")) for d in depths]
        body.append(cells)
    return [header, *body]


def _notes(rows: list[Row], winner: Row | None, metric: str) -> list[str]:
    notes = []
    if any(r.simulated for r in rows):
        notes.append("**SIMULATED RESULTS** — the sandbox answered: training and answers are simulated.")
    if winner is not None:
        given = ", ".join(f"{k}={v}" for k, v in winner.overrides.items()) or "the spec's values"
        notes.append(
            f"Best by {metric.upper()}: **{winner.name}** ({given}), {metric.upper()} {winner.overall[metric]}."
        )
    else:
        notes.append(f"No run completed with a {metric.upper()} to compare.")
    notes += [f"{r.name} {r.status}: {r.error}" for r in rows if r.error]
    return notes


def _chart(rows: list[Row], key: str, metric: str) -> bytes | None:
    """PNG of the fine-tuned model's metric against one varied parameter (one point per completed run)."""
    points = [(r.overrides[key], r.overall[metric]) for r in rows if key in r.overrides and r.overall.get(metric)]
    if not points:
        return None
    from matplotlib.figure import Figure  # imported where charts are drawn: it costs ~0.5 s at start-up

    figure = Figure(figsize=(6, 3.4), dpi=110)
    axes = figure.add_subplot()
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
    xs = [x if numeric else str(x) for x, _ in points]
    axes.plot(xs, [y for _, y in points], "o", color="#1f77b4")
    if numeric and len({x for x, _ in points}) > 1 and min(float(x) for x, _ in points) > 0:
        spread = max(float(x) for x, _ in points) / min(float(x) for x, _ in points)
        if spread >= 10:
            axes.set_xscale("log")
    axes.set_xlabel(key)
    axes.set_ylabel(f"{metric.upper()} (fine-tuned)")
    axes.set_title(f"{metric.upper()} against {key}" + (" (simulated)" if any(r.simulated for r in rows) else ""))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _markdown(title: str, notes: list[str], table: list[list[str]], rows: list[Row], charts: dict[str, bytes]) -> str:
    lines = [f"# {title}", "", *[n + "\n" for n in notes]]
    lines += ["| " + " | ".join(table[0]) + " |", "|:---|" + "---:|" * (len(table[0]) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "Runs: " + ", ".join(f"[{r.name}]({r.link})" for r in rows), ""]
    lines += [f"![{name}]({name})\n" for name in charts]
    return "\n".join(lines).rstrip() + "\n"


def _html(title: str, notes: list[str], table: list[list[str]], rows: list[Row], charts: dict[str, bytes]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", *[f"<p>{esc(n).replace('**', '')}</p>" for n in notes]]
    head = "".join(f"<th>{esc(c)}</th>" for c in table[0])
    cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    links = ", ".join(f"<a href='{esc(r.link.replace('.md', '.html'))}'>{esc(r.name)}</a>" for r in rows)
    body.append(f"<p>Runs: {links}</p>")
    for name, png in charts.items():
        body.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
        "</head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
