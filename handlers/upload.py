"""Step `upload`: send the prepared train (and validation) JSONL to Together, never the same bytes twice.

The journal records `upload.intent` (the sha256) before the upload and `file_id` after it; a rerun with the same
bytes reuses the recorded file, and the adapter adopts a file the server already has (409 by checksum).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import DatasetError
from daemon.jobs.context import JobContext, JournalKey, StepInputs, StepOutput
from daemon.remote.api import RemoteFile
from daemon.remote.backoff import retry

HASH_CHUNK_BYTES = 1024 * 1024
log = structlog.get_logger()


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks (blocking: call it in a thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


async def _hash(path: Path) -> str:
    try:
        return await asyncio.to_thread(sha256_file, path)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc


async def _upload_one(ctx: JobContext, path: Path, *, id_key: JournalKey, intent_key: JournalKey) -> dict[str, Any]:
    """Upload one file with journal bookkeeping; returns its output record."""
    remote = ctx.fine_tuning()
    sha256 = await _hash(path)
    if ctx.journal.get(intent_key) == sha256:
        found = await _already_uploaded(ctx, path, sha256, ctx.journal.get(id_key))
        if found is not None:
            if ctx.journal.get(id_key) != found.id:
                await ctx.journal.record(id_key, found.id)
            return _record(found, sha256, reused=True)
    await ctx.journal.record(intent_key, sha256)
    uploaded: RemoteFile = await retry(
        policy=ctx.settings.retry_policy, what="upload", call=lambda: remote.upload(path, sha256=sha256)
    )
    await ctx.journal.record(id_key, uploaded.id)
    log.info("file_uploaded", file_id=uploaded.id, sha256=sha256, bytes=uploaded.bytes, reused=uploaded.reused)
    return _record(uploaded, sha256, reused=uploaded.reused)


async def _already_uploaded(ctx: JobContext, path: Path, sha256: str, recorded_id: str | None) -> RemoteFile | None:
    """The file an earlier run of this step uploaded: by its journaled id, or (crash before the id was saved) by
    listing files with this name and size and checking their content hash."""
    remote = ctx.fine_tuning()
    if recorded_id:
        found = await retry(
            policy=ctx.settings.retry_policy, what="get file", call=lambda: remote.get_file(recorded_id)
        )
    else:
        size = (await asyncio.to_thread(path.stat)).st_size
        found = await retry(
            policy=ctx.settings.retry_policy, what="find file", call=lambda: remote.find_file(path.name, size, sha256)
        )
    if found is not None:
        log.info("upload_skipped", file_id=found.id, sha256=sha256, reason="uploaded by an earlier run of this step")
    return found


def _record(file: RemoteFile, sha256: str, *, reused: bool) -> dict[str, Any]:
    return {"file_id": file.id, "sha256": sha256, "bytes": file.bytes, "reused": reused}


async def run(ctx: JobContext, inputs: StepInputs) -> StepOutput:
    """Upload `prepare.train_file`, and `prepare.validation_file` when the fine-tune runs evaluations."""
    prepared = inputs["prepare"]
    train = await _upload_one(
        ctx, Path(prepared["train_file"]), id_key=JournalKey.FILE_ID, intent_key=JournalKey.UPLOAD_INTENT
    )
    output: StepOutput = {"file_id": train["file_id"], "train": train, "validation_file_id": None}
    validation = prepared.get("validation_file")
    wants_evals = ctx.spec.finetune is not None and ctx.spec.finetune.n_evals > 0
    if validation and wants_evals:
        val = await _upload_one(
            ctx, Path(validation), id_key=JournalKey.VALIDATION_FILE_ID, intent_key=JournalKey.VALIDATION_UPLOAD_INTENT
        )
        output["validation_file_id"] = val["file_id"]
        output["validation"] = val
    await ctx.progress(done=1, total=1, file_id=train["file_id"])
    return output
