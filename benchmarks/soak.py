"""Soak (not in CI): the daemon under random kill -9, API faults and a stream of specs, hostile ones included.

For --duration-s: a sandbox in its own process answers a share (--fault-rate) of requests 429/5xx; specs arrive by
rename every --spec-every-s (about a third hostile: an alias bomb, a non-UTF-8 name, a 240-character name, a
re-drop of earlier bytes, broken YAML, an empty file, deep nesting, a symlink); the daemon is killed with SIGKILL
at random (mean --kill-every-s) and restarted at once, as systemd would. A daemon exit we did not cause is a
finding. Then the stream stops, `run --once` finishes the rest, and the invariants are checked:

- every input ends in exactly one outbox folder (as the job's spec copy, a rejected input or a kept duplicate),
  the inbox is empty;
- one fine-tune per job (the sandbox's jobs are exactly the outbox's fine-tune ids), every job ended;
- no temp files, no `.staging-*` or `.claim-*` left;
- memory: the daemon's RSS sampled every 2 s; the peak of the first and of the last quarter of the run.

Usage: .venv/bin/python benchmarks/soak.py [--duration-s 3600] [--kill-every-s 30] [--fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "coqa-demo"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def good_spec(name: str, finetune: bool) -> bytes:
    """A spec for the demo dataset, with a fine-tune or data only."""
    text = f"name: {name}\ndataset:\n  source: {DATA}\n  format: coqa\n"
    if finetune:
        text += f"finetune:\n  model: {MODEL}\n  n_epochs: 1\n  suffix: soak\n  max_price_usd: 5\n"
    return text.encode()


def alias_bomb() -> bytes:
    """9 levels of 9 aliases (510 bytes, a billion values once expanded)."""
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return ("\n".join([*lines, "name: *a9"]) + "\n").encode()


def hostile(n: int, earlier: list[tuple[bytes, bytes]], rng: random.Random) -> tuple[bytes, bytes]:
    """(file name as bytes, content) of one hostile input; contents differ between inputs (but for re-drops of
    good specs, which are duplicates of their job), so each can be found in the outbox by its hash."""
    mark = f"# {n}\n".encode()
    good = [(name, content) for name, content in earlier if name.startswith(b"spec-")]
    kinds = {
        "bomb": (f"bomb-{n}.yaml".encode(), alias_bomb() + mark),
        "nonutf8": (f"odd-{n}-".encode() + b"\xff\xfe.yaml", good_spec(f"odd-{n}", finetune=False)),
        "long": ((f"long-{n}-" + "x" * 225 + ".yaml").encode(), good_spec(f"long-{n}", finetune=False)),
        "deep": (f"deep-{n}.yaml".encode(), mark + b"[" * 50_000),
        # blank ("the file is empty"), and unique: the checks tell inputs apart by content (found by a 40-min run)
        "empty": (f"empty-{n}.yaml".encode(), b" " * (n % 997 + 1) + b"\n" * (n // 997)),
        "broken": (f"broken-{n}.yaml".encode(), b"name: [unclosed\n" + mark),
    }
    if good:
        name, content = rng.choice(good)
        kinds["redrop"] = (b"again-" + str(n).encode() + b"-" + name[:40], content)
    return kinds[rng.choice(sorted(kinds))]


def deliver(inbox: Path, name: bytes, content: bytes) -> None:
    """Write a hidden temp file and rename it into the inbox (old mtime, so unparsable ones are due at once)."""
    folder = os.fsencode(inbox)
    tmp = os.path.join(folder, b"." + hashlib.sha256(name).hexdigest()[:12].encode() + b".tmp")
    with open(tmp, "wb") as fh:
        fh.write(content)
    then = time.time() - 60
    os.utime(tmp, (then, then))
    os.rename(tmp, os.path.join(folder, name))


class Soak:
    """One spool, one sandbox process, one daemon process at a time."""

    def __init__(self, spool: Path, sandbox_url: str, rng: random.Random) -> None:
        self.spool, self.sandbox_url, self.rng = spool, sandbox_url, rng
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNED_", "TOGETHER_"))}
        self.env.update(
            FINETUNED_INBOX=str(spool / "inbox"),
            FINETUNED_OUTBOX=str(spool / "outbox"),
            FINETUNED_STATE_DIR=str(spool / "state"),
            FINETUNED_POLL_MIN_S="0.2",
            FINETUNED_POLL_MAX_S="1",
            FINETUNED_RETRY_BASE_S="0.05",
            FINETUNED_RETRY_CAP_S="1",
            FINETUNED_SETTLE_S="1",
            FINETUNED_MAX_STEP_ATTEMPTS="1000",
            TOGETHER_BASE_URL=sandbox_url,
            TOGETHER_API_KEY="soak-key",
            HF_HUB_OFFLINE="1",
        )
        self.daemon: subprocess.Popen[bytes] | None = None
        self.inputs: list[tuple[bytes, bytes]] = []
        self.kills = 0
        self.unexpected_exits: list[int] = []
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MiB)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start the daemon (stdout discarded: the outbox and the sandbox are what is checked)."""
        command = [sys.executable, "-m", "daemon", "run", *args]
        return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def tick(self, now_s: float) -> None:
        """Keep a daemon running; note an exit we did not cause; sample its memory."""
        if self.daemon is not None and self.daemon.poll() is not None:
            self.unexpected_exits.append(self.daemon.returncode)
            _, stderr = self.daemon.communicate()
            print(f"daemon exited by itself: {self.daemon.returncode}: {stderr.decode()[-800:]}", file=sys.stderr)
            self.daemon = None
        if self.daemon is None:
            self.daemon = self.start()
        try:
            pages = int(Path(f"/proc/{self.daemon.pid}/statm").read_text().split()[1])
            self.rss.append((now_s, pages * PAGE_BYTES / 2**20))
        except (OSError, ValueError, IndexError):
            pass

    def kill(self) -> None:
        """kill -9 the daemon; the next tick restarts it."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait()
            self.kills += 1
            self.daemon = None

    def drop(self, n: int) -> None:
        """Deliver the n-th input: a good spec (most with a fine-tune) or, a third of the time, a hostile one."""
        if self.rng.random() < 0.33:
            name, content = hostile(n, self.inputs, self.rng)
        else:
            finetune = self.rng.random() < 0.7
            name, content = f"spec-{n}.yaml".encode(), good_spec(f"spec-{n}", finetune)
        deliver(self.spool / "inbox", name, content)
        self.inputs.append((name, content))

    def finish(self) -> int:
        """Stop the current daemon (SIGTERM) and let `run --once` complete what is left."""
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(timeout=60)
        for _ in range(5):
            done = self.start("--once")
            _, stderr = done.communicate(timeout=1800)
            if done.returncode == 0:
                return 0
            print(f"run --once exited {done.returncode}: {stderr.decode()[-2000:]}", file=sys.stderr)
        return 1


def outbox_files(outbox: Path) -> dict[str, int]:
    """sha256 of every input kept in the outbox -> how many folders hold one (spec copies, rejects, duplicates)."""
    found: dict[str, set[str]] = {}
    for folder in outbox.iterdir():
        if not folder.is_dir():
            continue
        kept = [p for p in folder.iterdir() if p.is_file() or p.is_symlink()]
        kept += list((folder / "duplicates").iterdir()) if (folder / "duplicates").is_dir() else []
        for path in kept:
            if path.name in {"status.json", "log.jsonl"} or path.suffix not in {".yaml", ".json", ""}:
                continue
            digest = hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()
            found.setdefault(digest, set()).add(folder.name)
    return {digest: len(folders) for digest, folders in found.items()}


def check(soak: Soak, sandbox_url: str) -> list[str]:
    """The invariants; returns what is broken."""
    spool, problems = soak.spool, []
    if os.listdir(spool / "inbox"):
        problems.append(f"inbox not empty: {os.listdir(spool / 'inbox')[:5]}")
    held = outbox_files(spool / "outbox")
    for name, content in soak.inputs:
        if held.get(hashlib.sha256(content).hexdigest(), 0) != 1:
            problems.append(f"input {name!r} is in {held.get(hashlib.sha256(content).hexdigest(), 0)} folders")
    leftovers = [str(p) for p in spool.rglob("*") if p.name.startswith((".staging-", ".claim-", ".finetuned-"))]
    leftovers += [str(p) for p in spool.rglob("*.tmp")]
    if leftovers:
        problems.append(f"left over: {leftovers[:5]}")
    documents = [json.loads(p.read_text()) for p in (spool / "outbox").glob("*/status.json")]
    unfinished = [d["job_id"] for d in documents if d.get("status") not in {"completed", "rejected", "failed"}]
    if unfinished:
        problems.append(f"jobs not ended: {unfinished[:5]}")
    ours = sorted(d["remote"]["fine_tune_id"] for d in documents if (d.get("remote") or {}).get("fine_tune_id"))
    request = urllib.request.Request(f"{sandbox_url}/v1/fine-tunes", headers={"Authorization": "Bearer soak-key"})
    with urllib.request.urlopen(request, timeout=30) as response:
        theirs = sorted(job["id"] for job in json.load(response)["data"])
    if ours != theirs:
        problems.append(f"fine-tunes: {len(theirs)} on the sandbox, {len(ours)} in the outbox (or different ids)")
    if soak.unexpected_exits:
        problems.append(f"the daemon exited by itself {len(soak.unexpected_exits)} times: {soak.unexpected_exits[:5]}")
    return problems


def run(args: argparse.Namespace, spool: Path) -> int:
    """The soak itself; prints a Markdown row and the problems found."""
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "daemon.sandbox", "--port", str(port), "--speed", "500"]
        + ["--fault-rate", str(args.fault_rate), "--retry-after-s", "0.2", "--seed", str(args.seed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    soak = Soak(spool, url, random.Random(args.seed))
    (spool / "inbox").mkdir()
    started = time.monotonic()
    next_kill = next_spec = 0.0
    try:
        time.sleep(1.0)
        n = 0
        while (now := time.monotonic() - started) < args.duration_s:
            soak.tick(now)
            if now >= next_spec:
                soak.drop(n)
                n += 1
                next_spec = now + args.spec_every_s
            if now >= next_kill and now > 0:
                soak.kill()
                next_kill = now + soak.rng.expovariate(1 / args.kill_every_s)
            time.sleep(2.0 if args.spec_every_s >= 2 else min(2.0, args.spec_every_s))
        finished = soak.finish()
        problems = check(soak, url) + ([] if finished == 0 else ["run --once did not finish"])
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    quarter = args.duration_s / 4
    early = max((m for t, m in soak.rss if t < quarter), default=0.0)
    late = max((m for t, m in soak.rss if t >= 3 * quarter), default=0.0)
    print("| duration | inputs | kill -9 | fault rate | peak RSS first / last quarter | problems |")
    print("|---:|---:|---:|---:|---:|---|")
    print(
        f"| {args.duration_s:.0f} s | {len(soak.inputs)} | {soak.kills} | {args.fault_rate:.0%} | "
        f"{early:.0f} / {late:.0f} MiB | {len(problems) or 'none'} |"
    )
    for problem in problems:
        print(f"- {problem}")
    return 1 if problems else 0


def main() -> int:
    """Parse flags and soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--kill-every-s", type=float, default=30.0)
    parser.add_argument("--spec-every-s", type=float, default=2.0)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="finetuned-soak-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
