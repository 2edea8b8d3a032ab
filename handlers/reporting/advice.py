"""What the report suggests: "what to try next" computed from the error analysis, the cookbook's published scores
beside ours, and what to do about a failed job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from handlers.reporting.analysis import VERBOSE_BUCKET, ModelAnalysis, group, length_ratio

# Thresholds of the suggestions (shares are of a model's errors, scores on 0..1).
VERBOSE_SHARE = 0.3
WEAK_GROUP_GAP = 0.2
MIN_GROUP_TURNS = 3
DEPTH_DROP = 0.1
SMALL_GAIN = 0.05
SHORT_WRONG_F1 = 0.2
SHORT_RATIO = 1.5

# The Together cookbook's Multiturn_Conversation_Finetuning notebook (HEAD 90687d58): Llama 3.1 8B on CoQA
# validation (500 stories, 7,983 turns), one gold answer per turn, scores on 0..1.
COOKBOOK_PUBLISHED = {
    "base (Meta-Llama-3.1-8B-Instruct-Reference)": {"em": 0.043, "f1": 0.232},
    "fine-tuned (3 epochs, LoRA, lr 1e-5)": {"em": 0.62, "f1": 0.78},
}
COOKBOOK_TURNS = 7983
COOKBOOK_NOTE = (
    "Published in Together's cookbook (Multiturn_Conversation_Finetuning): the whole CoQA validation split"
    f" ({COOKBOOK_TURNS:,} turns), previous questions without answers in the prompt, max_tokens 64, the server's"
    " default temperature, one gold answer per turn. Ours differs in the turns scored ({turns:,}), the models and"
    " the fine-tune's settings{simulated}; compare the direction and size of the gain, not the digits."
)


def pct(share: float) -> str:
    """A share as a whole percentage."""
    return f"{share * 100:.0f} %"


def next_steps(analyses: Sequence[ModelAnalysis], overall_f1: Mapping[str, float]) -> list[str]:
    """Suggestions computed from the analysis of every model (first model = the reference)."""
    tips: list[str] = []
    for analysis in analyses:
        tips += _model_tips(analysis)
    if len(analyses) > 1:
        tips += _gain_tips(analyses, overall_f1)
    return tips or ["No single failure mode dominates: read the lowest-scoring turns below for patterns."]


def _model_tips(analysis: ModelAnalysis) -> list[str]:
    tips = []
    errors = sum(1 for t in analysis.turns if t.wrong)
    verbose = group(analysis, "prediction length", VERBOSE_BUCKET)
    if errors and verbose and verbose.error_share >= VERBOSE_SHARE:
        tips.append(
            f"{pct(verbose.error_share)} of {analysis.alias} errors are answers over 3× the gold length"
            f" (mean {analysis.mean_prediction_tokens:.1f} tokens against {analysis.mean_gold_tokens:.1f}): ask for"
            " short answers in the system prompt, lower max_tokens, or fine-tune on the answer style."
        )
    short_wrong = [t for t in analysis.turns if t.wrong and t.f1 < SHORT_WRONG_F1 and length_ratio(t) <= SHORT_RATIO]
    if errors and len(short_wrong) / errors >= VERBOSE_SHARE:
        tips.append(
            f"{pct(len(short_wrong) / errors)} of {analysis.alias} errors are short answers with the wrong words"
            " (at most 1.5× the gold length, F1 under 0.2): the answer style is there, the content is not;"
            " train longer or on more data, and check that the story reaches the prompt."
        )
    mean_f1 = sum(t.f1 for t in analysis.turns) / max(1, len(analysis.turns))
    for label, hint in (
        ("yes/no", "the model should answer yes or no first; add yes/no examples or say so in the prompt"),
        ("unknown", "the model rarely says 'unknown'; keep unanswerable turns in the training data"),
    ):
        weak = group(analysis, "answer type", label)
        if weak and weak.turns >= MIN_GROUP_TURNS and weak.f1 < mean_f1 - WEAK_GROUP_GAP:
            tips.append(
                f"{analysis.alias}: {label} answers score F1 {weak.f1:.2f} against {mean_f1:.2f} overall: {hint}."
            )
    depths = [g for g in analysis.groups.get("turn depth", []) if g.turns >= MIN_GROUP_TURNS]
    if len(depths) > 1 and depths[0].f1 - depths[-1].f1 > DEPTH_DROP:
        tips.append(
            f"{analysis.alias}: F1 falls from {depths[0].f1:.2f} at turn {depths[0].label} to {depths[-1].f1:.2f}"
            f" at turn {depths[-1].label}: the history is not used well; compare the gold-history protocol."
        )
    failed = sum(1 for t in analysis.turns if t.error)
    if failed:
        tips.append(f"{analysis.alias}: {failed} turns have no answer (request errors); they score 0.")
    return tips


def _gain_tips(analyses: Sequence[ModelAnalysis], overall_f1: Mapping[str, float]) -> list[str]:
    reference = analyses[0].alias
    base = overall_f1.get(reference)
    tips = []
    for other in analyses[1:]:
        value = overall_f1.get(other.alias)
        if base is None or value is None:
            continue
        if value - base < SMALL_GAIN:
            tips.append(
                f"{other.alias} {'gains only' if value >= base else 'loses'} {abs(value - base):.3f} F1 (0..1) against"
                f" {reference}: check the training loss,"
                " then try more epochs or a higher learning rate, or more (and more varied) training data."
            )
    return tips


def cookbook_rows(ours: Mapping[str, Mapping[str, Any]], scale: str) -> list[list[str]]:
    """The cookbook's published EM/F1, then ours on the same 0..1 scale."""
    divide = 1.0 if scale == "0-1" else 100.0
    rows = [["cookbook: " + name, f"{s['em']:.3f}", f"{s['f1']:.3f}"] for name, s in COOKBOOK_PUBLISHED.items()]
    for alias, model in ours.items():
        overall = model.get("overall") or {}
        if isinstance(overall.get("em"), int | float) and isinstance(overall.get("f1"), int | float):
            rows.append([f"ours: {alias}", f"{overall['em'] / divide:.3f}", f"{overall['f1'] / divide:.3f}"])
    return rows


