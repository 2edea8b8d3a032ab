"""Benchmark `prepare` against the cookbook's way (`datasets` `map` + `to_json`) on generated CoQA-shaped parquet.

Each approach runs as its own process; wall time and peak RSS come from `os.wait4` on that child alone.
Usage: .venv/bin/python benchmarks/bench_prepare.py [--sizes 7199,71990] [--repeat 1] [--write]
`--write` replaces the `## prepare` section of benchmarks/BENCHMARKS.md with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "prepare"
REPORT = ROOT / "benchmarks" / "BENCHMARKS.md"
COOKBOOK_PROMPT = "Read the story and extract answers for the questions.\nStory: {}"
ROWS_PER_FILE = 7199  # the hub's train split is one parquet file of 7,199 rows
SOURCES = ("mctest", "gutenberg", "race", "cnn", "wikipedia")
_VOCABULARY = (
    "the a of and to in was he she it they said time day year man woman child house water road city river "
    "school friend mother father teacher dog cat small big old new long red white green happy quickly slowly "
    "walked ran found looked asked told gave took came went saw heard thought wanted because after before "
    "under over near far Mr. Mrs. Tom Anna Cotton Paris London café naïve 1998 2014 50/50 and/or"
)
WORDS = tuple(_VOCABULARY.split())


def generate(folder: Path, stories: int, seed: int = 7) -> None:
    """Write `stories` CoQA-shaped rows in the hub's schema as parquet files (about 3.3 KB of output each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = -(-stories // ROWS_PER_FILE)
    for index in range(files):
        count = min(ROWS_PER_FILE, stories - index * ROWS_PER_FILE)
        rows = [_story(rng) for _ in range(count)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"train-{index:05d}-of-{files:05d}.parquet")


def _story(rng: random.Random) -> dict[str, object]:
    story = " ".join(rng.choice(WORDS) for _ in range(rng.randint(250, 420))) + "."
    turns = rng.randint(10, 20)
    questions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "?" for _ in range(turns)]
    answers = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(turns)]
    starts = [rng.randint(0, 1000) for _ in range(turns)]
    return {
        "source": rng.choice(SOURCES),
        "story": story,
        "questions": questions,
        "answers": {"input_text": answers, "answer_start": starts, "answer_end": [s + 40 for s in starts]},
    }


def child_cookbook(data: Path, out: Path) -> None:
    """The cookbook's cells: load (cold cache), `map(map_fields)`, `to_json`."""
    import datasets

    datasets.disable_progress_bars()
    files = sorted(str(p) for p in data.glob("train-*.parquet"))
    with tempfile.TemporaryDirectory(dir=WORK) as cache:
        ds = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=cache)["train"]

        def map_fields(row: dict[str, Any]) -> dict[str, Any]:
            messages = [{"role": "system", "content": COOKBOOK_PROMPT.format(row["story"])}]
            for q, a in zip(row["questions"], row["answers"]["input_text"], strict=False):
                messages.append({"role": "user", "content": q})
                messages.append({"role": "assistant", "content": a})
            return {"messages": messages}

        mapped = ds.map(map_fields, remove_columns=ds.column_names)
        mapped.to_json(str(out / "coqa_prepared_train.jsonl"))


def child_finetuned(data: Path, out: Path) -> None:
    """This project's `prepare` step on the same folder."""
    sys.path.insert(0, str(ROOT))
    from daemon.spec import DatasetSpec
    from handlers.prepare import prepare_dataset

    with tempfile.TemporaryDirectory(dir=WORK) as work:
        prepare_dataset(DatasetSpec(source=str(data)), out, Path(work), with_eval=False)


