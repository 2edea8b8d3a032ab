"""The evaluation stories `prepare` wrote (eval.jsonl), the item id of each answer, and the prompt of each turn
under each protocol (cookbook, gold-history, own-history)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import DatasetError

Message = dict[str, str]


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
