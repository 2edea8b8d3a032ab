"""CoQA scoring for the evaluate step and `finetuned score`: the official `evaluate-v1.0.py` semantics, exactly.

Pure functions over answers; the only I/O is the explicit file-loading helpers at the bottom (`score_files`).
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import DatasetError

# The official script's source lists and source -> domain names, in its order (the output keeps this order).
IN_DOMAIN_SOURCES = ("mctest", "gutenberg", "race", "cnn", "wikipedia")
OUT_DOMAIN_SOURCES = ("reddit", "science")
DOMAIN_NAMES = {
    "mctest": "children_stories",
    "gutenberg": "literature",
    "race": "mid-high_school",
    "cnn": "news",
    "wikipedia": "wikipedia",
    "science": "science",
    "reddit": "reddit",
}
# Stories whose source the official script does not know (non-CoQA data) are summed here and only in `overall`.
OTHER_DOMAIN = "other"
# Turn-depth buckets: (label, first turn, last turn or None for open-ended).
DEPTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1", 1, 1),
    ("2-3", 2, 3),
    ("4-6", 4, 6),
    ("7-10", 7, 10),
    ("11+", 11, None),
)
COOKBOOK_DECIMALS = 4

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)

TurnKey = tuple[str, int]


@dataclass(frozen=True)
class GoldTurn:
    """One scored turn: its story, turn id, the story's source and every gold answer (main first)."""

    story_id: str
    turn_id: int
    source: str
    answers: tuple[str, ...]

    @functools.cached_property
    def key(self) -> TurnKey:
        """The official script's key for a turn (made once: every aggregation looks it up)."""
        return (self.story_id, self.turn_id)


@dataclass(frozen=True)
class TurnScore:
    """EM and F1 of one turn as fractions in 0..1 (EM may be fractional with leave-one-out)."""

    em: float
    f1: float


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (SQuAD/CoQA).

    Cached: a prediction is compared with every gold answer, twice (EM and F1), in each scoring.
    """
    text = text.lower().translate(_DROP_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    """Whitespace tokens of the normalised answer; none for an empty answer."""
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    """1 when gold and prediction are equal after normalisation, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """Bag-of-tokens F1; when either side has no tokens, 1 if both have none, else 0."""
    gold_counts, gold_length = _token_counts(gold)
    pred_counts, pred_length = _token_counts(prediction)
    if not gold_length or not pred_length:
        return int(gold_length == pred_length)
    # The script's `sum((Counter(gold) & Counter(pred)).values())`: the tokens both share, with multiplicity.
    same = sum(min(count, pred_counts[token]) for token, count in gold_counts.items() if token in pred_counts)
    if same == 0:
        return 0
    precision = 1.0 * same / pred_length
    recall = 1.0 * same / gold_length
    return (2 * precision * recall) / (precision + recall)


@functools.lru_cache(maxsize=1 << 16)
def _token_counts(text: str) -> tuple[Counter[str], int]:
    """Each token's count in the normalised answer, and their number (cached like normalize_answer; read only)."""
    tokens = answer_tokens(text)
    return Counter(tokens), len(tokens)


def turn_score(golds: Sequence[str], prediction: str) -> TurnScore:
    """Official per-turn score: with several golds, the mean over leave-one-out maxima; with one, a plain max."""
    if not golds:
        raise ValueError("a turn needs at least one gold answer")
    em_sum = 0.0
    f1_sum = 0.0
    if len(golds) > 1:
        for i in range(len(golds)):
            others = [*golds[:i], *golds[i + 1 :]]
            em_sum += max(exact_match(gold, prediction) for gold in others)
            f1_sum += max(f1_score(gold, prediction) for gold in others)
    else:
        em_sum += exact_match(golds[0], prediction)
        f1_sum += f1_score(golds[0], prediction)
    return TurnScore(em=em_sum / len(golds), f1=f1_sum / len(golds))


def score_turns(
    gold: Iterable[GoldTurn], predictions: Mapping[TurnKey, str], *, single_gold: bool = False
) -> dict[TurnKey, TurnScore]:
    """Scores of every turn that has a prediction (missing ones are absent: they count as 0 when aggregated).

    `single_gold` keeps only the main answer, as the cookbook does.
    """
    scores: dict[TurnKey, TurnScore] = {}
    for turn in gold:
        if turn.key in predictions:
            scores[turn.key] = turn_score(turn.answers[:1] if single_gold else turn.answers, predictions[turn.key])
    return scores


def _single_gold_scores(
    gold: Iterable[GoldTurn], predictions: Mapping[TurnKey, str], official: Mapping[TurnKey, TurnScore]
) -> dict[TurnKey, TurnScore]:
    """`score_turns(single_gold=True)`, taking the official score of each turn with one gold answer (the same call)."""
    return {
        key: official[key] if len(turn.answers) == 1 else turn_score(turn.answers[:1], predictions[key])
        for key, turn in _unique_turns(gold).items()  # a key's last turn wins, in its first place, as in score_turns
        if key in predictions
    }


