"""Sandbox dedicated endpoints: the hardware catalogue and each billed unit's life on the simulated clock.

A billed unit is a v1 endpoint or a v2 deployment. Created started, it is PENDING for PENDING_S, STARTING until
STARTUP_S, then STARTED, billed per started minute (ceil) from creation until it is stopped, deleted or auto-stopped
by `inactive_timeout` (minutes without a chat request). A stop passes through STOPPING for STOPPING_S. A scripted
failure puts it in ERROR at `error_at_s` (never billed after). Every mark is in simulated epoch seconds
(Sandbox.sim_now), so its timestamps and its bill are on one clock; every observable state is a pure function of
that clock and these marks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PENDING_S = 10.0
STARTUP_S = 120.0  # Together says start-up takes minutes; a simulated two
STOPPING_S = 10.0
GB_PER_BILLION_PARAMS = 2.0  # bf16 weights
MEMORY_HEADROOM = 0.8  # weights may fill this share of the GPUs' memory
UNSIZED_BILLIONS = 8.0
_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)B(?![A-Za-z0-9])", re.IGNORECASE)


def iso_us(ts_s: float) -> str:
    """An ISO-8601 UTC timestamp with microseconds (bills are computed from these, so no coarser)."""
    return datetime.fromtimestamp(ts_s, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Hardware:
    """One configuration of the catalogue: GPUs, price and availability."""

    id: str
    gpu_type: str
    gpu_memory_gb: int
    gpu_count: int
    cents_per_minute: float
    availability: str = "available"

    def fits(self, billions: float) -> bool:
        """Whether a model of this size fits in the GPUs' memory."""
        return billions * GB_PER_BILLION_PARAMS <= self.gpu_memory_gb * self.gpu_count * MEMORY_HEADROOM

    def to_json(self, updated_at: str) -> dict[str, Any]:
        """The contract's hardware object."""
        return {
            "object": "hardware",
            "id": self.id,
            "pricing": {"cents_per_minute": self.cents_per_minute},
            "specs": {
                "gpu_type": self.gpu_type,
                "gpu_link": "sxm" if "h100" in self.gpu_type else "pcie",
                "gpu_memory": self.gpu_memory_gb,
                "gpu_count": self.gpu_count,
            },
            "availability": {"status": self.availability},
            "updated_at": updated_at,
        }


# 1x H100 80 GB at $3.99/h (Together's docs) = 6.65 cents a minute; the others scaled from it.
CATALOGUE: tuple[Hardware, ...] = (
    Hardware("1x_nvidia_l40s_48gb", "l40s", 48, 1, 2.5, availability="unavailable"),
    Hardware("1x_nvidia_a100_80gb_pcie", "a100", 80, 1, 4.0),
    Hardware("1x_nvidia_h100_80gb_sxm", "h100", 80, 1, 6.65),
    Hardware("2x_nvidia_h100_80gb_sxm", "h100", 80, 2, 13.3),
    Hardware("4x_nvidia_h100_80gb_sxm", "h100", 80, 4, 26.6),
    Hardware("8x_nvidia_h100_80gb_sxm", "h100", 80, 8, 53.2, availability="insufficient"),
)


def model_billions(model: str) -> float:
    """Parameters in billions from the model's name (the largest `<n>B` in it), 8 when it names none."""
    sizes = [float(n) for n in _SIZE.findall(model.rsplit("/", 1)[-1])]
    return max(sizes) if sizes else UNSIZED_BILLIONS


def hardware_for(model: str | None) -> list[Hardware]:
    """The catalogue, or the configurations that fit `model` when one is given."""
    if not model:
        return list(CATALOGUE)
    billions = model_billions(model)
    return [hw for hw in CATALOGUE if hw.fits(billions)]


