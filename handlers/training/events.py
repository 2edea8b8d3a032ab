"""Training events: saved once each to `events.jsonl` by `poll`, read back by `report`; the loss figures in them.

Together's events carry no loss field (the loss is in the message text), so `with_metrics` parses `loss`,
`eval_loss` and `step` out of the message once, when the event is saved; everything downstream reads the fields.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.spool.files import atomic_write_bytes

EVENTS_FILE = "events.jsonl"
_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_TRAIN_LOSS = re.compile(r"(?<![A-Za-z_ ])\s*(?:train(?:ing)?[ _])?loss\b[\s:=]+" + _NUMBER, re.IGNORECASE)
_EVAL_LOSS = re.compile(r"\beval(?:uation)?[ _]loss\b[\s:=]+" + _NUMBER, re.IGNORECASE)
_STEP = re.compile(r"\bstep\s+(\d+)", re.IGNORECASE)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


FAILURE_TYPES = frozenset({"job_error", "job_user_error", "billing_limit"})
# Life-cycle notices that never say why a job failed, whatever their level.
NOT_A_REASON = frozenset({"job_restarted", "job_pending", "job_start", "job_complete", "refund", "cancel_requested"})


def event_level(event: Mapping[str, Any]) -> str:
    """The level without its legacy spelling: legacy_ierror -> error, legacy_iwarning -> warning, null -> info."""
    level = str(event.get("level") or "info").lower().removeprefix("legacy_")
    return {"ierror": "error", "iwarning": "warning", "iinfo": "info"}.get(level, level)


def _failure_rank(event: Mapping[str, Any]) -> int | None:
    kind = str(event.get("type") or "")
    if kind in FAILURE_TYPES:
        return 0
    if kind in NOT_A_REASON:
        return None
    if event_level(event) == "error":
        return 1
    return 2 if kind == "job_stopped" else None


def with_metrics(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event plus `loss`, `eval_loss` and `step` parsed from its message where the API did not give them."""
    message = str(event.get("message") or "")
    out = dict(event)
    if _number(out.get("eval_loss")) is None and (found := _EVAL_LOSS.search(message)):
        out["eval_loss"] = float(found.group(1))
    if _number(out.get("loss")) is None and (found := _TRAIN_LOSS.search(_EVAL_LOSS.sub("", message))):
        out["loss"] = float(found.group(1))
    if _number(out.get("step")) is None and (found := _STEP.search(message)):
        out["step"] = int(found.group(1))
    return out


def read_events(path: Path) -> list[dict[str, Any]]:
    """The saved events, oldest first ([] when there are none); unreadable lines are skipped (blocking)."""
    if not path.exists():
        return []
    events: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


class EventLog:
    """`events.jsonl`: every remote event once, in arrival order; rewritten atomically when new ones come."""

    def __init__(self, path: Path, events: list[dict[str, Any]]) -> None:
        self.path = path
        self.events = events
        self._seen = {self.key(e) for e in events}

    @staticmethod
    def key(event: Mapping[str, Any]) -> str:
        """What makes an event the same event across polls and restarts."""
        return json.dumps([event.get(k) for k in ("created_at", "type", "message")], default=str)

    @classmethod
    async def load(cls, path: Path) -> EventLog:
        """The events saved by an earlier run of the poll step (none if the file does not exist)."""
        return cls(path, await asyncio.to_thread(read_events, path))

    async def add(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Append the events not seen yet; returns how many were new."""
        new = [with_metrics(e) for e in events if self.key(e) not in self._seen]
        if not new:
            return 0
        self.events.extend(new)
        self._seen.update(self.key(e) for e in new)
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.events).encode()
        await asyncio.to_thread(atomic_write_bytes, self.path, data)
        return len(new)

    def failure_message(self) -> str | None:
        """Where Together says why the job failed: the last failure-typed event (job_error, job_user_error,
        billing_limit), else the last error-level one (any spelling: error, legacy_ierror) that is not a life-cycle
        notice such as job_restarted, else the last job_stopped."""
        ranked = [(rank, index) for index, e in enumerate(self.events) if (rank := _failure_rank(e)) is not None]
        if not ranked:
            return None
        best = min(rank for rank, _ in ranked)
        index = max(index for rank, index in ranked if rank == best)
        return str(self.events[index].get("message") or "")

    def last_loss(self) -> float | None:
        """The latest training loss seen."""
        losses = [loss for e in self.events if (loss := _number(e.get("loss"))) is not None]
        return losses[-1] if losses else None


@dataclass
class LossCurve:
    """Training (and evaluation) loss by step."""

    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)


def loss_curve(events: Iterable[Mapping[str, Any]]) -> LossCurve:
    """The curve from saved events' `loss`/`eval_loss` fields (an event without a step counts by its position)."""
    curve = LossCurve()
    for index, event in enumerate(events):
        step = _number(event.get("step"))
        at = int(step) if step is not None else index
        if (train := _number(event.get("loss"))) is not None:
            curve.train.append((at, train))
        if (evaluation := _number(event.get("eval_loss"))) is not None:
            curve.eval.append((at, evaluation))
    curve.train.sort()
    curve.eval.sort()
    return curve
