"""Row → chat example for `prepare`: the cookbook's CoQA mapping, `messages` passthrough and the `columns` mapping.

Mappers raise RowProblem (no location); `prepare` adds the file, split and row to make it a DatasetError.
"""

from __future__ import annotations

import json
import string
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from daemon.spec import DatasetSpec
from handlers.dataset.jsonio import cookbook_line, encode_line
from handlers.dataset.stats import measure

Message = dict[str, Any]
EvalItem = dict[str, Any]
# A mapped training example: (JSONL line, content characters, messages, assistant turns, checked) where `checked`
# says the mapper built the line so that it keeps every rule of `validate` but the context length (CoQA: roles and
# order by construction, and it saw that every text has content); False leaves the line to `validate` to read.
Example = tuple[str, int, int, int, bool]
# Columns a mapper reads; a value names the one field of a struct column it needs (None: the whole column).
Projection = dict[str, str | None]

# ShareGPT-style speaker names; `dataset.roles` adds to (and overrides) these for `format: columns`.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
COQA_COLUMNS = ("story", "questions", "answers")
_ONLY_STR = frozenset({str})


class RowProblem(Exception):
    """One row cannot be mapped; the message says which column and why (the caller adds where)."""


class Mapper(Protocol):
    """Turns one source row into training messages and, for evaluation, one item."""

    required: tuple[str, ...]
    projection: Projection | None

    def example(self, row: Mapping[str, Any], max_turns: int | None) -> Example:
        """The row as one training line (up to `max_turns` assistant turns) with its sizes."""
        ...

    def messages(self, row: Mapping[str, Any]) -> list[Message]:
        """The row as chat messages, each `{"content", "role"}` in that key order (the cookbook's bytes)."""
        ...

    def eval_item(self, row: Mapping[str, Any], item_id: str) -> EvalItem:
        """The row as one evaluation item (see eval.jsonl in the README)."""
        ...


def make_mapper(spec: DatasetSpec) -> Mapper:
    """The mapper for `spec.format`."""
    if spec.format == "coqa":
        return CoqaMapper(spec.prompt_template)
    if spec.format == "messages":
        return MessagesMapper(
            column="messages",
            role_key="role",
            content_key="content",
            system_column=None,
            template=spec.system_prompt,
            roles=dict(spec.roles),
            keep_other_keys=True,
        )
    cols = spec.columns
    return MessagesMapper(
        column=cols.messages,
        role_key=cols.role,
        content_key=cols.content,
        system_column=cols.system,
        template=spec.system_prompt,
        roles={**SHAREGPT_ROLES, **spec.roles},
        keep_other_keys=False,
    )


def check_columns(mapper: Mapper, columns: Collection[str] | None) -> str | None:
    """A message naming the columns the format needs but the data lacks (None when all are there or unknown)."""
    if columns is None:
        return None
    missing = [c for c in mapper.required if c not in columns]
    if not missing:
        return None
    return f"missing column(s) {', '.join(missing)}; the data has: {', '.join(sorted(columns)) or 'no columns'}"


def cut_turns(messages: list[Any], max_turns: int | None) -> list[Any]:
    """Keep everything up to and including the `max_turns`-th assistant message."""
    if max_turns is None:
        return messages
    seen = 0
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            seen += 1
            if seen == max_turns:
                return messages[: index + 1]
    return messages


def fill_prompt(template: str, row: Mapping[str, Any]) -> str:
    """The system prompt template filled from the row's columns (`{story}` for CoQA)."""
    try:
        return template.format_map(row)
    except KeyError as exc:
        raise RowProblem(f"system_prompt refers to {{{exc.args[0]}}} but the row has no such column") from exc
    except (ValueError, IndexError) as exc:
        raise RowProblem(f"system_prompt is not a valid template ({exc}); write literal braces as {{{{ }}}}") from exc


