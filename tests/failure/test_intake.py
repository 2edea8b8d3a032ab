"""Rows 1-4 and 12 of issue 12: hostile inbox entries never take the daemon down; each ends in its own outbox folder
with its reason, or is left alone with the reason logged when it cannot even be moved."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from tests.daemon.test_spec import alias_bomb
from tests.failure.conftest import NO_DAC, deliver, launch, rss_mib, stop
from tests.process import daemon_env, run_cli, run_daemon, spec_text, statuses, wait_until


def by_status(spool: Path) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for document in statuses(spool).values():
        found.setdefault(str(document["status"]), []).append(document)
    return found


def good_spec(spool: Path, name: str) -> bytes:
    return spec_text(name, spool / "data", finetune=False).encode()


async def test_alias_bomb_is_rejected_and_the_daemon_stays_alive(spool: Path) -> None:
    """A 9x9 YAML alias bomb is rejected with its reason in its own outbox folder, with memory bounded; the daemon
    serves a normal spec meanwhile and stops cleanly; `finetuned check` refuses it too."""
    process = await launch(daemon_env(spool))
    deliver(spool / "inbox", "bomb.yaml", alias_bomb())
    deliver(spool / "inbox", "after.yaml", good_spec(spool, "after"))
    await wait_until(lambda: {"rejected", "completed"} <= set(by_status(spool)), timeout_s=60)
    assert process.returncode is None and rss_mib(process.pid) < 400
    (rejected,) = by_status(spool)["rejected"]
    assert "aliases are expanded" in json.dumps(rejected["problems"])
    assert (spool / "outbox" / str(rejected["job_id"]) / "bomb.yaml").is_file()
    code, _, stderr = await stop(process)
    assert code == 0, stderr
    bomb = spool / "bomb.yaml"
    bomb.write_bytes(alias_bomb())
    code, out, _ = await run_cli(daemon_env(spool), "check", str(bomb), timeout_s=30)
    assert code == 1 and "aliases are expanded" in out


async def test_non_utf8_names_end_in_the_outbox_and_restarts_are_clean(spool: Path) -> None:
    """Specs whose names are not UTF-8 (one good, one broken) each end in an outbox folder, kept under a safe name;
    status files are UTF-8; the daemon lives and restarts cleanly, even over a claim left by an older version."""
    process = await launch(daemon_env(spool))
    deliver(spool / "inbox", b"good\xff.yaml", good_spec(spool, "goodname"))
    deliver(spool / "inbox", b"bad\xfe.yaml", b"name: [unclosed\n")
    await wait_until(lambda: {"rejected", "completed"} <= set(by_status(spool)), timeout_s=60)
    assert process.returncode is None
    (rejected,) = by_status(spool)["rejected"]
    assert rejected["file"] == "bad\\xfe.yaml"
    for path in (spool / "outbox").rglob("*"):
        os.fsencode(path.name).decode("utf-8")  # every name finetuned made is UTF-8
    code, _, stderr = await stop(process)
    assert code == 0, stderr
    old_claim = os.path.join(os.fsencode(spool / "state" / "jobs"), b"old-1234abcd")
    os.mkdir(old_claim)
    with open(os.path.join(old_claim, b"old\xff.yaml"), "wb") as fh:
        fh.write(good_spec(spool, "old"))
    for _ in range(2):
        code, _, stderr = await run_daemon(daemon_env(spool), timeout_s=60)
        assert code == 0, stderr
    assert statuses(spool)["old-1234abcd"]["status"] == "completed"  # re-adopted under a safe name, and run


async def test_unreadable_and_unmovable_inputs_never_stop_intake(spool: Path) -> None:
    """A spec the daemon user cannot read (0600, another owner) is rejected naming the error; one it cannot even
    move (a sticky inbox) is left in place with the reason logged once; the daemon stays up and serves others."""
    inbox = spool / "inbox"
    for folder in (spool, inbox):
        folder.chmod(0o755)
    unreadable = deliver(inbox, "private.yaml", good_spec(spool, "private"))
    os.chown(unreadable, 65534, 65534)
    unreadable.chmod(0o600)
    process = await launch(daemon_env(spool), prefix=NO_DAC)
    seen: dict[str, list[dict[str, object]]] = {}
    await wait_until(lambda: "rejected" in seen or bool(seen.update(by_status(spool))), timeout_s=60)
    (rejected,) = seen["rejected"]
    assert "cannot be read" in json.dumps(rejected["problems"]) and "Permission denied" in json.dumps(rejected)
    os.chown(inbox, 65534, 65534)
    inbox.chmod(0o1777)  # sticky and someone else's: only a file's owner may move it
    stuck = deliver(inbox, "stuck.yaml", b"name: [unclosed\n")
    os.chown(stuck, 65534, 65534)
    os.utime(stuck, (time.time() - 60, time.time() - 60))  # past the settle window: due for rejection now
    deliver(inbox, "later.yaml", good_spec(spool, "later"))
    await wait_until(lambda: "completed" in by_status(spool), timeout_s=60)
    await asyncio.sleep(2.5)  # two more reconcile passes over the stuck input
    assert process.returncode is None and stuck.exists()
    code, out, stderr = await stop(process)
    assert code == 0, stderr
    assert out.count('"input_left_in_inbox"') == 1, out[-3000:]


async def test_long_name_dropped_twice_keeps_the_duplicate(spool: Path) -> None:
    """A 240-character spec name dropped twice: one job, the second copy kept as its duplicate; the daemon lives."""
    name = "n" * 235 + ".yaml"
    process = await launch(daemon_env(spool))
    deliver(spool / "inbox", name, good_spec(spool, "longname"))
    await wait_until(lambda: "completed" in by_status(spool), timeout_s=60)
    deliver(spool / "inbox", name, good_spec(spool, "longname"))
    await wait_until(lambda: bool(by_status(spool)["completed"][0].get("duplicates")), timeout_s=30)
    assert process.returncode is None and not os.listdir(spool / "inbox")
    assert len(statuses(spool)) == 1
    code, _, stderr = await stop(process)
    assert code == 0, stderr


async def test_slow_writer_spec_is_claimed_only_when_complete(spool: Path) -> None:
    """A writer appending to a spec in place, every 20 ms with a few 300 ms pauses (longer than the stability
    window: the open file is what holds it), whose first part already parses, has the whole file claimed."""
    process = await launch(daemon_env(spool))
    await asyncio.sleep(1.5)  # the daemon is watching
    path = spool / "inbox" / "slow.yaml"
    lines = [f"name: slow\ndataset:\n  source: {spool / 'data'}\n", *[f"  # line {i}\n" for i in range(40)]]
    lines.append("  format: coqa\n")
    with open(path, "w") as fh:
        for i, line in enumerate(lines):
            fh.write(line)
            fh.flush()
            await asyncio.sleep(0.3 if i % 10 == 0 else 0.02)
    await wait_until(lambda: "completed" in by_status(spool), timeout_s=60)
    (done,) = by_status(spool)["completed"]
    assert (spool / "outbox" / str(done["job_id"]) / "slow.yaml").read_text() == "".join(lines)
    code, _, stderr = await stop(process)
    assert code == 0, stderr
