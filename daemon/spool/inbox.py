"""The inbox: what counts as a spec file, how it is opened safely, when it has settled, and how it is claimed.

The directory is the truth; watch events only say "look again". Claiming is one rename on one filesystem.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from daemon.config import Settings
from daemon.errors import SpecError, StartupError
from daemon.spec import JobSpec, parse_spec
from daemon.spool.files import fsync_dir
from daemon.spool.names import is_candidate, kept_name, printable

log = structlog.get_logger()

# A spec that parses is claimed once two looks at least this far apart (monotonic clock) saw the same inode, size
# and mtime (a writer still writing changes them), and, where the kernel can tell, nobody holds it open for writing.
STABLE_S = 0.05


class _BeingWritten(Exception):
    """Some process holds the file open for writing."""


Identity = tuple[int, int, int]  # inode, size, mtime_ns


@dataclass
class Arrival:
    """A file found in the inbox and judged: a spec to run, or an input to reject with its problems."""

    path: Path
    job_id: str
    name: str
    spec: JobSpec | None = None
    data: bytes | None = None
    problems: list[str] = field(default_factory=list)
    identity: Identity | None = None

    @property
    def rejected(self) -> bool:
        """True when the input cannot become a job."""
        return self.spec is None


@dataclass
class Unsettled:
    """A file that does not parse yet and is younger than the settle window: look again at `due` (epoch s)."""

    path: Path
    due: float


class Sightings:
    """What the last looks at the inbox saw, by name: a spec is stable once its identity held for STABLE_S."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Identity, float]] = {}

    def stable_for_s(self, name: str, identity: Identity) -> float:
        """How long (s) `name` has had this identity; 0 when it is new or changed (it is noted as seen now)."""
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is not None and seen[0] == identity:
            return now - seen[1]
        self._seen[name] = (identity, now)
        return 0.0

    def keep_only(self, names: set[str]) -> None:
        """Forget names no longer in the inbox."""
        for name in set(self._seen) - names:
            del self._seen[name]


def job_id_for(name: str, data: bytes) -> str:
    """`<name>-<first 8 hex of sha256(bytes)>`: the same bytes always give the same job."""
    return f"{name}-{hashlib.sha256(data).hexdigest()[:8]}"


def safe_stem(path: Path) -> str:
    """A rejected input's name: its file stem reduced to characters that cannot escape the outbox."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).lstrip("._-")[:64]
    return stem or "input"


def inspect(
    path: Path, settings: Settings, now: float | None = None, sightings: Sightings | None = None
) -> Arrival | Unsettled | None:
    """Judge one inbox entry without following links or blocking; None when it vanished meanwhile.

    Without `sightings` (a one-off look) a spec that parses counts as stable."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)
    problem = _type_problem(st, settings.max_spec_bytes)
    if problem is None:
        try:
            data = _read_regular(path, settings.max_spec_bytes, identity)
        except _BeingWritten:
            return Unsettled(path=path, due=time.time() + STABLE_S)
        except OSError as exc:
            problem = (
                f"cannot be read by finetuned ({exc.strerror}; owner uid {st.st_uid}, mode {st.st_mode & 0o7777:04o})"
            )
        else:
            if data is None:
                return None
            when = now if now is not None else time.time()
            return _judge_content(path, data, identity, settings, now=when, sightings=sightings)
    stem = safe_stem(path)
    marker = f"{problem}:{printable(path.name)}:{st.st_ino}:{st.st_mtime_ns}".encode()
    return Arrival(path=path, job_id=job_id_for(stem, marker), name=stem, problems=[problem], identity=identity)


def _judge_content(
    path: Path, data: bytes, identity: Identity, settings: Settings, *, now: float, sightings: Sightings | None
) -> Arrival | Unsettled:
    """A spec to claim, an input to reject, or a file to look at again once it has settled."""
    age_s = now - identity[2] / 1e9
    try:
        spec = parse_spec(data, printable(path.name))
    except SpecError as exc:
        if age_s < settings.settle_s:
            return Unsettled(path=path, due=identity[2] / 1e9 + settings.settle_s)
        stem = safe_stem(path)
        return Arrival(
            path=path, job_id=job_id_for(stem, data), name=stem, data=data, problems=exc.problems, identity=identity
        )
    if sightings is not None:
        # A slow writer's first lines can already parse ("name: x\ndataset: ..."): claim only a file at rest.
        stable_s = sightings.stable_for_s(path.name, identity)
        if stable_s < STABLE_S:
            return Unsettled(path=path, due=time.time() + STABLE_S - stable_s)
    return Arrival(
        path=path, job_id=job_id_for(spec.name, data), name=spec.name, spec=spec, data=data, identity=identity
    )