class CoqaMapper:
    """The cookbook's mapping: system prompt with the story, then user question / assistant `input_text` pairs."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.required: tuple[str, ...] = COQA_COLUMNS
        self.projection: Projection | None = _template_columns(template) | {
            "story": None,
            "questions": None,
            "answers": "input_text",
        }

    def example(self, row: Mapping[str, Any], max_turns: int | None) -> Example:
        """The cookbook's line, built from escaped strings directly (the same bytes as `encode_line(messages)`)."""
        system = fill_prompt(self.template, _story_row(row))
        try:  # None (not a list) fails here too
            questions, answers = _paired(_plain_list(row, "questions"), _plain_list(row, "answers"), max_turns)
            line = cookbook_line(system, questions, answers)
        except TypeError:  # not a list of strings: the checked path names the column and item
            questions, answers = _paired(_texts(row, "questions"), _texts(row, "answers"), max_turns)
            line = cookbook_line(system, questions, answers)
        pairs = len(questions)  # all strings now: `cookbook_line` encoded them
        characters = len(system) + sum(map(len, questions)) + sum(map(len, answers))
        checked = pairs > 0 and bool(system.strip()) and all(map(str.strip, questions)) and all(map(str.strip, answers))
        return line, characters, 1 + 2 * pairs, pairs, checked

    def messages(self, row: Mapping[str, Any]) -> list[Message]:
        """System prompt, then for each question/answer pair (zip, as the cookbook) a user and an assistant message."""
        messages: list[Message] = [{"content": fill_prompt(self.template, _story_row(row)), "role": "system"}]
        for question, answer in zip(_texts(row, "questions"), _texts(row, "answers"), strict=False):
            messages.append({"content": question, "role": "user"})
            messages.append({"content": answer, "role": "assistant"})
        return messages

    def eval_item(self, row: Mapping[str, Any], item_id: str) -> EvalItem:
        """One story with every turn and all its gold answers (main first, then additional sets "0", "1", ...)."""
        story_row = _story_row(row)
        questions, answers = _texts(row, "questions"), _texts(row, "answers")
        turn_ids = _turn_ids(row, len(questions))
        extra = _additional(row, turn_ids)
        turns = [
            {"turn_id": turn_id, "question": question, "answers": [answer, *extra.get(turn_id, [])]}
            for turn_id, question, answer in zip(turn_ids, questions, answers, strict=False)
        ]
        source = row.get("source")
        return {
            "id": str(row["id"]) if row.get("id") not in (None, "") else item_id,
            "source": source if isinstance(source, str) else "",
            "system": fill_prompt(self.template, story_row),
            "story": story_row["story"],
            "turns": turns,
        }


def _template_columns(template: str) -> Projection:
    """The columns a system prompt template refers to (none when it does not parse: rows then report it)."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:
        return {}
    return {name.split(".")[0].split("[")[0]: None for name in names}


def _story_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    story = row.get("story")
    if not isinstance(story, str):
        raise RowProblem(f"column 'story' must be a string, got {_kind(story)}")
    return row


def _plain_list(row: Mapping[str, Any], column: str) -> Any:
    """The hub layout's list without checks (`cookbook_line` raises TypeError on anything but strings)."""
    value = row.get(column)
    if type(value) is dict:
        value = value.get("input_text")
    return value if type(value) is list else None


def _paired(questions: list[Any], answers: list[Any], max_turns: int | None) -> tuple[list[Any], list[Any]]:
    """Both lists cut to the pairs the cookbook's `zip` makes, at most `max_turns`; as they are when nothing is cut."""
    pairs = min(len(questions), len(answers), len(questions) if max_turns is None else max_turns)
    if len(questions) == len(answers) == pairs:
        return questions, answers
    return questions[:pairs], answers[:pairs]


def _texts(row: Mapping[str, Any], column: str) -> list[str]:
    """`input_text`s of a CoQA column in any of its layouts: list of str, list of {input_text}, {input_text: [...]}."""
    value = _decoded(row.get(column))
    if isinstance(value, dict):
        value = value.get("input_text")
    if type(value) is not list:
        raise RowProblem(f"column {column!r} must be a list (or {{input_text: [...]}}), got {_kind(value)}")
    if {*map(type, value)} <= _ONLY_STR:
        return value  # the common case, checked at C speed
    texts = [item.get("input_text") if isinstance(item, Mapping) else item for item in value]
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise RowProblem(f"column {column!r} item {index} must be a string (input_text), got {_kind(text)}")
    return [str(text) for text in texts]


def _turn_ids(row: Mapping[str, Any], count: int) -> list[int]:
    value = _decoded(row.get("questions"))
    ids: Any = None
    if isinstance(value, Mapping):
        ids = value.get("turn_id")
    elif isinstance(value, list) and value and isinstance(value[0], Mapping):
        ids = [item.get("turn_id") for item in value]
    if isinstance(ids, list) and len(ids) == count and all(isinstance(i, int) for i in ids):
        return ids
    return list(range(1, count + 1))


