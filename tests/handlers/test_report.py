"""handlers/report.py and handlers/reporting/: report.md / report.html with charts, error analysis, timeline, money
and advice, from a real evaluation against the sandbox, real outbox files, and failed jobs' status documents.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings
from daemon.sandbox import start_sandbox
from handlers import evaluate, report
from handlers.reporting import advice, analysis
from handlers.reporting.data import gather
from handlers.reporting.render import markdown_table, write_failure_report
from handlers.reporting.timeline import money, money_lines, timeline_rows
from tests.handlers.test_evaluate import make_ctx, write_eval_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def sandbox_events(steps: int = 20) -> list[dict[str, Any]]:
    """Events as the sandbox's poll step saves them: lifecycle messages, then loss in fields and in the text."""
    events: list[dict[str, Any]] = [
        {"type": "job_pending", "level": "info", "message": "Fine tune request created", "step": 0},
        {"type": "training_start", "level": "info", "message": "Training started"},
    ]
    for step in range(1, steps + 1):
        loss = 2.0 - step * 0.05
        events.append(
            {
                "type": "training_progress",
                "message": f"Step {step}/{steps}: train loss {loss:.4f}",
                "step": step,
                "loss": loss,
            }
        )
    events.append({"type": "eval_complete", "message": f"Evaluation at step {steps}: eval loss 1.1500", "step": steps})
    return events


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with `header_start` (alignment row left out)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]


async def evaluated_job(tmp_path: Path, protocol: str = "gold-history") -> tuple[Any, dict[str, Any]]:
    """A context whose evaluate step really ran against the sandbox (two models), plus its step outputs."""
    handle = await start_sandbox(latency_ms="1")
    try:
        write_eval_file(tmp_path / "eval.jsonl", stories=3, turns=11)
        settings = Settings(together_base_url=handle.base_url, together_api_key="sandbox-key")
        spec = {"models": ["base", "org/other"], "base_model": "meta-llama/Base", "protocol": protocol}
        ctx = make_ctx(tmp_path, settings, spec)
        inputs: dict[str, Any] = {"prepare": {"eval_file": str(tmp_path / "eval.jsonl")}}
        inputs["evaluate"] = await evaluate.run(ctx, inputs)
    finally:
        await handle.close()
    return ctx, inputs


async def test_report_after_sandbox_evaluation_is_marked_simulated_with_charts(tmp_path: Path) -> None:
    """Against the sandbox: first line says simulated, charts are PNGs, tables carry metrics, ids and the analysis."""
    ctx, inputs = await evaluated_job(tmp_path)
    inputs["upload"] = {"file_id": "file-1234"}
    inputs["create"] = {"fine_tune_id": "ft-abcd", "estimated_price_usd": 1.234}
    (ctx.out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sandbox_events()))

    output = await report.run(ctx, inputs)

    assert output["report"] == str(ctx.out_dir / "report.md")
    markdown = (ctx.out_dir / "report.md").read_text()
    assert markdown.splitlines()[0].startswith("**SIMULATED RESULTS**")
    for chart in ("loss.png", "turn-depth.png", "answer-type.png"):
        assert (ctx.out_dir / chart).read_bytes().startswith(PNG_MAGIC)
        assert f"![{chart}]({chart})" in markdown
    base = json.loads((ctx.out_dir / "metrics.json").read_text())["models"]["base"]
    overall = table_rows(markdown, "model ")
    assert ["base", "meta-llama/Base", str(base["overall"]["em"]), str(base["overall"]["f1"]), "33", "0"] == overall[1][
        :6
    ]
    assert ["file_id", "file-1234"] in table_rows(markdown, "remote id")
    assert ["fine_tune_id", "ft-abcd"] in table_rows(markdown, "remote id")
    assert "org/other - base" in markdown
    assert "Training price estimated before training: $1.23." in markdown
    assert "Whole cost: $1.23 (training $1.23 estimated; unpriced evaluation tokens of base, org/other)." in markdown
    assert "1.9500 at step 1" in markdown and "1.0000 at step 20" in markdown
    # the sandbox answers in sentences: the analysis finds the verbosity and says what to try
    lengths = table_rows(markdown, "prediction length")
    assert lengths[1][0] == "over 3× gold" and lengths[1][1] == "33"
    assert "100 % of base errors are answers over 3× the gold length" in markdown
    assert "org/other gains only 0.000 F1 (0..1) against base" in markdown
    assert "> **story:** The hat of Anna0 was red." in markdown  # story excerpt from eval.jsonl
    assert "> **gold:** red | red hat | red" in markdown
    domains = [row[0] for row in table_rows(markdown, "domain")[1:]]
    assert {"children_stories", "news", "mid-high_school"} <= set(domains)

    page = (ctx.out_dir / "report.html").read_text()
    assert "SIMULATED RESULTS" in page.split("<h1>")[0]
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert "<dl class='turn'>" in page and "<td class='num'>33</td>" in page
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["headline"]["base"] == {"em": base["overall"]["em"], "f1": base["overall"]["f1"]}
    assert summary["cost_usd"] == 1.234 and summary["report"] == "report.html"
    assert output["simulated"] is True


