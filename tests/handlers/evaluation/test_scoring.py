"""daemon/scoring.py against an independent transcription of the official CoQA scorer (evaluate-v1.0.py)."""

from __future__ import annotations

import json
import random
import re
import string
import subprocess
import sys
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import DatasetError
from handlers.evaluation import scoring

# ---------------------------------------------------------------------------------------------------------------
# The oracle: a line-by-line transcription of stanfordnlp/coqa-baselines scripts/evaluate-v1.0.py (MIT, 2018),
# kept deliberately close to the original's structure and arithmetic, independent of daemon/scoring.py.
# ---------------------------------------------------------------------------------------------------------------

OUT_DOMAIN = ["reddit", "science"]
IN_DOMAIN = ["mctest", "gutenberg", "race", "cnn", "wikipedia"]
DOMAIN_MAPPINGS = {
    "mctest": "children_stories",
    "gutenberg": "literature",
    "race": "mid-high_school",
    "cnn": "news",
    "wikipedia": "wikipedia",
    "science": "science",
    "reddit": "reddit",
}


class OfficialEvaluator:
    """The official CoQAEvaluator, transcribed."""

    def __init__(self, gold_file: Path) -> None:
        self.gold_data, self.id_to_source = OfficialEvaluator.gold_answers_to_dict(gold_file)

    @staticmethod
    def gold_answers_to_dict(gold_file: Path) -> tuple[dict[Any, Any], dict[Any, Any]]:
        with open(gold_file) as fh:
            dataset = json.load(fh)
        gold_dict: dict[Any, Any] = {}
        id_to_source: dict[Any, Any] = {}
        for story in dataset["data"]:
            source = story["source"]
            story_id = story["id"]
            id_to_source[story_id] = source
            questions = story["questions"]
            multiple_answers = [story["answers"]]
            multiple_answers += story["additional_answers"].values()
            for i, qa in enumerate(questions):
                qid = qa["turn_id"]
                gold_answers = []
                for answers in multiple_answers:
                    answer = answers[i]
                    gold_answers.append(answer["input_text"])
                key = (story_id, qid)
                gold_dict[key] = gold_answers
        return gold_dict, id_to_source

    @staticmethod
    def preds_to_dict(pred_file: Path) -> dict[Any, Any]:
        with open(pred_file) as fh:
            preds = json.load(fh)
        pred_dict = {}
        for pred in preds:
            pred_dict[(pred["id"], pred["turn_id"])] = pred["answer"]
        return pred_dict

    @staticmethod
    def normalize_answer(s: str) -> str:
        def remove_articles(text: str) -> str:
            regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
            return re.sub(regex, " ", text)

        def white_space_fix(text: str) -> str:
            return " ".join(text.split())

        def remove_punc(text: str) -> str:
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        def lower(text: str) -> str:
            return text.lower()

        return white_space_fix(remove_articles(remove_punc(lower(s))))

    @staticmethod
    def get_tokens(s: str) -> list[str]:
        if not s:
            return []
        return OfficialEvaluator.normalize_answer(s).split()

    @staticmethod
    def compute_exact(a_gold: str, a_pred: str) -> int:
        return int(OfficialEvaluator.normalize_answer(a_gold) == OfficialEvaluator.normalize_answer(a_pred))

    @staticmethod
    def compute_f1(a_gold: str, a_pred: str) -> float:
        gold_toks = OfficialEvaluator.get_tokens(a_gold)
        pred_toks = OfficialEvaluator.get_tokens(a_pred)
        common = Counter(gold_toks) & Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(pred_toks)
        recall = 1.0 * num_same / len(gold_toks)
        f1 = (2 * precision * recall) / (precision + recall)
        return f1

    @staticmethod
    def _compute_turn_score(a_gold_list: list[str], a_pred: str) -> dict[str, float]:
        f1_sum = 0.0
        em_sum = 0.0
        if len(a_gold_list) > 1:
            for i in range(len(a_gold_list)):
                gold_answers = a_gold_list[0:i] + a_gold_list[i + 1 :]
                em_sum += max(OfficialEvaluator.compute_exact(a, a_pred) for a in gold_answers)
                f1_sum += max(OfficialEvaluator.compute_f1(a, a_pred) for a in gold_answers)
        else:
            em_sum += max(OfficialEvaluator.compute_exact(a, a_pred) for a in a_gold_list)
            f1_sum += max(OfficialEvaluator.compute_f1(a, a_pred) for a in a_gold_list)
        return {"em": em_sum / max(1, len(a_gold_list)), "f1": f1_sum / max(1, len(a_gold_list))}

    def get_raw_scores(self, pred_data: dict[Any, Any]) -> tuple[dict[Any, Any], dict[Any, Any]]:
        exact_scores = {}
        f1_scores = {}
        for story_id, turn_id in self.gold_data:
            key = (story_id, turn_id)
            if key not in pred_data:
                continue
            scores = OfficialEvaluator._compute_turn_score(self.gold_data[key], pred_data[key])
            exact_scores[key] = scores["em"]
            f1_scores[key] = scores["f1"]
        return exact_scores, f1_scores

    def model_performance(self, pred_data: dict[Any, Any]) -> dict[str, Any]:
        exact_scores, f1_scores = self.get_raw_scores(pred_data)
        return self.get_domain_scores(exact_scores, f1_scores)

    def get_domain_scores(self, exact_scores: dict[Any, Any], f1_scores: dict[Any, Any]) -> dict[str, Any]:
        sources: dict[str, Counter[str]] = {}
        for source in IN_DOMAIN + OUT_DOMAIN:
            sources[source] = Counter()
        for story_id, turn_id in self.gold_data:
            key = (story_id, turn_id)
            source = self.id_to_source[story_id]
            sources[source]["em_total"] += exact_scores.get(key, 0)
            sources[source]["f1_total"] += f1_scores.get(key, 0)
            sources[source]["turn_count"] += 1
        scores: dict[str, Any] = OrderedDict()
        in_em = in_f1 = 0.0
        in_count = 0
        out_em = out_f1 = 0.0
        out_count = 0
        for source in IN_DOMAIN + OUT_DOMAIN:
            domain = DOMAIN_MAPPINGS[source]
            counts = sources[source]
            scores[domain] = {
                "em": round(counts["em_total"] / max(1, counts["turn_count"]) * 100, 1),
                "f1": round(counts["f1_total"] / max(1, counts["turn_count"]) * 100, 1),
                "turns": counts["turn_count"],
            }
            if source in IN_DOMAIN:
                in_em += counts["em_total"]
                in_f1 += counts["f1_total"]
                in_count += counts["turn_count"]
            elif source in OUT_DOMAIN:
                out_em += counts["em_total"]
                out_f1 += counts["f1_total"]
                out_count += counts["turn_count"]
        scores["in_domain"] = {
            "em": round(in_em / max(1, in_count) * 100, 1),
            "f1": round(in_f1 / max(1, in_count) * 100, 1),
            "turns": in_count,
        }
        scores["out_domain"] = {
            "em": round(out_em / max(1, out_count) * 100, 1),
            "f1": round(out_f1 / max(1, out_count) * 100, 1),
            "turns": out_count,
        }
        em_total = in_em + out_em
        f1_total = in_f1 + out_f1
        turn_count = in_count + out_count
        scores["overall"] = {
            "em": round(em_total / max(1, turn_count) * 100, 1),
            "f1": round(f1_total / max(1, turn_count) * 100, 1),
            "turns": turn_count,
        }
        return scores


