"""Dedicated endpoints through the adapter: both answer shapes parsed, the serverless check, the surface chosen
(v2, else the v1 fallback), the life cycle on each surface, a half-made v2 endpoint completed, not doubled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import together

from daemon.errors import RemoteRejected
from daemon.remote.api import Clock, EndpointRequest, Surface
from daemon.remote.endpoints import availability, hardware_option, is_not_serverless, pick, rows
from daemon.remote.together import TogetherAPI
from daemon.sandbox import SandboxHandle
from tests.daemon.sandbox.helpers import API_KEY, BASE_MODEL, admin, fine_tune


def test_hardware_rows_in_the_contracts_shape_and_the_sdks() -> None:
    """Contract rows (cents/min, availability) and SDK 3.1.1 instance types (cents/hour, regions' headroom) give
    the same option; availability read from headroom."""
    contract = {"id": "1x_h100", "pricing": {"cents_per_minute": 6.65}, "availability": {"status": "available"}}
    sdk = {"id": "1x_h100", "priceCentsPerHour": 399, "gpuCount": 1}
    assert hardware_option(contract) is not None and hardware_option(contract).usd_per_minute == pytest.approx(0.0665)  # type: ignore[union-attr]
    parsed = hardware_option(sdk)
    assert parsed is not None and parsed.cents_per_minute == pytest.approx(6.65) and parsed.availability == "unknown"
    assert hardware_option({"id": "free"}) is None
    assert rows({"data": [contract, 1]}) == [contract] and rows([sdk]) == [sdk] and rows(None) == []
    room = {"name": "r", "headroom": {"relation": "RELATION_EQ", "value": 3}}
    full = {"name": "r", "headroom": {"relation": "RELATION_EQ", "value": 0}}
    assert (
        availability({"regions": [room, full]}) == "available" and availability({"regions": [full]}) == "insufficient"
    )
    assert availability({"regions": []}) == "unavailable" and availability({"regions": [{"name": "r"}]}) == "unknown"
    assert pick({"createdAt": "a", "created_at": "b"}, "createdAt", "created_at") == "a"
    assert pick({"created_at": "b"}, "createdAt", "created_at") == "b"


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


@pytest.fixture
async def fine_tuned(sandbox: SandboxHandle, tmp_path: Path) -> AsyncIterator[str]:
    """A completed fine-tune's output model (a model of the sandbox's project)."""
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0)
    try:
        yield await fine_tune(sdk, sandbox, tmp_path)
    finally:
        await sdk.close()


async def test_v1_life_cycle_through_the_adapter(api: TogetherAPI, sandbox: SandboxHandle) -> None:
    """On v1: hardware listed and priced; create, get, find by tag, stop, delete (billing on the provider's clock;
    a second delete is fine); gone after."""
    options = await api.hardware(BASE_MODEL, surface=Surface.V1)
    assert {o.availability for o in options} >= {"available", "unavailable"}
    cheapest = min((o for o in options if o.availability == "available"), key=lambda o: o.cents_per_minute)
    request = EndpointRequest(BASE_MODEL, cheapest.id, 1, "finetuned-tag000001", 5)
    made = await api.create_endpoint(request, surface=Surface.V1)
    assert made.state in ("PENDING", "STARTING") and made.name != made.id and made.hardware == cheapest.id
    assert made.surface == Surface.V1 and not made.incomplete and made.created_s is not None
    assert [e.id for e in await api.find_endpoints("tag000001", surface=Surface.V1)] == [made.id]
    assert await api.find_endpoints("other-tag", surface=Surface.V1) == []
    await api.stop_endpoint(made.id, surface=Surface.V1)
    got = await api.get_endpoint(made.id, surface=Surface.V1)
    assert got is not None and got.state in ("STOPPING", "STOPPED")
    used = await api.delete_endpoint(made.id, surface=Surface.V1)
    assert used is not None and used.end_clock == Clock.PROVIDER
    minutes, clock = used.minutes(0.0, 0.0)
    assert (
        clock == Clock.PROVIDER
        and minutes == (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]["minutes_billed"]
    )
    assert await api.delete_endpoint(made.id, surface=Surface.V1) is None
    assert await api.get_endpoint(made.id, surface=Surface.V1) is None
    assert sandbox.sandbox.endpoints[made.id].inactive_timeout_min == 5


async def test_v2_life_cycle_through_the_adapter(api: TogetherAPI, sandbox: SandboxHandle, fine_tuned: str) -> None:
    """On v2 (the run's choice, project from whoami): hardware from the model's configs, endpoint + deployment +
    route, find by tag, stop, delete (deployment then endpoint), billing equal to the sandbox's."""
    assert await api.endpoint_surface() == Surface.V2
    options = await api.hardware(fine_tuned)
    usable = [o for o in options if o.availability == "available"]
    cheapest = min(usable, key=lambda o: o.cents_per_minute)
    assert cheapest.config and {o.availability for o in options} >= {"available", "unavailable"}
    request = EndpointRequest(fine_tuned, cheapest.id, 1, "finetuned-tag000002", None, cheapest.config)
    made = await api.create_endpoint(request)
    assert made.surface == Surface.V2 and made.deployment_id and not made.incomplete
    assert made.name == "sandbox/finetuned-tag000002" and made.state in ("STARTING", "STARTED")
    assert [e.id for e in await api.find_endpoints("tag000002")] == [made.id]
    await api.stop_endpoint(made.id)
    got = await api.get_endpoint(made.id)
    assert got is not None and got.state in ("STOPPING", "STOPPED")
    used = await api.delete_endpoint(made.id)
    assert used is not None and used.end_clock == Clock.PROVIDER
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    assert used.minutes(0.0, 0.0)[0] == counted["minutes_billed"] and counted["running"] == 0
    assert counted["deleted"] == 1 and counted["deployments"] == {"created": 1, "deleted": 1}
    assert await api.delete_endpoint(made.id) is None and await api.get_endpoint(made.id) is None


async def test_a_half_made_v2_endpoint_is_completed_not_doubled(
    api: TogetherAPI, sandbox: SandboxHandle, fine_tuned: str
) -> None:
    """An endpoint created before a crash, without its deployment, is found incomplete; creating it again adds the
    deployment and the route to it: one endpoint, one deployment."""
    sdk = together.AsyncTogether(base_url=sandbox.base_url, api_key=API_KEY, max_retries=0, project_id="proj_sandbox")
    try:
        await sdk.endpoints.create(name="finetuned-tag000003")
    finally:
        await sdk.close()
    found = await api.find_endpoints("tag000003")
    assert len(found) == 1 and found[0].incomplete
    chosen = next(o for o in await api.hardware(fine_tuned) if o.availability == "available")
    made = await api.create_endpoint(
        EndpointRequest(fine_tuned, chosen.id, 1, "finetuned-tag000003", None, chosen.config)
    )
    assert made.id == found[0].id and not made.incomplete
    counted = (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["endpoints"]
    assert counted["created"] == 1 and counted["deployments"]["created"] == 1
    await api.delete_endpoint(made.id)


async def test_a_server_without_v2_is_used_through_v1(api: TogetherAPI, sandbox: SandboxHandle) -> None:
    """With the sandbox's v2 surface off (whoami answers 404), the run falls back to v1, once."""
    await admin(sandbox.base_url, "POST", "/_sandbox/config", {"v2_endpoints": False})
    assert await api.endpoint_surface() == Surface.V1
    assert await api.endpoint_surface() == Surface.V1
    assert (await admin(sandbox.base_url, "GET", "/_sandbox/stats"))["requests"]["GET /v3/whoami"] == 1
    options = await api.hardware(BASE_MODEL)
    assert options and all(o.config is None for o in options)
