"""Disk space: telling a full disk from other errors, and waiting for space to come back.

A full disk is nobody's fault in particular: work that needs to write waits for space (with a clear status) instead
of failing, and resumes where it stopped once space returns.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger()

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT (also as the cause of another error) and SQLite's "database or disk is full"."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if isinstance(seen, sqlite3.Error) and "disk is full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def has_space(paths: Iterable[Path], min_free_bytes: int) -> bool:
    """True when every filesystem holding `paths` has at least `min_free_bytes` free (blocking: statvfs)."""
    try:
        return all(free_bytes(p) >= min_free_bytes for p in paths)
    except OSError:
        return True  # cannot tell (e.g. a folder vanished): let the write itself find out


class DiskSpace:
    """Whether writing work may go on: closed by a full disk, reopened once every spool filesystem has space."""

    def __init__(self, paths: Iterable[Path], min_free_bytes: int, probe_interval_s: float) -> None:
        self.paths = tuple(paths)
        self.min_free_bytes = min_free_bytes
        self.probe_interval_s = probe_interval_s
        self.full_since: float | None = None  # loop time the disk was found full, None while there is space

    @property
    def is_full(self) -> bool:
        """True while writing is paused for lack of space."""
        return self.full_since is not None

    async def check(self) -> bool:
        """True when there is space; notes (and logs once) a full disk otherwise."""
        if await asyncio.to_thread(has_space, self.paths, self.min_free_bytes):
            self._resumed()
            return True
        self.found_full("less than FINETUNED_MIN_FREE_BYTES free")
        return False

    def found_full(self, error: str) -> None:
        """A write failed (or would) for lack of space: pause writing work."""
        if self.full_since is None:
            self.full_since = asyncio.get_running_loop().time()
            log.error(
                "disk_full_paused",
                error=error[:300],
                paths=[str(p) for p in self.paths],
                min_free_bytes=self.min_free_bytes,
            )

    async def wait(self) -> None:
        """Return once there is space again (at least `min_free_bytes` on every spool filesystem)."""
        while True:
            await asyncio.sleep(self.probe_interval_s)  # at least once: the write that failed may need more room
            if await asyncio.to_thread(has_space, self.paths, self.min_free_bytes):
                break
        self._resumed()

    def _resumed(self) -> None:
        if self.full_since is not None:
            self.full_since = None
            log.info("disk_space_back", paths=[str(p) for p in self.paths])