async def test_report_without_events_or_evaluation(tmp_path: Path) -> None:
    """No events and no metrics: a plain report (not marked simulated) that says no loss was found, no charts."""
    ctx = make_ctx(tmp_path, Settings(), {"models": ["m"]})
    output = await report.run(ctx, {"poll": {"model": "org/ft-model", "fine_tune_id": "ft-1", "total_price_usd": 3.5}})
    markdown = (ctx.out_dir / "report.md").read_text()
    assert markdown.startswith("# Fine-tune report: evaljob")
    assert "No training loss" in markdown and "No dataset was prepared." in markdown
    assert ["model", "org/ft-model"] in table_rows(markdown, "remote id")
    assert "Whole cost: $3.50 (training $3.50 charged)." in markdown
    assert not list(ctx.out_dir.glob("*.png"))
    assert output["simulated"] is False


async def test_cookbook_protocol_shows_published_numbers_beside_ours(tmp_path: Path) -> None:
    """Protocol cookbook: the cookbook's 0.043/0.232 and 0.62/0.78 beside our scores on 0..1, with the note."""
    ctx, inputs = await evaluated_job(tmp_path, protocol="cookbook")
    await report.run(ctx, inputs)
    markdown = (ctx.out_dir / "report.md").read_text()
    rows = table_rows(markdown, " ")
    assert rows[1][1:] == ["0.043", "0.232"] and rows[2][1:] == ["0.620", "0.780"]
    f1 = json.loads((ctx.out_dir / "metrics.json").read_text())["models"]["base"]["overall"]["f1"]
    assert ["ours: base", rows[3][1], f"{f1:.3f}"] == rows[3]
    assert "7,983 turns" in markdown and "our answers are SIMULATED" in markdown


def write_dataset_files(out: Path) -> None:
    """dataset.json and an invalid validation.json as the prepare and validate steps write them."""
    counts = {"examples": 6, "turns": 40, "messages": 86, "characters": 9000, "estimated_tokens": 2680}
    longest = {"line": 4, "characters": 2100, "estimated_tokens": 600, "turns": 9}
    dataset = {"counts": {"train": counts | {"longest_example": longest}, "validation": None}}
    (out / "dataset.json").write_text(json.dumps(dataset))
    problem = {"line": 3, "kind": "too_long", "message": "about 600 tokens, longer than the model's 512 token context"}
    files = {"train.jsonl": {"valid": False, "problem_count": 1, "problems": [problem]}}
    (out / "validation.json").write_text(json.dumps({"valid": False, "files": files}))


