"""The daemon's Prometheus metrics (prometheus_client, its own registry), served as text by the status server.

Counted where it happens, through the small functions below: remote API calls and errors by operation and kind
(daemon/remote/together.py), retries (daemon/remote/backoff.py), chat requests in flight/done/failed and tokens per
provider (daemon/remote/chat.py). Step durations, finished jobs and money come from the status documents
(`MetricsListener`, a JobListener); jobs by status, active jobs and the pause gate are read at scrape time.
Labels are bounded: operations and kinds are fixed strings, a provider is a host:port.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from yarl import URL

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

JOBS = Gauge("finetuned_jobs", "Jobs known to the daemon, by status.", ["status"], registry=REGISTRY)
ACTIVE_JOBS = Gauge("finetuned_active_jobs", "Jobs with a running task.", registry=REGISTRY)
REMOTE_PAUSED = Gauge(
    "finetuned_remote_paused", "1 while remote work is paused (auth or quota), else 0.", registry=REGISTRY
)
JOBS_ENDED = Counter("finetuned_jobs_ended", "Jobs that ended, by final status.", ["status"], registry=REGISTRY)
STEP_SECONDS = Histogram(
    "finetuned_step_duration_seconds",
    "Wall time of finished steps.",
    ["step"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
    registry=REGISTRY,
)
REMOTE_CALLS = Counter(
    "finetuned_remote_calls", "Together management API calls, by operation.", ["operation"], registry=REGISTRY
)
REMOTE_ERRORS = Counter(
    "finetuned_remote_errors",
    "Failed Together management API calls, by operation and error kind.",
    ["operation", "kind"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "finetuned_retries", "Retries of remote calls after a transient error, by call.", ["what"], registry=REGISTRY
)
CHAT_IN_FLIGHT = Gauge(
    "finetuned_chat_in_flight", "Chat requests on the wire, by provider.", ["provider"], registry=REGISTRY
)
CHAT_DONE = Counter("finetuned_chat_done", "Chat requests answered, by provider.", ["provider"], registry=REGISTRY)
CHAT_FAILED = Counter(
    "finetuned_chat_failed",
    "Chat requests that failed (after retries), by provider and kind.",
    ["provider", "kind"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "finetuned_tokens",
    "Tokens used by evaluation requests, by provider and kind.",
    ["provider", "kind"],
    registry=REGISTRY,
)
MONEY_USD = Counter(
    "finetuned_money_spent_usd", "Money the ended jobs cost (their reports' whole cost).", registry=REGISTRY
)


def provider(url: str) -> str:
    """The bounded label of an endpoint: host:port, never a path or credentials."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.host else "unknown"


def remote_call(operation: str, error: BaseException | None = None) -> None:
    """Count one Together call, and its error's kind when it failed."""
    REMOTE_CALLS.labels(operation=operation).inc()
    if error is not None:
        REMOTE_ERRORS.labels(operation=operation, kind=type(error).__name__).inc()


def retried(what: str) -> None:
    """Count one retry of `what`."""
    RETRIES.labels(what=what).inc()


class ChatMeter:
    """The chat series of one provider, their label children bound once: the client counts every request of an
    evaluation through it, so no request pays for parsing the URL or looking up labels."""

    def __init__(self, url: str) -> None:
        self.provider = provider(url)
        self._in_flight = CHAT_IN_FLIGHT.labels(provider=self.provider)
        self._done = CHAT_DONE.labels(provider=self.provider)
        self._prompt_tokens = TOKENS.labels(provider=self.provider, kind="prompt")
        self._completion_tokens = TOKENS.labels(provider=self.provider, kind="completion")

    def started(self) -> None:
        """A chat request went on the wire."""
        self._in_flight.inc()

    def returned(self) -> None:
        """A chat request came back (answered or not)."""
        self._in_flight.dec()

    def finished(self, *, prompt_tokens: int, completion_tokens: int) -> None:
        """A chat completion was answered (after its retries), with its tokens."""
        self._done.inc()
        self._prompt_tokens.inc(prompt_tokens)
        self._completion_tokens.inc(completion_tokens)

    def failed(self, error: BaseException) -> None:
        """A chat completion failed after its retries, with the error's kind."""
        CHAT_FAILED.labels(provider=self.provider, kind=type(error).__name__).inc()


def exposition(counts: dict[str, int], statuses: list[str], active_jobs: int, paused: bool) -> bytes:
    """The text format, after setting the scrape-time gauges."""
    for status in statuses:
        JOBS.labels(status=status).set(counts.get(status, 0))
    ACTIVE_JOBS.set(active_jobs)
    REMOTE_PAUSED.set(1 if paused else 0)
    return generate_latest(REGISTRY)


def _cost(folder: Path) -> float | None:
    try:
        value = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("cost_usd")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


class MetricsListener:
    """Observes step durations once per finished step, and each job's end and cost (a JobListener)."""

    def __init__(self, outbox: Path) -> None:
        self._outbox = outbox
        self._seen: set[tuple[str, str]] = set()

    async def job_published(self, document: dict[str, Any], *, final: bool) -> None:
        """Record what is new in this document."""
        job_id = str(document.get("job_id"))
        steps = document.get("steps")
        for name, step in steps.items() if isinstance(steps, dict) else ():
            duration = step.get("duration_s") if isinstance(step, dict) else None
            if isinstance(duration, int | float) and (job_id, name) not in self._seen:
                self._seen.add((job_id, name))
                STEP_SECONDS.labels(step=name).observe(duration)
        if final:
            self._seen = {seen for seen in self._seen if seen[0] != job_id}
            JOBS_ENDED.labels(status=str(document.get("status"))).inc()
            cost = await asyncio.to_thread(_cost, self._outbox / job_id)
            if cost:
                MONEY_USD.inc(cost)
