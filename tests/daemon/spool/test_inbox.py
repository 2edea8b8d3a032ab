"""The inbox rules: which names count, safe opening of hostile entries, the settle window, ids, claiming."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import StartupError
from daemon.spool import inbox as spool
from daemon.spool.inbox import Arrival, Unsettled
from daemon.spool.names import is_candidate

GOOD = b"name: demo\ndataset:\n  source: data/x.jsonl\n"


@pytest.fixture
def inbox(settings: Settings) -> Path:
    settings.inbox.mkdir(parents=True)
    return settings.inbox


def test_candidates_skip_temp_and_hidden_names() -> None:
    """Dotfiles, *.tmp, *.part and editor backups are never looked at."""
    assert is_candidate("job.yaml")
    for name in (".job.yaml", ".job.yaml.tmp", "job.yaml.tmp", "job.part", "job.yaml~"):
        assert not is_candidate(name)


def aged(path: Path, seconds: float = 60) -> Path:
    """Pretend the file was last written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_valid_spec_gets_deterministic_job_id(settings: Settings, inbox: Path) -> None:
    """The job id is the spec name plus 8 hex of the bytes' sha256, whatever the file is called."""
    for name in ("a.yaml", "b.yaml"):
        (inbox / name).write_bytes(GOOD)
        aged(inbox / name)
    first = spool.inspect(inbox / "a.yaml", settings)
    second = spool.inspect(inbox / "b.yaml", settings)
    assert isinstance(first, Arrival) and isinstance(second, Arrival)
    assert first.job_id == second.job_id == "demo-" + __import__("hashlib").sha256(GOOD).hexdigest()[:8]
    assert not first.rejected


def test_hostile_entries_are_rejected_without_reading(settings: Settings, inbox: Path, tmp_path: Path) -> None:
    """Symlinks, FIFOs, directories and oversized files are judged from lstat alone."""
    target = tmp_path / "secret.yaml"
    target.write_bytes(GOOD)
    (inbox / "link.yaml").symlink_to(target)
    os.mkfifo(inbox / "pipe.yaml")
    (inbox / "folder").mkdir()
    (inbox / "big.yaml").write_bytes(b"#" * (settings.max_spec_bytes + 1))
    reasons = {}
    for name in ("link.yaml", "pipe.yaml", "folder", "big.yaml"):
        judged = spool.inspect(inbox / name, settings)
        assert isinstance(judged, Arrival) and judged.rejected
        reasons[name] = judged.problems[0]
    assert "symbolic link" in reasons["link.yaml"]
    assert "FIFO" in reasons["pipe.yaml"]
    assert "directory" in reasons["folder"]
    assert "over the" in reasons["big.yaml"] and "FINETUNED_MAX_SPEC_BYTES" in reasons["big.yaml"]


def test_unparsable_file_waits_for_the_settle_window(settings: Settings, inbox: Path) -> None:
    """A fresh file that does not parse is left alone until it is older than settle_s, then rejected."""
    path = inbox / "slow.yaml"
    path.write_bytes(b"name: demo\ndataset:\n  sou")
    judged = spool.inspect(path, settings)
    assert isinstance(judged, Unsettled) and judged.due > time.time()
    later = spool.inspect(path, settings, now=time.time() + settings.settle_s + 1)
    assert isinstance(later, Arrival) and later.rejected
    assert later.job_id.startswith("slow-") and "line 2: dataset" in later.problems[0]


def test_a_parsable_file_is_claimed_only_at_rest(settings: Settings, inbox: Path) -> None:
    """A slow writer's first lines may already parse: a spec is claimed only once two looks STABLE_S apart saw the
    same inode, size and mtime; a write in between starts the wait again."""
    path = inbox / "growing.yaml"
    path.write_bytes(b"name: demo\ndataset:\n  source: data/x")
    sightings = spool.Sightings()
    judged = spool.inspect(path, settings, sightings=sightings)
    assert isinstance(judged, Unsettled) and judged.due <= time.time() + spool.STABLE_S
    with open(path, "ab") as fh:
        fh.write(b"/more")
    time.sleep(spool.STABLE_S)
    assert isinstance(spool.inspect(path, settings, sightings=sightings), Unsettled)  # it grew: not stable yet
    time.sleep(spool.STABLE_S)
    arrival = spool.inspect(path, settings, sightings=sightings)
    assert isinstance(arrival, Arrival) and arrival.data == b"name: demo\ndataset:\n  source: data/x/more"


def test_unreadable_file_is_rejected_with_the_reason(settings: Settings, inbox: Path) -> None:
    """A spec the daemon cannot open is an input to reject, named with the error, owner and mode; not a crash."""
    path = inbox / "secret.yaml"
    path.write_bytes(GOOD)
    path.chmod(0o000)
    if os.access(path, os.R_OK):
        pytest.skip("running with CAP_DAC_OVERRIDE (root): tests/failure covers this with the capability dropped")
    judged = spool.inspect(path, settings)
    assert isinstance(judged, Arrival) and judged.rejected
    assert "cannot be read" in judged.problems[0] and "mode 0000" in judged.problems[0]


def test_scan_and_claim_move_the_spec(settings: Settings, inbox: Path) -> None:
    """Scanning finds only candidates; claiming moves the file into state/jobs/<job_id>/ by rename."""
    (inbox / "a.yaml").write_bytes(GOOD)
    aged(inbox / "a.yaml")
    (inbox / ".b.yaml.tmp").write_bytes(b"half")
    (found,) = spool.scan(inbox, settings)
    assert isinstance(found, Arrival)
    claimed = spool.claim(found, settings.jobs_dir)
    assert claimed == settings.jobs_dir / found.job_id / "a.yaml"
    assert claimed.read_bytes() == GOOD and not (inbox / "a.yaml").exists()
    assert (inbox / ".b.yaml.tmp").exists()


def test_same_filesystem_check_fails_clearly(settings: Settings, inbox: Path) -> None:
    """When the state folder is not reachable by rename, start-up refuses with a message naming the fix."""
    settings.outbox.mkdir()
    settings.jobs_dir.parent.mkdir()
    with pytest.raises(StartupError, match="one filesystem"):
        spool.check_same_filesystem(settings)  # jobs_dir does not exist: the rename fails like EXDEV would
    settings.jobs_dir.mkdir()
    spool.check_same_filesystem(settings)
    assert list(inbox.iterdir()) == []


def test_a_spec_held_open_for_writing_is_not_claimed(settings: Settings, inbox: Path) -> None:
    """A stable spec that some process still holds open for writing waits (read lease refused) until closed."""
    import signal

    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # as the service does before any scan
    try:
        path = inbox / "open.yaml"
        with open(path, "wb") as writer:
            writer.write(GOOD)
            writer.flush()
            sightings = spool.Sightings()
            for _ in range(3):
                assert isinstance(spool.inspect(path, settings, sightings=sightings), Unsettled)
                time.sleep(spool.STABLE_S)
        time.sleep(spool.STABLE_S)
        spool.inspect(path, settings, sightings=sightings)
        time.sleep(spool.STABLE_S)
        assert isinstance(spool.inspect(path, settings, sightings=sightings), Arrival)
    finally:
        signal.signal(signal.SIGIO, previous)
