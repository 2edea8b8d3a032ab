"""Which endpoint API a run uses, chosen once: the SDK's project-scoped surface (projects.py) when the server offers
it, else the contract's `/v1/endpoints` (endpoints.py); and the wire of either for an endpoint journaled on it.

The project is `TOGETHER_PROJECT_ID`, else the one `whoami` names (as the SDK's CLI resolves it). A 404 on whoami or
on the project's endpoint list means the server has no v2 surface: this run falls back to v1, logged once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from daemon.errors import RemoteRejected
from daemon.remote.api import EndpointRequest, EndpointUsage, HardwareOption, RemoteEndpoint, Surface
from daemon.remote.endpoints import Caller, EndpointWire
from daemon.remote.projects import ProjectWire

log = structlog.get_logger()


class SurfaceWire(Protocol):
    """What each surface's wire offers the adapter."""

    async def hardware(self, model: str) -> list[HardwareOption]: ...
    async def create(self, request: EndpointRequest) -> RemoteEndpoint: ...
    async def get(self, endpoint_id: str) -> RemoteEndpoint | None: ...
    async def find(self, tag: str) -> list[RemoteEndpoint]: ...
    async def stop(self, endpoint_id: str) -> None: ...
    async def delete(self, endpoint_id: str) -> EndpointUsage | None: ...


class Surfaces:
    """The run's choice of surface, and a wire for any surface."""

    def __init__(self, client: Any, call: Caller[Any], v1: EndpointWire, project_id: str | None) -> None:
        self._client = client
        self._call = call
        self._v1 = v1
        self._project_id = project_id
        self._v2: ProjectWire | None = None
        self._chosen: Surface | None = None
        self._lock = asyncio.Lock()

    async def chosen(self) -> Surface:
        """The surface of this run: v2 unless the server answers 404 for it (then v1, logged once)."""
        async with self._lock:
            if self._chosen is None:
                self._chosen = await self._choose()
        return self._chosen

    async def wire(self, surface: Surface | None = None) -> SurfaceWire:
        """The wire of `surface` (None: the run's)."""
        surface = surface or await self.chosen()
        if surface == Surface.V1:
            return self._v1
        async with self._lock:
            if self._v2 is None:
                project_id = await self._project()
                if project_id is None:
                    raise RemoteRejected("the v2 endpoint surface needs a project: set TOGETHER_PROJECT_ID")
                self._v2 = ProjectWire(self._client, self._call, project_id)
        return self._v2

    async def _choose(self) -> Surface:
        try:
            project_id = await self._project()
            if project_id is not None:
                # the paginator is awaitable: its first page, which is the probe of the project's endpoint route
                pages = self._client.endpoints.list(project_id=project_id, limit=1)
                await self._call("list endpoints", lambda: pages)
        except RemoteRejected as exc:
            if exc.http_status != 404:
                raise
            log.warning("endpoint_surface", surface=Surface.V1, reason="the server has no v2 endpoint surface (404)")
            return Surface.V1
        if project_id is None:
            log.warning("endpoint_surface", surface=Surface.V1, reason="whoami names no project")
            return Surface.V1
        log.info("endpoint_surface", surface=Surface.V2, project_id=project_id)
        return Surface.V2

    async def _project(self) -> str | None:
        """TOGETHER_PROJECT_ID, else whoami's project (resolved once)."""
        if self._project_id is None:
            identity = await self._call("whoami", self._client.whoami)
            project = getattr(identity, "project", None)
            self._project_id = getattr(project, "id", None)
        return self._project_id
