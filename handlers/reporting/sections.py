"""The report's sections, shared by report.md and report.html: what went wrong (failed jobs), the job, timeline,
money, data, training, evaluation, the cookbook comparison, error analysis, lowest turns, what to try next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.reporting import advice
from handlers.reporting.analysis import GROUPINGS, ORDERS, ModelAnalysis, Turn, answer_type, length_ratio
from handlers.reporting.data import ReportData, first_model
from handlers.reporting.timeline import money, money_lines, timeline_rows
from handlers.training.curve import checkpoint_note

Table = list[list[str]]
EXCERPT_CHARS = 320
HISTORY_TURNS = 3
PROBLEMS_SHOWN = 5


@dataclass
class Section:
    """One titled part of the report."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    examples: list[list[tuple[str, str]]] = field(default_factory=list)  # label/text pairs per example
    notes: list[str] = field(default_factory=list)  # paragraphs after everything else


def table(header: list[str], rows: list[list[Any]]) -> Table:
    """A table as strings, header first."""
    return [header, *[[str(v) for v in row] for row in rows]]


def failure_section(data: ReportData) -> Section:
    """Which step failed, in the remote's or the validator's own words, and what to do."""
    status = str(data.status.get("status"))
    raw = data.status.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    step = error.get("step") or data.status.get("step") or "?"
    section = Section("What went wrong")
    if status == "cancelled":
        section.paragraphs.append(f"The job was cancelled during step `{step}`.")
    else:
        section.paragraphs.append(f"The job failed in step `{step}` ({error.get('type', 'error')}):")
        section.bullets.append(str(error.get("message") or "no message was recorded"))
        section.bullets += [str(p) for p in (error.get("problems") or [])[:PROBLEMS_SHOWN]]
        section.bullets += _validation_problems(data.validation)
    section.notes.append("What to do: " + advice.failure_advice(status, error))
    return section


def _validation_problems(validation: Mapping[str, Any] | None) -> list[str]:
    if not validation or validation.get("valid", True):
        return []
    found = []
    for name, report in (validation.get("files") or {}).items():
        for problem in (report.get("problems") or [])[:PROBLEMS_SHOWN]:
            found.append(f"{name} line {problem.get('line')}: {problem.get('message')} ({problem.get('kind')})")
    return found


def job_section(data: ReportData) -> Section:
    """Ids and status."""
    status = data.status.get("status")
    text = f"Job `{data.job_id}` (spec `{data.name}`)" + (f", status `{status}`." if status != "running" else ".")
    ids = [[k, v] for k, v in data.remote_ids.items()]
    return Section("Job", [text], [table(["remote id", "value"], ids)] if ids else [])


def timeline_section(data: ReportData) -> Section:
    """Steps with status, attempts and durations; then the money."""
    rows = timeline_rows(data.status)
    tables = [table(["step", "status", "attempts", "started", "duration s"], rows)] if rows else []
    return Section("Timeline and cost", [], tables, bullets=money_lines(money(data)))


def data_section(data: ReportData) -> Section:
    """Examples, turns, tokens, the longest example and the validation summary."""
    counts = (data.dataset or {}).get("counts") or {}
    section = Section("Data")
    rows = []
    for split in ("train", "validation"):
        c = counts.get(split)
        if isinstance(c, dict):
            rows.append([split, c.get("examples"), c.get("turns"), c.get("messages"), c.get("estimated_tokens")])
    if rows:
        section.tables.append(table(["file", "examples", "turns", "messages", "estimated tokens"], rows))
    longest = (counts.get("train") or {}).get("longest_example") if isinstance(counts.get("train"), dict) else None
    if isinstance(longest, dict):
        section.paragraphs.append(
            f"Longest training example: line {longest.get('line')}, about {longest.get('estimated_tokens')} tokens,"
            f" {longest.get('turns')} turns."
        )
    evaluation = counts.get("eval")
    if isinstance(evaluation, dict):
        section.paragraphs.append(
            f"Evaluation set: {evaluation.get('items')} stories, {evaluation.get('turns')} turns"
            f" (split `{evaluation.get('split')}`)."
        )
    if data.validation is not None:
        verdict = "valid" if data.validation.get("valid") else "NOT valid"
        problems = sum(int(f.get("problem_count") or 0) for f in (data.validation.get("files") or {}).values())
        section.paragraphs.append(f"Validation: {verdict}, {problems} problems (validation.json).")
    if not section.paragraphs and not section.tables:
        section.paragraphs.append("No dataset was prepared.")
    return section


