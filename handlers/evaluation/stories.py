"""The evaluation stories `prepare` wrote (eval.jsonl), the item id of each answer, and the prompt of each turn
under each protocol (cookbook, gold-history, own-history)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import DatasetError

Message = dict[str, str]
FIXED_HISTORY = ("cookbook", "gold-history")  # protocols whose prompts do not depend on the model's answers


@dataclass(frozen=True)
class EvalTurn:
    """One question of a story and its gold answers (main first, then the additional ones)."""

    turn_id: int
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class EvalStory:
    """One story of the eval file written by the prepare step."""

    id: str
    source: str
    system: str
    turns: tuple[EvalTurn, ...]


def item_id(story_id: str, turn_id: int) -> str:
    """The item-store id of one answer."""
    return f"{story_id}:{turn_id}"


def load_eval_file(path: Path, limit: int | None = None) -> list[EvalStory]:
    """Read the prepare step's eval JSONL (one story per line), keeping the first `limit` stories."""
    stories: list[EvalStory] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if limit is not None and len(stories) >= limit:
                break
            if line.strip():
                stories.append(_parse_story(line, f"{path.name}:{number}"))
    if not stories:
        raise DatasetError(f"{path.name}: the eval file has no stories")
    return stories


def _parse_story(line: str, where: str) -> EvalStory:
    try:
        raw = json.loads(line)
        turns = tuple(
            EvalTurn(int(t["turn_id"]), str(t["question"]), tuple(str(a) for a in t["answers"])) for t in raw["turns"]
        )
        story = EvalStory(str(raw["id"]), str(raw.get("source") or ""), str(raw["system"]), turns)
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{where}: not an eval story ({type(exc).__name__}: {exc})") from exc
    if any(not turn.answers for turn in turns):
        raise DatasetError(f"{where}: every turn needs at least one gold answer")
    return story


def build_messages(
    protocol: str, story: EvalStory, upto: int, own_answers: Mapping[int, str | None] | None = None
) -> list[Message]:
    """The prompt for turn index `upto` (0-based) of `story` under `protocol`.

    cookbook: questions only; gold-history: gold answers between; own-history: the model's own earlier answers
    (a turn whose answer failed is left out of the history).
    """
    messages: list[Message] = [{"role": "system", "content": story.system}]
    for turn in story.turns[:upto]:
        if protocol == "cookbook":
            messages.append({"role": "user", "content": turn.question})
            continue
        answer = turn.answers[0] if protocol == "gold-history" else (own_answers or {}).get(turn.turn_id)
        if answer:
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": story.turns[upto].question})
    return messages


class Prompts:
    """The prompts of one protocol, each story's history built once: under cookbook and gold-history the history is
    fixed, so turn k's prompt is a slice of it plus turn k's question (the same messages `build_messages` returns)
    instead of k new ones per request. own-history prompts depend on the answers and are built each time."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        # By story identity; each entry holds its story, so the id stays that story's while cached.
        self._built: dict[int, tuple[EvalStory, list[Message], list[int]]] = {}

    def messages(
        self, story: EvalStory, upto: int, own_answers: Mapping[int, str | None] | None = None
    ) -> list[Message]:
        """The prompt for turn index `upto` of `story` (see build_messages)."""
        if self.protocol not in FIXED_HISTORY:
            return build_messages(self.protocol, story, upto, own_answers)
        built = self._built.get(id(story))
        if built is None:
            built = self._built[id(story)] = (story, *self._history(story))
        _, history, cuts = built
        return [*history[: cuts[upto]], {"role": "user", "content": story.turns[upto].question}]

    def _history(self, story: EvalStory) -> tuple[list[Message], list[int]]:
        """Every turn's history messages in order, and where each turn's prompt cuts it."""
        history: list[Message] = [{"role": "system", "content": story.system}]
        cuts: list[int] = []
        for turn in story.turns:
            cuts.append(len(history))
            if self.protocol == "cookbook":
                history.append({"role": "user", "content": turn.question})
            elif turn.answers[0]:
                history += [
                    {"role": "user", "content": turn.question},
                    {"role": "assistant", "content": turn.answers[0]},
                ]
        return history, cuts
