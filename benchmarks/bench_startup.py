"""Start-up cost of the CLI: `finetuned --help`, `finetuned status` on a spool of jobs, and `finetuned run --once`
on an empty spool (the daemon's whole start-to-exit), each as a fresh process, best and median of N runs.

    python benchmarks/bench_startup.py [--runs 15] [--root DIR] [--label NAME]

`--root` runs another checkout of the project (e.g. a `git worktree` of an older commit) with this interpreter,
so two revisions can be compared in one run: the process starts in that folder, so `python -m daemon` imports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def make_spool(folder: Path, jobs: int) -> dict[str, str]:
    """A spool whose outbox holds `jobs` finished jobs' status.json files (what `status` reads)."""
    for i in range(jobs):
        job = folder / "outbox" / f"job-{i:03d}-0123abcd"
        job.mkdir(parents=True)
        document = {"job_id": job.name, "name": f"job-{i:03d}", "status": "completed", "step": "report"}
        (job / "status.json").write_text(json.dumps(document))
    for name in ("inbox", "state"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {f"--{k}": str(folder / v) for k, v in (("inbox", "inbox"), ("outbox", "outbox"), ("state-dir", "state"))}


def timed(command: list[str], cwd: Path, runs: int) -> list[float]:
    """Wall seconds of `runs` fresh processes."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    """Print one Markdown table row per command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to run (default: this one)")
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spool = make_spool(Path(tmp) / "spool", jobs=20)
        flags = [part for pair in spool.items() for part in pair]
        # The daemon refuses an outbox its state database does not know (daemon/jobs/consistency.py): its own spool.
        empty = [part for pair in make_spool(Path(tmp) / "empty", jobs=0).items() for part in pair]
        base = [sys.executable, "-m", "daemon"]
        commands = {
            "finetuned --help": [*base, "--help"],
            "finetuned status (20 jobs)": [*base, "status", *flags],
            "finetuned run --once (empty spool)": [*base, "run", "--once", *empty],
        }
        for name, command in commands.items():
            times = timed(command, args.root.resolve(), args.runs)
            print(f"| {args.label} | {name} | {min(times):.3f} s | {statistics.median(times):.3f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
