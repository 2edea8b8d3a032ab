"""Benchmark the `evaluate` step against the sandbox at a fixed chat latency.

(a) wall time of the real handler (cookbook protocol, one model) against the ideal `requests x latency / concurrency`,
    with an in-memory item store and with the daemon's SQLite store (WAL, synchronous=FULL, group commit);
(b) the cookbook's way on the same requests: `ThreadPool(8)` over stories, the `together` SDK's synchronous client,
    turns one after another within a story; reported as a ratio.
The sandbox runs in its own process (`python -m daemon sandbox`), so it does not share the client's event loop.
Usage: .venv/bin/python benchmarks/bench_eval.py [--stories 250] [--turns 16] [--latency-ms 100,250,500]
       [--concurrency 64] [--repeat 1] [--skip-cookbook] [--write]
`--write` replaces the `## evaluate` section of benchmarks/BENCHMARKS.md with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import Settings  # noqa: E402
from daemon.jobs.capabilities import StoreItems  # noqa: E402
from daemon.jobs.context import JobContext  # noqa: E402
from daemon.jobs.itemcommit import ITEM_COMMIT_INTERVAL_S  # noqa: E402
from daemon.jobs.state import StateStore  # noqa: E402
from daemon.spec import JobSpec  # noqa: E402
from handlers import evaluate  # noqa: E402

REPORT = ROOT / "benchmarks" / "BENCHMARKS.md"
TARGET_EFFICIENCY = 0.90  # issue 5: at least 90 % of the ideal at concurrency 64
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
KEY = "bench-key"
PROMPT = "Read the story and extract answers for the questions.\nStory: {}"
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "barn",
    "farmer",
    "water",
    "paint",
    "mother",
    "sister",
    "house",
    "tree",
    "river",
    "boat",
    "red",
    "white",
    "happy",
    "ran",
    "found",
]


def eval_rows(stories: int, turns: int, seed: int = 3) -> list[dict[str, Any]]:
    """CoQA-shaped eval stories in the prepare step's schema."""
    rng = random.Random(seed)
    rows = []
    for n in range(stories):
        story = ". ".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(turns)) + "."
        questions = [f"What did the {rng.choice(WORDS)} do in part {t + 1}?" for t in range(turns)]
        rows.append(
            {
                "id": f"s{n:05d}",
                "source": "mctest",
                "system": PROMPT.format(story),
                "story": story,
                "turns": [
                    {"turn_id": t + 1, "question": q, "answers": [rng.choice(WORDS)]} for t, q in enumerate(questions)
                ],
            }
        )
    return rows


class MemoryItems:
    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        return {}

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        return None


class Journal:
    def get(self, key: str) -> str | None:
        return None

    async def record(self, key: str, value: str) -> None:
        return None


async def no_progress(**progress: Any) -> None:
    return None


async def run_ours(base_url: str, eval_file: Path, work: Path, concurrency: int, store: str) -> float:
    """Wall time of the evaluate handler over every turn of the eval file."""
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "dataset": {"source": "local"},
            "evaluate": {"protocol": "cookbook", "models": [MODEL], "concurrency": concurrency, "temperature": None},
        }
    )
    out = work / f"out-{store}"
    out.mkdir(parents=True, exist_ok=True)
    state = await StateStore.open(work / f"state-{store}.db") if store == "sqlite" else None
    items: Any = MemoryItems()
    if state is not None:
        await state.add_job("bench", "bench", "bench.yaml")
        items = StoreItems(state, "bench")  # the runner's own capability
    settings = Settings(together_base_url=base_url, together_api_key=KEY)
    ctx = JobContext("bench", spec, settings, out, work, Journal(), items, no_progress)
    started = time.perf_counter()
    await evaluate.run(ctx, {"prepare": {"eval_file": str(eval_file)}})
    elapsed = time.perf_counter() - started
    if state is not None:
        await state.close()
    return elapsed


async def run_floor(base_url: str, rows: list[dict[str, Any]], concurrency: int) -> float:
    """The floor: a bare aiohttp client (one session, a semaphore, no retries, scoring or storage) on the same
    requests. What no client can beat against this sandbox on this machine."""
    import aiohttp

    prompts = [
        [
            {"role": "system", "content": row["system"]},
            *({"role": "user", "content": t["question"]} for t in row["turns"][: k + 1]),
        ]
        for row in rows
        for k in range(len(row["turns"]))
    ]
    bound = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers) as session:

        async def ask(messages: list[dict[str, str]]) -> None:
            async with (
                bound,
                session.post(
                    "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 64}
                ) as response,
            ):
                await response.json()

        started = time.perf_counter()
        await asyncio.gather(*(ask(m) for m in prompts))
        return time.perf_counter() - started