# ---------------------------------------------------------------------------------------------------------------
# Fixtures written for this project: a CoQA-format file over every source, with four golds per turn.
# ---------------------------------------------------------------------------------------------------------------

WORDS = [
    "red",
    "blue",
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
    "king",
    "queen",
]
SOURCES = ["mctest", "gutenberg", "race", "cnn", "wikipedia", "reddit", "science"]


def _answer(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(["yes", "no", "Yes", "No.", "unknown"])
    words = rng.sample(WORDS, rng.randint(1, 4))
    if rng.random() < 0.3:
        words.insert(0, rng.choice(["the", "a", "An", "The"]))
    text = " ".join(words)
    return text.capitalize() + "." if rng.random() < 0.3 else text


def make_coqa(rng: random.Random, stories: int, *, additional: int = 3) -> dict[str, Any]:
    """A CoQA data document: stories over all seven sources, golds with case, articles and punctuation noise."""
    data = []
    for n in range(stories):
        turns = rng.randint(1, 14)
        main = [_answer(rng) for _ in range(turns)]
        extra = {
            str(k): [{"turn_id": t + 1, "input_text": _variant(rng, main[t])} for t in range(turns)]
            for k in range(additional)
        }
        data.append(
            {
                "source": SOURCES[n % len(SOURCES)],
                "id": f"story{n:03d}",
                "filename": f"f{n}.txt",
                "story": "Once upon a time.",
                "questions": [{"turn_id": t + 1, "input_text": f"q{t + 1}?"} for t in range(turns)],
                "answers": [{"turn_id": t + 1, "input_text": main[t], "span_text": main[t]} for t in range(turns)],
                "additional_answers": extra,
            }
        )
    return {"version": "1.0", "data": data}


def _variant(rng: random.Random, answer: str) -> str:
    roll = rng.random()
    if roll < 0.4:
        return answer
    if roll < 0.6:
        return answer.upper() + "!"
    if roll < 0.8:
        return f"the {answer} {rng.choice(WORDS)}"
    return _answer(rng)


def make_predictions(rng: random.Random, coqa: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact, partial, verbose, wrong, empty and missing predictions for every turn."""
    preds = []
    for story in coqa["data"]:
        golds = [[a["input_text"] for a in story["answers"]]] + [
            [a["input_text"] for a in extra] for extra in story["additional_answers"].values()
        ]
        for i, question in enumerate(story["questions"]):
            choice = rng.choice(["exact", "other_gold", "partial", "verbose", "wrong", "empty", "missing", "punct"])
            gold = golds[rng.randrange(len(golds))][i] if choice == "other_gold" else golds[0][i]
            answer = {
                "exact": gold,
                "other_gold": gold,
                "partial": " ".join(gold.split()[:1] + [rng.choice(WORDS)]),
                "verbose": f"The answer is {gold}.",
                "wrong": rng.choice(WORDS),
                "empty": "",
                "punct": f"  {gold.upper()}?! ",
            }.get(choice)
            if answer is not None:
                preds.append({"id": story["id"], "turn_id": question["turn_id"], "answer": answer})
    return preds


def write_pair(tmp_path: Path, coqa: dict[str, Any], preds: list[dict[str, Any]]) -> tuple[Path, Path]:
    data_path = tmp_path / "data.json"
    pred_path = tmp_path / "preds.json"
    data_path.write_text(json.dumps(coqa))
    pred_path.write_text(json.dumps(preds))
    return data_path, pred_path


def oracle(data_path: Path, pred_path: Path) -> dict[str, Any]:
    evaluator = OfficialEvaluator(data_path)
    return evaluator.model_performance(OfficialEvaluator.preds_to_dict(pred_path))


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_score_files_equals_official_on_every_number(tmp_path: Path, seed: int) -> None:
    """Every domain/in/out/overall em, f1 and turn count equals the official script's, in the same key order."""
    rng = random.Random(seed)
    coqa = make_coqa(rng, stories=rng.randint(7, 30))
    data_path, pred_path = write_pair(tmp_path, coqa, make_predictions(rng, coqa))
    ours, _ = scoring.score_files(data_path, pred_path)
    expected = oracle(data_path, pred_path)
    assert json.dumps(ours) == json.dumps(expected)
    assert expected["overall"]["turns"] == sum(len(s["questions"]) for s in coqa["data"])
    assert 0 < expected["overall"]["f1"] < 100  # the fixture really mixes right and wrong answers


def test_turn_scores_equal_official_leave_one_out() -> None:
    """Per-turn EM/F1 with one and with four golds equal the official _compute_turn_score, bit for bit."""
    rng = random.Random(99)
    for _ in range(2000):
        golds = [_answer(rng) for _ in range(rng.choice([1, 2, 4]))]
        pred = rng.choice([golds[0], "", _answer(rng), f"the {golds[-1]}!", " ".join(WORDS[:3])])
        expected = OfficialEvaluator._compute_turn_score(golds, pred)
        ours = scoring.turn_score(golds, pred)
        assert (ours.em, ours.f1) == (expected["em"], expected["f1"])


def test_fractional_em_and_empty_answers() -> None:
    """Leave-one-out gives EM 0.75 when one of four golds matches; empty answers score F1 1 only on empty gold."""
    assert scoring.turn_score(["white", "pale", "pale", "pale"], "White.").em == 0.75
    assert scoring.f1_score("", "") == 1
    assert scoring.f1_score("", "cat") == 0
    assert scoring.f1_score("the", "a") == 1  # both normalise to no tokens
    assert scoring.normalize_answer("  The Cat's  hat, an apple! ") == "cats hat apple"


def test_missing_predictions_count_zero_in_denominator(tmp_path: Path) -> None:
    """With no predictions at all every figure is 0.0 while turn counts stay, as in the official script."""
    coqa = make_coqa(random.Random(3), stories=7)
    data_path, pred_path = write_pair(tmp_path, coqa, [])
    ours, _ = scoring.score_files(data_path, pred_path)
    assert ours == oracle(data_path, pred_path)
    assert ours["overall"]["em"] == ours["overall"]["f1"] == 0.0
    assert ours["overall"]["turns"] > 0
    gold = scoring.load_coqa_gold(coqa)
    assert len(scoring.missing_predictions(gold, {})) == ours["overall"]["turns"]


def test_main_gold_predictions_do_not_reach_100(tmp_path: Path) -> None:
    """Predicting the main answers scores below 100 under leave-one-out when additional answers differ."""
    coqa = make_coqa(random.Random(5), stories=14)
    preds = [
        {"id": s["id"], "turn_id": a["turn_id"], "answer": a["input_text"]} for s in coqa["data"] for a in s["answers"]
    ]
    data_path, pred_path = write_pair(tmp_path, coqa, preds)
    ours, _ = scoring.score_files(data_path, pred_path)
    assert ours == oracle(data_path, pred_path)
    assert 50 < ours["overall"]["em"] < 100


def test_duplicate_predictions_last_one_wins(tmp_path: Path) -> None:
    """A prediction listed twice for a turn is scored with the later answer, as the official script does."""
    coqa = make_coqa(random.Random(8), stories=7)
    story = coqa["data"][0]
    first = {"id": story["id"], "turn_id": 1, "answer": "nonsense"}
    second = {"id": story["id"], "turn_id": 1, "answer": story["answers"][0]["input_text"]}
    data_path, pred_path = write_pair(tmp_path, coqa, [first, second])
    ours, _ = scoring.score_files(data_path, pred_path)
    assert ours == oracle(data_path, pred_path)
    assert ours["children_stories"]["f1"] > 0


def test_cookbook_single_gold_micro_average() -> None:
    """The cookbook variant scores the main gold only, as a 0..1 mean over all turns (missing count 0)."""
    gold = [
        scoring.GoldTurn("s", 1, "mctest", ("white", "pale")),
        scoring.GoldTurn("s", 2, "mctest", ("in a barn", "barn")),
        scoring.GoldTurn("s", 3, "mctest", ("no", "no")),
        scoring.GoldTurn("s", 4, "mctest", ("her mother", "mom")),
    ]
    preds = {("s", 1): "pale", ("s", 2): "The barn.", ("s", 3): "No"}
    result = scoring.micro_average(gold, scoring.score_turns(gold, preds, single_gold=True))
    # turn 1: em 0, f1 0; turn 2: "in barn" vs "barn": em 0, f1 2/3; turn 3: em 1, f1 1; turn 4 missing: 0
    assert result == {"em": round(1 / 4, 4), "f1": round((2 / 3 + 1) / 4, 4), "turns": 4}


def test_model_metrics_reuses_single_gold_scores_only_where_they_are_the_same_call() -> None:
    """model_metrics' cookbook block and headline scores equal score_turns(single_gold=True) on turns with one and
    several golds, a duplicate key whose last turn has one gold, and a turn with no prediction."""
    rng = random.Random(21)
    gold = [
        scoring.GoldTurn("s", t, "race", tuple(_answer(rng) for _ in range(rng.choice([1, 1, 4])))) for t in range(40)
    ]
    gold += [scoring.GoldTurn("s", 3, "race", ("pale", "white")), scoring.GoldTurn("s", 3, "race", ("white",))]
    gold += [scoring.GoldTurn("s", 5, "race", ("white",)), scoring.GoldTurn("s", 5, "race", ("pale", "white"))]
    preds = {turn.key: rng.choice([turn.answers[-1], _answer(rng), "pale"]) for turn in gold if turn.turn_id != 7}
    preds[("s", 3)] = preds[("s", 5)] = "white"  # the duplicates' first golds differ from their last ones'
    expected = scoring.score_turns(gold, preds, single_gold=True)
    metrics, headline = scoring.model_metrics(gold, preds, cookbook=True)
    assert list(headline.items()) == list(expected.items())
    assert metrics["cookbook"] == scoring.micro_average(gold, expected)
    assert scoring.model_metrics(gold, preds, cookbook=False)[1] == scoring.score_turns(gold, preds)


def test_depth_buckets_and_deltas() -> None:
    """Turns fall into 1, 2-3, 4-6, 7-10, 11+; deltas are model minus reference per bucket and overall."""
    assert [scoring.depth_bucket(t) for t in (1, 2, 3, 4, 6, 7, 10, 11, 25)] == [
        "1", "2-3", "2-3", "4-6", "4-6", "7-10", "7-10", "11+", "11+",
    ]  # fmt: skip
    gold = [scoring.GoldTurn("s", t, "cnn", (f"answer {t}",)) for t in range(1, 13)]
    right = {turn.key: turn.answers[0] for turn in gold}
    early = {turn.key: turn.answers[0] for turn in gold if turn.turn_id <= 3}
    per_model = {}
    for name, preds in (("base", early), ("finetuned", right)):
        metrics, _ = scoring.model_metrics(gold, preds, cookbook=False)
        per_model[name] = metrics
    assert per_model["base"]["by_turn_depth"]["1"] == {"em": 100.0, "f1": 100.0, "turns": 1}
    assert per_model["base"]["by_turn_depth"]["11+"] == {"em": 0.0, "f1": 0.0, "turns": 2}
    delta = scoring.deltas(per_model, "base")["finetuned - base"]
    assert delta["by_turn_depth"]["7-10"]["em"] == 100.0
    assert delta["by_turn_depth"]["2-3"]["f1"] == 0.0
    assert delta["overall"]["em"] == per_model["finetuned"]["overall"]["em"] - per_model["base"]["overall"]["em"]
    short = [turn for turn in gold if turn.turn_id <= 5]
    base_short, _ = scoring.model_metrics(short, early, cookbook=True)
    fine_short, _ = scoring.model_metrics(short, right, cookbook=True)
    short_delta = scoring.deltas({"base": base_short, "finetuned": fine_short}, "base")["finetuned - base"]
    assert list(short_delta["by_turn_depth"]) == ["1", "2-3", "4-6"]  # empty buckets are left out


def test_unknown_source_goes_to_other_and_overall() -> None:
    """Stories from non-CoQA data (no known source) count in `other` and in overall, not in in/out domain."""
    gold = [scoring.GoldTurn("x", 1, "", ("yes",)), scoring.GoldTurn("y", 1, "cnn", ("no",))]
    result = scoring.domain_scores(gold, scoring.score_turns(gold, {("x", 1): "yes", ("y", 1): "yes"}))
    assert result["other"] == {"em": 100.0, "f1": 100.0, "turns": 1}
    assert result["in_domain"]["turns"] == 1
    assert result["overall"] == {"em": 50.0, "f1": 50.0, "turns": 2}


def test_score_files_rejects_bad_inputs(tmp_path: Path) -> None:
    """A non-CoQA data file, an unknown source or a prediction without `answer` raise DatasetError."""
    coqa = make_coqa(random.Random(1), stories=2)
    data_path, pred_path = write_pair(tmp_path, {"data": [{"id": "x"}]}, [])
    with pytest.raises(DatasetError, match="not a CoQA data file"):
        scoring.score_files(data_path, pred_path)
    coqa["data"][0]["source"] = "blog"
    data_path, pred_path = write_pair(tmp_path, coqa, [])
    with pytest.raises(DatasetError, match="unknown source"):
        scoring.score_files(data_path, pred_path)
    coqa["data"][0]["source"] = "cnn"
    data_path, pred_path = write_pair(tmp_path, coqa, [{"id": "story000", "turn_id": 1}])
    with pytest.raises(DatasetError, match="prediction"):
        scoring.score_files(data_path, pred_path)


def test_finetuned_score_cli_prints_official_structure(tmp_path: Path) -> None:
    """`python -m daemon score --data --pred` prints exactly the official script's JSON for the same files."""
    rng = random.Random(42)
    coqa = make_coqa(rng, stories=21)
    data_path, pred_path = write_pair(tmp_path, coqa, make_predictions(rng, coqa))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "score", "--data", str(data_path), "--pred", str(pred_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=60,
    )
    assert json.loads(done.stdout, object_pairs_hook=OrderedDict) == oracle(data_path, pred_path)
    assert list(json.loads(done.stdout)) == list(oracle(data_path, pred_path))
