"""Failure injection for the crash tests: `FINETUNED_CRASH_AT=before:upload,after:create@myjob` kills the process.

A point fires only when named in settings; the suffix `@<prefix>` limits it to job ids starting with that prefix.
"""

from __future__ import annotations

import os
import signal

from daemon.config import Settings


def crash_point(settings: Settings, point: str, job_id: str = "") -> None:
    """SIGKILL this process if `point` (optionally for this job) is armed: no cleanup, like a power cut."""
    if not settings.crash_at:
        return
    for armed in settings.crash_at.split(","):
        name, _, prefix = armed.strip().partition("@")
        if name == point and job_id.startswith(prefix):
            os.kill(os.getpid(), signal.SIGKILL)
