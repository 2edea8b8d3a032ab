"""Cost of the morning read at full CoQA-dev scale: the report (gather + analysis + charts + write) over
500 stories x 16 turns for two models, and one rewrite of the outbox index over N jobs.

    python benchmarks/bench_report.py [--stories 500] [--turns 16] [--jobs 100] [--runs 3]

Inputs are generated in the evaluate step's own formats (eval.jsonl, predictions-<alias>.jsonl, metrics.json scored
by handlers/evaluation/scoring.py), with a verbose "base" and a terse "finetuned" model, plus training events.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.jobs import index  # noqa: E402
from handlers.evaluation import scoring  # noqa: E402
from handlers.reporting.data import gather  # noqa: E402
from handlers.reporting.render import write_report  # noqa: E402

SOURCES = ["mctest", "gutenberg", "race", "cnn", "wikipedia"]
WORDS = [
    "the",
    "a",
    "river",
    "goat",
    "mill",
    "town",
    "market",
    "brother",
    "sister",
    "red",
    "blue",
    "green",
    "seven",
    "three",
    "yes",
    "no",
    "unknown",
]


def answer(rng: random.Random) -> str:
    """A gold answer: yes/no, unknown, or a short or long span."""
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(["yes", "no"])
    if kind < 0.25:
        return "unknown"
    return " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 6, 9])))


def write_inputs(out: Path, stories: int, turns: int) -> None:
    """eval.jsonl, predictions for two models, metrics.json and events.jsonl as the steps write them."""
    rng = random.Random(7)
    gold: list[scoring.GoldTurn] = []
    eval_lines = []
    for s in range(stories):
        story = " ".join(rng.choice(WORDS) for _ in range(250))
        rows = [
            {"turn_id": t, "question": f"What is {rng.choice(WORDS)}?", "answers": [answer(rng)]}
            for t in range(1, turns + 1)
        ]
        eval_lines.append(
            json.dumps(
                {"id": f"s{s}", "source": SOURCES[s % 5], "system": f"Story: {story}", "story": story, "turns": rows}
            )
        )
        gold += [scoring.GoldTurn(f"s{s}", r["turn_id"], SOURCES[s % 5], tuple(r["answers"])) for r in rows]
    (out / "eval.jsonl").write_text("\n".join(eval_lines) + "\n")
    questions = {
        (json.loads(line)["id"], t["turn_id"]): t["question"] for line in eval_lines for t in json.loads(line)["turns"]
    }
    models = {}
    for alias, verbose in (("base", True), ("finetuned", False)):
        predictions = {
            t.key: (f"According to the story, it is {t.answers[0]} indeed." if verbose else t.answers[0].split()[0])
            for t in gold
        }
        metrics, scores = scoring.model_metrics(gold, predictions, cookbook=False)
        tokens = {"prompt": 1000 * len(gold), "completion": 10 * len(gold), "total": 1010 * len(gold)}
        models[alias] = {"model": alias, **metrics, "errors": 0, "tokens": tokens}
        lines = [
            json.dumps(
                {
                    "id": t.story_id,
                    "turn_id": t.turn_id,
                    "question": questions[t.key],
                    "answers": list(t.answers),
                    "prediction": predictions[t.key],
                    "em": scores[t.key].em,
                    "f1": scores[t.key].f1,
                }
            )
            for t in gold
        ]
        (out / f"predictions-{alias}.jsonl").write_text("\n".join(lines) + "\n")
    metrics_doc = {"protocol": "gold-history", "stories": stories, "turns": len(gold), "models": models, "deltas": {}}
    (out / "metrics.json").write_text(json.dumps(metrics_doc))
    events = [{"type": "training_progress", "step": i, "loss": 2.0 / i} for i in range(1, 301)]
    (out / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")


def bench_report(stories: int, turns: int, runs: int) -> list[float]:
    """Seconds per report (gather + write), best first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_inputs(out, stories, turns)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            write_report(gather("bench-1", "bench", out, {}))
            times.append(time.perf_counter() - started)
        return sorted(times)


def bench_index(jobs: int, runs: int) -> list[float]:
    """Seconds per index rewrite (rows from summaries + index.md + index.html, fsynced), best first."""
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp)
        documents = []
        for i in range(jobs):
            folder = outbox / f"job-{i:03d}"
            folder.mkdir()
            (folder / "summary.json").write_text(
                json.dumps({"headline": {"base": {"f1": 30.1, "em": 4.0}}, "cost_usd": 1.5})
            )
            documents.append(
                {"job_id": folder.name, "status": "completed", "created_at": f"2026-01-01T00:{i % 60:02d}:00Z"}
            )
        listener = index.OutboxIndex(outbox)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            rows = index.overview(outbox, documents, listener._summaries)  # noqa: SLF001 - the listener's own cache
            listener._write(rows)  # noqa: SLF001
            times.append(time.perf_counter() - started)
        return sorted(times)


def main() -> None:
    """Print both figures as a markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--stories", type=int, default=500)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report = bench_report(args.stories, args.turns, args.runs)
    rewrite = bench_index(args.jobs, max(5, args.runs))
    turns = args.stories * args.turns
    print("| what | best | median |\n|---|---:|---:|")
    print(f"| report, {turns:,} turns x 2 models | {report[0]:.2f} s | {report[len(report) // 2]:.2f} s |")
    print(
        f"| index rewrite, {args.jobs} jobs | {rewrite[0] * 1000:.1f} ms | {rewrite[len(rewrite) // 2] * 1000:.1f} ms |"
    )


if __name__ == "__main__":
    main()