ADVICE = {
    "SpecError": "Fix the spec as the problems say, then drop it into the inbox again.",
    "DatasetError": "Fix the dataset (validation.json names every bad line), then drop the spec again.",
    "ContextLengthExceeded": "Shorten the prompts (dataset.max_turns, evaluate.limit) or use a longer-context model.",
    "RemoteRejected": "Together refused the request: change what its message names in the spec, then drop it again.",
    "RemoteJobFailed": "The fine-tune failed on Together's side: read its events, fix the data or the settings, and"
    " resubmit.",
    "TransientError": "The remote stayed unavailable through every retry: drop the spec again later (an edited copy;"
    " an identical one is filed as a duplicate).",
    "AttemptsExhausted": "The step kept being interrupted (crash or restart): read log.jsonl for the cause before"
    " resubmitting.",
    "Paused": "Remote work is paused (credentials or balance): fix TOGETHER_API_KEY or the account, then resubmit.",
}
DATASET_ADVICE = "Fix the dataset section of the spec (or the data) as the message says, then drop the spec again."
DEFAULT_ADVICE = "Read log.jsonl in this folder for the traceback, fix the cause, then drop an edited spec again."
CANCELLED_ADVICE = "The job was cancelled (finetuned cancel); drop the spec again to run it."


def failure_advice(status: str, error: Mapping[str, Any] | None) -> str:
    """What to do about a job that ended without completing."""
    if status == "cancelled":
        return CANCELLED_ADVICE
    kind = str((error or {}).get("type") or "")
    if kind == "DatasetError" and (error or {}).get("step") != "validate":
        return DATASET_ADVICE
    return ADVICE.get(kind, DEFAULT_ADVICE)
