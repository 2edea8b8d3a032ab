"""The one classifier of remote failures: an HTTP status, its error body and its headers become a daemon error.

Used by the Together adapter (management calls) and the chat client (evaluation requests) alike, so both decide
pause / retry / refuse the same way; knows nothing of the SDK or of aiohttp.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from daemon.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    FinetunedError,
    Paused,
    RemoteRejected,
    TransientError,
    Unavailable,
)

# 408 Request Timeout, 409 Conflict (Together: a concurrent change), 425 Too Early, 429 Too Many Requests; and 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
# The credentials or the account are refused: every remote call would fail alike until a person fixes it.
PAUSING_STATUSES = frozenset({401, 402, 403})
QUOTA_CODES = frozenset({"insufficient_quota"})
# Statuses with which servers report a prompt that does not fit the model's context (Together uses 403 for it too).
CONTEXT_STATUSES = frozenset({400, 403, 413, 422})
# The wording of each server (see the README's table): OpenAI/vLLM "maximum context length", llama.cpp "exceeds the
# available context size" (type exceed_context_size_error), TGI and Together "`inputs` tokens + `max_new_tokens`
# must be <= N", Anthropic-style "prompt is too long", and generic "too many tokens" / "context window".
CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|tokens?`? \+ `?max_new_tokens`? must be <=",
    re.IGNORECASE,
)
# OpenAI/Azure: 400 code "content_filter" / "content_policy_violation"; others word it "content filter"/"policy".
CONTENT_FILTER = re.compile(r"content[ _-]?(filter|policy|management)", re.IGNORECASE)
# 503 Service Unavailable: the whole server cannot answer now (llama.cpp "Loading model", Together "overloaded or
# not ready yet", vLLM/TGI behind a proxy): transient until it is ready.
UNAVAILABLE_STATUS = 503
MESSAGE_CHARS = 500
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def error_fields(body: object) -> tuple[str, str]:
    """(message, code-or-type) of an error body in any shape: `{"error": {...}}`, `{"error": "..."}`, JSON text,
    bytes, or plain text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return text[:MESSAGE_CHARS], ""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            code = str(error.get("code") or error.get("type") or "")
            return str(error.get("message") or error)[:MESSAGE_CHARS], code
        return str(error)[:MESSAGE_CHARS], ""
    return str(body)[:MESSAGE_CHARS], ""


def seconds(raw: str | None, *, now_epoch_s: float | None = None) -> float | None:
    """A non-negative duration from a header value: seconds (`2`, `0.5`), a Go-style duration (`1m30.5s`, `20ms`,
    OpenAI's x-ratelimit-reset-*) or an HTTP date (Retry-After); None when absent or unreadable."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if value >= 0 else None
    if parts := _DURATION.findall(raw):
        return sum(float(n) * _DURATION_UNITS_S[unit] for n, unit in parts)
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now_epoch_s is None else now_epoch_s))


def retry_after_s(headers: Mapping[str, str], *, now_epoch_s: float | None = None) -> float | None:
    """How long the server asks us to wait: `retry-after-ms`, else `Retry-After`, else `x-ratelimit-reset`
    (Together's suggested retry interval; OpenAI's `x-ratelimit-reset-requests`)."""
    millis = seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    for name in ("retry-after", "x-ratelimit-reset", "x-ratelimit-reset-requests"):
        value = seconds(headers.get(name), now_epoch_s=now_epoch_s)
        if value is not None:
            return value
    return None


def is_quota(status: int, body: object) -> bool:
    """A 429 that means the account is out of quota (no retry can help), not a rate limit."""
    if status != 429:
        return False
    message, code = error_fields(body)
    return code in QUOTA_CODES or any(q in message for q in QUOTA_CODES)


def classify(what: str, status: int, body: object, headers: Mapping[str, str]) -> FinetunedError:
    """The error for a failed call `what`: context length (the item cannot be answered) before the pausing
    statuses (Together answers 403 to both); 401/402/403 and out-of-quota pause; 503 is Unavailable (the server
    is loading or overloaded); 408/409/425/429 and other 5xx are transient (with the server's Retry-After); any
    other status is a refusal of this request."""
    message, code = error_fields(body)
    text = f"{what}: HTTP {status}: {message or code or 'no message'}"
    if status in CONTEXT_STATUSES and (CONTEXT_LENGTH.search(message) or "context_length" in code):
        return ContextLengthExceeded(text, http_status=status)
    if status in (400, 422) and CONTENT_FILTER.search(f"{message} {code}"):
        return ContentFiltered(text, http_status=status)
    if status in PAUSING_STATUSES or is_quota(status, body):
        return Paused(f"{text} (remote work is paused until this is fixed)", http_status=status)
    if status == UNAVAILABLE_STATUS:
        return Unavailable(text, retry_after_s=retry_after_s(headers), http_status=status)
    if status in RETRYABLE_STATUSES or status >= 500:
        return TransientError(text, retry_after_s=retry_after_s(headers), http_status=status)
    return RemoteRejected(text, http_status=status)
