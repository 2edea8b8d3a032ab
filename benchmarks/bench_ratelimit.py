"""The chat client against a provider's rate limit: how close it gets to the allowed rate, and how many 429s it earns.

A sandbox in its own process meters chat like a provider (`--rate-limit-rpm`, a bucket of one minute's requests,
full at the start and refilled continuously; honest `x-ratelimit-limit/remaining/reset` and `Retry-After`) and
answers after `--latency-ms`. The same N requests go out at concurrency 64 twice:
- `finetuned`: the daemon's ChatClient (adaptive in-flight limit, pacing from the rate-limit headers);
- `plain`: a fixed-concurrency aiohttp loop that retries a 429 after its Retry-After (the obvious client);
- `two-jobs`: the same N split between two ChatClients at once (two jobs evaluating in one daemon) on one
  key, pacing from the provider's one shared budget;
- `two-jobs-own-budgets`: the same, but each client on its own key (the sandbox meters all keys as
  one account), so each paces from its own budget: what the client did before the budget was shared.
Reported per client: wall time against the fastest the limit allows (`(N - bucket) / (rpm / 60)`), i.e. the share
of the allowed rate reached, and the share of requests the sandbox refused with 429.

    python benchmarks/bench_ratelimit.py [--requests 900] [--rpm 600] [--latency-ms 300] [--clients a,b] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import write_section  # noqa: E402

from daemon.remote.backoff import RetryPolicy  # noqa: E402
from daemon.remote.chat import ChatClient, ChatEndpoint, ChatRequest  # noqa: E402

SECTION = "## rate limits"
CONCURRENCY = 64
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sandbox(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """A fresh sandbox process with the rate limit and latency; its base URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "daemon", "sandbox", "--port", str(port), "--latency-ms", str(args.latency_ms)]
    command += ["--rate-limit-rpm", str(args.rpm)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/_sandbox/stats", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the sandbox did not start")


def refused(url: str) -> tuple[int, int]:
    """(admitted, refused) chat requests so far."""
    body = json.loads(urllib.request.urlopen(f"{url}/_sandbox/stats", timeout=5).read())
    limit = body["rate_limit"]
    return int(limit["admitted"]), int(limit["refused_requests"]) + int(limit["refused_tokens"])


def request(n: int) -> ChatRequest:
    return ChatRequest(
        model=MODEL, messages=[{"role": "user", "content": f"Question {n}: who kept the goats?"}], max_tokens=16
    )


CLIENTS = {  # name -> the keys of the jobs it runs at once (None: the plain loop)
    "finetuned": ["bench-key"],
    "plain": None,
    "two-jobs": ["bench-key", "bench-key"],
    "two-jobs-own-budgets": ["bench-key-1", "bench-key-2"],
}


async def ours(url: str, count: int, keys: list[str]) -> None:
    """The daemon's client, as evaluate configures it (retries until the answer comes): one ChatClient per key,
    the requests split between them, all at once."""
    policy = RetryPolicy(attempts=1000, base_s=0.5, cap_s=30.0, max_total_s=3600.0)

    async def job(key: str, numbers: range) -> None:
        async with ChatClient(concurrency=CONCURRENCY, request_timeout_s=60.0, retry_policy=policy) as client:
            endpoint = ChatEndpoint(f"{url}/v1/chat/completions", key)
            await asyncio.gather(*(client.complete(endpoint, request(n)) for n in numbers))

    await asyncio.gather(*(job(key, range(i, count, len(keys))) for i, key in enumerate(keys)))


async def plain(url: str, count: int) -> None:
    """Fixed concurrency; a 429 is retried after its Retry-After."""
    bound = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": "Bearer bench-key"}
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            while True:
                async with (
                    bound,
                    session.post(f"{url}/v1/chat/completions", json=request(n).body(), headers=headers) as response,
                ):
                    await response.read()
                    wait_s = float(response.headers.get("retry-after") or 1)
                if response.status == 200:
                    return
                await asyncio.sleep(wait_s)

        await asyncio.gather(*(one(n) for n in range(count)))


def measure(args: argparse.Namespace, client: str) -> dict[str, Any]:
    """One client against a fresh sandbox."""
    process, url = sandbox(args)
    try:
        started = time.perf_counter()
        keys = CLIENTS[client]
        asyncio.run(plain(url, args.requests) if keys is None else ours(url, args.requests, keys))
        wall_s = time.perf_counter() - started
        admitted, refused_count = refused(url)
    finally:
        process.terminate()
        process.wait()
    ideal_s = max(0.0, args.requests - args.rpm) / (args.rpm / 60.0)
    return {
        "client": client,
        "wall_s": wall_s,
        "ideal_s": ideal_s,
        "rate_share": ideal_s / wall_s if wall_s else 0.0,
        "sent": admitted + refused_count,
        "refused": refused_count,
        "refused_share": refused_count / max(1, admitted + refused_count),
    }


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    lines = [
        SECTION,
        "",
        f"`benchmarks/bench_ratelimit.py --requests {args.requests} --rpm {args.rpm} --latency-ms {args.latency_ms}` "
        f"on {platform.machine()} ({os.cpu_count()} cores) / Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: {args.requests} chat requests at concurrency {CONCURRENCY} (a job) against "
        f"a sandbox process limited to {args.rpm} requests a minute (a bucket of one minute's requests, full at the "
        f"start, refilled continuously) answering after {args.latency_ms} ms. The fastest the limit allows: "
        f"{rows[0]['ideal_s']:.1f} s (the first {args.rpm} at once, then {args.rpm / 60:g} a second).",
        "",
        "| client | wall s | share of the allowed rate | requests sent | answered 429 |",
        "|:---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['client']} | {r['wall_s']:.1f} | {100 * r['rate_share']:.1f} % | {r['sent']} | "
            f"{r['refused']} ({100 * r['refused_share']:.1f} %) |"
        )
    lines += [
        "",
        "`finetuned` = the daemon's ChatClient (adaptive in-flight limit; once `x-ratelimit-remaining` would not "
        "cover the requests in flight it spaces sends at the refill rate from `x-ratelimit-limit`, 1 % slower). "
        "`plain` = a fixed 64 in flight, each 429 retried after its `Retry-After`. `two-jobs` = the same requests "
        "split between two of the daemon's clients at once (two jobs in one daemon) on one key, so one shared "
        "budget; `two-jobs-own-budgets` = the same, each on its own key, so a budget per job as before (the "
        "sandbox meters every key as one account, as a provider meters one organisation's keys).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, of: {', '.join(CLIENTS)}")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    clients = [name.strip() for name in args.clients.split(",")]
    if unknown := [name for name in clients if name not in CLIENTS]:
        parser.error(f"unknown clients {unknown}; known: {', '.join(CLIENTS)}")
    rows = [measure(args, client) for client in clients]
    section = markdown(args, rows)
    print(section)
    if args.write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
