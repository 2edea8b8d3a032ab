"""All retrying goes through here: exponential backoff with full jitter, Retry-After honoured, attempt and time caps.

Retries happen only on the exception types named by the caller (by default `TransientError`); time is injectable.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

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

    def reset(self) -> None:
        """Start again from the smallest delay (after a success)."""
        self.attempt = 0


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    max_total_s: float,
    on: tuple[type[BaseException], ...] = (TransientError,),
    backoff: Backoff | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    what: str = "call",
) -> T:
    """Await `call()` until it succeeds; retry only on `on`, at most `attempts` times and `max_total_s` seconds.

    The last error is re-raised when a cap is reached. A `retry_after_s` attribute on the error is honoured.
    """
    policy = backoff or Backoff()
    deadline = clock() + max_total_s
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except on as exc:
            retry_after = getattr(exc, "retry_after_s", None)
            delay = policy.next_delay(retry_after)
            if attempt == attempts or clock() + delay > deadline:
                raise
            log.info("retrying", what=what, attempt=attempt, delay_s=round(delay, 3), error=str(exc)[:300])
            await sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