def _unique_turns(gold: Iterable[GoldTurn]) -> dict[TurnKey, GoldTurn]:
    """Turns by key in first-seen order; a duplicate key keeps its place but takes the later value (as a dict does)."""
    return {turn.key: turn for turn in gold}


def _block(em_total: float, f1_total: float, turns: int) -> dict[str, Any]:
    return {
        "em": round(em_total / max(1, turns) * 100, 1),
        "f1": round(f1_total / max(1, turns) * 100, 1),
        "turns": turns,
    }


def domain_scores(gold: Iterable[GoldTurn], scores: Mapping[TurnKey, TurnScore]) -> dict[str, Any]:
    """The official output: per domain, in_domain, out_domain and overall, each {em, f1, turns}, x100, 1 decimal.

    Sums run in the official order so every rounded figure is bit-identical. Unknown sources (non-CoQA data) are
    reported as `other` and included in `overall` only; the official script would stop on them.
    """
    gold = list(gold)
    story_source = {turn.story_id: turn.source for turn in gold}  # a later duplicate story wins, as in the script
    totals = {source: _Totals() for source in (*IN_DOMAIN_SOURCES, *OUT_DOMAIN_SOURCES)}
    for key in _unique_turns(gold):
        source = story_source[key[0]]
        bucket = totals.setdefault(source if source in DOMAIN_NAMES else OTHER_DOMAIN, _Totals())
        score = scores.get(key)
        bucket.em += score.em if score is not None else 0
        bucket.f1 += score.f1 if score is not None else 0
        bucket.turns += 1
    result: dict[str, Any] = {}
    for source in (*IN_DOMAIN_SOURCES, *OUT_DOMAIN_SOURCES):
        result[DOMAIN_NAMES[source]] = _block(*_sums([totals[source]]))
    group_sums = [_sums(totals[s] for s in IN_DOMAIN_SOURCES), _sums(totals[s] for s in OUT_DOMAIN_SOURCES)]
    result["in_domain"] = _block(*group_sums[0])
    result["out_domain"] = _block(*group_sums[1])
    if OTHER_DOMAIN in totals:
        group_sums.append(_sums([totals[OTHER_DOMAIN]]))
        result[OTHER_DOMAIN] = _block(*group_sums[2])
    # 0.0 + in + out is bit-identical to the script's in + out.
    em_total = sum((g[0] for g in group_sums), 0.0)
    f1_total = sum((g[1] for g in group_sums), 0.0)
    result["overall"] = _block(em_total, f1_total, sum(g[2] for g in group_sums))
    return result


@dataclass
class _Totals:
    """Running sums of one source, like the script's per-source Counter."""

    em: float = 0.0
    f1: float = 0.0
    turns: int = 0


def _sums(buckets: Iterable[_Totals]) -> tuple[float, float, int]:
    em_total, f1_total, turns = 0.0, 0.0, 0
    for bucket in buckets:
        em_total += bucket.em
        f1_total += bucket.f1
        turns += bucket.turns
    return em_total, f1_total, turns


def micro_average(
    gold: Iterable[GoldTurn], scores: Mapping[TurnKey, TurnScore], *, decimals: int = COOKBOOK_DECIMALS
) -> dict[str, Any]:
    """The cookbook's figure: the mean over every turn (missing ones count 0) as a fraction in 0..1."""
    turns = _unique_turns(gold)
    em_total = sum((scores[k].em for k in turns if k in scores), 0.0)
    f1_total = sum((scores[k].f1 for k in turns if k in scores), 0.0)
    count = len(turns)
    return {
        "em": round(em_total / max(1, count), decimals),
        "f1": round(f1_total / max(1, count), decimals),
        "turns": count,
    }


def depth_bucket(turn_id: int) -> str:
    """The turn-depth bucket label of a turn (1, 2-3, 4-6, 7-10, 11+)."""
    for label, first, last in DEPTH_BUCKETS:
        if turn_id >= first and (last is None or turn_id <= last):
            return label
    return DEPTH_BUCKETS[0][0]


def depth_scores(
    gold: Iterable[GoldTurn], scores: Mapping[TurnKey, TurnScore], *, percent: bool
) -> dict[str, dict[str, Any]]:
    """EM/F1 per turn-depth bucket: x100 with 1 decimal when `percent`, else 0..1 with the cookbook's precision."""
    by_bucket: dict[str, list[GoldTurn]] = {label: [] for label, _, _ in DEPTH_BUCKETS}
    for turn in _unique_turns(gold).values():
        by_bucket[depth_bucket(turn.turn_id)].append(turn)
    result: dict[str, dict[str, Any]] = {}
    for label, turns in by_bucket.items():
        if percent:
            keys = [t.key for t in turns]
            em_total = sum((scores[k].em for k in keys if k in scores), 0.0)
            f1_total = sum((scores[k].f1 for k in keys if k in scores), 0.0)
            result[label] = _block(em_total, f1_total, len(turns))
        else:
            result[label] = micro_average(turns, scores)
    return result