@dataclass
class SandboxEndpoint:
    """One billed unit (a v1 endpoint, or a v2 deployment under `parent`); `*_at_s` are simulated epoch seconds."""

    id: str
    name: str
    display_name: str
    model: str
    hardware: Hardware
    min_replicas: int
    max_replicas: int
    inactive_timeout_min: int | None
    created_at_s: float
    startup_s: float = STARTUP_S  # simulated seconds from (re)start to STARTED
    started_at_s: float | None = None  # when it was (re)started; None while never started
    stopped_at_s: float | None = None  # when a stop was asked (or the inactivity timeout fired)
    error_at_s: float | None = None
    error_message: str = ""
    last_used_s: float | None = None
    billed_before_s: float = 0.0  # simulated seconds billed in earlier started periods
    changed_at_s: float | None = None  # the last change asked by a request (start, stop, update)
    billed_replicas: int = 0  # replicas the bill counts when not min_replicas (v2: scaled to 0 when stopped)
    parent: str | None = None  # v2: the endpoint this deployment belongs to
    config: str = ""  # v2: the config revision it runs
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def _auto_stop_s(self) -> float | None:
        """When the inactivity timeout stops it, if it is set and started."""
        if not self.inactive_timeout_min or self.started_at_s is None:
            return None
        ready_s = self.started_at_s + self.startup_s
        idle_since = max(ready_s, self.last_used_s or ready_s)
        return idle_since + self.inactive_timeout_min * 60

    def stop_at_s(self) -> float | None:
        """When billing stops: a stop, the inactivity timeout or an error, whichever came first."""
        marks = [m for m in (self.stopped_at_s, self._auto_stop_s(), self.error_at_s) if m is not None]
        return min(marks) if marks else None

    def state(self, now_s: float) -> str:
        """PENDING, STARTING, STARTED, STOPPING, STOPPED or ERROR at `now_s`."""
        if self.error_at_s is not None and now_s >= self.error_at_s:
            return "ERROR"
        stop = self.stop_at_s()
        if stop is not None and now_s >= stop:
            return "STOPPING" if now_s - stop < STOPPING_S else "STOPPED"
        if self.started_at_s is None:
            return "STOPPED"
        up = now_s - self.started_at_s
        return "PENDING" if up < min(PENDING_S, self.startup_s) else "STARTING" if up < self.startup_s else "STARTED"

    def updated_at_s(self, now_s: float) -> float:
        """When it last changed by `now_s`: a request, or a state reached on its own (ready, stopped, failed)."""
        ready = self.started_at_s + self.startup_s if self.started_at_s is not None else None
        marks = (self.created_at_s, self.changed_at_s, ready, self.stop_at_s(), self.error_at_s)
        return max(m for m in marks if m is not None and m <= now_s)

    def billed_minutes(self, now_s: float) -> int:
        """Started minutes billed so far (ceil per started period), including earlier periods."""
        current = 0.0
        if self.started_at_s is not None:
            end = min(now_s, self.stop_at_s() or now_s)
            current = max(0.0, end - self.started_at_s)
        return math.ceil((self.billed_before_s + current) / 60.0 - 1e-9)

    def cost_usd(self, now_s: float) -> float:
        """Dollars billed so far: started minutes x replicas x the hardware's price per minute."""
        replicas = max(1, self.billed_replicas or self.min_replicas)
        return round(self.billed_minutes(now_s) * replicas * self.hardware.cents_per_minute / 100, 6)

    def billing(self, now_s: float) -> bool:
        """Whether it is billing now (started, not stopped, not failed, not deleted)."""
        return not self.deleted and self.state(now_s) in ("PENDING", "STARTING", "STARTED")

    def start(self, now_s: float) -> None:
        """(Re)start a stopped endpoint: the time billed so far is kept."""
        if self.billing(now_s) or self.state(now_s) == "ERROR":
            return
        if self.started_at_s is not None:
            end = min(now_s, self.stop_at_s() or now_s)
            self.billed_before_s += max(0.0, end - self.started_at_s)
        self.started_at_s, self.stopped_at_s, self.last_used_s = now_s, None, None
        self.changed_at_s = now_s

    def stop(self, now_s: float) -> None:
        """Ask it to stop (no-op when it is not billing)."""
        if self.billing(now_s):
            self.stopped_at_s = self.changed_at_s = now_s

    def to_json(self, now_s: float) -> dict[str, Any]:
        """The contract's endpoint object (plus `updated_at`, which the contract lacks)."""
        return {
            "object": "endpoint",
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "model": self.model,
            "hardware": self.hardware.id,
            "type": "dedicated",
            "owner": "sandbox",
            "state": self.state(now_s),
            "autoscaling": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas},
            "created_at": iso_us(self.created_at_s),
            "updated_at": iso_us(self.updated_at_s(now_s)),
            "inactive_timeout": self.inactive_timeout_min,
            **({"error": {"message": self.error_message}} if self.state(now_s) == "ERROR" else {}),
        }
