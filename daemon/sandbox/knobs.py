"""The sandbox's knobs: their defaults, checks and setters, shared by start_sandbox, the flags and the config API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from daemon.sandbox.faults import FaultPlan
from daemon.sandbox.flavours import FLAVOURS
from daemon.sandbox.models import DEFAULT_SERVERLESS_LORA
from daemon.sandbox.state import Sandbox, parse_latency_ms

DEFAULT_SPEED = 60.0


class SandboxKnobs(TypedDict, total=False):
    """Everything `start_sandbox` takes besides host and port (see the package docstring)."""

    speed: float
    latency_ms: str
    fault_rate: float
    seed: int
    retry_after_s: float
    api_key: str | None
    user_limit_usd: float
    slots: int
    context_tokens: int
    flavour: str
    rate_limit_rpm: int
    rate_limit_tpm: int
    serverless_lora: str | Sequence[str]
    lean: bool
    endpoint_startup_s: float
    v2_endpoints: bool


def build_sandbox(knobs: SandboxKnobs) -> Sandbox:
    """A fresh sandbox with these knobs (the others at their defaults); raises ValueError on a bad value."""
    speed = float(knobs.get("speed", DEFAULT_SPEED))
    if speed <= 0:
        raise ValueError("speed must be > 0")
    seed = int(knobs.get("seed", 0))
    sb = Sandbox(
        speed=speed,
        latency_ms=parse_latency_ms(str(knobs.get("latency_ms", "0"))),
        faults=FaultPlan(fault_rate=0.0, seed=seed, retry_after_s=1.0),
        seed=seed,
        api_key=knobs.get("api_key"),
    )
    runtime = {key: value for key, value in knobs.items() if key in SETTERS}
    apply_config(sb, runtime)
    return sb


def apply_config(sb: Sandbox, body: dict[str, Any]) -> None:
    """Change knobs at run time (`POST /_sandbox/config`); raises ValueError on an unknown key or a bad value."""
    unknown = set(body) - set(SETTERS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    for key, value in body.items():
        SETTERS[key](sb, value)


def describe(sb: Sandbox) -> dict[str, Any]:
    """The knobs as JSON (`GET /_sandbox/config`)."""
    lo, hi = sb.latency_ms
    return {
        "speed": sb.speed,
        "latency_ms": f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}",
        "fault_rate": sb.faults.fault_rate,
        "retry_after_s": sb.faults.retry_after_s,
        "user_limit_usd": sb.user_limit_usd,
        "slots": sb.serving.slots,
        "context_tokens": sb.context_tokens,
        "flavour": sb.flavour,
        "rate_limit_rpm": sb.limiter.requests.limit_per_min,
        "rate_limit_tpm": sb.limiter.tokens.limit_per_min,
        "serverless_lora": list(sb.serverless_lora),
        "lean": sb.lean,
        "endpoint_startup_s": sb.endpoint_startup_s,
        "v2_endpoints": sb.v2_endpoints,
    }


def parse_models(value: str | Sequence[str]) -> tuple[str, ...]:
    """`"a/b,c/d"` or `["a/b", "c/d"]` -> ("a/b", "c/d") (blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(item.strip() for item in items if item.strip())


def _count(value: Any, name: str) -> int:
    """A whole number >= 0."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be a whole number >= 0")
    number = int(value)
    if number < 0:
        raise ValueError(f"{name} must be a whole number >= 0")
    return number


def _set_speed(sb: Sandbox, value: Any) -> None:
    if float(value) <= 0:
        raise ValueError("speed must be > 0")
    sb.set_speed(float(value))


def _set_fault_rate(sb: Sandbox, value: Any) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError("fault_rate must be between 0 and 1")
    sb.faults.fault_rate = float(value)


def _set_flavour(sb: Sandbox, value: Any) -> None:
    if value not in FLAVOURS:
        raise ValueError(f"flavour must be one of {list(FLAVOURS)}")
    sb.flavour = str(value)


def _set_latency(sb: Sandbox, value: Any) -> None:
    sb.latency_ms = parse_latency_ms(str(value))


def _set_retry_after(sb: Sandbox, value: Any) -> None:
    sb.faults.retry_after_s = float(value)


def _set_user_limit(sb: Sandbox, value: Any) -> None:
    sb.user_limit_usd = float(value)


def _set_slots(sb: Sandbox, value: Any) -> None:
    sb.serving.resize(_count(value, "slots"))


def _set_context(sb: Sandbox, value: Any) -> None:
    sb.context_tokens = _count(value, "context_tokens")


def _set_rpm(sb: Sandbox, value: Any) -> None:
    sb.limiter.configure(_count(value, "rate_limit_rpm"), sb.limiter.tokens.limit_per_min)


def _set_tpm(sb: Sandbox, value: Any) -> None:
    sb.limiter.configure(sb.limiter.requests.limit_per_min, _count(value, "rate_limit_tpm"))


def _set_serverless(sb: Sandbox, value: Any) -> None:
    sb.serverless_lora = parse_models(value)


def _set_startup(sb: Sandbox, value: Any) -> None:
    if float(value) < 0:
        raise ValueError("endpoint_startup_s must be >= 0")
    sb.endpoint_startup_s = float(value)


def _set_lean(sb: Sandbox, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("lean must be true or false")
    sb.lean = value


def _set_v2(sb: Sandbox, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("v2_endpoints must be true or false")
    sb.v2_endpoints = value


SETTERS: dict[str, Callable[[Sandbox, Any], None]] = {
    "speed": _set_speed,
    "latency_ms": _set_latency,
    "fault_rate": _set_fault_rate,
    "retry_after_s": _set_retry_after,
    "user_limit_usd": _set_user_limit,
    "slots": _set_slots,
    "context_tokens": _set_context,
    "flavour": _set_flavour,
    "rate_limit_rpm": _set_rpm,
    "rate_limit_tpm": _set_tpm,
    "serverless_lora": _set_serverless,
    "lean": _set_lean,
    "endpoint_startup_s": _set_startup,
    "v2_endpoints": _set_v2,
}
DEFAULTS: dict[str, Any] = {
    "speed": DEFAULT_SPEED,
    "latency_ms": "0",
    "fault_rate": 0.0,
    "retry_after_s": 1.0,
    "user_limit_usd": 100.0,
    "slots": 0,
    "context_tokens": 0,
    "flavour": "together",
    "rate_limit_rpm": 0,
    "rate_limit_tpm": 0,
    "serverless_lora": ",".join(DEFAULT_SERVERLESS_LORA),
    "lean": False,
    "endpoint_startup_s": 120.0,
    "v2_endpoints": True,
}
