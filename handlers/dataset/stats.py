"""Counts of a chat JSONL file (examples, turns, characters, estimated tokens), shared by `prepare` and `validate`.

The token figure is an estimate, not a tokenizer run: one token per 4 characters of content (English text under
Llama-3-style tokenizers) plus 5 tokens per message for the chat template's framing (header, role, end of turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 5
TOKEN_ESTIMATE = (
    f"ceil(content characters / {CHARS_PER_TOKEN}) + {TOKENS_PER_MESSAGE} per message; an estimate, not a tokenizer"
)


def estimate_tokens(characters: int, messages: int) -> int:
    """The estimated token count of one example (see the module docstring)."""
    return -(-characters // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages


def measure(messages: list[Any]) -> tuple[int, int, int]:
    """(content characters, messages, assistant turns) of one example; items that are not objects count as nothing."""
    characters = 0
    turns = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            characters += len(content)
        if message.get("role") == "assistant":
            turns += 1
    return characters, len(messages), turns


@dataclass
class FileStats:
    """Running totals over the examples of one file, and which example is the longest."""

    examples: int = 0
    turns: int = 0
    messages: int = 0
    characters: int = 0
    estimated_tokens: int = 0
    longest: dict[str, int] = field(default_factory=dict)

    def add(self, characters: int, messages: int, turns: int, line: int | None = None) -> int:
        """Count one example (at `line`, by default the next line of the file); returns its estimated tokens."""
        tokens = estimate_tokens(characters, messages)
        self.examples += 1
        self.turns += turns
        self.messages += messages
        self.characters += characters
        self.estimated_tokens += tokens
        if tokens > self.longest.get("estimated_tokens", -1):
            where = self.examples if line is None else line
            self.longest = {"line": where, "characters": characters, "estimated_tokens": tokens, "turns": turns}
        return tokens

    def absorb(self, later: FileStats, line_offset: int) -> None:
        """Add the totals of a later part of the file, whose lines are numbered from 1 after `line_offset` lines.

        The longest example stays the first of the longest, as when counting line by line.
        """
        if later.longest and later.longest["estimated_tokens"] > self.longest.get("estimated_tokens", -1):
            self.longest = {**later.longest, "line": later.longest["line"] + line_offset}
        self.examples += later.examples
        self.turns += later.turns
        self.messages += later.messages
        self.characters += later.characters
        self.estimated_tokens += later.estimated_tokens

    def as_dict(self) -> dict[str, Any]:
        """The totals as written to dataset.json and validation.json."""
        return {
            "examples": self.examples,
            "turns": self.turns,
            "messages": self.messages,
            "characters": self.characters,
            "estimated_tokens": self.estimated_tokens,
            "longest_example": self.longest or None,
        }


def file_identity(path: Path) -> dict[str, int]:
    """What tells a file from a changed one without reading it: size, modification time (ns) and inode."""
    stat = path.stat()
    return {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
