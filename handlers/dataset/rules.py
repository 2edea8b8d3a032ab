"""The per-line rules of `validate` for fine-tuning JSONL: Together's former client checks, its docs, and ours."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """Every kind of problem the validator reports."""

    NOT_UTF8 = "not_utf8"
    LINE_TOO_LARGE = "line_too_large"
    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    NO_FORMAT = "no_format"
    MULTIPLE_FORMATS = "multiple_formats"
    MIXED_FORMATS = "mixed_formats"
    EXTRA_KEY = "extra_key"
    BAD_FIELD = "bad_field"
    MESSAGES_NOT_LIST = "messages_not_list"
    MESSAGES_EMPTY = "messages_empty"
    MESSAGE_NOT_OBJECT = "message_not_object"
    MESSAGE_EXTRA_KEY = "message_extra_key"
    BAD_ROLE = "bad_role"
    BAD_CONTENT = "bad_content"
    EMPTY_CONTENT = "empty_content"
    BAD_WEIGHT = "bad_weight"
    BAD_FIRST_ROLE = "bad_first_role"
    NOT_ALTERNATING = "not_alternating"
    NO_ASSISTANT = "no_assistant"
    TOO_LONG = "too_long"
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    TOO_FEW_EXAMPLES = "too_few_examples"
    UNREADABLE = "unreadable"


# Together's dataset formats, detected by their required keys (SDK 2.14 `lib/constants.py`).
FORMATS: dict[str, tuple[str, ...]] = {
    "conversation": ("messages",),
    "instruction": ("prompt", "completion"),
    "preference": ("input", "preferred_output", "non_preferred_output"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "weight"})

Problem = tuple[Kind, str]


def detect_format(record: Mapping[str, Any]) -> tuple[str | None, list[Problem]]:
    """The one format whose required keys the line has, or problems when it matches none or several."""
    matches = [name for name, keys in FORMATS.items() if all(key in record for key in keys)]
    if len(matches) == 1:
        fmt = matches[0]
        extra = [key for key in record if key not in FORMATS[fmt]]
        return fmt, [(Kind.EXTRA_KEY, f"key {key!r} is not part of the {fmt} format") for key in extra]
    if matches:
        return None, [(Kind.MULTIPLE_FORMATS, f"the line matches several formats: {', '.join(matches)}")]
    keys = ", ".join(repr(k) for k in list(record)[:5]) or "none"
    wanted = "; ".join("+".join(keys) for keys in FORMATS.values())
    return None, [(Kind.NO_FORMAT, f"no known format: keys are {keys}, expected one of {wanted}")]


def check_fields(fmt: str, record: Mapping[str, Any]) -> list[Problem]:
    """Rules for the non-conversation formats: each required field is a non-empty string (preference: see docs)."""
    if fmt == "conversation":
        return check_messages(record["messages"])
    problems: list[Problem] = []
    for key in FORMATS[fmt]:
        value = record[key]
        if fmt == "preference" and key != "input":
            continue  # an assistant message object; the server checks its inner shape
        if not isinstance(value, str if fmt != "preference" else (str, dict)) or not value:
            problems.append((Kind.BAD_FIELD, f"{key!r} must be a non-empty string"))
    return problems


def check_messages(messages: Any) -> list[Problem]:
    """Every rule on a `messages` list: shape, keys, roles, content, weights, order, an assistant turn."""
    if not isinstance(messages, list):
        return [(Kind.MESSAGES_NOT_LIST, f"'messages' must be a list, got {type(messages).__name__}")]
    if not messages:
        return [(Kind.MESSAGES_EMPTY, "'messages' is empty")]
    problems: list[Problem] = []
    roles: list[str | None] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            problems.append((Kind.MESSAGE_NOT_OBJECT, f"message {index} is a {type(message).__name__}, not an object"))
            roles.append(None)
            continue
        problems.extend(_check_message(index, message))
        role = message.get("role")
        roles.append(role if isinstance(role, str) else None)
    problems.extend(_check_order(roles))
    return problems


def _check_message(index: int, message: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    extra = sorted(str(key) for key in message if key not in MESSAGE_KEYS)
    if extra:
        problems.append(
            (Kind.MESSAGE_EXTRA_KEY, f"message {index} has key(s) {', '.join(extra)}; allowed: role, content, weight")
        )
    role = message.get("role")
    if role not in ROLES:
        problems.append((Kind.BAD_ROLE, f"message {index} has role {role!r}; allowed: {', '.join(ROLES)}"))
    content = message.get("content")
    if not isinstance(content, str):
        got = "no content" if content is None else f"content of type {type(content).__name__}"
        problems.append((Kind.BAD_CONTENT, f"message {index} has {got}; content must be a string"))
    elif not content.strip():
        problems.append((Kind.EMPTY_CONTENT, f"message {index} ({role}) has empty content"))
    if "weight" in message and (type(message["weight"]) is not int or message["weight"] not in (0, 1)):
        problems.append((Kind.BAD_WEIGHT, f"message {index} has weight {message['weight']!r}; allowed: 0 or 1"))
    return problems


def _check_order(roles: list[str | None]) -> list[Problem]:
    """Start with system or user; after the optional system message, user and assistant alternate.

    Messages whose role is already reported as bad (or that are not objects) are left out of the order check.
    """
    problems: list[Problem] = []
    if "assistant" not in roles:
        problems.append((Kind.NO_ASSISTANT, "no assistant message: there is nothing to train on"))
    known = [(index, role) for index, role in enumerate(roles) if role in ROLES]
    if not known:
        return problems
    if known[0][1] not in ("system", "user"):
        return [
            *problems,
            (Kind.BAD_FIRST_ROLE, f"the first message has role {known[0][1]!r}; it must be system or user"),
        ]
    start = 1 if known[0][1] == "system" else 0
    for offset, (index, role) in enumerate(known[start:]):
        expected = "user" if offset % 2 == 0 else "assistant"
        if role != expected:
            problems.append(
                (
                    Kind.NOT_ALTERNATING,
                    f"message {index} has role {role!r} where {expected!r} was expected: after the optional system "
                    "message, user and assistant must alternate",
                )
            )
            break
    return problems
