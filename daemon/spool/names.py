"""Which inbox names are specs at all: producers write dotfiles or `*.tmp`/`*.part` and rename when done, editors
leave `*~`; those are never touched. No imports beyond the standard library: the CLI uses this at start-up."""

from __future__ import annotations

import hashlib
import os
import re

IGNORED_SUFFIXES = (".tmp", ".part", "~")
_SAFE = re.compile(r"[^/\x00]+")


def is_candidate(name: str) -> bool:
    """True for a name the daemon may claim (not hidden, not a temporary or backup file)."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


# The longest name finetuned gives a file it keeps (duplicates get a 30-byte prefix; NAME_MAX is 255 bytes).
MAX_KEPT_NAME_BYTES = 120
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def printable(name: str) -> str:
    """A file name as text anyone can read and any UTF-8 writer can write: undecodable bytes (which os functions
    hand over as surrogates) and control characters become `\\xNN` escapes."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def kept_name(name: str) -> str:
    """The name under which finetuned keeps an input (in its job or outbox folder): the name itself when it is
    printable UTF-8 without odd characters and short; else a safe stem, a hash of the original bytes and the suffix."""
    raw = os.fsencode(name)
    if printable(name) == name and _SAFE.fullmatch(name) and len(raw) <= MAX_KEPT_NAME_BYTES:
        return name
    suffix = next((s for s in SPEC_SUFFIXES if raw.lower().endswith(s.encode())), "")
    text = printable(name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text[: len(text) - len(suffix)]).strip("._-")[:64]
    return f"{stem or 'input'}-{hashlib.sha256(raw).hexdigest()[:8]}{suffix}"
