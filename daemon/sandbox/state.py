"""The sandbox's mutable world: files, jobs, fault plan, counters and knobs, shared by every route."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from daemon.sandbox.faults import FaultPlan, Stats
from daemon.sandbox.sim import Outcome, SandboxFile, SandboxJob


def parse_latency_ms(spec: str) -> tuple[float, float]:
    """`"50"` -> (50, 50); `"20-80"` -> (20, 80). Raises ValueError on anything else."""
    text = str(spec).strip()
    low, sep, high = text.partition("-")
    lo = float(low)
    hi = float(high) if sep else lo
    if lo < 0 or hi < lo:
        raise ValueError(f"latency must be 'MS' or 'LOW-HIGH' with 0 <= LOW <= HIGH, got {spec!r}")
    return lo, hi


@dataclass
class PendingOutcome:
    """An outcome waiting for the next `count` jobs created (or for one job id)."""

    outcome: Outcome
    count: int = 1
    job_id: str | None = None


@dataclass
class Sandbox:
    """Everything the routes share. Time comes from `clock` (wall seconds), randomness from `seed`."""

    speed: float
    latency_ms: tuple[float, float]
    faults: FaultPlan
    seed: int = 0
    api_key: str | None = None
    user_limit_usd: float = 100.0
    clock: Callable[[], float] = time.time
    stats: Stats = field(default_factory=Stats)
    files: dict[str, SandboxFile] = field(default_factory=dict)
    jobs: dict[str, SandboxJob] = field(default_factory=dict)
    outcomes: list[PendingOutcome] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self) -> None:
        """Forget files, jobs, scripted faults/outcomes and counters (the knobs stay)."""
        self.files.clear()
        self.jobs.clear()
        self.outcomes.clear()
        self.faults.clear()
        self.stats.clear()

    def new_id(self, prefix: str) -> str:
        """`file-<uuid>` / `ft-<uuid>`, like Together's."""
        return f"{prefix}-{uuid.uuid4()}"

    def next_outcome(self, job_id: str) -> Outcome | None:
        """The scripted outcome for a job being created now, consuming one use."""
        for pending in self.outcomes:
            if pending.job_id in (None, job_id):
                pending.count -= 1
                if pending.count <= 0:
                    self.outcomes.remove(pending)
                return pending.outcome
        return None

    def latency_s(self) -> float:
        """One chat latency draw, in seconds."""
        lo, hi = self.latency_ms
        return (lo if lo == hi else self._rng.uniform(lo, hi)) / 1000.0

    def completed_output(self, model: str) -> SandboxJob | None:
        """The sandbox job whose output model is `model`, if any."""
        return next((j for j in self.jobs.values() if j.output_name == model), None)

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, cut short when the server shuts down (so held responses never block close)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), timeout=max(0.0, seconds))


SANDBOX = web.AppKey("sandbox", Sandbox)
