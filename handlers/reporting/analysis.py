"""Error analysis of one model's scored turns: where it is wrong (answer type, question word, verbosity, domain,
turn depth) and its lowest-scoring turns. Pure functions over predictions-<alias>.jsonl lines and eval stories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handlers.evaluation.scoring import DOMAIN_NAMES, OTHER_DOMAIN, answer_tokens, depth_bucket

UNKNOWN_ANSWERS = frozenset({"unknown", "unknow", "unanswerable", "no answer", ""})
SHORT_SPAN_MAX_TOKENS = 4
# Compound question words first: "how many" is not "how".
COMPOUND_WORDS = ("how many", "how much", "how long", "how old")
QUESTION_WORDS = ("what", "who", "whom", "whose", "when", "where", "why", "which", "how")
AUXILIARIES = frozenset(
    ("is", "was", "are", "were", "did", "does", "do", "can", "could", "has", "have", "had", "will", "would", "should")
)
YES_NO_QUESTION = "is/did/… (yes/no)"
# Prediction length / gold length buckets: (label, upper bound of the ratio, exclusive; None for open-ended).
LENGTH_BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("shorter than gold", 0.999),
    ("about gold length (≤1.5×)", 1.5),
    ("1.5–3× gold", 3.0),
    ("over 3× gold", None),
)
VERBOSE_BUCKET = LENGTH_BUCKETS[-1][0]


@dataclass(frozen=True)
class Turn:
    """One scored turn of one model, with what the analysis needs to group it."""

    story_id: str
    turn_id: int
    source: str
    question: str
    answers: tuple[str, ...]
    prediction: str | None
    em: float  # 0..1
    f1: float  # 0..1
    error: str | None = None

    @property
    def wrong(self) -> bool:
        """An error for the analysis: no gold answer matched exactly (EM 0), or no answer at all."""
        return self.em <= 0.0


def turns_from_lines(lines: Iterable[Mapping[str, Any]], sources: Mapping[str, str]) -> list[Turn]:
    """Turns from predictions-<alias>.jsonl lines (defensive: odd lines are skipped); `sources`: story id -> source."""
    turns = []
    for line in lines:
        try:
            story_id = str(line["id"])
            answers = tuple(str(a) for a in line.get("answers") or ())
            prediction = line.get("prediction")
            turns.append(
                Turn(
                    story_id=story_id,
                    turn_id=int(line["turn_id"]),
                    source=sources.get(story_id, ""),
                    question=str(line.get("question") or ""),
                    answers=answers,
                    prediction=None if prediction is None else str(prediction),
                    em=float(line.get("em") or 0.0),
                    f1=float(line.get("f1") or 0.0),
                    error=line.get("error"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return turns


def answer_type(answers: Sequence[str]) -> str:
    """yes/no, unknown, short span or long free text, from the main gold answer."""
    main = " ".join(answer_tokens(answers[0])) if answers else ""
    if main in ("yes", "no"):
        return "yes/no"
    if main in UNKNOWN_ANSWERS:
        return "unknown"
    return "short span" if len(main.split()) <= SHORT_SPAN_MAX_TOKENS else "long free text"


def question_word(question: str) -> str:
    """The question's wh-word (first found), or the yes/no form when it opens with an auxiliary, else `other`."""
    words = answer_tokens(question)
    text = " ".join(words)
    for compound in COMPOUND_WORDS:
        if f" {compound} " in f" {text} ":
            return compound
    for word in words:
        if word in QUESTION_WORDS:
            return word
    return YES_NO_QUESTION if words and words[0] in AUXILIARIES else "other"


def length_ratio(turn: Turn) -> float:
    """Prediction tokens over main-gold tokens (a missing prediction counts as 0 tokens)."""
    gold = len(answer_tokens(turn.answers[0])) if turn.answers else 0
    pred = len(answer_tokens(turn.prediction or ""))
    return pred / max(1, gold)


def length_bucket(turn: Turn) -> str:
    """Which LENGTH_BUCKETS label the turn's prediction falls in."""
    ratio = length_ratio(turn)
    for label, upper in LENGTH_BUCKETS:
        if upper is None or ratio <= upper:
            return label
    return VERBOSE_BUCKET


