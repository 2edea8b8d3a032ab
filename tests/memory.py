"""In-memory stand-ins for the runner's durable capabilities (journal, item store, progress), for step tests.

The runner's SQLite-backed versions implement the same Protocols (daemon/context.py) and are tested on their own.
"""

from __future__ import annotations

from typing import Any


class DictJournal:
    """A dict-backed journal that also remembers the order of writes."""

    def __init__(self, initial: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(initial or {})
        self.writes: list[tuple[str, str]] = []

    def get(self, key: str) -> str | None:
        """The recorded value, or None."""
        return self.values.get(key)

    async def record(self, key: str, value: str) -> None:
        """Record a value (in memory)."""
        self.values[key] = value
        self.writes.append((key, value))


class MemoryItems:
    """Per-item results in a dict."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, dict[str, Any]]] = {}

    async def load(self, group: str) -> dict[str, dict[str, Any]]:
        """Every item of a group."""
        return dict(self.groups.get(group, {}))

    async def save(self, group: str, item_id: str, record: dict[str, Any]) -> None:
        """Save one item."""
        self.groups.setdefault(group, {})[item_id] = record


class ProgressLog:
    """Records every progress call, so tests can see what a step published."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **progress: Any) -> None:
        """Remember one progress update."""
        self.calls.append(progress)
