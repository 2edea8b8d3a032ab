"""Dedicated endpoints over SDK 3.1.1's project-scoped surface, through its typed async methods (the adapter passes
its AsyncTogether; nothing here imports the SDK).

As the SDK's CLI deploys (`tg endpoints deploy` / `rm`): the model is found among the project's models by name, its
configs (`models.configs.list(reference_model=<its base>)`) name the hardware by selectors, priced from the public
instance types; an endpoint (named `finetuned-<tag>`, its qualified name is the chat `model`) gets one deployment
(model + config + min = max replicas) and a traffic split routing to it. Creating is find-or-create part by part, so
a half-made endpoint is completed, never doubled. Teardown: traffic split emptied, the deployment scaled to 0/0
(its `updatedAt` then says when billing stopped), deleted, then the endpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from daemon.errors import RemoteRejected
from daemon.remote.api import (
    ENDPOINT_STOPPED_STATES,
    EndpointRequest,
    EndpointState,
    EndpointUsage,
    HardwareOption,
    RemoteEndpoint,
    Surface,
    epoch_s,
)
from daemon.remote.endpoints import Caller, date_s, hardware_option, pick, usage

STATES = {
    "DEPLOYMENT_STATE_PROVISIONING": EndpointState.STARTING,
    "DEPLOYMENT_STATE_READY": EndpointState.STARTED,
    "DEPLOYMENT_STATE_SCALING": EndpointState.STARTED,
    "DEPLOYMENT_STATE_DEGRADED": EndpointState.STARTED,
    "DEPLOYMENT_STATE_FAILED": EndpointState.ERROR,
    "DEPLOYMENT_STATE_STOPPING": EndpointState.STOPPING,
    "DEPLOYMENT_STATE_STOPPED": EndpointState.STOPPED,
}
MIN_INACTIVE_MIN, MAX_INACTIVE_MIN = 30, 1440  # deployment_create_params.inactive_timeout


def _dict(item: Any) -> dict[str, Any]:
    """An SDK model as its wire JSON (camelCase, as the provider sent it)."""
    return dict(item.to_dict(mode="json", warnings=False)) if hasattr(item, "to_dict") else dict(item or {})


def deployment_state(row: dict[str, Any]) -> str:
    """A deployment's (or summary's) state as an EndpointState; unknown states count as starting."""
    status = row.get("status")
    state = pick(status, "state") if isinstance(status, dict) else pick(row, "state")
    return str(STATES.get(str(state), EndpointState.STARTING))


def endpoint(row: dict[str, Any], deployment: dict[str, Any] | None) -> RemoteEndpoint:
    """A v2 endpoint with its (first) deployment: state, hardware and billing start are the deployment's."""
    routed = {
        str(pick(e, "deploymentId", "deployment_id")) for e in row.get("trafficSplit") or row.get("traffic_split") or []
    }
    deployment_id = str(deployment["id"]) if deployment else None
    raw = {**row, "deployment": deployment}
    status = deployment.get("status") if deployment else None
    if isinstance(status, dict) and status.get("message"):
        raw["status_message"] = status["message"]
    return RemoteEndpoint(
        id=str(row["id"]),
        name=str(row.get("name") or row["id"]),
        state=deployment_state(deployment) if deployment else EndpointState.PENDING,
        display_name=str(row.get("name") or "").rsplit("/", 1)[-1],
        model=pick(deployment, "model") if deployment else None,
        hardware=pick(deployment, "hardware") if deployment else None,
        raw=raw,
        surface=Surface.V2,
        deployment_id=deployment_id,
        incomplete=deployment_id is None or deployment_id not in routed,
        created_s=epoch_s(pick(deployment, "createdAt", "created_at")) if deployment else None,
    )


