"""Sandbox faults: random ones (`fault_rate`) and scripted ones (admin API), plus the per-route request counters."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

# Kinds that answer with an error instead of running the endpoint: kind -> (status, type, code, message).
ERROR_KINDS: dict[str, tuple[int, str, str | None, str]] = {
    "429": (429, "dynamic_request_limited", "rate_limit_exceeded", "You are sending requests too fast; slow down."),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "401": (401, "invalid_request_error", "invalid_api_key", "Invalid API key provided."),
    "402": (402, "credit_limit", "payment_required", "You have reached your monthly spending limit."),
    "403": (403, "invalid_request_error", "permission_denied", "You do not have access to this resource."),
    "500": (500, "server_error", None, "Internal server error."),
    "502": (502, "server_error", None, "Bad gateway."),
    "503": (503, "server_error", "service_unavailable", "The server is overloaded or not ready yet."),
}
# Kinds that run the endpoint and then misbehave: `timeout` holds the response back for `delay_s` (the side effect
# happened, the client never hears of it); `slow` trickles the body out over `delay_s`.
DELAY_KINDS = frozenset({"timeout", "slow"})
RANDOM_KINDS = ("429", "500", "502", "503")


@dataclass
class Fault:
    """A scripted fault: the next `count` requests matching `route` (`METHOD /pattern`, or `*`) get `kind`."""

    kind: str
    route: str = "*"
    count: int = 1
    retry_after_s: float = 1.0
    delay_s: float = 30.0
    message: str | None = None

    def matches(self, key: str) -> bool:
        """True if this fault applies to the route key `METHOD /pattern`."""
        return self.route in ("*", key)

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        """Parse one fault from the admin API; raises ValueError with a readable reason."""
        if not isinstance(raw, dict):
            raise ValueError("a fault is a JSON object")
        unknown = set(raw) - {"kind", "route", "count", "retry_after_s", "delay_s", "message"}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        fault = cls(**{k: raw[k] for k in raw})
        fault.kind = str(fault.kind)
        if fault.kind not in ERROR_KINDS and fault.kind not in DELAY_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; one of {sorted([*ERROR_KINDS, *DELAY_KINDS])}")
        if int(fault.count) < 1:
            raise ValueError("count must be at least 1")
        return fault


class FaultPlan:
    """Decides, per request, whether to inject a fault: scripted faults first, then random ones."""

    def __init__(self, *, fault_rate: float, seed: int, retry_after_s: float = 1.0) -> None:
        self.fault_rate = fault_rate
        self.retry_after_s = retry_after_s
        self.scripted: list[Fault] = []
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> None:
        """Queue a scripted fault."""
        self.scripted.append(fault)

    def clear(self) -> None:
        """Drop every scripted fault."""
        self.scripted.clear()

    def take(self, key: str, *, random_allowed: bool) -> Fault | None:
        """The fault for this request, consuming one use of a scripted fault; None for a normal answer."""
        for fault in self.scripted:
            if fault.matches(key):
                fault.count -= 1
                if fault.count <= 0:
                    self.scripted.remove(fault)
                return fault
        if random_allowed and self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return Fault(kind=self._rng.choice(RANDOM_KINDS), route=key, retry_after_s=self.retry_after_s)
        return None

    def to_json(self) -> list[dict[str, Any]]:
        """The scripted faults still pending."""
        return [asdict(f) for f in self.scripted]


class Stats:
    """Counters by `METHOD /route-pattern`: requests the endpoints answered, and faults injected instead."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def to_json(self) -> dict[str, Any]:
        """The `GET /_sandbox/stats` body."""
        return {"requests": dict(sorted(self.requests.items())), "faults": dict(sorted(self.faults.items()))}

    def clear(self) -> None:
        """Zero every counter."""
        self.requests.clear()
        self.faults.clear()


def error_body(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error in Together's shape: {"id", "error": {"message", "type", "param", "code"}}."""
    return {
        "id": f"err-{uuid.uuid4().hex[:16]}",
        "error": {"message": message, "type": type_, "param": param, "code": code},
    }


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An error response in Together's shape (see error_body)."""
    body = error_body(message, type_=type_, code=code, param=param)
    return web.json_response({**body, **(extra or {})}, status=status, headers=headers)


def fault_response(fault: Fault) -> web.Response:
    """The error answer of an error-kind fault (429 carries Retry-After, retry-after-ms and x-ratelimit-reset)."""
    status, type_, code, message = ERROR_KINDS[fault.kind]
    headers = {}
    if status == 429:
        seconds = max(fault.retry_after_s, 0.0)
        headers = {
            "Retry-After": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(round(seconds * 1000)),
            "x-ratelimit-reset": f"{seconds:g}",
        }
    return error_response(status, fault.message or message, type_=type_, code=code, headers=headers)