def deltas(per_model: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, Any]:
    """Each other model minus `reference`: overall and per depth bucket EM/F1 differences (same scale as inputs).

    Buckets without turns are left out.

    `per_model[name]` needs `overall` and `by_turn_depth` blocks of {em, f1, turns}.
    """
    base = per_model[reference]
    result: dict[str, Any] = {}
    for name, metrics in per_model.items():
        if name == reference:
            continue
        result[f"{name} - {reference}"] = {
            "overall": _diff(metrics["overall"], base["overall"]),
            "by_turn_depth": {
                label: _diff(metrics["by_turn_depth"][label], base["by_turn_depth"][label])
                for label in metrics["by_turn_depth"]
                if metrics["by_turn_depth"][label]["turns"] and base["by_turn_depth"].get(label, {}).get("turns")
            },
        }
    return result


def _diff(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, float]:
    # Inputs are already rounded (1 or 4 decimals); rounding again removes float noise such as 0.30000000000000004.
    return {metric: round(float(new[metric]) - float(old[metric]), COOKBOOK_DECIMALS) for metric in ("em", "f1")}


# ---- the official file formats (score_files is the only I/O in this module) ----


def load_coqa_gold(data: Mapping[str, Any]) -> list[GoldTurn]:
    """Gold turns of an original CoQA json document: answers[i] plus each additional answer set's i-th answer.

    Like the official script, answers are matched to questions by position. A story without
    `additional_answers` (the train file) is scored against its main answers only.
    """
    try:
        stories = data["data"]
        return [turn for story in stories for turn in _story_turns(story)]
    except (KeyError, IndexError, TypeError) as exc:
        raise DatasetError(f"not a CoQA data file: missing or malformed field {exc}") from exc


def _story_turns(story: Mapping[str, Any]) -> Iterable[GoldTurn]:
    source = story["source"]
    if source not in DOMAIN_NAMES:
        raise DatasetError(f"story {story['id']}: unknown source {source!r} (the official scorer knows {DOMAIN_NAMES})")
    answer_sets = [story["answers"], *story.get("additional_answers", {}).values()]
    for i, question in enumerate(story["questions"]):
        golds = tuple(str(answers[i]["input_text"]) for answers in answer_sets)
        yield GoldTurn(story_id=story["id"], turn_id=question["turn_id"], source=source, answers=golds)


def load_predictions(preds: Iterable[Mapping[str, Any]]) -> dict[TurnKey, str]:
    """Official prediction list `[{id, turn_id, answer}]` to a dict; a later duplicate wins, as in the script."""
    try:
        result = {(pred["id"], pred["turn_id"]): pred["answer"] for pred in preds}
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"not a CoQA prediction list: each entry needs id, turn_id and answer ({exc})") from exc
    bad = next((key for key, answer in result.items() if not isinstance(answer, str)), None)
    if bad is not None:
        raise DatasetError(f"prediction for story {bad[0]} turn {bad[1]}: answer must be a string")
    return result


def score_files(data_path: Path, pred_path: Path) -> tuple[dict[str, Any], list[TurnKey]]:
    """`finetuned score`: the official script's output for a CoQA data json and a prediction list json, and the
    turns that have no prediction (the script warns about each; they score 0). Each file is read once."""
    try:
        data = json.loads(data_path.read_text(encoding="utf-8"))
        preds = json.loads(pred_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {exc}") from exc
    if not isinstance(preds, list):
        raise DatasetError(f"{pred_path}: predictions must be a JSON list of {{id, turn_id, answer}}")
    gold = load_coqa_gold(data)
    predictions = load_predictions(preds)
    return domain_scores(gold, score_turns(gold, predictions)), missing_predictions(gold, predictions)


def missing_predictions(gold: Iterable[GoldTurn], predictions: Mapping[TurnKey, str]) -> list[TurnKey]:
    """Turns without a prediction (the official script warns about each one on stderr and scores it 0)."""
    return [key for key in _unique_turns(gold) if key not in predictions]


def model_metrics(
    gold: Sequence[GoldTurn], predictions: Mapping[TurnKey, str], *, cookbook: bool
) -> tuple[dict[str, Any], dict[TurnKey, TurnScore]]:
    """One model's metrics block and its per-turn headline scores.

    Both scorings are always given (`official`: all golds, leave-one-out, x100; `cookbook`: main gold, 0..1);
    `overall` and `by_turn_depth` use the protocol's own: the cookbook's when `cookbook`, else the official one.
    """
    official_turns = score_turns(gold, predictions)
    cookbook_turns = _single_gold_scores(gold, predictions, official_turns)
    official = domain_scores(gold, official_turns)
    single = micro_average(gold, cookbook_turns)
    headline = cookbook_turns if cookbook else official_turns
    metrics = {
        "scale": "0-1" if cookbook else "0-100",
        "overall": single if cookbook else official["overall"],
        "by_turn_depth": depth_scores(gold, headline, percent=not cookbook),
        "official": official,
        "cookbook": single,
    }
    return metrics, headline
