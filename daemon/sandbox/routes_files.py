"""Sandbox Files API: the SDK's three-call upload (302 to a presigned URL, PUT, preprocess) and file CRUD."""

from __future__ import annotations

import secrets

from aiohttp import web

from daemon.sandbox.faults import error_response
from daemon.sandbox.sim import SandboxFile, checksum_of
from daemon.sandbox.state import SANDBOX

PURPOSES = frozenset({"fine-tune", "calibration", "eval", "batch-api"})
FILE_TYPES = frozenset({"jsonl", "parquet", "csv"})
routes = web.RouteTableDef()


def _not_found(file_id: str) -> web.Response:
    return error_response(404, f"File {file_id} not found", code="file_not_found", param="id")


def _uploaded(request: web.Request) -> SandboxFile | None:
    found = request.app[SANDBOX].files.get(request.match_info["id"])
    return found if found is not None and found.content is not None else None


@routes.post("/v1/files")
async def request_upload(request: web.Request) -> web.Response:
    """Step 1: metadata only; 302 to a presigned URL, or 409 with the id of a file with the same checksum."""
    sb = request.app[SANDBOX]
    form = await request.post()
    fields = {k: str(form.get(k, "")) for k in ("purpose", "file_name", "file_type", "checksum")}
    missing = [k for k, v in fields.items() if not v]
    if missing:
        return error_response(400, f"missing form fields: {', '.join(missing)}", param=missing[0])
    if fields["purpose"] not in PURPOSES or fields["file_type"] not in FILE_TYPES:
        return error_response(400, "unsupported purpose or file_type", param="purpose")
    for existing in sb.files.values():
        if existing.checksum == fields["checksum"] and existing.content is not None:
            # x-should-retry: false tells the SDK not to retry the 409 before adopting the file.
            return error_response(
                409,
                f"A file with this checksum already exists: {existing.id}",
                code="file_already_exists",
                headers={"x-should-retry": "false"},
                extra={"file_id": existing.id},
            )
    file = SandboxFile(
        id=sb.new_id("file"),
        filename=fields["file_name"],
        purpose=fields["purpose"],
        file_type=fields["file_type"],
        checksum=fields["checksum"],
        created_at=int(sb.clock()),
        signature=secrets.token_hex(16),
    )
    sb.files[file.id] = file
    location = request.url.origin().join(request.app.router["s3_put"].url_for(id=file.id))
    location = location.with_query({"X-Amz-Signature": file.signature})
    return web.Response(status=302, headers={"Location": str(location), "X-Together-File-Id": file.id})


@routes.put("/_s3/upload/{id}", name="s3_put")
async def presigned_put(request: web.Request) -> web.Response:
    """Step 2: the raw bytes, no auth; the signature and the declared checksum must match."""
    file = request.app[SANDBOX].files.get(request.match_info["id"])
    if file is None or request.query.get("X-Amz-Signature") != file.signature:
        return web.Response(status=403, text="SignatureDoesNotMatch")
    data = await request.read()
    if checksum_of(data) != file.checksum:
        return web.Response(status=400, text="BadDigest: the body does not match the declared checksum")
    file.content = data
    return web.Response(status=200)


@routes.post("/v1/files/{id}/preprocess")
async def preprocess(request: web.Request) -> web.Response:
    """Step 3: validate the uploaded content and answer the FileResponse (with its validation report)."""
    file = request.app[SANDBOX].files.get(request.match_info["id"])
    if file is None:
        return _not_found(request.match_info["id"])
    if file.content is None:
        return error_response(400, f"File {file.id} has no content yet: upload it first", param="id")
    file.validate()
    return web.json_response(file.to_json())


@routes.get("/v1/files")
async def list_files(request: web.Request) -> web.Response:
    """Every uploaded file."""
    files = [f.to_json() for f in request.app[SANDBOX].files.values() if f.content is not None]
    return web.json_response({"object": "list", "data": files})


@routes.get("/v1/files/{id}")
async def get_file(request: web.Request) -> web.Response:
    """One file's metadata."""
    file = _uploaded(request)
    return web.json_response(file.to_json()) if file else _not_found(request.match_info["id"])


@routes.delete("/v1/files/{id}")
async def delete_file(request: web.Request) -> web.Response:
    """Delete a file."""
    file = _uploaded(request)
    if file is None:
        return _not_found(request.match_info["id"])
    del request.app[SANDBOX].files[file.id]
    return web.json_response({"id": file.id, "deleted": True})


@routes.get("/v1/files/{id}/content")
async def file_content(request: web.Request) -> web.Response:
    """The raw bytes of a file."""
    file = _uploaded(request)
    if file is None or file.content is None:
        return _not_found(request.match_info["id"])
    return web.Response(body=file.content, content_type="application/octet-stream")