def training_section(data: ReportData) -> Section:
    """The loss curve (from Together's metrics, else the events), the checkpoints, and a stop rule's verdict."""
    notes = []
    stopped = data.inputs.get("poll", {}).get("stopped")
    if isinstance(stopped, dict):
        notes.append(
            f"Stopped early at step {stopped.get('steps_completed')}: {stopped.get('reason')}. The fine-tune was "
            "cancelled on Together and is not evaluated."
        )
    if (checkpoints := checkpoint_note(data.checkpoints)) is not None:
        notes.append(checkpoints)
    if not data.curve.train:
        text = "No training loss was found in the fine-tune's metrics or events (or there was no fine-tune)."
        return Section("Training", [*notes, text])
    first, last = data.curve.train[0], data.curve.train[-1]
    text = f"Training loss {first[1]:.4f} at step {first[0]} → {last[1]:.4f} at step {last[0]}"
    text += f" (from Together's {'training metrics' if data.curve_source == 'metrics' else 'events'})."
    if data.curve.eval:
        text += f" Evaluation loss at the end: {data.curve.eval[-1][1]:.4f} (step {data.curve.eval[-1][0]})."
    return Section("Training", [text, *notes], charts=["loss.png"])


def evaluation_section(metrics: Mapping[str, Any]) -> Section:
    """Overall scores, by turn depth, the differences and the official per-domain scores."""
    models: Mapping[str, Mapping[str, Any]] = metrics["models"]
    first = next(iter(models.values()))
    scale = first.get("scale", "0-100")
    which = "cookbook: main gold only" if scale == "0-1" else "official CoQA scorer"
    text = (
        f"Protocol `{metrics.get('protocol')}`, {metrics.get('stories')} stories, {metrics.get('turns')} turns per"
        f" model; scores on a {scale} scale ({which})."
    )
    overall = [_overall_row(a, m) for a, m in models.items()]
    limits = [_limit_line(provider, limit) for provider, limit in (metrics.get("concurrency") or {}).items()]
    header = ["model", "name", "EM", "F1", "turns", "errors", "truncated", "missing", "tokens"]
    tables = [table(header, overall)]
    buckets = list(first["by_turn_depth"])
    depth = [
        [a, metric.upper(), *[_depth_cell(m["by_turn_depth"][b], metric) for b in buckets]]
        for a, m in models.items()
        for metric in ("f1", "em")
    ]
    tables.append(table(["model", "metric", *[f"turn {b}" for b in buckets]], depth))
    tables += _comparison_tables(metrics, models)
    return Section("Evaluation", [text, *limits], tables, ["turn-depth.png"])


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


def _comparison_tables(metrics: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]]) -> list[Table]:
    """The differences against the first model, and the official per-domain scores."""
    tables = []
    deltas = [
        [n, f"{d['overall']['em']:+g}", f"{d['overall']['f1']:+g}"] for n, d in (metrics.get("deltas") or {}).items()
    ]
    if deltas:
        tables.append(table(["difference", "EM", "F1"], deltas))
    first = next(iter(models.values()))
    domains = [k for k, v in (first.get("official") or {}).items() if v["turns"]]
    if domains:
        official = [
            [a, *[f"{m['official'][d]['f1']} / {m['official'][d]['em']}" for d in domains]] for a, m in models.items()
        ]
        tables.append(table(["official F1 / EM", *domains], official))
    return tables


def _depth_cell(block: Mapping[str, Any], metric: str) -> str:
    return str(block[metric]) if block["turns"] else "–"


def cookbook_section(data: ReportData) -> Section:
    """The cookbook's published EM/F1 beside ours, with what differs."""
    metrics = data.metrics or {}
    models = metrics.get("models") or {}
    scale = str(first_model(metrics).get("scale", "0-1"))
    note = advice.COOKBOOK_NOTE.format(
        turns=int(metrics.get("turns") or 0), simulated=", and our answers are SIMULATED" if data.simulated else ""
    )
    return Section(
        "Compared with the cookbook",
        [note],
        [table(["", "EM (0..1)", "F1 (0..1)"], advice.cookbook_rows(models, scale))],
    )


