"""JSON plumbing for `prepare`: the cookbook's exact JSONL bytes, and bounded-memory readers for JSON Lines and JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, NoReturn

from daemon.errors import DatasetError

# One source row (or one written line) may not exceed this: far beyond any model's context, small enough to hold.
MAX_ROW_BYTES = 16 * 2**20
_CHUNK_CHARS = 2**20

# `default=str`: a parquet/arrow value JSON has no type for (bytes, dates) is written as text, not a crash.
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode
# Python escapes DEL (0x7f); pandas' ujson, which `datasets.Dataset.to_json` uses, writes it raw.
_ESCAPED_DEL = re.compile(r"(?<!\\)((?:\\\\)*)\\u007f")
_WS = " \t\r\n"


def encode_line(record: dict[str, Any]) -> str:
    """One JSONL line byte-identical to `datasets` `to_json` (pandas ujson): ASCII-only, `/` escaped as `\\/`."""
    return finish_line(_encode(record))


def finish_line(json_text: str) -> str:
    """Turn Python's ASCII JSON into pandas ujson's bytes (`/` → `\\/`, raw DEL) and end the line."""
    line = json_text.replace("/", "\\/")
    if "\\u007f" in line:
        line = _ESCAPED_DEL.sub(lambda m: m.group(1) + "\x7f", line)
    return line + "\n"


def cookbook_line(system: str, questions: list[str], answers: list[str]) -> str:
    """The cookbook's line for one story, built from escaped strings (the bytes `encode_line(messages)` gives).

    Twice as fast as encoding the message dicts; raises TypeError when an item is not a string.
    """
    esc = encode_basestring_ascii
    body = "".join(
        [
            f',{{"content":{esc(q)},"role":"user"}},{{"content":{esc(a)},"role":"assistant"}}'
            for q, a in zip(questions, answers, strict=False)
        ]
    )
    return finish_line(f'{{"messages":[{{"content":{esc(system)},"role":"system"}}{body}]}}')


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for every non-blank line, one line in memory at a time."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(iter(lambda: fh.readline(MAX_ROW_BYTES + 1), b""), start=1):
            if len(raw) > MAX_ROW_BYTES:
                raise DatasetError(f"{path}: line {number} is longer than {MAX_ROW_BYTES // 2**20} MiB (one row)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path}: line {number} is not valid UTF-8 (byte {exc.start} of the line)") from exc
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {number} is not valid JSON: {exc.msg} (column {exc.colno})") from exc


def read_json(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a `.json` file: a list of rows, CoQA's `{"version", "data": [...]}`, or JSON Lines under that name.

    Yields (row number starting at 1, row). Only one row is held in memory at a time.
    """
    scanner = _Scanner(path)
    try:
        first = scanner.peek()
        if first == "[":
            yield from enumerate(scanner.array_items(), start=1)
        elif first == "{":
            key = scanner.open_object()
            if key in {"data", "version"}:
                yield from enumerate(scanner.member_items(key, "data"), start=1)
            else:
                scanner.close()
                yield from read_jsonl(path)
        else:
            raise DatasetError(f"{path}: not a JSON list of rows or a CoQA-style object with a 'data' list")
    finally:
        scanner.close()


class _Scanner:
    """A pull parser over a big JSON document: `raw_decode` on a sliding text buffer, refilled on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed when the scan ends
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read: {exc.strerror}") from exc
        self.buf = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of the buffer so far
        self.eof = False
        self.decoder = json.JSONDecoder()

    def close(self) -> None:
        """Release the file."""
        self.fh.close()

    def _fill(self, min_chars: int = _CHUNK_CHARS) -> bool:
        if self.eof:
            return False
        if self.pos > len(self.buf) // 2:
            self.consumed += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        try:
            chunk = self.fh.read(max(min_chars, _CHUNK_CHARS))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.path}: not valid UTF-8 near character {self.consumed + len(self.buf)}") from exc
        self.eof = not chunk
        self.buf += chunk
        return bool(chunk)

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def expect(self, chars: str) -> str:
        """Consume one of `chars` (after blanks) or fail with the position."""
        found = self.peek()
        if not found or found not in chars:
            self._fail(f"expected one of {chars!r}, found {found or 'the end of the file'!r}")
        self.pos += 1
        return found

    def value(self) -> Any:
        """Decode the next complete JSON value, reading more of the file until it is whole."""
        self.peek()
        grow = _CHUNK_CHARS
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._fill(grow):
                    grow *= 2  # a very long value: read in growing chunks to stay linear
                    continue
                self._fail(exc.msg, self.consumed + exc.pos)
            if end >= len(self.buf) and self._fill():
                continue  # a number could continue in the next chunk
            if end - self.pos > MAX_ROW_BYTES:
                self._fail(f"one row is longer than {MAX_ROW_BYTES // 2**20} MiB")
            self.pos = end
            return value

    def open_object(self) -> Any:
        """Consume `{` and the first key of an object; None when the object is empty."""
        self.expect("{")
        return self.value() if self.peek() == '"' else None

    def array_items(self) -> Iterator[Any]:
        """Yield the items of the array starting here."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.expect(",]") == "]":
                return

    def member_items(self, key: Any, wanted: str) -> Iterator[Any]:
        """Stream the items of the list under `wanted`, `key` being the object's current (already read) key."""
        while key is not None:
            self.expect(":")
            if key == wanted and self.peek() == "[":
                yield from self.array_items()
                return
            self.value()
            if self.expect(",}") == "}":
                break
            key = self.value()
        raise DatasetError(f"{self.path}: the top-level object has no {wanted!r} list of rows")

    def _fail(self, message: str, at: int | None = None) -> NoReturn:
        where = self.consumed + self.pos if at is None else at
        raise DatasetError(f"{self.path}: invalid JSON near character {where}: {message}")
