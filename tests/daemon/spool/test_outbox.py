"""The outbox at start-up: what a kill or a full disk left half-made is removed, nothing else."""

from __future__ import annotations

from pathlib import Path

from daemon.spool import outbox


def test_leftovers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """A `.staging-*` folder and atomic-write temp files go; job files and a user's own dotfile stay."""
    (tmp_path / ".staging-job-1-123").mkdir()
    job = tmp_path / "job-1"
    (job / "duplicates").mkdir(parents=True)
    for name in ("status.json", ".status.json.4455.tmp", ".notes", "duplicates/.x.yaml.77.tmp"):
        (job / name).write_text("x")
    variant = job / "variants" / "lr-1"
    variant.mkdir(parents=True)
    (variant / ".report.md.9.tmp").write_text("x")
    (tmp_path / ".index.html.6139.tmp").write_text("x")  # the outbox index's, found by a 40-minute soak
    removed = outbox.remove_leftovers(tmp_path)
    assert sorted(removed) == [
        ".index.html.6139.tmp",
        ".staging-job-1-123",
        "job-1/.status.json.4455.tmp",
        "job-1/duplicates/.x.yaml.77.tmp",
        "job-1/variants/lr-1/.report.md.9.tmp",
    ]
    assert sorted(p.name for p in job.iterdir()) == [".notes", "duplicates", "status.json", "variants"]
