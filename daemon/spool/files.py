"""Crash-atomic file writes for everything users read (outbox files, status.json): temp file, fsync, rename; and
the forgiving JSON read of such files."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temp file behind
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    """Atomically write `value` as pretty JSON (UTF-8, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode())


async def write_json(path: Path, value: Any) -> None:
    """`atomic_write_json` off the event loop."""
    await asyncio.to_thread(atomic_write_json, path, value)


async def write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write_bytes` off the event loop."""
    await asyncio.to_thread(atomic_write_bytes, path, data)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(inbox: Path, filename: str, data: bytes) -> Path:
    """Put a spec into the inbox atomically (hidden temporary name, fsync, rename), never over another file."""
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / filename
    counter = 1
    while target.exists():
        target = inbox / f"{Path(filename).stem}.{counter}{Path(filename).suffix}"
        counter += 1
    tmp = inbox / f".{target.name}.tmp"
    atomic_write_bytes(tmp, data)
    tmp.rename(target)
    fsync_dir(inbox)
    return target


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
