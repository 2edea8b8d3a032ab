"""Dedicated endpoints over the contract's `/v1/endpoints` and `/v1/hardware` (the fallback surface; the SDK's
project-scoped one is in projects.py): the wire, and the answer parsing both share.

`EndpointWire` drives any client with Stainless's raw `get/post/patch/delete(path, cast_to=httpx.Response)`
(the adapter passes the SDK's AsyncTogether; nothing here imports the SDK). Answers are read in either shape: a list
as `{"data": [...]}` or bare; fields in snake_case (v1) or camelCase (v2); hardware as the contract's
`pricing.cents_per_minute` + `availability.status`, or as SDK 3.1.1's instance types (`priceCentsPerHour`, `gpuCount`,
`regions[].headroom`).
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from daemon.errors import RemoteRejected
from daemon.remote.api import (
    ENDPOINT_STOPPED_STATES,
    Clock,
    EndpointRequest,
    EndpointUsage,
    HardwareOption,
    RemoteEndpoint,
    epoch_s,
)

T = TypeVar("T")
Caller = Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]]
NOT_SERVERLESS_CODES = frozenset({"model_not_available", "dedicated_endpoint_not_running"})
NOT_SERVERLESS_WORDS = ("non-serverless", "dedicated endpoint")


def _json(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except json.JSONDecodeError:
        return None


def pick(row: dict[str, Any], *names: str) -> Any:
    """The first of `names` that `row` has (not None): one field read in either naming (`createdAt`, `created_at`)."""
    return next((row[name] for name in names if row.get(name) is not None), None)


def date_s(response: httpx.Response) -> float | None:
    """The answer's `Date` header (the provider's now) as epoch seconds; None when absent or unreadable."""
    try:
        return email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def usage(stopped: dict[str, Any], answered_s: float | None, started_s: float | None) -> EndpointUsage:
    """Billing of an endpoint (or deployment) from the answer that stopped it: its own update time, else the
    answer's Date; `started_s` on the same clock."""
    updated = epoch_s(pick(stopped, "updatedAt", "updated_at"))
    if updated is not None:
        return EndpointUsage(started_s, updated, Clock.PROVIDER)
    return EndpointUsage(started_s, answered_s, Clock.PROVIDER_DATE)


def availability(row: dict[str, Any]) -> str:
    """The contract's `availability.status`; else from an instance type's regions: available with headroom
    somewhere, insufficient when every region says none fits, unavailable when offered nowhere, else unknown."""
    given = row.get("availability")
    if isinstance(given, dict) and given.get("status"):
        return str(given["status"])
    regions = row.get("regions")
    if not isinstance(regions, list):
        return "unknown"
    if not regions:
        return "unavailable"
    rooms = [r["headroom"].get("value") for r in regions if isinstance(r, dict) and isinstance(r.get("headroom"), dict)]
    if any(isinstance(room, int) and room > 0 for room in rooms):
        return "available"
    return "insufficient" if rooms and len(rooms) == len(regions) else "unknown"


def rows(body: Any) -> list[dict[str, Any]]:
    """The objects of a list answer, `{"data": [...]}` or a bare list."""
    listed = body.get("data") if isinstance(body, dict) else body
    return [row for row in listed if isinstance(row, dict)] if isinstance(listed, list) else []


def hardware_option(row: dict[str, Any]) -> HardwareOption | None:
    """One hardware row in the contract's shape or the SDK's instance-type shape; None without a price."""
    pricing = row.get("pricing")
    cents = pricing.get("cents_per_minute") if isinstance(pricing, dict) else None
    if not isinstance(cents, int | float) and isinstance(row.get("priceCentsPerHour"), int | float):
        cents = float(row["priceCentsPerHour"]) / 60
    if not isinstance(cents, int | float) or "id" not in row:
        return None
    specs = row.get("specs")
    count = specs.get("gpu_count") if isinstance(specs, dict) else row.get("gpuCount")
    return HardwareOption(str(row["id"]), float(cents), availability(row), count if isinstance(count, int) else None)


def is_not_serverless(error: RemoteRejected) -> bool:
    """Whether a refused chat request says the model is served only on a dedicated endpoint."""
    text = str(error).lower()
    return error.http_status in (400, 404) and (
        any(code in text for code in NOT_SERVERLESS_CODES) or any(word in text for word in NOT_SERVERLESS_WORDS)
    )