def run_cookbook(base_url: str, rows: list[dict[str, Any]]) -> float:
    """The cookbook's loop: ThreadPool(8).imap over stories, turns in order, the SDK's sync client."""
    import together

    client = together.Together(base_url=base_url, api_key=KEY)

    def get_answers(row: dict[str, Any]) -> list[str]:
        messages = [{"role": "system", "content": row["system"]}]
        answers = []
        for turn in row["turns"]:
            messages.append({"role": "user", "content": turn["question"]})
            reply = client.chat.completions.create(messages=messages, model=MODEL, max_tokens=64)
            answers.append(reply.choices[0].message.content)
        return answers

    started = time.perf_counter()
    with ThreadPool(8) as pool:
        results = list(pool.imap(get_answers, rows))
    elapsed = time.perf_counter() - started
    assert sum(len(r) for r in results) == sum(len(r["turns"]) for r in rows)
    return elapsed


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sandbox_get(base_url: str, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(f"{base_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def start_sandbox_process(latency_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "daemon", "sandbox", "--port", str(port), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            sandbox_get(base_url, "/_sandbox/stats")
            return process, base_url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the sandbox did not start")


def chat_count(base_url: str) -> int:
    return int(sandbox_get(base_url, "/_sandbox/stats")["requests"].get("POST /v1/chat/completions", 0))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """(a) for each latency (both item stores at the first, SQLite after), then (b) at the first latency."""
    rows = eval_rows(args.stories, args.turns)
    requests = sum(len(r["turns"]) for r in rows)
    result: dict[str, Any] = {"requests": requests, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eval_file = work / "eval.jsonl"
        eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for index, latency_ms in enumerate(args.latency_ms):
            process, base_url = start_sandbox_process(latency_ms)
            try:
                for store in ("floor", "memory", "sqlite") if index == 0 else ("floor", "sqlite"):
                    runs = []
                    for attempt in range(args.repeat):
                        sandbox_get(base_url, "/_sandbox/reset", method="POST")
                        folder = work / f"{latency_ms}-{attempt}"
                        server_cpu_s, client_cpu_s = cpu_s(process.pid), time.process_time()
                        if store == "floor":
                            wall = asyncio.run(run_floor(base_url, rows, args.concurrency))
                        else:
                            wall = asyncio.run(run_ours(base_url, eval_file, folder, args.concurrency, store))
                        cpu = {"server_cpu_s": cpu_s(process.pid) - server_cpu_s}
                        cpu["client_cpu_s"] = time.process_time() - client_cpu_s
                        assert chat_count(base_url) == requests, "every item asked exactly once"
                        runs.append({"latency_ms": latency_ms, "store": store, "wall_s": wall, **cpu})
                    best = min(runs, key=lambda run: run["wall_s"])  # a shared machine: the least disturbed run
                    best["ideal_s"] = requests * latency_ms / 1000 / args.concurrency
                    result["runs"].append(best)
                    print(result["runs"][-1], file=sys.stderr)
                if index == 0 and not args.skip_cookbook:
                    sandbox_get(base_url, "/_sandbox/reset", method="POST")
                    result["cookbook"] = {"latency_ms": latency_ms, "wall_s": run_cookbook(base_url, rows)}
                    assert chat_count(base_url) == requests
            finally:
                process.terminate()
                process.wait(timeout=10)
    return result


STORES = {
    "floor": "bare aiohttp client (floor)",
    "memory": "`evaluate`, items in memory",
    "sqlite": "`evaluate`, items in SQLite (WAL, synchronous=FULL, group commit)",
}


def markdown(args: argparse.Namespace, r: dict[str, Any]) -> str:
    """The `## evaluate` section."""
    latencies = ",".join(str(ms) for ms in args.latency_ms)
    lines = [
        "## evaluate",
        "",
        f"`benchmarks/bench_eval.py --stories {args.stories} --turns {args.turns} --latency-ms {latencies}"
        f" --concurrency {args.concurrency} --repeat {args.repeat}` (best of {args.repeat}) on {platform.machine()}"
        f" ({os.cpu_count()} cores) / Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}."
        " The sandbox answers each chat request after a"
        " fixed latency, in its own process on the same machine; the client is the real `evaluate` handler (cookbook"
        " protocol, one model), scoring and writing predictions/metrics included in the wall time.",
        "",
        f"(a) {r['requests']} requests at concurrency {args.concurrency}, against the ideal"
        " `requests x latency / concurrency`:",
        "",
        "| latency | client | ideal | wall time | efficiency (ideal / wall) | wall / floor's | requests/s"
        " | added per request | CPU per request (client / sandbox) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        wall, ideal = run["wall_s"], run["ideal_s"]
        floor = next(x for x in r["runs"] if x["latency_ms"] == run["latency_ms"] and x["store"] == "floor")
        cpu = f"{cpu_ms(run, 'client_cpu_s', r):.3f} / {cpu_ms(run, 'server_cpu_s', r):.3f} ms"
        lines.append(
            f"| {run['latency_ms']} ms | {STORES[run['store']]} | {ideal:.2f} s | {wall:.2f} s | {ideal / wall:.1%}"
            f" | {wall / floor['wall_s']:.2f}x | {r['requests'] / wall:.0f} | {added_ms(run, args, r):.0f} ms | {cpu} |"
        )
    lines += ["", analysis(args, r)]
    if "cookbook" in r:
        cookbook = r["cookbook"]
        ours = next(x for x in r["runs"] if x["latency_ms"] == cookbook["latency_ms"] and x["store"] == "sqlite")
        lines += [
            "",
            f"(b) the cookbook's way on the same {r['requests']} requests at {cookbook['latency_ms']} ms"
            " (`ThreadPool(8)` over stories, the `together` SDK's synchronous client, turns in order):"
            f" {cookbook['wall_s']:.2f} s against {ours['wall_s']:.2f} s, i.e. the `evaluate` step is"
            f" **{cookbook['wall_s'] / ours['wall_s']:.1f}x faster** (the bound of 64 in-flight requests against 8"
            " threads, and every turn of a story in parallel instead of one after another).",
        ]
    return "\n".join(lines) + "\n"


def cpu_ms(run: dict[str, Any], key: str, r: dict[str, Any]) -> float:
    """CPU milliseconds per request of one side (`client_cpu_s` or `server_cpu_s`)."""
    return float(run[key]) * 1000 / r["requests"]


def added_ms(run: dict[str, Any], args: argparse.Namespace, r: dict[str, Any]) -> float:
    """How much later than its latency a request finished, on average."""
    return float(run["wall_s"] - run["ideal_s"]) * args.concurrency / r["requests"] * 1000


def analysis(args: argparse.Namespace, r: dict[str, Any]) -> str:
    """What the table says, from this run's figures."""
    shortest = min(args.latency_ms)
    floor = next(x for x in r["runs"] if x["latency_ms"] == shortest and x["store"] == "floor")
    ours = next(x for x in r["runs"] if x["latency_ms"] == shortest and x["store"] == "sqlite")
    floors = {x["latency_ms"]: x["ideal_s"] / x["wall_s"] for x in r["runs"] if x["store"] == "floor"}
    sqlite = [(x["latency_ms"], x["ideal_s"] / x["wall_s"]) for x in r["runs"] if x["store"] == "sqlite"]
    above = [f"{ms} ms" for ms, efficiency in sqlite if efficiency >= TARGET_EFFICIENCY]
    below = [f"{ms} ms (the floor: {floors[ms]:.1%})" for ms, efficiency in sqlite if efficiency < TARGET_EFFICIENCY]
    verdict = f"`evaluate` with the SQLite store is above the {TARGET_EFFICIENCY:.0%} target at "
    verdict += ", ".join(above) or "no latency"
    if below:
        verdict += f" and below it at {', '.join(below)}"
    return (
        "The floor row is a bare aiohttp client with a semaphore (no retries, scoring or storage) on the same"
        " requests in the same run: the best any client gets from this sandbox on this machine. Every request"
        " finishes a roughly constant time after its latency, so efficiency grows with latency. The answers to a"
        f" wave of {args.concurrency} requests arrive together and each side's single event loop handles them one"
        " after another, so the last of a wave waits for the others: the added time follows the CPU per request."
        f" At {shortest} ms the floor adds {added_ms(floor, args, r):.0f} ms per request with"
        f" {cpu_ms(floor, 'client_cpu_s', r):.2f} ms of client CPU, `evaluate` {added_ms(ours, args, r):.0f} ms"
        f" with {cpu_ms(ours, 'client_cpu_s', r):.2f} ms (retries, the adaptive limit, prompts, scoring, and the"
        " SQLite store: every answer committed before its save returns, at most one group commit per"
        f" {ITEM_COMMIT_INTERVAL_S * 1000:.0f} ms, one multi-row INSERT each). `evaluate` also ramps up: its"
        " adaptive limit starts at 4 and doubles per round trip, four round trips to 64, which weigh more as the"
        " latency grows. A real provider serves a wave in parallel and takes 300 ms to seconds per answer."
        f" {verdict}."
    )


def write_section(section: str) -> None:
    """Replace only the `## evaluate` section of BENCHMARKS.md."""
    text = REPORT.read_text(encoding="utf-8")
    start = text.index("## evaluate")
    end = text.find("\n## ", start + 1)
    REPORT.write_text(text[:start] + section + (text[end:] if end != -1 else ""), encoding="utf-8")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=250)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--latency-ms", type=lambda v: [int(x) for x in v.split(",")], default=[100, 250, 500])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration of (a); the best is kept")
    parser.add_argument("--skip-cookbook", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    result = measure(args)
    section = markdown(args, result)
    print(section)
    if args.write:
        write_section(section)


if __name__ == "__main__":
    main()
