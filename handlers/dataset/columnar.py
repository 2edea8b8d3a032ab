"""The fast path of `validate`: prove a conversation JSONL file valid with Arrow's JSON reader and vectorised rules.

It only ever answers "every line is valid, and here are the counts" or "not proven": any line it cannot prove
(another format, an extra key, a type Arrow will not read as the schema, a blank line, a rule broken) sends the
whole file to the exact line-by-line validator in `handlers/validate.py`, which names each problem and its line.
So the problems found and their line numbers are the line-by-line validator's, always; this path only makes the
common case (a valid file) fast, parsing in C++ on every core instead of in Python.
"""

from __future__ import annotations

import functools
import io
import json
import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.dataset.jsonio import MAX_ROW_BYTES
from handlers.dataset.rules import MESSAGE_KEYS, ROLES
from handlers.dataset.stats import CHARS_PER_TOKEN, TOKENS_PER_MESSAGE, FileStats

CHUNK_BYTES = 64 * 2**20
# Exactly the characters Python's `str.strip()` removes (`str.isspace()`), so "empty content" means the same on
# both paths; a test checks the list against Python's.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Arrow reads `"weight": null` as no weight, which the line-by-line rules reject: such chunks take the slow path.
_JSON_NULL = re.compile(rb":\s*null\b")


@dataclass
class Proven:
    """What the fast path proved of a valid file: its examples and counts."""

    examples: int
    stats: FileStats


def prove_valid(path: Path, *, max_tokens: int | None) -> Proven | None:
    """The counts of a file whose every line is a valid conversation example, or None when that is not proven."""
    import pyarrow as pa
    import pyarrow.json as pj

    types = {"role": pa.string(), "content": pa.string(), "weight": pa.int64()}
    assert set(types) == MESSAGE_KEYS
    schema = pa.schema([("messages", pa.list_(pa.struct(list(types.items()))))])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    totals = _Totals(max_tokens=max_tokens)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for start, end in _line_chunks(mapped):
            if end - start > MAX_ROW_BYTES and mapped.find(b"\n", start, start + MAX_ROW_BYTES + 1) == -1:
                return None  # a line too large to hold: the line-by-line validator reports it
            if mapped.find(b"null", start, end) != -1 and _JSON_NULL.search(mapped, start, end):
                return None
            if not _prove_chunk(mapped, start, end, options, totals):
                return None
    return Proven(examples=totals.stats.examples, stats=totals.stats) if totals.stats.examples else None


def _prove_chunk(mapped: mmap.mmap, start: int, end: int, options: Any, totals: _Totals) -> bool:
    """Parse one chunk with Arrow and apply the rules; the chunk's pages are then dropped from memory."""
    import pyarrow as pa

    view = memoryview(mapped)[start:end]
    try:
        return _prove_view(view, options, totals)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return False
    finally:
        view.release()  # the map cannot close while a view of it is alive
        page = start - start % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, page, end - page)  # keep resident memory to one chunk


def _prove_view(view: memoryview, options: Any, totals: _Totals) -> bool:
    import pyarrow as pa
    import pyarrow.json as pj

    table = pj.read_json(pa.BufferReader(pa.py_buffer(view)), parse_options=options)
    table.validate(full=True)  # Arrow does not check UTF-8 while parsing; this does
    if table.num_rows != _newlines(view):
        return False  # Arrow skips blank lines, so its rows would not be the file's line numbers
    return totals.add(table.column("messages").combine_chunks())