class ProjectWire:
    """The endpoint operations on `/v2/projects/{project_id}/...`; `call(what, thunk)` is the adapter's deadline
    and error mapping."""

    def __init__(self, client: Any, call: Caller[Any], project_id: str) -> None:
        self._client = client
        self._call = call
        self._pid = project_id
        self._models: dict[str, tuple[str, str]] = {}  # model name -> (resource name, config reference)

    async def _collect(self, what: str, pages: Any) -> list[dict[str, Any]]:
        async def walk() -> list[dict[str, Any]]:
            return [_dict(item) async for item in pages]

        found: list[dict[str, Any]] = await self._call(what, walk)
        return found

    async def _model(self, model: str) -> tuple[str, str]:
        """(the model's resource name, the reference its configs are listed by: its base, else itself)."""
        if model not in self._models:
            listed = await self._collect("list models", self._client.models.list(project_id=self._pid))
            bare = model.rsplit("/", 1)[-1]
            found = next((m for m in listed if m.get("name") in (model, bare)), None)
            if found is None:
                raise RemoteRejected(f"{model} is not a model of project {self._pid}: it cannot be deployed there")
            path = f"projects/{pick(found, 'projectId', 'project_id') or self._pid}/models/{found['id']}"
            self._models[model] = (path, str(pick(found, "baseModel", "base_model") or path))
        return self._models[model]

    async def hardware(self, model: str) -> list[HardwareOption]:
        """The instance types the model's configs select, priced per minute, with their config."""
        _, reference = await self._model(model)
        pages = self._client.models.configs.list(project_id=self._pid, reference_model=reference)
        configs = await self._collect("list configs", pages)
        catalogue = _dict(await self._call("list hardware", self._client.endpoints.hardware.list))
        types = {str(t.get("name")): t for t in catalogue.get("data") or []} | {
            str(t.get("id")): t for t in catalogue.get("data") or []
        }
        options = []
        for config in configs:
            selectors = {str(s.get("key")): str(s.get("value")) for s in config.get("selectors") or []}
            found = types.get(f"{selectors.get('accelerator_count')}x{selectors.get('accelerator_type')}") or {}
            option = hardware_option(found)
            if option is not None:
                path = f"projects/{pick(config, 'projectId', 'project_id')}/configs/{config['id']}"
                options.append(dataclasses.replace(option, id=str(found.get("name") or option.id), config=path))
        return options

    async def _endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        try:
            return _dict(
                await self._call(
                    "get endpoint", lambda: self._client.endpoints.retrieve(endpoint_id, project_id=self._pid)
                )
            )
        except RemoteRejected as exc:
            if exc.http_status == 404:
                return None
            raise

    async def _deployment(self, endpoint_id: str, deployment_id: str) -> tuple[dict[str, Any], float | None]:
        """The deployment as answered, and the answer's Date (the provider's now)."""
        raw = self._client.endpoints.deployments.with_raw_response
        response = await self._call(
            "get deployment", lambda: raw.retrieve(deployment_id, endpoint_id=endpoint_id, project_id=self._pid)
        )
        return dict(response.http_response.json()), date_s(response.http_response)

    async def _with_deployment(self, row: dict[str, Any]) -> RemoteEndpoint:
        summaries = row.get("deployments") or []
        if not summaries:
            return endpoint(row, None)
        deployment, answered_s = await self._deployment(str(row["id"]), str(_dict(summaries[0])["id"]))
        return dataclasses.replace(endpoint(row, deployment), observed_s=answered_s)

    async def get(self, endpoint_id: str) -> RemoteEndpoint | None:
        """The endpoint and its deployment's state, or None when it is gone (404)."""
        row = await self._endpoint(endpoint_id)
        return None if row is None else await self._with_deployment(row)

    async def find(self, tag: str) -> list[RemoteEndpoint]:
        """The project's endpoints whose name contains `tag` (`filter=name:"<tag>"`, checked here too)."""
        pages = self._client.endpoints.list(project_id=self._pid, filter=f'name:"{tag}"')
        found = await self._collect("list endpoints", pages)
        return [endpoint(row, _dict((row.get("deployments") or [None])[0]) or None) for row in found
                if tag in str(row.get("name"))]  # fmt: skip

    async def create(self, request: EndpointRequest) -> RemoteEndpoint:
        """Find or create the endpoint named `display_name`, its deployment, and the traffic split to it."""
        found = [e for e in await self.find(request.display_name) if e.display_name == request.display_name]
        row = dict(found[0].raw) if found else await self._new_endpoint(request.display_name)
        summaries = row.get("deployments") or []
        deployment = _dict(summaries[0]) if summaries else await self._new_deployment(str(row["id"]), request)
        made = endpoint(row, deployment)
        if made.incomplete:
            split = [{"deployment_id": made.deployment_id, "weight": 1.0}]
            row = _dict(
                await self._call(
                    "route endpoint",
                    lambda: self._client.endpoints.update(
                        made.id, project_id=self._pid, traffic_split=split, update_mask="trafficSplit"
                    ),
                )
            )
        return await self._with_deployment(row)

    async def _new_endpoint(self, name: str) -> dict[str, Any]:
        return _dict(
            await self._call("create endpoint", lambda: self._client.endpoints.create(project_id=self._pid, name=name))
        )

    async def _new_deployment(self, endpoint_id: str, request: EndpointRequest) -> dict[str, Any]:
        if request.config is None:
            raise RemoteRejected(f"hardware {request.hardware} has no config to deploy {request.model} with")
        model_path, _ = await self._model(request.model)
        options: dict[str, Any] = {
            "project_id": self._pid,
            "name": request.display_name,
            "model": model_path,
            "config": request.config,
            "autoscaling": {"min_replicas": request.replicas, "max_replicas": request.replicas},
        }
        if request.inactive_timeout_min:  # v2 takes 30..1440 minutes (or none): a shorter safety net is raised to 30
            options["inactive_timeout"] = min(max(request.inactive_timeout_min, MIN_INACTIVE_MIN), MAX_INACTIVE_MIN)
        deployments = self._client.endpoints.deployments
        return _dict(await self._call("create deployment", lambda: deployments.create(endpoint_id, **options)))

    async def stop(self, endpoint_id: str) -> None:
        """Scale every deployment to 0/0 (billing ends)."""
        row = await self._endpoint(endpoint_id)
        for summary in (row or {}).get("deployments") or []:
            await self._scale_to_zero(endpoint_id, str(_dict(summary)["id"]))

    async def _scale_to_zero(self, endpoint_id: str, deployment_id: str) -> tuple[dict[str, Any], float | None]:
        raw = self._client.endpoints.deployments.with_raw_response
        scaling = {"min_replicas": 0, "max_replicas": 0}
        response = await self._call(
            "stop deployment",
            lambda: raw.update(
                deployment_id,
                endpoint_id=endpoint_id,
                project_id=self._pid,
                autoscaling=scaling,
                update_mask="autoscaling",
            ),
        )
        return dict(response.http_response.json()), date_s(response.http_response)

    async def delete(self, endpoint_id: str) -> EndpointUsage | None:
        """As the SDK's `rm --force`: route nothing, stop and delete each deployment, delete the endpoint; when the
        (first) deployment billed, on the provider's clock (None when the endpoint was already gone)."""
        row = await self._endpoint(endpoint_id)
        if row is None:
            return None
        await self._call(
            "unroute endpoint",
            lambda: self._client.endpoints.update(
                endpoint_id, project_id=self._pid, traffic_split=[], update_mask="trafficSplit"
            ),
        )
        used = [await self._delete_deployment(endpoint_id, str(_dict(s)["id"])) for s in row.get("deployments") or []]
        try:
            await self._call(
                "delete endpoint", lambda: self._client.endpoints.delete(endpoint_id, project_id=self._pid)
            )
        except RemoteRejected as exc:
            if exc.http_status != 404:
                raise
        return used[0] if used else EndpointUsage(None, None)

    async def _delete_deployment(self, endpoint_id: str, deployment_id: str) -> EndpointUsage:
        current, _ = await self._deployment(endpoint_id, deployment_id)
        stopped, answered_s = current, None
        if deployment_state(current) not in ENDPOINT_STOPPED_STATES:
            stopped, answered_s = await self._scale_to_zero(endpoint_id, deployment_id)
        deployments = self._client.endpoints.deployments
        await self._call(
            "delete deployment",
            lambda: deployments.delete(deployment_id, endpoint_id=endpoint_id, project_id=self._pid),
        )
        return usage(stopped, answered_s, epoch_s(pick(current, "createdAt", "created_at")))
