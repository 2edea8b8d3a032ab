"""Writing one benchmark's section of BENCHMARKS.md (the `## title` up to the next `## `), leaving the others."""

from __future__ import annotations

from pathlib import Path

REPORT = Path(__file__).resolve().parent / "BENCHMARKS.md"


def write_section(title: str, section: str, report: Path = REPORT) -> None:
    """Replace the section that starts with `title` by `section`, or append it when there is none yet."""
    text = report.read_text(encoding="utf-8")
    start = text.find(title)
    if start == -1:
        report.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        return
    end = text.find("\n## ", start + 1)
    rest = "\n" + text[end + 1 :] if end != -1 else ""  # a blank line before the next section
    report.write_text(text[:start] + section.rstrip("\n") + "\n" + rest, encoding="utf-8")
