"""The report's charts: PNGs drawn with matplotlib's object API (no pyplot, no display: headless by construction),
each stamped SIMULATED when the sandbox answered.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from handlers.reporting.analysis import ModelAnalysis
from handlers.training.events import LossCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIMULATED_MARK = "SIMULATED"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # imported where charts are drawn: it costs ~0.5 s at start-up

    return Figure(figsize=(width, height), dpi=110)


def _png(figure: Figure, simulated: bool) -> bytes:
    if simulated:
        figure.text(
            0.5, 0.5, SIMULATED_MARK, fontsize=44, color="#c00000", alpha=0.18, rotation=20, ha="center", va="center"
        )
        figure.text(0.99, 0.01, "simulated by the finetuned sandbox", fontsize=7, color="#c00000", ha="right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_chart(curve: LossCurve, *, simulated: bool = False) -> bytes:
    """PNG of the training (and eval) loss by step."""
    figure = _figure(7, 3.6)
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
    return _png(figure, simulated)


def depth_chart(models: Mapping[str, Mapping[str, Any]], *, simulated: bool = False) -> bytes:
    """PNG of F1 and EM by turn depth, one bar per model in each bucket."""
    figure = _figure(9, 3.8)
    first = next(iter(models.values()))
    buckets = list(first["by_turn_depth"])
    width = 0.8 / max(1, len(models))
    axes = None
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
    if axes is not None:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return _png(figure, simulated)


def breakdown_chart(analyses: Sequence[ModelAnalysis], grouping: str, *, simulated: bool = False) -> bytes:
    """PNG of F1 (0..1) per group of one grouping (e.g. answer type), one bar per model in each group."""
    figure = _figure(7, 3.4)
    axes = figure.add_subplot()
    labels = list(dict.fromkeys(g.label for a in analyses for g in a.groups.get(grouping, [])))
    width = 0.8 / max(1, len(analyses))
    for offset, analysis in enumerate(analyses):
        by_label = {g.label: g.f1 for g in analysis.groups.get(grouping, [])}
        values = [by_label.get(label, 0.0) for label in labels]
        axes.bar([i + offset * width for i in range(len(labels))], values, width, label=analysis.alias)
    axes.set_xticks([i + width * (len(analyses) - 1) / 2 for i in range(len(labels))], labels, fontsize="small")
    axes.set_ylim(0, 1)
    axes.set_ylabel("F1 (0..1)")
    axes.set_title(f"F1 by {grouping}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _png(figure, simulated)


def draw_all(
    curve: LossCurve, metrics: Mapping[str, Any] | None, analyses: Sequence[ModelAnalysis], *, simulated: bool
) -> dict[str, bytes]:
    """Every chart the data allows, by file name."""
    charts: dict[str, bytes] = {}
    if curve.train:
        charts["loss.png"] = loss_chart(curve, simulated=simulated)
    if metrics and metrics.get("models"):
        charts["turn-depth.png"] = depth_chart(metrics["models"], simulated=simulated)
    if analyses:
        charts["answer-type.png"] = breakdown_chart(analyses, "answer type", simulated=simulated)
    return charts
