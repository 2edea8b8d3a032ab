"""The retry layer: rate limits wait under the deadline without spending attempts; other failures spend them."""

from __future__ import annotations

import pytest

from daemon.errors import TransientError
from daemon.remote.backoff import RetryPolicy, retry


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds

    def clock(self) -> float:
        return self.now_s


def failing(errors: list[TransientError]) -> object:
    async def call() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    return call


async def test_rate_limits_spend_no_attempt_and_wait_the_servers_delay() -> None:
    """36 consecutive 429s with Retry-After 0.5 s under an 8-attempt policy: the call succeeds after waiting 0.5 s
    each time (not a growing backoff)."""
    time = FakeTime()
    errors = [TransientError("429", retry_after_s=0.5, http_status=429) for _ in range(36)]
    policy = RetryPolicy(attempts=8, base_s=1.0, cap_s=60.0, max_total_s=900.0)
    result = await retry(failing(errors), policy=policy, sleep=time.sleep, clock=time.clock)  # type: ignore[arg-type]
    assert result == "ok" and time.sleeps == [0.5] * 36


async def test_rate_limits_stop_at_the_deadline_and_failures_at_the_attempt_cap() -> None:
    """429s end when the next wait would pass max_total_s; 503s end after `attempts` failures."""
    time = FakeTime()
    errors = [TransientError("429", retry_after_s=10.0, http_status=429) for _ in range(100)]
    policy = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, max_total_s=45.0)
    with pytest.raises(TransientError):
        await retry(failing(errors), policy=policy, sleep=time.sleep, clock=time.clock)  # type: ignore[arg-type]
    assert time.sleeps == [10.0] * 4
    time = FakeTime()
    errors = [TransientError("503", http_status=503) for _ in range(100)]
    with pytest.raises(TransientError):
        await retry(failing(errors), policy=policy, sleep=time.sleep, clock=time.clock)  # type: ignore[arg-type]
    assert len(time.sleeps) == 2 and len(errors) == 97