class RawWire:
    """Operations the SDK's typed methods do not cover (or cover otherwise): raw requests through its client;
    `call(what, thunk)` is the adapter's deadline and error mapping."""

    def __init__(self, client: Any, call: Caller[Any]) -> None:
        self._client = client
        self._call = call

    async def _request(self, what: str, method: str, path: str, **options: Any) -> Any:
        return _json(await self._send(what, method, path, **options))

    async def _dated(self, what: str, method: str, path: str, **options: Any) -> tuple[Any, float | None]:
        """The answer and its Date header."""
        response = await self._send(what, method, path, **options)
        return _json(response), date_s(response)

    async def _send(self, what: str, method: str, path: str, **options: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            response: httpx.Response = await getattr(self._client, method)(path, cast_to=httpx.Response, **options)
            return response

        answered: httpx.Response = await self._call(what, send)
        return answered


class EndpointWire(RawWire):
    """The endpoint and hardware operations."""

    async def model_ids(self) -> set[str]:
        """The ids of the models Together lists as served (`GET /v1/models`, a bare list or `{"data": [...]}`)."""
        body = await self._request("list models", "get", "/v1/models")
        return {str(row["id"]) for row in rows(body) if "id" in row}

    async def prices(self) -> dict[str, tuple[float, float]]:
        """Model id -> (input, output) USD per million tokens, for the listed models that carry a price."""
        body = await self._request("list models", "get", "/v1/models")
        found = {}
        for row in rows(body):
            pricing = row.get("pricing")
            if "id" in row and isinstance(pricing, dict):
                cost_in, cost_out = pricing.get("input"), pricing.get("output")
                if isinstance(cost_in, int | float) and isinstance(cost_out, int | float):
                    found[str(row["id"])] = (float(cost_in), float(cost_out))
        return found

    async def hardware(self, model: str) -> list[HardwareOption]:
        """The configurations compatible with `model`, with prices and availability."""
        body = await self._request("list hardware", "get", "/v1/hardware", options={"params": {"model": model}})
        return [option for row in rows(body) if (option := hardware_option(row)) is not None]

    async def create(self, request: EndpointRequest) -> RemoteEndpoint:
        """Create (and start) the endpoint; it bills per minute from now until stopped."""
        body: dict[str, Any] = {
            "model": request.model,
            "hardware": request.hardware,
            "autoscaling": {"min_replicas": request.replicas, "max_replicas": request.replicas},
            "display_name": request.display_name,
            "state": "STARTED",
        }
        if request.inactive_timeout_min is not None:
            body["inactive_timeout"] = request.inactive_timeout_min
        return RemoteEndpoint.from_json(await self._request("create endpoint", "post", "/v1/endpoints", body=body))

    async def get(self, endpoint_id: str) -> RemoteEndpoint | None:
        """The endpoint, or None when Together no longer has it (404)."""
        try:
            body, answered_s = await self._dated("get endpoint", "get", f"/v1/endpoints/{endpoint_id}")
        except RemoteRejected as exc:
            if exc.http_status == 404:
                return None
            raise
        return dataclasses.replace(RemoteEndpoint.from_json(body), observed_s=answered_s)

    async def find(self, tag: str) -> list[RemoteEndpoint]:
        """The dedicated endpoints whose display name contains `tag`."""
        body = await self._request("list endpoints", "get", "/v1/endpoints", options={"params": {"type": "dedicated"}})
        found = [RemoteEndpoint.from_json(row) for row in rows(body) if "id" in row]
        return [endpoint for endpoint in found if tag in endpoint.display_name]

    async def stop(self, endpoint_id: str) -> None:
        """Ask it to stop (billing ends once STOPPED)."""
        await self._request("stop endpoint", "patch", f"/v1/endpoints/{endpoint_id}", body={"state": "STOPPED"})

    async def delete(self, endpoint_id: str) -> EndpointUsage | None:
        """Stop it (unless it has stopped already), then delete it; when it billed, as its answers tell (None when
        it was already gone: a 404 counts as deleted)."""
        path = f"/v1/endpoints/{endpoint_id}"
        try:
            body, answered_s = await self._dated("get endpoint", "get", path)
        except RemoteRejected as exc:
            if exc.http_status == 404:
                return None
            raise
        current = RemoteEndpoint.from_json(body)
        if current.state not in ENDPOINT_STOPPED_STATES:
            body, answered_s = await self._dated("stop endpoint", "patch", path, body={"state": "STOPPED"})
        used = usage(body if isinstance(body, dict) else {}, answered_s, current.created_s)
        try:
            await self._request("delete endpoint", "delete", path)
        except RemoteRejected as exc:
            if exc.http_status != 404:
                raise
        return used