def _additional(row: Mapping[str, Any], turn_ids: list[int]) -> dict[int, list[str]]:
    """Additional gold answers by turn id, sets in key order "0", "1", ...; empty placeholders are skipped."""
    sets = _decoded(row.get("additional_answers"))
    if not isinstance(sets, Mapping):
        return {}
    by_turn: dict[int, list[str]] = {}
    for key in sorted(sets, key=lambda k: (len(str(k)), str(k))):
        answers = sets[key]
        texts = _texts({"a": answers}, "a")
        ids = _turn_ids({"questions": answers}, len(texts))
        if ids == list(range(1, len(texts) + 1)) and len(texts) == len(turn_ids):
            ids = turn_ids  # aligned by position when the set carries no turn ids of its own
        for turn_id, text in zip(ids, texts, strict=False):
            if text:
                by_turn.setdefault(turn_id, []).append(text)
    return by_turn


class MessagesMapper:
    """Rows holding a list of messages (`messages` or ShareGPT-style `conversations`), with role renaming."""

    def __init__(
        self,
        *,
        column: str,
        role_key: str,
        content_key: str,
        system_column: str | None,
        template: str | None,
        roles: dict[str, str],
        keep_other_keys: bool,
    ) -> None:
        self.column, self.role_key, self.content_key = column, role_key, content_key
        self.system_column, self.template, self.roles = system_column, template, roles
        self.keep_other_keys = keep_other_keys
        self.required: tuple[str, ...] = (column,) if system_column is None else (column, system_column)
        self.projection: Projection | None = None

    def example(self, row: Mapping[str, Any], max_turns: int | None) -> Example:
        """The row's messages (cut after `max_turns` assistant turns) as one line.

        Odd shapes (not a list, items that are not objects) are written as they are: `validate` then reports
        every such line at once, with its number, instead of stopping at the first.
        """
        value = self._converted(row)
        if isinstance(value, list):
            value = self._with_system(row, cut_turns(value, max_turns))
        return (encode_line({"messages": value}), *measure(value if isinstance(value, list) else []), False)

    def messages(self, row: Mapping[str, Any]) -> list[Message]:
        """The row's messages as `{"content", "role", ...}`, roles renamed, system prompt applied."""
        value = self._converted(row)
        if not isinstance(value, list):
            raise RowProblem(f"column {self.column!r} must be a list of messages, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise RowProblem(f"column {self.column!r} item {index} must be an object, got {_kind(item)}")
        return self._with_system(row, value)

    def _converted(self, row: Mapping[str, Any]) -> Any:
        value = _decoded(row.get(self.column))
        if value is None:
            raise RowProblem(f"column {self.column!r} is missing or null")
        if not isinstance(value, list):
            return value
        return [self._message(item) if isinstance(item, Mapping) else item for item in value]

    def _message(self, item: Mapping[str, Any]) -> Message:
        """`{"content", "role"}` first, then `weight`; with `keep_other_keys` every other key too (validate judges)."""
        role = item.get(self.role_key)
        message: Message = {
            "content": item.get(self.content_key),
            "role": self.roles.get(role, role) if isinstance(role, str) else role,
        }
        for key, value in item.items():
            if key not in (self.role_key, self.content_key) and (self.keep_other_keys or key == "weight"):
                message[key] = value
        return message

    def _with_system(self, row: Mapping[str, Any], messages: list[Any]) -> list[Any]:
        system: Any = None
        if self.template is not None:
            system = fill_prompt(self.template, row)
        elif self.system_column is not None:
            system = row.get(self.system_column)
        if system in (None, ""):
            return messages
        first = messages[0] if messages else None
        rest = messages[1:] if isinstance(first, dict) and first.get("role") == "system" else messages
        return [{"content": system, "role": "system"}, *rest]

    def eval_item(self, row: Mapping[str, Any], item_id: str) -> EvalItem:
        """Each assistant message is a turn: its question the user message before it, its answer the content."""
        messages = self.messages(row)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        turns: list[dict[str, Any]] = []
        question: Any = ""
        for message in messages:
            if message["role"] == "user":
                question = message["content"]
            elif message["role"] == "assistant":
                if not isinstance(question, str) or not isinstance(message["content"], str):
                    raise RowProblem(f"turn {len(turns) + 1}: question and answer must be strings")
                turns.append({"turn_id": len(turns) + 1, "question": question, "answers": [message["content"]]})
        source = row.get("source")
        return {
            "id": item_id,
            "source": source if isinstance(source, str) else "",
            "system": system if isinstance(system, str) else "",
            "story": "",
            "turns": turns,
        }


def _decoded(value: Any) -> Any:
    """List/object columns stored as JSON text (CSV files) are decoded; anything else is returned as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _kind(value: Any) -> str:
    return "nothing (missing)" if value is None else type(value).__name__
