"""The one retry layer: exponential backoff with full jitter, Retry-After honoured, caps on attempts and on time.

Retries happen only on the exception types named by the caller (by default `TransientError`); sleep and clock are
injectable. Management calls use `RetryPolicy` built from the settings (FINETUNED_RETRY_*); the chat client uses
the same `retry` with the spec's per-request attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from daemon import metrics
from daemon.errors import TransientError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

log = structlog.get_logger()


@dataclass
class Backoff:
    """Delays for successive attempts: `uniform(0, min(cap, base * 2**n))`, floored, and never below a Retry-After.

    Full jitter after "Exponential Backoff and Jitter" (AWS Architecture Blog): it spreads retries of many clients.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    floor_s: float = 0.0
    max_retry_after_s: float = 600.0
    rng: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        ceiling = min(self.cap_s, self.base_s * 2.0**self.attempt)
        self.attempt += 1
        delay = max(self.floor_s, ceiling * float(self.rng()))
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay

    def server_delay(self, retry_after_s: float) -> float:
        """The server's own wait (clamped), for a rate limit that said when to come back; the sequence does not
        advance (the server paces us, it is not a failure to back off from)."""
        return max(self.floor_s, min(retry_after_s, self.max_retry_after_s))

    def reset(self) -> None:
        """Start again from the smallest delay (after a success)."""
        self.attempt = 0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one remote call is tried: at most `attempts` failed tries (rate limits do not count),
    the delay after failure n drawn from `uniform(0, min(cap_s, base_s * 2**(n-1)))` (at least the server's
    Retry-After, up to `max_retry_after_s`), and no try started later than `max_total_s` after the first."""

    attempts: int = 8
    base_s: float = 1.0
    cap_s: float = 60.0
    max_total_s: float = 900.0
    max_retry_after_s: float = 600.0

    def backoff(self) -> Backoff:
        """A fresh delay sequence for one call."""
        return Backoff(base_s=self.base_s, cap_s=self.cap_s, max_retry_after_s=self.max_retry_after_s)


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    on: tuple[type[BaseException], ...] = (TransientError,),
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    what: str = "call",
) -> T:
    """Await `call()` until it succeeds; retry only on `on`, within the policy's attempt and time caps.

    The last error is re-raised when a cap is reached. A `retry_after_s` attribute on the error is honoured; a rate
    limit (`http_status` 429) spends no attempt: it waits as long as `max_total_s` allows.
    """
    delays = policy.backoff()
    deadline = clock() + policy.max_total_s
    failures = 0
    while True:
        try:
            return await call()
        except on as exc:
            delay, failures = _next_wait(exc, delays, failures)
            if failures >= policy.attempts or clock() + delay > deadline:
                raise
            log.info("retrying", what=what, failures=failures, delay_s=round(delay, 3), error=str(exc)[:300])
            metrics.retried(what)
            await sleep(delay)


def _next_wait(exc: BaseException, delays: Backoff, failures: int) -> tuple[float, int]:
    """(delay, failures so far): a rate limit (429) is waited out under the deadline alone, at the server's
    Retry-After when it gives one; any other error counts as a failure and backs off."""
    retry_after = getattr(exc, "retry_after_s", None)
    if getattr(exc, "http_status", None) == 429:
        if retry_after is not None and retry_after > 0:
            return delays.server_delay(retry_after), failures
        return delays.next_delay(), failures
    return delays.next_delay(retry_after), failures + 1
