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

from daemon.sandbox.batches import SandboxBatch
from daemon.sandbox.endpoints import SandboxEndpoint
from daemon.sandbox.faults import FaultPlan, Stats
from daemon.sandbox.models import DEFAULT_SERVERLESS_LORA
from daemon.sandbox.projects import Entrypoint
from daemon.sandbox.ratelimit import RateLimiter
from daemon.sandbox.serving import ChatServing
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
    """An outcome waiting for the next `count` jobs (or batches) created, or for one job (or batch) id."""

    outcome: Outcome
    count: int = 1
    job_id: str | None = None


def take_outcome(pending: list[PendingOutcome], target_id: str) -> Outcome | None:
    """The scripted outcome for a job or batch being created now, consuming one use."""
    for entry in pending:
        if entry.job_id in (None, target_id):
            entry.count -= 1
            if entry.count <= 0:
                pending.remove(entry)
            return entry.outcome
    return None


@dataclass
class Sandbox:
    """Everything the routes share. Simulated time comes from `clock` (wall seconds, scaled by `speed` where a job
    or batch reads it); outages, loading and rate limits use `monotonic` (real seconds). Randomness from `seed`."""

    speed: float
    latency_ms: tuple[float, float]
    faults: FaultPlan
    seed: int = 0
    api_key: str | None = None
    user_limit_usd: float = 100.0
    flavour: str = "together"
    context_tokens: int = 0
    serverless_lora: tuple[str, ...] = DEFAULT_SERVERLESS_LORA
    endpoint_startup_s: float = 120.0  # simulated seconds a dedicated endpoint takes to start
    lean: bool = False  # answer only the fields the contract declares (lean.py)
    v2_endpoints: bool = True  # serve the SDK's project-scoped endpoint surface (off: its routes answer 404)
    serving: ChatServing = field(default_factory=ChatServing)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    stats: Stats = field(default_factory=Stats)
    files: dict[str, SandboxFile] = field(default_factory=dict)
    jobs: dict[str, SandboxJob] = field(default_factory=dict)
    outcomes: list[PendingOutcome] = field(default_factory=list)
    eval_trends: list[str] = field(default_factory=list)  # scripted eval-loss trends for the next jobs created
    batches: dict[str, SandboxBatch] = field(default_factory=dict)
    batch_outcomes: list[PendingOutcome] = field(default_factory=list)
    seen_models: set[str] = field(default_factory=set)
    endpoints: dict[str, SandboxEndpoint] = field(default_factory=dict)  # billed units: v1 endpoints, v2 deployments
    entrypoints: dict[str, Entrypoint] = field(default_factory=dict)  # v2 endpoints (deleted ones kept, flagged)
    endpoint_failures: list[tuple[str, float]] = field(default_factory=list)  # (message, simulated s) for new ones
    unavailable_until_s: float = 0.0  # chat answers 503 until then (monotonic)
    loading_until_s: float = 0.0  # chat answers "loading" until then (monotonic)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.started_at_s = self.clock()
        self._anchor = (self.started_at_s, self.started_at_s)  # (wall s, simulated s) where `speed` last changed

    def sim_now(self) -> float:
        """Simulated epoch seconds: the wall clock at start-up, then running `speed` times as fast. Every endpoint
        mark, timestamp, `Date` header and bill is on this clock."""
        wall_s, sim_s = self._anchor
        return sim_s + (self.clock() - wall_s) * self.speed

    def set_speed(self, speed: float) -> None:
        """Change `speed` from now on (the simulated clock stays continuous)."""
        self._anchor = (self.clock(), self.sim_now())
        self.speed = speed

    def reset(self) -> None:
        """Forget files, jobs, batches, scripted faults/outcomes, outages and counters (the knobs stay)."""
        self.files.clear()
        self.jobs.clear()
        self.outcomes.clear()
        self.eval_trends.clear()
        self.batches.clear()
        self.batch_outcomes.clear()
        self.seen_models.clear()
        self.endpoints.clear()
        self.entrypoints.clear()
        self.endpoint_failures.clear()
        self.faults.clear()
        self.stats.clear()
        self.serving.clear()
        self.limiter.clear()
        self.unavailable_until_s = self.loading_until_s = 0.0

    def new_id(self, prefix: str) -> str:
        """`file-<uuid>` / `ft-<uuid>`, like Together's."""
        return f"{prefix}-{uuid.uuid4()}"

    def next_outcome(self, job_id: str) -> Outcome | None:
        """The scripted outcome for a job being created now, consuming one use."""
        return take_outcome(self.outcomes, job_id)

    def latency_s(self) -> float:
        """One chat latency draw, in seconds."""
        lo, hi = self.latency_ms
        return (lo if lo == hi else self._rng.uniform(lo, hi)) / 1000.0

    def live_endpoint(self, key: str) -> SandboxEndpoint | None:
        """The (not deleted) v1 endpoint or v2 deployment with this id or name; a v2 endpoint's name stands for the
        first deployment its traffic split routes to."""
        found = next((e for e in self.endpoints.values() if not e.deleted and key in (e.id, e.name)), None)
        if found is not None:
            return found
        entry = next((e for e in self.entrypoints.values() if not e.deleted and e.name == key), None)
        routed = [self.endpoints.get(d) for d, weight in entry.traffic if weight > 0] if entry is not None else []
        return next((d for d in routed if d is not None and not d.deleted), None)

    def completed_output(self, model: str) -> SandboxJob | None:
        """The sandbox job whose output model is `model`, if any."""
        return next((j for j in self.jobs.values() if j.output_name == model), None)

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, cut short when the server shuts down (so held responses never block close)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), timeout=max(0.0, seconds))


SANDBOX = web.AppKey("sandbox", Sandbox)
