"""Dedicated endpoints through the adapter: both answer shapes parsed, the serverless check, the life cycle."""

from __future__ import annotations

import pytest

from daemon.errors import RemoteRejected
from daemon.remote.api import EndpointRequest
from daemon.remote.endpoints import hardware_option, is_not_serverless, rows
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle
from tests.daemon.sandbox.helpers import BASE_MODEL, admin


def test_hardware_rows_in_the_contracts_shape_and_the_sdks() -> None:
    """Contract rows (cents/min, availability) and SDK 3.1.1 instance types (cents/hour) give the same option."""
    contract = {"id": "1x_h100", "pricing": {"cents_per_minute": 6.65}, "availability": {"status": "available"}}
    sdk = {"id": "1x_h100", "priceCentsPerHour": 399, "gpuCount": 1}
    assert hardware_option(contract) is not None and hardware_option(contract).usd_per_minute == pytest.approx(0.0665)  # type: ignore[union-attr]
    parsed = hardware_option(sdk)
    assert parsed is not None and parsed.cents_per_minute == pytest.approx(6.65) and parsed.availability == "unknown"
    assert hardware_option({"id": "free"}) is None
    assert rows({"data": [contract, 1]}) == [contract] and rows([sdk]) == [sdk] and rows(None) == []


def test_not_serverless_refusals_are_recognised() -> None:
    """Together's "non-serverless" 400 and "dedicated endpoint not running" mean: needs an endpoint."""
    assert is_not_serverless(RemoteRejected("Unable to access non-serverless model x", http_status=400))
    assert is_not_serverless(RemoteRejected("chat: code dedicated_endpoint_not_running", http_status=404))
    assert not is_not_serverless(RemoteRejected("Unable to access non-serverless model x", http_status=401))
    assert not is_not_serverless(RemoteRejected("max_tokens too large", http_status=400))


async def test_serverless_check_reads_the_models_list_then_asks_once(api: TogetherAPI, sandbox: SandboxHandle) -> None:
    """A listed model is serverless without a chat call; an unlisted one answering a one-token request is too."""
    assert await api.serves_serverless(BASE_MODEL)
    before = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["requests"].get("POST /v1/chat/completions", 0)
    assert before == 0
    assert await api.serves_serverless("someorg/unlisted-model")
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["requests"]
    assert counted["POST /v1/chat/completions"] == 1 and counted["GET /v1/models"] == 2


async def test_endpoint_life_cycle_through_the_adapter(api: TogetherAPI, sandbox: SandboxHandle) -> None:
    """Hardware listed and priced; create, get, find by tag, stop, delete (a second delete is fine); gone after."""
    options = await api.hardware(BASE_MODEL)
    assert {o.availability for o in options} >= {"available", "unavailable"}
    cheapest = min((o for o in options if o.availability == "available"), key=lambda o: o.cents_per_minute)
    made = await api.create_endpoint(EndpointRequest(BASE_MODEL, cheapest.id, 1, "finetuned-tag000001", 5))
    assert made.state in ("PENDING", "STARTING") and made.name != made.id and made.hardware == cheapest.id
    assert [e.id for e in await api.find_endpoints("tag000001")] == [made.id]
    assert await api.find_endpoints("other-tag") == []
    await api.stop_endpoint(made.id)
    got = await api.get_endpoint(made.id)
    assert got is not None and got.state in ("STOPPING", "STOPPED")
    await api.delete_endpoint(made.id)
    await api.delete_endpoint(made.id)
    assert await api.get_endpoint(made.id) is None
    assert sandbox.sandbox.endpoints[made.id].inactive_timeout_min == 5