def _line_chunks(mapped: mmap.mmap) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive runs of whole lines of about CHUNK_BYTES each; the last may lack its newline."""
    start, size = 0, len(mapped)
    while start < size:
        end = mapped.find(b"\n", min(start + CHUNK_BYTES, size) - 1)
        end = size if end == -1 else end + 1
        yield start, end
        start = end


def _newlines(view: memoryview) -> int:
    """Lines in a chunk: its newlines, plus one for a last line without one."""
    import numpy as np

    data = np.frombuffer(view, dtype=np.uint8)
    return int(np.count_nonzero(data == 10)) + (1 if len(data) and data[-1] != 10 else 0)


@dataclass
class _Totals:
    """Running counts over the chunks, with the rules applied column-wise to each."""

    max_tokens: int | None
    stats: FileStats = field(default_factory=FileStats)

    def add(self, messages: Any) -> bool:
        """Apply every rule to one chunk's `messages` column; count it and return True only if all hold."""
        import numpy as np

        if messages.null_count:
            return False
        offsets = _numbers(messages.offsets)
        lengths = np.diff(offsets)
        if not lengths.size or not lengths.all():
            return False
        flat = messages.flatten()
        if flat.null_count:
            return False  # a message that is null, not an object
        codes = _role_codes(flat)
        if codes is None or not _contents_present(flat.field("content")) or not _weights_ok(flat.field("weight")):
            return False
        row = np.repeat(np.arange(lengths.size), lengths)
        if not _order_ok(codes, offsets, lengths, row):
            return False
        return self._count(flat, codes, row, lengths)

    def _count(self, flat: Any, codes: Any, row: Any, lengths: Any) -> bool:
        import numpy as np
        import pyarrow.compute as pc

        chars = np.bincount(row, weights=_numbers(pc.utf8_length(flat.field("content"))), minlength=lengths.size)
        chars = chars.astype(np.int64)
        turns = np.bincount(row, weights=(codes == 2), minlength=lengths.size).astype(np.int64)
        if not turns.all():
            return False  # an example with no assistant message
        tokens = -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * lengths
        if self.max_tokens is not None and int(tokens.max()) > self.max_tokens:
            return False
        _add_chunk(self.stats, chars, lengths, turns, tokens)
        return True


def _add_chunk(stats: FileStats, chars: Any, lengths: Any, turns: Any, tokens: Any) -> None:
    """`FileStats.add` for a whole chunk at once (the first longest example wins, as line by line)."""
    first_line = stats.examples + 1
    longest = int(tokens.argmax())
    if int(tokens[longest]) > stats.longest.get("estimated_tokens", -1):
        stats.longest = {
            "line": first_line + longest,
            "characters": int(chars[longest]),
            "estimated_tokens": int(tokens[longest]),
            "turns": int(turns[longest]),
        }
    stats.examples += int(lengths.size)
    stats.turns += int(turns.sum())
    stats.messages += int(lengths.sum())
    stats.characters += int(chars.sum())
    stats.estimated_tokens += int(tokens.sum())


def _numbers(array: Any) -> Any:
    """A null-free Arrow integer array as a numpy view of its buffer (`to_numpy` would import pandas: 0.4 s)."""
    import numpy as np

    dtype = np.dtype(str(array.type))  # int32, int64: the same names in both
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _role_codes(flat: Any) -> Any:
    """Each message's role as 0 system, 1 user, 2 assistant; None when any role is missing or unknown."""
    import pyarrow.compute as pc

    codes = pc.index_in(flat.field("role"), value_set=_roles())
    if codes.null_count:
        return None
    return _numbers(codes)


@functools.cache
def _roles() -> Any:
    """ROLES as an Arrow array, read from JSON: converting Python objects would make pyarrow import pandas (0.4 s)."""
    import pyarrow.json as pj

    lines = "".join(json.dumps({"role": role}) + "\n" for role in ROLES).encode()
    return pj.read_json(io.BytesIO(lines)).column("role").combine_chunks()


def _contents_present(content: Any) -> bool:
    """Every message has string content with something in it besides whitespace."""
    import pyarrow.compute as pc

    if content.null_count:
        return False
    stripped = pc.utf8_trim(content, characters=WHITESPACE)
    return bool((_numbers(pc.binary_length(stripped)) > 0).all())


def _weights_ok(weight: Any) -> bool:
    """Weights, where given, are 0 or 1."""
    import numpy as np

    given = weight.drop_null()
    return not len(given) or bool(np.isin(_numbers(given), (0, 1)).all())


def _order_ok(codes: Any, offsets: Any, lengths: Any, row: Any) -> bool:
    """System first or not at all, then user and assistant alternate, starting with user."""
    import numpy as np

    position = np.arange(codes.size) - np.repeat(offsets[:-1] - offsets[0], lengths)
    starts_with_system = np.repeat(codes[offsets[:-1] - offsets[0]] == 0, lengths)
    after = position - starts_with_system
    expected = np.where(after < 0, 0, np.where(after % 2 == 0, 1, 2))
    return bool((codes == expected).all())