def test_failed_job_report_names_step_words_and_what_to_do(tmp_path: Path) -> None:
    """A job failed in validate: the report leads with the step, the validator's words per line, and advice."""
    write_dataset_files(tmp_path)
    message = "train.jsonl is not a valid fine-tuning file: line 3: about 600 tokens (too_long x1)"
    document = {
        "job_id": "bad-1234",
        "name": "bad",
        "status": "failed",
        "step": "validate",
        "steps": {
            "prepare": {"status": "done", "attempts": 1, "started_at": "2026-01-01T00:00:00Z", "duration_s": 0.25},
            "validate": {"status": "failed", "attempts": 1, "started_at": "2026-01-01T00:00:01Z", "duration_s": None},
        },
        "remote": {},
        "error": {"type": "DatasetError", "message": message, "step": "validate"},
    }
    path = write_failure_report(tmp_path, document, {})
    markdown = path.read_text()
    assert markdown.startswith("# Fine-tune report: bad\n\n## What went wrong")
    assert "The job failed in step `validate` (DatasetError):" in markdown
    assert f"- {message}" in markdown
    assert "- train.jsonl line 3: about 600 tokens, longer than the model's 512 token context (too_long)" in markdown
    assert "What to do: Fix the dataset (validation.json names every bad line)" in markdown
    assert markdown.index(message) < markdown.index("What to do:") < markdown.index("## Job")
    steps = table_rows(markdown, "step")
    assert steps[1] == ["prepare", "done", "1", "2026-01-01T00:00:00Z", "0.2"] and steps[2][-1] == "–"
    assert table_rows(markdown, "file")[1] == ["train", "6", "40", "86", "2680"]
    assert "Longest training example: line 4, about 600 tokens, 9 turns." in markdown
    assert "Validation: NOT valid, 1 problems" in markdown
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_money_reads_optional_prices_and_endpoints(tmp_path: Path) -> None:
    """Evaluation prices on a model's metrics and endpoint minutes in the status document join the whole cost."""
    models = {"base": {"tokens": {"total": 1000, "price_usd": 0.25}}, "ft": {"tokens": {"total": 500}, "cost_usd": 0.5}}
    (tmp_path / "metrics.json").write_text(json.dumps({"models": models}))
    status = {"status": "completed", "endpoints": [{"minutes": 12.5, "cost_usd": 1.0}, {"minutes": 2.5}]}
    data = gather("j-1", "j", tmp_path, {"poll": {"total_price_usd": 2.0}}, status)
    lines = money_lines(money(data))
    assert "Evaluation of base: 1,000 tokens, $0.25." in lines and "Endpoints: 15.0 minutes, $1.00." in lines
    assert lines[-1] == "Whole cost: $3.75 (training $2.00 charged + evaluation $0.75 + endpoints $1.00)."


def test_the_report_step_says_it_writes_the_report() -> None:
    """The report step, still running while it writes the report, is shown as writing it, not as running."""
    steps = {"poll": {"status": "done", "attempts": 1}, "report": {"status": "running", "attempts": 1}}
    rows = timeline_rows({"steps": steps})
    assert [row[1] for row in rows] == ["done", "writing this report"]


def test_cancelled_and_remote_failure_advice() -> None:
    """Cancelled and Together-side failures get their own advice; an unknown error type points at the log."""
    assert "cancelled" in advice.failure_advice("cancelled", None)
    assert "Together's side" in advice.failure_advice("failed", {"type": "RemoteJobFailed"})
    assert advice.failure_advice("failed", {"type": "KeyError"}) == advice.DEFAULT_ADVICE
    assert advice.failure_advice("failed", {"type": "DatasetError", "step": "prepare"}) == advice.DATASET_ADVICE


def test_markdown_table_aligns_text_left_and_numbers_right() -> None:
    """Text columns pad right and get :--- ; number columns (with $, %, signs) pad left and get ---: ."""
    lines = markdown_table([["model", "F1", "cost"], ["base", "7.5", "$1.20"], ["fine-tuned", "+12.25", "–"]])
    assert lines[0] == "| model      |     F1 |  cost |"
    assert lines[1] == "|:-----------|-------:|------:|"
    assert lines[2] == "| base       |    7.5 | $1.20 |"
    assert lines[3] == "| fine-tuned | +12.25 |     – |"


