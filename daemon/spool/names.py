"""Which inbox names are specs at all: producers write dotfiles or `*.tmp`/`*.part` and rename when done, editors
leave `*~`; those are never touched. No imports beyond the standard library: the CLI uses this at start-up."""

from __future__ import annotations

IGNORED_SUFFIXES = (".tmp", ".part", "~")


def is_candidate(name: str) -> bool:
    """True for a name the daemon may claim (not hidden, not a temporary or backup file)."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)
