"""The daemon itself: pickup latency, idle cost, and event-loop lag under 100 jobs.

(a) pickup: a running daemon (subprocess); specs delivered by rename one at a time; the time from the rename to
    the job's outbox folder appearing (the claim), p50 / p99 / max. Target p50 <= 100 ms, p99 <= 500 ms.
(b) idle: the same daemon with nothing to do for --idle-s seconds: CPU share and RSS at start, end and peak,
    sampled from /proc every 5 s. Target: CPU ~0 %, flat memory.
(c) loop lag: 100 jobs (fine-tune + evaluation, against a sandbox in its own process) in one daemon process, with
    a probe task measuring how late a 10 ms sleep wakes; p50 / p99 / max. Target p99 <= 50 ms.

Usage: .venv/bin/python benchmarks/bench_daemon.py [--specs 50] [--idle-s 600] [--jobs 100] [--skip-idle]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import Settings  # noqa: E402
from daemon.jobs.pipeline import STEPS  # noqa: E402
from daemon.logs import configure  # noqa: E402
from daemon.remote.together import TogetherAPI  # noqa: E402
from daemon.service import Service  # noqa: E402

DATA = ROOT / "examples" / "data" / "coqa-demo"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def spool_env(spool: Path, **extra: str) -> dict[str, str]:
    """A daemon environment over `spool` with the default timings (the point is to measure them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNED_", "TOGETHER_"))}
    env.update(
        FINETUNED_INBOX=str(spool / "inbox"),
        FINETUNED_OUTBOX=str(spool / "outbox"),
        FINETUNED_STATE_DIR=str(spool / "state"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(spool / "hf"),
    )
    env.update(extra)
    return env


def deliver(inbox: Path, name: str) -> float:
    """Write a data-only spec as a hidden temp file and rename it in; returns the rename's time."""
    tmp = inbox / f".{name}.yaml.tmp"
    tmp.write_text(f"name: {name}\ndataset:\n  source: {DATA}\n  format: coqa\n")
    os.rename(tmp, inbox / f"{name}.yaml")
    return time.perf_counter()


def wait_claimed(outbox: Path, name: str, timeout_s: float = 30.0) -> float:
    """Busy-wait (2 ms) for the job's outbox folder; returns when it appeared."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if any(outbox.glob(f"{name}-*")):
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"{name} was not claimed within {timeout_s} s")


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    return cpu_s, rss


def pickup_and_idle(specs: int, idle_s: float) -> None:
    """(a) and (b) on one daemon subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp)
        for folder in ("inbox", "outbox", "state"):
            (spool / folder).mkdir()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run"], cwd=ROOT, env=spool_env(spool), stdout=subprocess.DEVNULL
        )
        try:
            time.sleep(2.0)  # start-up and the first scan
            latencies = []
            for i in range(specs):
                started = deliver(spool / "inbox", f"pickup-{i:03d}")
                latencies.append(wait_claimed(spool / "outbox", f"pickup-{i:03d}") - started)
                time.sleep(0.2)
            ms = [x * 1000 for x in latencies]
            print(
                f"| pickup (rename -> claim), {specs} specs | p50 {percentile(ms, 0.5):.0f} ms | "
                f"p99 {percentile(ms, 0.99):.0f} ms | max {max(ms):.0f} ms |",
                flush=True,
            )
            if idle_s > 0:
                idle(daemon.pid, idle_s)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)


def idle(pid: int, idle_s: float) -> None:
    """Sample CPU and RSS of an idle daemon."""
    time.sleep(5.0)  # let the last jobs' logs settle
    cpu0, rss0 = proc_sample(pid)
    peak = rss0
    started = time.monotonic()
    while time.monotonic() - started < idle_s:
        time.sleep(5.0)
        peak = max(peak, proc_sample(pid)[1])
    cpu1, rss1 = proc_sample(pid)
    share = (cpu1 - cpu0) / (time.monotonic() - started) * 100
    mib = 2**20
    print(
        f"| idle {idle_s:.0f} s | CPU {share:.3f} % | RSS {rss0 / mib:.1f} -> {rss1 / mib:.1f} MiB "
        f"(peak {peak / mib:.1f}) | |",
        flush=True,
    )


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    """How late a 10 ms sleep wakes, until stopped."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - before - 0.01)


def loop_lag(jobs: int) -> None:
    """(c) with a sandbox in its own process."""
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "daemon", "sandbox", "--port", str(port), "--speed", "300", "--latency-ms", "100"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.0)
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as sink:
            asyncio.run(many_jobs(jobs, port, Path(tmp), sink))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


async def many_jobs(jobs: int, port: int, spool: Path, sink: TextIO) -> None:
    """(c): `jobs` fine-tune + evaluate jobs in one in-process daemon, against the sandbox at `port`."""
    settings = Settings.from_env(
        spool_env(spool, TOGETHER_API_KEY="bench-key", TOGETHER_BASE_URL=f"http://127.0.0.1:{port}"),
        max_concurrent_jobs=jobs,
        poll_min_s=0.5,
        poll_max_s=2.0,
    )
    (spool / "inbox").mkdir()
    for i in range(jobs):
        deliver(spool / "inbox", f"lag-{i:03d}")
        spec = spool / "inbox" / f"lag-{i:03d}.yaml"
        spec.write_text(
            spec.read_text()
            + f"finetune:\n  model: {MODEL}\n  suffix: lag{i}\nevaluate:\n  models: [base, finetuned]\n"
            "  concurrency: 4\n"
        )
        os.utime(spec, (time.time() - 10, time.time() - 10))
    setup = configure("warning", json_output=True, stream=sink)
    remote = TogetherAPI(settings, redactor=setup.redactor)
    stop, lags = asyncio.Event(), []
    probe = asyncio.create_task(lag_probe(stop, lags))
    started = time.monotonic()
    try:
        await Service(settings, STEPS, job_logs=setup.job_logs, remote=remote, once=True).run()
    finally:
        stop.set()
        await probe
        await remote.close()
    done = sum(1 for p in (spool / "outbox").glob("*/report.md"))
    ms = [x * 1000 for x in lags]
    print(
        f"| loop lag, {jobs} jobs ({done} completed in {time.monotonic() - started:.0f} s) | "
        f"p50 {statistics.median(ms):.1f} ms | p99 {percentile(ms, 0.99):.1f} ms | max {max(ms):.1f} ms |",
        flush=True,
    )


def main() -> int:
    """Run the three measurements and print Markdown table rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=600.0)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    print("| measurement | | | |\n|---|---:|---:|---:|")
    pickup_and_idle(args.specs, 0.0 if args.skip_idle else args.idle_s)
    loop_lag(args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
