"""How remote failures are classified and retried: HTTP status -> Paused / TransientError / RemoteRejected.

Used by daemon.remote.together (the Together adapter) and by the upload/create/poll steps; knows nothing of the SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TypeVar

from daemon.config import Settings
from daemon.errors import FinetunedError, Paused, RemoteRejected, TransientError
from daemon.remote.backoff import Backoff, retry

T = TypeVar("T")
CALL_ATTEMPTS = 12  # a whole upload is 3 calls: at a 30 % fault rate one attempt succeeds only ~1 time in 3
CALL_MAX_TOTAL_S = 900.0
CALL_MAX_BASE_S = 1.0
CALL_MAX_CAP_S = 30.0
RETRYABLE_STATUSES = frozenset({408, 409, 429})
PAUSING_STATUSES = frozenset({401, 402, 403})


async def with_retries(settings: Settings, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Retry `call` on TransientError with full-jitter backoff (Retry-After honoured); other errors propagate.

    Delays grow from min(1 s, poll_min_s) to min(30 s, poll_max_s); at most 12 attempts and 15 minutes.
    """
    backoff = Backoff(base_s=min(CALL_MAX_BASE_S, settings.poll_min_s), cap_s=min(CALL_MAX_CAP_S, settings.poll_max_s))
    return await retry(call, attempts=CALL_ATTEMPTS, max_total_s=CALL_MAX_TOTAL_S, backoff=backoff, what=what)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or HTTP date) or `x-ratelimit-reset`."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    for name in ("retry-after", "x-ratelimit-reset"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                continue
    return None


def remote_message(body: object) -> tuple[str, str]:
    """(message, code-or-type) from a Together error body, whatever its shape (the upload path passes JSON text)."""
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body)[:500], ""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            code = str(error.get("code") or error.get("type") or "")
            return str(error.get("message") or error)[:500], code
        return str(error)[:500], ""
    return str(body)[:500], ""


def status_error(what: str, status: int, body: object, headers: Mapping[str, str]) -> FinetunedError:
    """401/403/402/429-insufficient_quota pause; 408/409/429/5xx are transient; any other status is a refusal."""
    message, code = remote_message(body)
    text = f"{what}: HTTP {status}: {message}"
    if status in PAUSING_STATUSES or (status == 429 and "insufficient_quota" in code):
        return Paused(f"{text} (remote work is paused until this is fixed)", http_status=status)
    if status in RETRYABLE_STATUSES or status >= 500:
        return TransientError(text, retry_after_s=retry_after_s(headers), http_status=status)
    return RemoteRejected(text, http_status=status)