def domain(turn: Turn) -> str:
    """The official script's domain name of the turn's story source."""
    return DOMAIN_NAMES.get(turn.source, OTHER_DOMAIN)


def depth(turn: Turn) -> str:
    """The turn-depth bucket label."""
    return depth_bucket(turn.turn_id)


GROUPINGS: dict[str, Callable[[Turn], str]] = {
    "answer type": lambda t: answer_type(t.answers),
    "question word": lambda t: question_word(t.question),
    "prediction length": length_bucket,
    "domain": domain,
    "turn depth": depth,
}


@dataclass(frozen=True)
class Group:
    """The turns of one value of a grouping: count, mean EM/F1 (0..1), errors and their share of all errors."""

    label: str
    turns: int
    em: float
    f1: float
    errors: int
    error_share: float


def breakdown(turns: Sequence[Turn], key: Callable[[Turn], str], order: Sequence[str] = ()) -> list[Group]:
    """Groups of `turns` by `key`: the labels of `order` first (those present), then by descending count."""
    grouped: dict[str, list[Turn]] = {}
    for turn in turns:
        grouped.setdefault(key(turn), []).append(turn)
    all_errors = max(1, sum(1 for t in turns if t.wrong))
    ranked = [label for label in order if label in grouped]
    ranked += sorted((k for k in grouped if k not in ranked), key=lambda k: (-len(grouped[k]), k))
    groups = []
    for label in ranked:
        members = grouped[label]
        errors = sum(1 for t in members if t.wrong)
        groups.append(
            Group(
                label=label,
                turns=len(members),
                em=sum(t.em for t in members) / len(members),
                f1=sum(t.f1 for t in members) / len(members),
                errors=errors,
                error_share=errors / all_errors,
            )
        )
    return groups


@dataclass(frozen=True)
class ModelAnalysis:
    """Everything the report says about where one model is wrong."""

    alias: str
    turns: list[Turn]
    groups: dict[str, list[Group]]
    mean_prediction_tokens: float
    mean_gold_tokens: float
    lowest: list[Turn]


ORDERS: dict[str, Sequence[str]] = {
    "answer type": ("yes/no", "unknown", "short span", "long free text"),
    "prediction length": [label for label, _ in LENGTH_BUCKETS],
    "turn depth": ("1", "2-3", "4-6", "7-10", "11+"),
}


def analyse(alias: str, turns: Sequence[Turn], lowest_n: int = 5) -> ModelAnalysis:
    """The full error analysis of one model's turns."""
    groups = {name: breakdown(turns, key, ORDERS.get(name, ())) for name, key in GROUPINGS.items()}
    count = max(1, len(turns))
    pred_tokens = sum(len(answer_tokens(t.prediction or "")) for t in turns) / count
    gold_tokens = sum(len(answer_tokens(t.answers[0])) if t.answers else 0 for t in turns) / count
    lowest = lowest_turns(turns, lowest_n)
    return ModelAnalysis(alias, list(turns), groups, pred_tokens, gold_tokens, lowest)


def lowest_turns(turns: Sequence[Turn], count: int) -> list[Turn]:
    """The `count` lowest-scoring turns (ties: the more verbose first), at most one per story while others remain."""
    ranked = sorted(turns, key=lambda t: (t.f1, t.em, -length_ratio(t), t.story_id, t.turn_id))
    chosen: list[Turn] = []
    stories: set[str] = set()
    for turn in ranked:
        if len(chosen) < count and turn.story_id not in stories:
            chosen.append(turn)
            stories.add(turn.story_id)
    rest = [t for t in ranked if t not in chosen]
    return sorted([*chosen, *rest[: count - len(chosen)]], key=ranked.index)


def group(analysis: ModelAnalysis, grouping: str, label: str) -> Group | None:
    """One group of one grouping, or None when no turn falls in it."""
    return next((g for g in analysis.groups.get(grouping, []) if g.label == label), None)