_KIND_PROBLEMS = (
    (stat.S_ISLNK, "is a symbolic link: finetuned never follows links dropped into the inbox"),
    (stat.S_ISDIR, "is a directory, not a spec file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
)


def _type_problem(st: os.stat_result, max_bytes: int) -> str | None:
    for is_kind, problem in _KIND_PROBLEMS:
        if is_kind(st.st_mode):
            return problem
    if st.st_size > max_bytes:
        return f"is {st.st_size} bytes, over the {max_bytes}-byte limit for spec files (FINETUNED_MAX_SPEC_BYTES)"
    return None


def _read_regular(path: Path, max_bytes: int, identity: Identity) -> bytes | None:
    """Read a regular file with O_NOFOLLOW|O_NONBLOCK, so a swapped-in link or FIFO can neither redirect nor hang;
    None when it is not the file that was looked at, or it changed while being read (judged on the next pass)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink between lstat and open: judged on the next pass
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        if _open_for_writing(fd):
            raise _BeingWritten(path.name)
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 16))):
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
        return b"".join(chunks) if (after.st_ino, after.st_size, after.st_mtime_ns) == identity else None
    finally:
        os.close(fd)


def _open_for_writing(fd: int) -> bool:
    """True when some process has the file open for writing: a read lease is refused (EAGAIN) then (Linux). Only
    tried once SIGIO is ignored (the service does it), as a writer opening the file while the lease is held for
    these microseconds signals the holder; False when the kernel cannot tell (another owner's file, NFS)."""
    if not hasattr(fcntl, "F_SETLEASE") or signal.getsignal(signal.SIGIO) != signal.SIG_IGN:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def scan(inbox: Path, settings: Settings, sightings: Sightings | None = None) -> list[Arrival | Unsettled]:
    """Judge every candidate in the inbox, oldest first (blocking: run it in a thread).

    An entry that cannot even be judged is logged and skipped: one input never stops the scan of the others."""
    try:
        entries = [e for e in os.scandir(inbox) if is_candidate(e.name)]
    except FileNotFoundError:
        return []
    except OSError as exc:  # e.g. the inbox's mode was changed under us: nothing to judge until it is fixed
        log.error("inbox_unreadable", inbox=str(inbox), error=str(exc))
        return []
    results: list[tuple[float, Arrival | Unsettled]] = []
    for entry in entries:
        try:
            judged = inspect(Path(entry.path), settings, sightings=sightings)
            mtime = entry.stat(follow_symlinks=False).st_mtime if judged is not None else 0.0
        except (OSError, ValueError, RecursionError) as exc:  # one input's failure, never the scan's
            log.error("inbox_entry_unjudged", file=printable(entry.name), error=repr(exc)[:300])
            continue
        if judged is not None:
            results.append((mtime, judged))
    if sightings is not None:
        sightings.keep_only({e.name for e in entries})
    return [judged for _, judged in sorted(results, key=lambda pair: pair[0])]


def claim(arrival: Arrival, jobs_dir: Path) -> Path:
    """Move the spec out of the inbox into `jobs_dir/<job_id>/` with one rename of the file and one of the folder;
    returns the claimed spec's absolute path."""
    staging = jobs_dir / f".claim-{arrival.job_id}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    name = kept_name(arrival.path.name)
    os.rename(arrival.path, staging / name)
    final = jobs_dir / arrival.job_id
    os.rename(staging, final)
    fsync_dir(jobs_dir)
    return final.resolve() / name


def check_same_filesystem(settings: Settings) -> None:
    """Refuse to start when a rename from the inbox into the state folder or the outbox would fail (EXDEV)."""
    probe = settings.inbox / f".finetuned-probe-{os.getpid()}"
    for target_dir in (settings.jobs_dir, settings.outbox):
        probe.write_bytes(b"")
        target = target_dir / probe.name
        try:
            os.rename(probe, target)
        except OSError as exc:
            probe.unlink(missing_ok=True)
            raise StartupError(
                f"cannot rename from {settings.inbox} into {target_dir} ({exc.strerror}): inbox, outbox and state "
                "folder must be on one filesystem (under systemd: one ReadWritePaths= root holding all three)"
            ) from exc
        target.unlink()
