"""The command line in-process: the command list, submit's atomic delivery, cancel and score's error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.cli import main


def spool_args(tmp_path: Path) -> list[str]:
    return ["--inbox", str(tmp_path / "in"), "--outbox", str(tmp_path / "out"), "--state-dir", str(tmp_path / "st")]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`finetuned --help` names run, submit, status, check, cancel, retry, score and sandbox."""
    with pytest.raises(SystemExit) as info:
        main(["--help"], environ={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "submit", "status", "check", "cancel", "retry", "score", "sandbox"):
        assert f"    {command} " in out


def test_submit_delivers_without_clobbering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """submit renames a complete copy into the inbox and never overwrites a waiting spec of the same name."""
    spec = tmp_path / "job.yaml"
    spec.write_text("name: j\ndataset: {source: x}\n")
    assert main(["submit", str(spec), *spool_args(tmp_path)], environ={}) == 0
    assert main(["submit", str(spec), *spool_args(tmp_path)], environ={}) == 0
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["job.1.yaml", "job.yaml"]
    assert (tmp_path / "in" / "job.1.yaml").read_text() == spec.read_text()
    assert main(["submit", str(tmp_path / "missing.yaml"), *spool_args(tmp_path)], environ={}) == 1


def test_cancel_refuses_unknown_or_unsafe_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cancel exits 1 for a job that does not exist or an id that could escape the state folder."""
    assert main(["cancel", "nope-12345678", *spool_args(tmp_path)], environ={}) == 1
    assert main(["cancel", "../etc", *spool_args(tmp_path)], environ={}) == 1
    (tmp_path / "out" / "real-1").mkdir(parents=True)
    (tmp_path / "out" / "real-1" / "status.json").write_text(json.dumps({"job_id": "real-1", "status": "running"}))
    assert main(["cancel", "real-1", *spool_args(tmp_path)], environ={}) == 0
    assert (tmp_path / "st" / "cancel" / "real-1").exists()


def test_score_reports_bad_input_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """score names the problem and exits 2 when the predictions are not a list."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"version": "1.0", "data": []}))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"id": "x"}))
    assert main(["score", "--data", str(data), "--pred", str(preds)], environ={}) == 2
    assert "predictions must be a JSON list" in capsys.readouterr().err


def write_status(outbox: Path, job_id: str, status: str, created_at: str) -> None:
    (outbox / job_id).mkdir(parents=True)
    document = {"job_id": job_id, "status": status, "created_at": created_at}
    (outbox / job_id / "status.json").write_text(json.dumps(document))


def test_status_and_cancel_take_the_start_of_an_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job is found by its name (the start of its id): status lists every run, cancel needs exactly one."""
    out = tmp_path / "out"
    write_status(out, "coqa-1111aaaa", "completed", "2026-01-01T00:00:00Z")
    write_status(out, "coqa-2222bbbb", "running", "2026-01-02T00:00:00Z")
    write_status(out, "other-3333cccc", "running", "2026-01-03T00:00:00Z")
    capsys.readouterr()

    assert main(["status", "coqa", *spool_args(tmp_path)], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["coqa-1111aaaa", "completed"], ["coqa-2222bbbb", "running"]]
    assert main(["status", "coqa-2", "--json", *spool_args(tmp_path)], environ={}) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == "coqa-2222bbbb"
    assert main(["status", "nothing", *spool_args(tmp_path)], environ={}) == 1
    assert "no job 'nothing'" in capsys.readouterr().err

    assert main(["cancel", "coqa", *spool_args(tmp_path)], environ={}) == 1
    assert "'coqa' matches 2 jobs: coqa-1111aaaa, coqa-2222bbbb" in capsys.readouterr().err
    assert not (tmp_path / "st" / "cancel").exists()
    assert main(["cancel", "other", *spool_args(tmp_path)], environ={}) == 0
    assert sorted(p.name for p in (tmp_path / "st" / "cancel").iterdir()) == ["other-3333cccc"]
