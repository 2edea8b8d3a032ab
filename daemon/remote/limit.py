"""The in-flight limit of one provider, driven by its latency (a gradient limit after Netflix's concurrency-limits
GradientLimit/Gradient2 and TCP Vegas), by its 429s and timeouts, and by its health.

* Latency: every answer's round trip `rtt` is compared with the lowest seen (`floor`, the server without a
  queue). `gradient = clamp(0.5, 1, tolerance * floor / rtt)`; the new estimate is `limit * gradient +
  sqrt(limit)`, smoothed `limit = limit * (1 - smoothing) + estimate * smoothing`. While latency stays flat the
  limit grows by about `smoothing * sqrt(limit)` per answer; once a queueing server (llama.cpp, vLLM, TGI) makes
  answers slower than `tolerance` x the floor, it settles where `limit = tolerance * floor / rtt * limit +
  sqrt(limit)`: a little above what the server serves at once. It never grows while less than half is in use.
* Slow start (after TCP's, with Vegas' exit on latency): from `initial`, each answer within `tolerance` x the floor
  adds one (the limit doubles every round trip, instead of the gradient's slow first steps: 4 to 64 in four round
  trips rather than about seven); the first slower answer, timeout, 429 or outage ends it for good: the gradient
  rules from then on.
* A timeout or a 429 multiplies the limit by `backoff_ratio` (once per round of requests: the requests sent
  under the old limit do not lower it again); a 429's Retry-After holds every request for that long.
* A provider that answers nothing (connection refused, 503 loading/overloaded) is `down`: one request at a time
  is let through as a probe, after a growing delay (full-jitter backoff), until any answer comes back.
* The rate the provider allows (its rate-limit headers, a 429's wait) is not this limit's: it is the provider's
  `RateBudget` (daemon.remote.budget), which every client sending there with the same key shares.

The limit starts at `initial` and never exceeds `maximum` (the spec's `concurrency`). Its changes are logged
(`concurrency_limit`) and kept in `history` for the report.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

import structlog

from daemon.remote.backoff import Backoff, Clock, Sleep
from daemon.remote.budget import RateBudget, Window

log = structlog.get_logger()

HISTORY_POINTS = 400  # at most this many (elapsed_s, limit) points are kept; older ones are thinned
LOG_INTERVAL_S = 2.0  # a growing limit is logged at most this often (decreases always)
GROWTH = frozenset({"latency", "slow_start"})  # the reasons a limit grows for


@dataclass(frozen=True)
class LimitTuning:
    """The constants of the limit (Netflix's defaults where they apply)."""

    initial: int = 4
    minimum: int = 1
    smoothing: float = 0.2
    tolerance: float = 1.5
    backoff_ratio: float = 0.5
    probe_base_s: float = 0.5
    probe_cap_s: float = 10.0


@dataclass(frozen=True)
class Send:
    """One request's pass through `ConcurrencyLimit.slot`: the limit's generation and the budget's send order."""

    generation: int
    order: int


class ConcurrencyLimit:
    """The in-flight limit of one provider; waiters are served first in, first out (see the module docstring)."""

    def __init__(
        self,
        maximum: int,
        *,
        name: str = "",
        tuning: LimitTuning | None = None,
        budget: RateBudget | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.tuning = tuning or LimitTuning()
        self.budget = budget or RateBudget(name, clock=clock, sleep=sleep)
        self.name = name
        self.maximum = maximum
        self.limit = float(min(maximum, max(self.tuning.minimum, self.tuning.initial)))
        self.in_flight = 0
        self.floor_s: float | None = None
        self.down = False
        self.history: list[tuple[float, int]] = []
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._logged_at = -LOG_INTERVAL_S
        self._generation = 0
        self._probes = Backoff(base_s=self.tuning.probe_base_s, cap_s=self.tuning.probe_cap_s)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.slow_start = True
        self._note("start")

    def slot(self) -> Slot:
        """Hold one slot (`async with limit.slot() as send`); gives the request's generation (for
        `dropped`/`throttled`/`unavailable`) and place in the budget's send order (for `pace`)."""
        return Slot(self)

    def succeeded(self, rtt_s: float | None = None) -> None:
        """An answer came back after `rtt_s` on the wire: the provider is up; move the limit by the gradient."""
        self.answered()
        if rtt_s is None or rtt_s <= 0:
            return
        self.floor_s = rtt_s if self.floor_s is None else min(self.floor_s, rtt_s)
        if self.in_flight + 1 < self.limit / 2:  # app-limited: the latency says nothing about more load
            return
        tuning = self.tuning
        if self.slow_start and rtt_s <= tuning.tolerance * self.floor_s:
            self._set(self.limit + 1, "slow_start", rtt_ms=round(rtt_s * 1000, 1))
            return
        self.slow_start = False
        gradient = max(0.5, min(1.0, tuning.tolerance * self.floor_s / rtt_s))
        estimate = self.limit * gradient + math.sqrt(self.limit)
        smoothed = self.limit * (1 - tuning.smoothing) + estimate * tuning.smoothing
        self._set(smoothed, "latency", rtt_ms=round(rtt_s * 1000, 1))

    def answered(self) -> None:
        """The provider answered something (even an error about the request): it is up again."""
        if self.down:
            self.down = False
            self._probes.reset()
            log.info("provider_available", provider=self.name)
            self._wake()

    def dropped(self, generation: int) -> None:
        """A request timed out: lower the limit (once per round)."""
        self.slow_start = False
        if self._first_of(generation):
            self._set(self.limit * self.tuning.backoff_ratio, "timeout")

    def throttled(self, generation: int, wait_s: float | None) -> None:
        """A 429: lower the limit unless a request of the same round already did, and pause for `wait_s`."""
        self.slow_start = False
        if self._first_of(generation):
            self._set(self.limit * self.tuning.backoff_ratio, "rate_limited", wait_s=wait_s)
        self.cool_down(wait_s)

    def unavailable(self, generation: int, wait_s: float | None = None) -> None:
        """The provider answers nothing: let one probe at a time through, after a growing delay."""
        self.slow_start = False
        if not self.down:
            self.down = True
            log.warning("provider_unavailable", provider=self.name)
        if self._first_of(generation):
            self.cool_down(max(self._probes.next_delay(), wait_s or 0.0))

    def pace(
        self,
        remaining: int | None,
        limit_per_min: int | None,
        *,
        tokens: Window | None = None,
        spent_tokens: int | None = None,
        sent_as: int | None = None,
    ) -> None:
        """Follow the provider's budget before it refuses (see RateBudget.learn): once `x-ratelimit-remaining` would
        not cover the requests still to go, sends go no faster than its refill; with budget to spare, unspaced."""
        self.budget.learn(Window(remaining, limit_per_min), tokens, spent_tokens=spent_tokens, sent_as=sent_as)

    def cool_down(self, wait_s: float | None) -> None:
        """Send nothing to this provider for `wait_s` seconds (its window is used up, or it is down)."""
        self.budget.cool_down(wait_s)

    def summary(self) -> dict[str, object]:
        """The limit's story for metrics.json and the report."""
        values = [limit for _, limit in self.history]
        return {
            "ceiling": self.maximum,
            "final": int(self.limit),
            "min": min(values),
            "max": max(values),
            "floor_ms": round(self.floor_s * 1000, 1) if self.floor_s is not None else None,
            "rate": self.budget.summary(),
            "history": [[round(t, 2), limit] for t, limit in self.history],
        }

    def _first_of(self, generation: int) -> bool:
        if generation != self._generation:
            return False
        self._generation += 1
        return True

    def _set(self, value: float, reason: str, **fields: object) -> None:
        before = int(self.limit)
        self.limit = max(float(self.tuning.minimum), min(float(self.maximum), value))
        if int(self.limit) != before:
            self._note(reason, **fields)
            self._wake()

    def _note(self, reason: str, **fields: object) -> None:
        now = self._clock()
        self.history.append((now - self._started, int(self.limit)))
        if len(self.history) > HISTORY_POINTS:
            self.history = self.history[:1] + self.history[1:-1:2] + self.history[-1:]
        growing = reason in GROWTH and len(self.history) > 1 and self.history[-2][1] < int(self.limit)
        if growing and now - self._logged_at < LOG_INTERVAL_S:
            return
        self._logged_at = now
        floor_ms = round(self.floor_s * 1000, 1) if self.floor_s is not None else None
        log.info(
            "concurrency_limit", provider=self.name, limit=int(self.limit), reason=reason, floor_ms=floor_ms, **fields
        )

    def _capacity(self) -> int:
        return 1 if self.down else max(1, int(self.limit))

    async def _acquire(self) -> None:
        if not self._waiters and self.in_flight < self._capacity():
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releaser counted us in before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1
                self._wake()
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._capacity():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class Slot:
    """One pass through `ConcurrencyLimit.slot`: a class rather than a generator-based context manager, as every
    chat request goes through one (1.5 µs against 2.6 µs on the 2-core machine)."""

    __slots__ = ("_limit",)

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self._limit = limit

    async def __aenter__(self) -> Send:
        limit = self._limit
        await limit._acquire()
        try:
            # After the slot is ours: a request queued before a 429 must not go out during its cooldown.
            order = await limit.budget.turn()
        except BaseException:
            limit._release()
            raise
        return Send(limit._generation, order)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limit.budget.returned()
        self._limit._release()
