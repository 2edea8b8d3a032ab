"""The sandbox's simulation rules: job clock, loss curve, price formula, latency parsing, extractive chat answers."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from daemon.sandbox.chat import best_sentence, short_answer, simulate_answer
from daemon.sandbox.sim import Outcome, SandboxJob, plan_steps, price_usd, token_count
from daemon.sandbox.state import parse_latency_ms
from tests.daemon.sandbox.helpers import QUESTIONS, STORY


def job(speed: float = 1.0, **changes: object) -> SandboxJob:
    """A 20-step job created at t=0."""
    values: dict[str, object] = {
        "id": "ft-00000000-1111",
        "request": {"model": "org/m", "n_checkpoints": 1},
        "created_at_s": 0.0,
        "speed": speed,
        "output_name": "sandbox/m-x",
        "total_steps": 20,
        "steps_per_epoch": 10,
        "train_tokens": 1000,
        "price_usd": 0.01,
        "seed": 0,
    }
    values.update(changes)
    return SandboxJob(**values)  # type: ignore[arg-type]


def test_status_follows_the_clock_scaled_by_speed() -> None:
    """At speed 10 the 190 simulated seconds of a 20-step job pass in 19 real seconds, through every status."""
    j = job(speed=10.0)
    at = {t: j.status(t) for t in (0.0, 2.5, 6.5, 12.0, 13.5, 16.5, 19.0)}
    assert at == {
        0.0: "pending",
        2.5: "queued",
        6.5: "running",
        12.0: "running",
        13.5: "compressing",
        16.5: "uploading",
        19.0: "completed",
    }


def test_loss_falls_and_is_deterministic() -> None:
    """The loss curve falls from about 1.9 to under 0.5, and the same job gives the same numbers."""
    a, b = job(), job()
    curve = [a.loss_at(step) for step in range(1, 21)]
    assert curve == [b.loss_at(step) for step in range(1, 21)]
    assert curve[0] > 1.6 and curve[-1] < 0.5 and curve[-1] < curve[10] < curve[0]


def test_scripted_outcome_cuts_the_run() -> None:
    """A `user_error` outcome at 50 % of training ends the job there with its message as the last event (job_error,
    the contract's type); a legacy level and a job_restarted notice after it are scripted as asked."""
    j = job(outcome=Outcome("user_error", "bad data", at=0.5))
    assert j.status(1e9) == "user_error"
    last = j.events(1e9)[-1]
    assert last["type"] == "job_error" and last["message"] == "bad data" and last["level"] == "error"
    restarted = job(outcome=Outcome("error", "OOM", at=0.5, level="legacy_ierror", restarted=True)).events(1e9)
    assert [(e["type"], e["level"]) for e in restarted[-2:]] == [
        ("job_error", "legacy_ierror"),
        ("job_restarted", "legacy_ierror"),
    ]
    assert 0 < j.steps_completed(1e9) < 20


def test_price_formula() -> None:
    """tokens = ceil(bytes/4); price = tokens/1e6 x $0.48 for LoRA and $0.54 for full training."""
    assert token_count(10) == 3 and token_count(4_000_000) == 1_000_000
    assert price_usd(1_000_000, 0, "Lora") == 0.48
    assert price_usd(2_000_000, 1_000_000, "Full") == pytest.approx(1.62)


def test_steps_plan() -> None:
    """Steps per epoch are ceil(lines / batch) with at least 10; batch 'max' means 128."""
    assert plan_steps(12, 3, "max", 128) == (10, 30)
    assert plan_steps(7199, 3, "max", 128) == (57, 171)
    assert plan_steps(1000, 2, 8, 128) == (125, 250)


@pytest.mark.parametrize(("spec", "expected"), [("0", (0.0, 0.0)), ("50", (50.0, 50.0)), ("20-80", (20.0, 80.0))])
def test_latency_parsing(spec: str, expected: tuple[float, float]) -> None:
    """Latency is a fixed number of milliseconds or a LOW-HIGH range."""
    assert parse_latency_ms(spec) == expected


@pytest.mark.parametrize("spec", ["fast", "80-20", "-5"])
def test_latency_parsing_rejects_nonsense(spec: str) -> None:
    """Anything else is refused with a ValueError."""
    with pytest.raises(ValueError, match=r"."):
        parse_latency_ms(spec)


def f1(prediction: str, gold: str) -> float:
    """SQuAD-style token F1 (lower case, punctuation and articles removed)."""

    def norm(text: str) -> list[str]:
        text = re.sub(r"\b(a|an|the)\b", " ", re.sub(r"[^\w\s]", " ", text.lower()))
        return text.split()

    p, g = norm(prediction), norm(gold)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def test_fine_tuned_answers_score_better_than_base() -> None:
    """On CoQA-style prompts the fine-tuned model's short answers beat the base model's sentences on F1."""
    system = {"role": "system", "content": f"Read the story and extract answers for the questions.\nStory: {STORY}"}
    base_f1, tuned_f1 = [], []
    for question, gold in QUESTIONS:
        messages = [system, {"role": "user", "content": question}]
        base_f1.append(f1(simulate_answer(messages, fine_tuned=False, model="org/base"), gold))
        tuned_f1.append(f1(simulate_answer(messages, fine_tuned=True, model="sandbox/ft"), gold))
    assert sum(tuned_f1) / len(tuned_f1) >= 0.6
    assert sum(tuned_f1) / len(tuned_f1) > 2 * sum(base_f1) / len(base_f1)


def test_answers_are_extractive_and_deterministic() -> None:
    """The best sentence shares the question's words; yes/no questions get yes/no; other prompts a placeholder."""
    assert best_sentence(STORY, "What did Anna bake on Sundays?").startswith("On Sundays Anna baked")
    assert short_answer("She had a brown dog named Max.", "Did she have a dog?") == "yes"
    plain = [{"role": "user", "content": "hello there"}]
    assert simulate_answer(plain, fine_tuned=False, model="m") == simulate_answer(plain, fine_tuned=False, model="m")
    assert "hello there" in simulate_answer(plain, fine_tuned=False, model="m")
