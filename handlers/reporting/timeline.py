"""The job's timeline (steps, durations, attempts) and its money: training estimated and charged, evaluation tokens
and their price where known, endpoint minutes where present, and the whole cost on one line.

Optional figures (evaluation price, endpoints) are read defensively: any of `price_usd`/`cost_usd` on a model's
metrics or its `tokens`, and `endpoints` (a list or a mapping of entries with `minutes` and `cost_usd`) in the
status document, metrics.json or any step output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.money import usd
from handlers.reporting.data import ReportData

PRICE_KEYS = ("price_usd", "cost_usd")
REPORT_STEP = "report"  # the step that writes the report; it is still running while it does


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def timeline_rows(status: Mapping[str, Any]) -> list[list[str]]:
    """One row per step of the status document: step, status, attempts, started, duration (the report step, still
    running while it writes the report, says so)."""
    steps = status.get("steps")
    rows = []
    for name, step in steps.items() if isinstance(steps, dict) else ():
        if not isinstance(step, dict):
            continue
        duration = _number(step.get("duration_s"))
        state = str(step.get("status") or "")
        rows.append(
            [
                str(name),
                "writing this report" if name == REPORT_STEP and state == "running" else state,
                str(step.get("attempts") or 0),
                str(step.get("started_at") or "–"),
                f"{duration:.1f}" if duration is not None else "–",
            ]
        )
    return rows


@dataclass
class Money:
    """The job's costs in USD; None where unknown."""

    training_estimate_usd: float | None = None
    training_charged_usd: float | None = None
    eval_tokens: dict[str, int] = field(default_factory=dict)  # model alias -> tokens used
    eval_price_usd: dict[str, float] = field(default_factory=dict)  # model alias -> price, where known
    endpoint_minutes: float | None = None
    endpoint_usd: float | None = None
    endpoint_notes: list[str] = field(default_factory=list)  # the release step's own words (handlers/serving.py)

    @property
    def total_usd(self) -> float:
        """Everything known: training (charged, else estimated) + evaluation + endpoints."""
        training = self.training_charged_usd if self.training_charged_usd is not None else self.training_estimate_usd
        return (training or 0.0) + sum(self.eval_price_usd.values()) + (self.endpoint_usd or 0.0)


def _price(block: Mapping[str, Any]) -> float | None:
    tokens = block.get("tokens")
    for source in (block, tokens if isinstance(tokens, dict) else {}):
        for key in PRICE_KEYS:
            value = _number(source.get(key))
            if value is not None:
                return value
    return None


def _endpoint_entries(sources: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for source in sources:
        endpoints = source.get("endpoints") if isinstance(source, dict) else None
        entries = (
            endpoints.values() if isinstance(endpoints, dict) else endpoints if isinstance(endpoints, list) else ()
        )
        yield from (e for e in entries if isinstance(e, dict))


def money(data: ReportData) -> Money:
    """What the job cost, from the step outputs, metrics.json and the status document."""
    found = Money(
        training_estimate_usd=_number(data.inputs.get("create", {}).get("estimated_price_usd")),
        training_charged_usd=_number(data.inputs.get("poll", {}).get("total_price_usd")),
    )
    for alias, block in ((data.metrics or {}).get("models") or {}).items():
        tokens = block.get("tokens") if isinstance(block, dict) else None
        if isinstance(tokens, dict) and _number(tokens.get("total")) is not None:
            found.eval_tokens[str(alias)] = int(tokens["total"])
        price = _price(block) if isinstance(block, dict) else None
        if price is not None:
            found.eval_price_usd[str(alias)] = price
    for alias, priced in (((data.metrics or {}).get("price") or {}).get("models") or {}).items():
        if (value := _number(priced.get("usd"))) is not None:  # metrics.json `price`: the evaluation's mode
            found.eval_price_usd[str(alias)] = value
    minutes = usd_total = 0.0
    released = data.inputs.get("release") or {}  # the dedicated endpoint's minutes and cost (handlers/serving.py)
    dedicated = [released] if released.get("mode") == "dedicated" and "minutes" in released else []
    if isinstance(note := released.get("note"), str):
        found.endpoint_notes.append(note)
    entries = [*_endpoint_entries([data.status, data.metrics, *data.inputs.values()]), *dedicated]
    for entry in entries:
        minutes += _number(entry.get("minutes")) or 0.0
        usd_total += next((v for k in PRICE_KEYS if (v := _number(entry.get(k))) is not None), 0.0)
    if entries:
        found.endpoint_minutes, found.endpoint_usd = minutes, usd_total
    return found


def money_lines(found: Money) -> list[str]:
    """The money paragraphs, ending with the whole cost on one line."""
    lines = []
    if found.training_estimate_usd is not None:
        lines.append(f"Training price estimated before training: {usd(found.training_estimate_usd)}.")
    if found.training_charged_usd is not None:
        lines.append(f"Training price charged by Together: {usd(found.training_charged_usd)}.")
    for alias, tokens in found.eval_tokens.items():
        price = found.eval_price_usd.get(alias)
        priced = f", {usd(price)}" if price is not None else " (the model's price is not known: not counted)"
        lines.append(f"Evaluation of {alias}: {tokens:,} tokens{priced}.")
    if found.endpoint_notes:
        lines += found.endpoint_notes
    elif found.endpoint_minutes is not None:
        lines.append(f"Endpoints: {found.endpoint_minutes:.1f} minutes, {usd(found.endpoint_usd or 0.0)}.")
    return [*lines, whole_cost(found)]


def whole_cost(found: Money) -> str:
    """One line: the total and what it is made of."""
    parts = []
    if found.training_charged_usd is not None:
        parts.append(f"training {usd(found.training_charged_usd)} charged")
    elif found.training_estimate_usd is not None:
        parts.append(f"training {usd(found.training_estimate_usd)} estimated")
    if found.eval_price_usd:
        parts.append(f"evaluation {usd(sum(found.eval_price_usd.values()))}")
    if found.endpoint_usd:
        parts.append(f"endpoints {usd(found.endpoint_usd)}")
    unpriced = [a for a in found.eval_tokens if a not in found.eval_price_usd]
    tail = f"; unpriced evaluation tokens of {', '.join(unpriced)}" if unpriced else ""
    return f"Whole cost: {usd(found.total_usd)} ({' + '.join(parts) or 'nothing priced'}{tail})."
