"""Together's Batch API over the contract's `/v1/batches` (create, retrieve, list), and batch files' content.

`BatchWire` drives the SDK's AsyncTogether through Stainless's raw `get/post(path, cast_to=httpx.Response)`, like
`EndpointWire` (nothing here imports the SDK); answers are read as `{"job": {...}}` or the bare job object.
"""

from __future__ import annotations

from typing import Any

from daemon.remote.api import RemoteBatch
from daemon.remote.endpoints import RawWire, rows

BATCH_ENDPOINT = "/v1/chat/completions"


def _job(body: Any) -> RemoteBatch:
    job = body.get("job") if isinstance(body, dict) and isinstance(body.get("job"), dict) else body
    return RemoteBatch.from_json(job if isinstance(job, dict) else {})


class BatchWire(RawWire):
    """The batch operations."""

    async def create(self, input_file_id: str) -> RemoteBatch:
        """Submit the uploaded requests as one batch (24 h window): sent once, the caller journals and adopts."""
        body = {"endpoint": BATCH_ENDPOINT, "input_file_id": input_file_id, "completion_window": "24h"}
        return _job(await self._request("create batch", "post", "/v1/batches", body=body))

    async def get(self, batch_id: str) -> RemoteBatch:
        """The batch's status, progress and result files."""
        return _job(await self._request("get batch", "get", f"/v1/batches/{batch_id}"))

    async def find(self, input_file_id: str) -> RemoteBatch | None:
        """The batch made from this input file, if one was (how a batch created just before a crash is adopted)."""
        body = await self._request("list batches", "get", "/v1/batches")
        found = [_job(row) for row in rows(body)]
        return next((batch for batch in found if batch.input_file_id == input_file_id), None)

    async def cancel(self, batch_id: str) -> None:
        """Ask Together to stop the batch (what it answered so far is kept)."""
        await self._request("cancel batch", "post", f"/v1/batches/{batch_id}/cancel")
