"""The data job against the cookbook's way, and `validate` against the `together` SDK's `check_file`, on the same data.

Each measurement is a fresh process (wall time, CPU and peak RSS of that process alone, from `os.wait4`):
- cookbook: `load_dataset` + `map` + `to_json` (bench_prepare.py's child), then `check_file` on the output, as
  the cookbook's `files.upload(check=True)` does before uploading;
- finetuned: `finetuned run --once` on a fresh spool holding one data-only spec (prepare + validate + report);
- validate: `validate_file` on the finetuned output; check_file: the SDK's `check_file` on the same file.

`validate` splits a big file over one process per core: CPU counts all of them (`wait4` includes reaped children),
and its peak memory is the sum of its processes' peaks (each reports its own), not the largest alone.

    python benchmarks/bench_data.py [--stories 71990] [--repeat 3] [--write]

The approaches alternate run by run, so load from elsewhere on the machine hits both alike; best of `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_prepare import WORK, child_cookbook, ensure_data  # noqa: E402
from sections import write_section  # noqa: E402

DATA_WORK = WORK.parent / "data"


def child(approach: str, data: Path, out: Path) -> None:
    """One measured process."""
    if approach == "cookbook":
        from together.lib.utils.files import check_file

        child_cookbook(data, out)
        if not check_file(out / "coqa_prepared_train.jsonl")["is_check_passed"]:
            raise SystemExit("check_file rejected the cookbook's file")
    elif approach == "validate":
        from handlers.dataset.validator import validate_file

        report = validate_file(data, max_tokens=None)
        if not report.valid:
            raise SystemExit("validate rejected the file")
        own, worker = (
            resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        mib = own + (report.processes - 1) * worker  # the workers run at once: each may peak as the largest did
        out.write_text(json.dumps({"mib": mib, "method": report.method}))
    elif approach == "check_file":
        from together.lib.utils.files import check_file

        if not check_file(data)["is_check_passed"]:
            raise SystemExit("check_file rejected the file")


def spool_for(data: Path, spool: Path) -> list[str]:
    """A fresh spool with one data-only spec; the `finetuned run --once` command line for it."""
    shutil.rmtree(spool, ignore_errors=True)
    for name in ("inbox", "outbox", "state"):
        (spool / name).mkdir(parents=True)
    (spool / "inbox" / "data.yaml").write_text(f"name: data-job\ndataset:\n  source: {data}\n  format: coqa\n")
    args = ["--inbox", "inbox", "--outbox", "outbox", "--state-dir", "state"]
    return [sys.executable, "-m", "daemon", "run", "--once", *[str(spool / a) if a[0] != "-" else a for a in args]]


def measure(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of one process."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed with status {status}")
    return wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def job_output(spool: Path) -> Path:
    """The train.jsonl the data job wrote, after checking the job completed."""
    (folder,) = (p for p in (spool / "outbox").iterdir() if p.is_dir())  # beside it: the outbox index
    status = json.loads((folder / "status.json").read_text())
    if status["status"] != "completed":
        raise SystemExit(f"the data job ended {status['status']}: {status.get('error')}")
    return folder / "train.jsonl"


def run(stories: int, repeat: int) -> dict[str, Any]:
    """Best of `repeat` alternating runs of every approach."""
    data = ensure_data(stories)
    DATA_WORK.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, __file__, "--child"]
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ("cookbook", "finetuned", "validate", "check")}
    for _ in range(repeat):
        shutil.rmtree(DATA_WORK / "cookbook", ignore_errors=True)
        (DATA_WORK / "cookbook").mkdir()
        runs["cookbook"].append(measure([*me, "cookbook", str(data), str(DATA_WORK / "cookbook")], ROOT))
        runs["finetuned"].append(measure(spool_for(data, DATA_WORK / "spool"), ROOT))
        train = job_output(DATA_WORK / "spool")
        wall_s, cpu_s, _ = measure([*me, "validate", str(train), str(DATA_WORK / "validate.json")], ROOT)
        validated = json.loads((DATA_WORK / "validate.json").read_text())
        runs["validate"].append((wall_s, cpu_s, validated["mib"]))
        runs["check"].append(measure([*me, "check_file", str(train), "-"], ROOT))
    result: dict[str, Any] = {"stories": stories, "mb": train.stat().st_size / 1e6, "repeat": repeat}
    result["validate_method"] = validated["method"]
    for name, got in runs.items():
        result[name] = {"s": min(r[0] for r in got), "cpu_s": min(r[1] for r in got), "mib": max(r[2] for r in got)}
    print(json.dumps(result), flush=True)
    return result


def markdown(r: dict[str, Any]) -> str:
    """The `## data job` section."""
    cook, ours, val, chk = (r[k] for k in ("cookbook", "finetuned", "validate", "check"))
    rows = [
        ("data job: cookbook (map + to_json + check_file)", cook),
        ("data job: `finetuned run --once` (prepare + validate + report)", ours),
        ("`validate_file` on the job's train.jsonl", val),
        ("`together` `check_file` on the same file", chk),
    ]
    lines = [
        "## data job",
        "",
        f"`benchmarks/bench_data.py --stories {r['stories']} --repeat {r['repeat']}`: {r['stories']:,} generated "
        f"CoQA-shaped stories ({r['mb']:.0f} MB of chat JSONL), each approach a fresh process (imports included), "
        f"best of {r['repeat']} alternating runs, peak RSS the highest; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. `validate` checks each line with msgspec "
        "typed structs, decoded in C (a line they do not prove valid goes to the line-by-line rules), "
        f"here as `{r['validate_method']}` (peak MiB: the sum of both processes' peaks, CPU: both); it checks more "
        "than `check_file` (roles, order, weights, empty content, context length).",
        "",
        "| what | wall s | CPU s | peak MiB |",
        "|:---|---:|---:|---:|",
        *(f"| {name} | {m['s']:.2f} | {m['cpu_s']:.2f} | {m['mib']:.0f} |" for name, m in rows),
        "",
        f"Data job: **{cook['s'] / ours['s']:.2f}x** faster than the cookbook's way "
        f"(CPU {cook['cpu_s'] / ours['cpu_s']:.2f}x), "
        f"peak memory {ours['mib']:.0f} vs {cook['mib']:.0f} MiB. `validate`: **{chk['s'] / val['s']:.2f}x** "
        f"faster than `check_file` on the same file (CPU {chk['cpu_s'] / val['cpu_s']:.2f}x), "
        f"peak memory {val['mib']:.0f} vs {chk['mib']:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line entry point (also the child processes' entry point)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stories", type=int, default=71990)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("APPROACH", "DATA", "OUT"))
    args = parser.parse_args()
    if args.child:
        approach, data, out = args.child
        child(approach, Path(data), Path(out))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    section = markdown(run(args.stories, args.repeat))
    print(section)
    if args.write:
        write_section("## data job", section)


if __name__ == "__main__":
    main()