@pytest.mark.parametrize(
    ("answers", "kind"),
    [
        (["Yes."], "yes/no"),
        (["unknown"], "unknown"),
        (["the red hat"], "short span"),
        (["a b c d e f"], "long free text"),
    ],
)
def test_answer_type_from_main_gold(answers: list[str], kind: str) -> None:
    """The main gold answer decides the type (normalised: case, punctuation and articles do not count)."""
    assert analysis.answer_type(answers) == kind


@pytest.mark.parametrize(
    ("question", "word"),
    [
        ("How many cats?", "how many"),
        ("and what did she do?", "what"),
        ("Was it red?", analysis.YES_NO_QUESTION),
        ("Why?", "why"),
        ("Ok then", "other"),
    ],
)
def test_question_word(question: str, word: str) -> None:
    """Compound how-words first, then the first wh-word anywhere, then auxiliaries open yes/no questions."""
    assert analysis.question_word(question) == word


def turn(turn_id: int, gold: str, prediction: str, f1: float, em: float = 0.0) -> analysis.Turn:
    """A scored turn of story s."""
    return analysis.Turn("s", turn_id, "cnn", "What?", (gold,), prediction, em, f1)


def test_breakdown_shares_and_verbosity_tip() -> None:
    """Error shares are of all errors; a model whose errors are mostly >3× gold length is told to answer short."""
    turns = [
        turn(1, "red", "red", 1.0, 1.0),
        turn(2, "blue", "the hat was blue as the sky", 0.3),
        turn(3, "green", "it was green I think so", 0.3),
        turn(4, "yes", "no", 0.0),
    ]
    result = analysis.analyse("base", turns, lowest_n=2)
    verbose = analysis.group(result, "prediction length", analysis.VERBOSE_BUCKET)
    assert verbose is not None and (verbose.turns, verbose.errors) == (2, 2)
    assert verbose.error_share == pytest.approx(2 / 3)
    assert [t.turn_id for t in result.lowest] == [4, 3]  # ties: the more verbose first
    other = analysis.Turn("t", 1, "cnn", "What?", ("blue",), "the hat was blue as the sky", 0.0, 0.3)
    spread = analysis.lowest_turns([*turns, other], 2)
    assert [(t.story_id, t.turn_id) for t in spread] == [("s", 4), ("t", 1)]  # one per story while others remain
    tips = advice.next_steps([result], {"base": 0.4})
    assert tips[0].startswith("67 % of base errors are answers over 3× the gold length")


def test_short_wrong_answers_tip() -> None:
    """A model whose errors are short answers with the wrong words is told the style is learned, the content not."""
    turns = [
        turn(1, "two goats", "hill above", 0.0),
        turn(2, "Tomas", "the mill", 0.0),
        turn(3, "red", "red", 1.0, 1.0),
    ]
    tips = advice.next_steps([analysis.analyse("ft", turns)], {"ft": 0.33})
    assert tips == [
        "100 % of ft errors are short answers with the wrong words (at most 1.5× the gold length, F1 under 0.2): the"
        " answer style is there, the content is not; train longer or on more data, and check that the story reaches"
        " the prompt."
    ]


def test_next_steps_without_a_dominant_failure() -> None:
    """Exact answers everywhere: no tip fires, the report says so."""
    result = analysis.analyse("m", [turn(i, "red", "red", 1.0, 1.0) for i in range(1, 5)])
    assert advice.next_steps([result], {"m": 1.0}) == [advice.next_steps([], {})[0]]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium is not installed (apt-get install chromium)")
async def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium loads report.html offline and its DOM has the charts, the analysis tables and the example turns."""
    ctx, inputs = await evaluated_job(tmp_path)
    (ctx.out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sandbox_events()))
    await report.run(ctx, inputs)
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--dump-dom",
        (ctx.out_dir / "report.html").as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    dom, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    page = dom.decode()
    assert process.returncode == 0
    assert page.count("<img") == 3 and "Error analysis" in page and "Lowest-scoring turns" in page
    assert "What to try next" in page and page.count('class="turn"') == 10
