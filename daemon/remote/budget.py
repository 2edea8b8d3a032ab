"""A provider's rate budget, shared by every chat client of this process that sends to it with the same key.

A provider meters requests and tokens per minute per account, not per job: two jobs evaluating against Together
with one key draw on one budget, so they must also pace from one. `shared_budget(url, api_key)` returns the one
`RateBudget` of that provider origin and key (held while any client uses it; the key is kept only as a digest).

What the budget knows comes from the answers' headers (see daemon.remote.chat.RateHints):
* a 429's `Retry-After` (or an answer with nothing remaining and `x-ratelimit-reset`) holds every send for that long;
* once `x-ratelimit-remaining`, less what went out after the provider counted it (the requests sent after the
  answered one, by send order; those sent before it are in the count already), would not cover the requests
  waiting to go (of every client) plus a reserve (`RESERVE_SHARE` of a minute's budget, so a send delayed by a busy
  machine and the next arriving close together are still both admitted), sends go out no faster than the refill
  (`x-ratelimit-limit` a minute, `PACE_SLACK` slower), and stop being spaced once the budget has twice that again;
  between answers, each send counts that estimate down, so spacing starts in time when answers come late;
* the same for tokens (`x-tokenlimit-*`, Together; `x-ratelimit-*-tokens`, OpenAI), spacing by the tokens a
  request has cost so far (prompt and answer, smoothed).

The in-flight limit (daemon.remote.limit.ConcurrencyLimit) stays per client: it follows the latency its own
requests see. Only the rate, which the provider counts per account, is shared.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from dataclasses import dataclass

import structlog
from yarl import URL

from daemon.remote.backoff import Clock, Sleep

log = structlog.get_logger()
PACE_SLACK = 1.01  # paced sends go out 1 % slower than the provider's refill, so clock skew does not earn a 429
RESERVE_SHARE = 0.02  # pacing starts with 2 % of a minute's budget still left, a cushion against send-time jitter
TOKEN_SMOOTHING = 0.2  # weight of the newest answer in the tokens-per-request estimate


@dataclass(frozen=True)
class Window:
    """What one answer says of one metered quantity: how much is left, of how much a minute."""

    remaining: int | None
    limit_per_min: int | None


class RateBudget:
    """The request and token budget of one provider and key (see the module docstring)."""

    def __init__(self, name: str = "", *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.in_flight = 0  # from `turn` to `returned`: waiting for a turn, or on the wire
        self.waiting = 0  # of those, not sent yet: no answer's `remaining` has counted them
        self.sends = 0  # requests let through so far; an answer's `remaining` predates those sent after it
        self.tokens_per_request: float | None = None
        self.paced_sends = 0
        self.cooldowns = 0
        self.users = 0  # clients that have drawn on it
        self._clock = clock
        self._sleep = sleep
        self._not_before = 0.0
        self._requests = _Pace(name, "requests")
        self._tokens = _Pace(name, "tokens")
        self._next_send = 0.0

    @property
    def interval_s(self) -> float:
        """The spacing between sends now (0: none)."""
        return max(self._requests.interval_s, self._tokens.interval_s)

    async def turn(self) -> int:
        """Wait until this provider may be sent the next request; returns its place in the send order (for
        `learn`). The request counts in flight from the call (a request waiting for its turn will go out, so the
        budget must cover it too) until `returned`."""
        self.in_flight += 1
        self.waiting += 1
        try:
            while (pause_s := max(self._not_before, self._next_send) - self._clock()) > 0:
                await self._sleep(pause_s)
        except BaseException:
            self.in_flight -= 1
            raise
        finally:
            self.waiting -= 1
        for pace in (self._requests, self._tokens):  # between answers, count down what the latest one said was left
            pace.anticipate(self.sends, self.waiting)
        interval_s = self.interval_s
        if interval_s:
            self.paced_sends += 1
        self._next_send = self._clock() + interval_s
        self.sends += 1
        return self.sends

    def returned(self) -> None:
        """A request counted by `turn` is off the wire."""
        self.in_flight -= 1

    def learn(
        self,
        requests: Window,
        tokens: Window | None = None,
        *,
        spent_tokens: int | None = None,
        sent_as: int | None = None,
    ) -> None:
        """Pace from an answer's request and token windows; `spent_tokens` is what that request cost, `sent_as`
        its place in the send order (from `turn`): the provider counted its `remaining` before the requests sent
        after it, which a burst of answers read late would otherwise hide."""
        # Not in the answer's count yet: the requests waiting to go; without the send order, every one in flight.
        later, pending = (max(0, self.sends - sent_as), self.waiting) if sent_as is not None else (0, self.in_flight)
        if spent_tokens:
            previous = self.tokens_per_request
            self.tokens_per_request = (
                float(spent_tokens)
                if previous is None
                else previous * (1 - TOKEN_SMOOTHING) + spent_tokens * TOKEN_SMOOTHING
            )
        self._requests.learn(requests, 1.0, later, pending, self.sends)
        if tokens is not None and self.tokens_per_request:
            self._tokens.learn(tokens, self.tokens_per_request, later, pending, self.sends)

    def cool_down(self, wait_s: float | None) -> None:
        """Send nothing for `wait_s` seconds (the provider's window is used up, or it is down)."""
        if wait_s is not None and wait_s > 0:
            self.cooldowns += 1
            self._not_before = max(self._not_before, self._clock() + wait_s)

    def summary(self) -> dict[str, object]:
        """The budget's story for metrics.json: whether another client shared it, how often it paced or held."""
        return {"shared": self.users > 1, "paced_sends": self.paced_sends, "cooldowns": self.cooldowns}


class _Pace:
    """The spacing of sends for one metered quantity (requests, or tokens), and what it last knew was left: the
    latest answer's `remaining`, less the sends after it, anchored at the send count when it was read; each later
    send counts it down (`anticipate`), so pacing starts in time even when answers arrive late (a fast provider
    answering a burst, or a busy event loop)."""

    def __init__(self, provider: str, what: str) -> None:
        self.provider, self.what = provider, what
        self.interval_s = 0.0
        self._left = 0.0  # units left when the anchor was set
        self._anchor = -1  # the send count then; -1: nothing known yet
        self._limit_per_min = 0
        self._per_request = 1.0

    def learn(self, window: Window, per_request: float, later: int, pending: int, sends: int) -> None:
        """One answer's window; `later` requests went out after the answered one, `pending` are still to go."""
        if window.remaining is None or not window.limit_per_min:
            return
        self._left, self._anchor = window.remaining - later * per_request, sends
        self._limit_per_min, self._per_request = window.limit_per_min, per_request
        needed = self._needed(pending)
        if self._left <= needed:
            self._pace()
        elif self._left > 2 * needed and self.interval_s:
            log.info("rate_pace_lifted", provider=self.provider, by=self.what, remaining=round(self._left))
            self.interval_s = 0.0

    def anticipate(self, sends: int, pending: int) -> None:
        """Before a send: pace once what the latest answer left, less the sends since, would not cover the rest."""
        if self._anchor >= 0 and not self.interval_s:
            left = self._left - (sends - self._anchor) * self._per_request
            if left <= self._needed(pending):
                self._pace(left)

    def _needed(self, pending: int) -> float:
        return (pending + 1) * self._per_request + RESERVE_SHARE * self._limit_per_min

    def _pace(self, left: float | None = None) -> None:
        interval_s = PACE_SLACK * 60.0 * self._per_request / self._limit_per_min
        if interval_s != self.interval_s:
            remaining = round(self._left if left is None else left)
            log.info(
                "rate_paced",
                provider=self.provider,
                by=self.what,
                interval_ms=round(interval_s * 1000, 1),
                remaining=remaining,
            )
        self.interval_s = interval_s


_SHARED: weakref.WeakValueDictionary[tuple[str, str], RateBudget] = weakref.WeakValueDictionary()


def shared_budget(
    url: str, api_key: str | None, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
) -> RateBudget:
    """The budget of the provider at `url`'s origin for `api_key`, the same object for every client in this process
    while any of them holds it (the first one's clock and sleep drive it)."""
    origin = str(URL(url).origin())
    digest = hashlib.blake2b((api_key or "").encode(), digest_size=16).hexdigest()
    budget = _SHARED.get((origin, digest))
    if budget is None:
        budget = RateBudget(origin, clock=clock, sleep=sleep)
        _SHARED[(origin, digest)] = budget
    budget.users += 1
    return budget