def analysis_section(analyses: list[ModelAnalysis]) -> Section:
    """Per grouping: turns, EM, F1 and share of errors for every model (scores 0..1 per turn)."""
    section = Section(
        "Error analysis",
        ["Per-turn scores on 0..1; an error is a turn with EM 0. Grouped by the main gold answer and the question."],
        charts=["answer-type.png"],
    )
    for analysis in analyses:
        section.paragraphs.append(
            f"{analysis.alias}: predictions average {analysis.mean_prediction_tokens:.1f} tokens against"
            f" {analysis.mean_gold_tokens:.1f} for the gold answers."
        )
    for grouping in GROUPINGS:
        header = [grouping]
        present = {g.label for a in analyses for g in a.groups[grouping]}
        seen = [label for label in ORDERS.get(grouping, ()) if label in present]
        labels = seen + list(
            dict.fromkeys(g.label for a in analyses for g in a.groups[grouping] if g.label not in seen)
        )
        rows: list[list[Any]] = [[label] for label in labels]
        for analysis in analyses:
            header += [f"{analysis.alias} turns", "EM", "F1", "errors %"]
            found = {g.label: g for g in analysis.groups[grouping]}
            for row, label in zip(rows, labels, strict=True):
                g = found.get(label)
                row.extend(
                    [g.turns, f"{g.em:.3f}", f"{g.f1:.3f}", f"{g.error_share * 100:.0f}"] if g else ["0", "–", "–", "–"]
                )
        section.tables.append(table(header, rows))
    return section


def lowest_section(data: ReportData) -> Section:
    """The lowest-scoring turns of each model, with story excerpt, history, question, gold and prediction."""
    section = Section("Lowest-scoring turns")
    for analysis in data.analyses:
        for turn in analysis.lowest:
            section.examples.append(_example(data, analysis, turn))
    return section


def _example(data: ReportData, analysis: ModelAnalysis, turn: Turn) -> list[tuple[str, str]]:
    story = data.stories.get(turn.story_id, "")
    history = [t for t in analysis.turns if t.story_id == turn.story_id and t.turn_id < turn.turn_id]
    shown = " / ".join(f"Q: {t.question} A: {t.answers[0] if t.answers else ''}" for t in history[-HISTORY_TURNS:])
    prediction = turn.prediction if turn.prediction is not None else f"(no answer: {turn.error})"
    return [
        ("model", f"{analysis.alias} — story {turn.story_id}, turn {turn.turn_id} ({answer_type(turn.answers)})"),
        ("scores", f"F1 {turn.f1:.3f}, EM {turn.em:.3f}, prediction {length_ratio(turn):.1f}× gold length"),
        ("story", _excerpt(story, turn.answers[0] if turn.answers else "")),
        ("history", (shown + " (gold answers)") if shown else "(first turn)"),
        ("question", turn.question),
        ("gold", " | ".join(turn.answers)),
        ("prediction", prediction),
    ]


def _excerpt(story: str, answer: str) -> str:
    """About EXCERPT_CHARS of the story, around the gold answer when it appears in it."""
    if len(story) <= EXCERPT_CHARS:
        return story
    at = story.lower().find(answer.lower()) if answer else -1
    start = max(0, at - EXCERPT_CHARS // 2) if at >= 0 else 0
    return ("…" if start else "") + story[start : start + EXCERPT_CHARS].strip() + "…"


def next_section(data: ReportData) -> Section:
    """What to try next, computed from the analysis."""
    models = (data.metrics or {}).get("models") or {}
    overall: dict[str, float] = {}
    divide = 1.0 if first_model(data.metrics).get("scale") == "0-1" else 100.0
    for alias, block in models.items():
        f1 = (block.get("overall") or {}).get("f1")
        if isinstance(f1, int | float):
            overall[str(alias)] = f1 / divide
    return Section("What to try next", bullets=advice.next_steps(data.analyses, overall))


def sections(data: ReportData) -> list[Section]:
    """Every section the data allows, in reading order."""
    out = [failure_section(data)] if data.failed else []
    out += [job_section(data), timeline_section(data), data_section(data), training_section(data)]
    if data.metrics and data.metrics.get("models"):
        out.append(evaluation_section(data.metrics))
        if data.metrics.get("protocol") == "cookbook":
            out.append(cookbook_section(data))
    if data.analyses:
        out += [next_section(data), analysis_section(data.analyses), lowest_section(data)]
    return out
