"""Provider-style chat rate limits: requests- and tokens-per-minute token buckets over the whole sandbox."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.sandbox.flavours import ChatError, together_error

_EPSILON = 1e-9  # a client that waits exactly the advertised time must be admitted despite float rounding


@dataclass
class Bucket:
    """`limit_per_min` units at most, refilled at limit/60 a second; 0 = no limit."""

    limit_per_min: int
    level: float = 0.0
    at_s: float = 0.0

    def reset(self, now_s: float) -> None:
        """Full again."""
        self.level, self.at_s = float(self.limit_per_min), now_s

    def refill(self, now_s: float) -> None:
        """Add what flowed in since the last look."""
        elapsed = max(0.0, now_s - self.at_s)
        self.level = min(float(self.limit_per_min), self.level + elapsed * self.limit_per_min / 60.0)
        self.at_s = now_s

    def need(self, units: int) -> float:
        """What must be in the bucket to take `units` (a request bigger than the bucket needs a full bucket)."""
        return float(min(units, self.limit_per_min))

    def wait_s(self, units: int) -> float:
        """Seconds until the bucket holds enough for `units`."""
        missing = self.need(units) - self.level
        return 0.0 if missing <= _EPSILON else missing * 60.0 / self.limit_per_min


@dataclass
class Verdict:
    """The limiter's answer for one request: the 429 to send (or None) and the headers for every answer."""

    refusal: ChatError | None
    headers: dict[str, str]


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits over the whole sandbox, on the real clock.

    The model: each limit is a bucket holding at most one minute's budget (`rpm` requests, `tpm` tokens), full at
    the start and refilled continuously at limit/60 per second. A request is admitted when the request bucket holds
    one request and the token bucket the request's tokens (prompt plus answer: the sandbox knows its answer before
    it replies; a request bigger than the whole bucket needs a full bucket); admitting takes them out. Every key
    and model share the one limiter. `x-ratelimit-reset` is the time until the same request would be admitted.
    """

    def __init__(self, rpm: int = 0, tpm: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.requests = Bucket(0)
        self.tokens = Bucket(0)
        self.configure(rpm, tpm)
        self.clear()

    def configure(self, rpm: int, tpm: int) -> None:
        """Set the limits (0 = off); the buckets start full."""
        if rpm < 0 or tpm < 0:
            raise ValueError("rate limits must be >= 0")
        now = self._clock()
        self.requests, self.tokens = Bucket(rpm), Bucket(tpm)
        self.requests.reset(now)
        self.tokens.reset(now)

    def clear(self) -> None:
        """Zero the counters and fill the buckets."""
        self.admitted = 0
        self.refused_requests = 0
        self.refused_tokens = 0
        now = self._clock()
        self.requests.reset(now)
        self.tokens.reset(now)

    @property
    def enabled(self) -> bool:
        """True if any limit is on."""
        return bool(self.requests.limit_per_min or self.tokens.limit_per_min)

    def admit(self, cost_tokens: int) -> Verdict:
        """Admit one request of `cost_tokens` tokens, or refuse it with Together's 429."""
        if not self.enabled:
            self.admitted += 1
            return Verdict(None, {})
        now = self._clock()
        self.requests.refill(now)
        self.tokens.refill(now)
        refusal = self._refusal(cost_tokens)
        if refusal is None:
            self.admitted += 1
            if self.requests.limit_per_min:
                self.requests.level -= 1.0
            if self.tokens.limit_per_min:
                self.tokens.level -= self.tokens.need(cost_tokens)
        return Verdict(refusal, self._headers(cost_tokens, refusal))

    def _refusal(self, cost_tokens: int) -> ChatError | None:
        if self.requests.limit_per_min and self.requests.wait_s(1) > 0:
            self.refused_requests += 1
            message = f"Request rate limit of {self.requests.limit_per_min} requests per minute exceeded; slow down."
            return together_error(429, message, type_="dynamic_request_limited", code="rate_limit_exceeded")
        if self.tokens.limit_per_min and self.tokens.wait_s(cost_tokens) > 0:
            self.refused_tokens += 1
            message = f"Token rate limit of {self.tokens.limit_per_min} tokens per minute exceeded; slow down."
            return together_error(429, message, type_="dynamic_token_limited", code="rate_limit_exceeded")
        return None

    def _reset_s(self, cost_tokens: int) -> float:
        """Seconds until the limiter would admit this same request again (0 if it would now)."""
        waits = [0.0]
        if self.requests.limit_per_min:
            waits.append(self.requests.wait_s(1))
        if self.tokens.limit_per_min:
            waits.append(self.tokens.wait_s(cost_tokens))
        return max(waits)

    def _headers(self, cost_tokens: int, refusal: ChatError | None) -> dict[str, str]:
        reset_s = self._reset_s(cost_tokens)
        headers = {"x-ratelimit-reset": f"{round(reset_s, 3):g}"}
        if self.requests.limit_per_min:
            headers["x-ratelimit-limit"] = str(self.requests.limit_per_min)
            headers["x-ratelimit-remaining"] = str(max(0, math.floor(self.requests.level + _EPSILON)))
        if self.tokens.limit_per_min:
            headers["x-tokenlimit-limit"] = str(self.tokens.limit_per_min)
            headers["x-tokenlimit-remaining"] = str(max(0, math.floor(self.tokens.level + _EPSILON)))
        if refusal is not None:
            headers["Retry-After"] = str(max(1, math.ceil(reset_s)))
            headers["retry-after-ms"] = str(max(1, math.ceil(reset_s * 1000)))
        return headers

    def to_json(self) -> dict[str, Any]:
        """The `rate_limit` part of `GET /_sandbox/stats`."""
        return {
            "rpm": self.requests.limit_per_min,
            "tpm": self.tokens.limit_per_min,
            "admitted": self.admitted,
            "refused_requests": self.refused_requests,
            "refused_tokens": self.refused_tokens,
        }
