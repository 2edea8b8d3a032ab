"""The daemon's JSON log lines: a crash's traceback is there as data, without local variables, and redacted."""

from __future__ import annotations

import io
import json

import structlog

from daemon import logs


def test_a_crash_logs_its_frames_but_no_local_values_and_no_secret() -> None:
    """An exception logged with its traceback names the frames; locals (here a key) are not dumped."""
    out = io.StringIO()
    logs.configure("info", secrets=["tk-live-0123456789abcdef"], json_output=True, stream=out)
    key = "tk-live-0123456789abcdef"
    try:
        raise RuntimeError(f"boom with {key}")
    except RuntimeError:
        structlog.get_logger().exception("job_crashed", job_id="j-1")
    line = json.loads(out.getvalue().splitlines()[-1])
    (exception,) = line["exception"]
    assert exception["exc_type"] == "RuntimeError" and exception["frames"]
    assert all("locals" not in frame for frame in exception["frames"])
    assert key not in out.getvalue() and "boom with" in out.getvalue()