def measure(approach: str, data: Path, out: Path) -> tuple[float, float, float]:
    """Run one approach in a fresh process; (wall s, CPU s, peak RSS MiB) of that process alone."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", approach, str(data), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{approach} failed with status {status}")
    return wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def same_messages(ours: Path, theirs: Path) -> bool:
    """Both files hold the same messages, line for line (key order aside: `datasets` 5 writes role first)."""
    with open(ours, encoding="utf-8") as a, open(theirs, encoding="utf-8") as b:
        return all(json.loads(x) == json.loads(y) for x, y in zip(a, b, strict=True))


def run(sizes: list[int], repeat: int) -> list[dict[str, float]]:
    """Measure both approaches at every size; the best of `repeat` runs for times, the max for memory.

    The approaches alternate run by run, so load from elsewhere on the machine hits both alike.
    """
    results = []
    for stories in sizes:
        data = WORK / f"data-{stories}"
        if not data.exists():
            generate(data, stories)
        row: dict[str, float] = {"stories": stories}
        measured: dict[str, list[tuple[float, float, float]]] = {"cookbook": [], "finetuned": []}
        for _ in range(repeat):
            for approach, runs in measured.items():
                runs.append(measure(approach, data, WORK / f"out-{approach}-{stories}"))
        for approach, runs in measured.items():
            row[f"{approach}_s"] = min(r[0] for r in runs)
            row[f"{approach}_cpu_s"] = min(r[1] for r in runs)
            row[f"{approach}_mib"] = max(r[2] for r in runs)
        ours, theirs = (
            WORK / f"out-finetuned-{stories}/train.jsonl",
            WORK / f"out-cookbook-{stories}/coqa_prepared_train.jsonl",
        )
        row["output_mb"] = ours.stat().st_size / 1e6
        row["same"] = float(same_messages(ours, theirs))
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def markdown(results: list[dict[str, float]], repeat: int) -> str:
    """The `## prepare` section."""
    lines = [
        "## prepare",
        "",
        f"`benchmarks/bench_prepare.py`: generated CoQA-shaped parquet (the hub's schema, ~3.3 KB of JSONL per story), "
        f"each approach in its own process, wall time and peak RSS of that process (`os.wait4`). Python "
        f"{platform.python_version()}, {os.cpu_count()} cores. Cookbook = `load_dataset('parquet')` (cold cache) + "
        "`map` + `to_json`; finetuned = `prepare_dataset` (pyarrow batches, streamed JSONL). "
        f"Best of {repeat} alternating runs (peak: the highest); times include process start-up and imports; "
        "`same` = every line holds the same messages in both outputs.",
        "",
        "| stories | output MB | cookbook s | finetuned s | speed-up (wall) | speed-up (CPU) | cookbook peak MiB "
        "| finetuned peak MiB | same |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        lines.append(
            f"| {int(r['stories']):,} | {r['output_mb']:.1f} | {r['cookbook_s']:.1f} | {r['finetuned_s']:.1f} | "
            f"{r['cookbook_s'] / r['finetuned_s']:.1f}x | {r['cookbook_cpu_s'] / r['finetuned_cpu_s']:.1f}x | "
            f"{r['cookbook_mib']:.0f} | {r['finetuned_mib']:.0f} | "
            f"{'yes' if r['same'] else 'NO'} |"
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        growth = large["finetuned_mib"] / small["finetuned_mib"]
        lines += [
            "",
            f"Peak memory of `prepare` from {int(small['stories']):,} to {int(large['stories']):,} stories: "
            f"x{growth:.2f} (cookbook: x{large['cookbook_mib'] / small['cookbook_mib']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    """Replace only the `## prepare` section of BENCHMARKS.md."""
    text = REPORT.read_text(encoding="utf-8")
    start = text.index("## prepare")
    end = text.find("\n## ", start + 1)
    REPORT.write_text(text[:start] + section + (text[end:] if end != -1 else ""), encoding="utf-8")


def main() -> None:
    """Command line entry point (also the child processes' entry point)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="7199,71990")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("APPROACH", "DATA", "OUT"))
    args = parser.parse_args()
    if args.child:
        approach, data, out = args.child
        {"cookbook": child_cookbook, "finetuned": child_finetuned}[approach](Path(data), Path(out))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    results = run([int(s) for s in args.sizes.split(",")], args.repeat)
    section = markdown(results, args.repeat)
    print(section)
    if args.write:
        write_section(section)
    for path in WORK.glob("out-*"):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
