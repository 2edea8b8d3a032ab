"""The fast path of `validate`: the conversation rules of `rules.py` as msgspec types, decoded and checked in C.

It only ever says "this line is a valid conversation example, of these sizes" or "not proven": a line it declines
goes to the rules in `rules.py`, which name every problem, so problems and line numbers are always theirs.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Literal

import msgspec


class _Message(msgspec.Struct, forbid_unknown_fields=True):
    """A message as the rules allow it: `role` one of ROLES, `content` a string, `weight` absent or the int 0 or 1."""

    role: Literal["system", "user", "assistant"]
    content: str
    weight: Literal[0, 1] | msgspec.UnsetType = msgspec.UNSET


class _Conversation(msgspec.Struct, forbid_unknown_fields=True):
    """A line in the conversation format with no other key, and at least one message."""

    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]


_decode = msgspec.json.Decoder(_Conversation).decode
_role = attrgetter("role")
_content = attrgetter("content")


def conversation_sizes(raw: bytes) -> tuple[int, int, int] | None:
    """(content characters, messages, assistant turns) of a valid conversation line; None when not proven valid.

    msgspec checks UTF-8, JSON, keys, types, roles and weights as it decodes (a duplicate key must be valid every
    time it appears, and the last one counts, as with `json.loads`); the order and the emptiness of contents are
    checked here with C-level list operations.
    """
    try:
        messages = _decode(raw).messages
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    roles = list(map(_role, messages))
    turns = roles[1:] if roles[0] == "system" else roles
    users, assistants = turns[0::2], turns[1::2]
    if not assistants or users.count("user") != len(users) or assistants.count("assistant") != len(assistants):
        return None
    contents = list(map(_content, messages))
    if not all(map(str.strip, contents)):
        return None
    return sum(map(len, contents)), len(messages), len(assistants)
