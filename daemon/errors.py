"""The error hierarchy every step raises from; the runner decides retry, fail or pause by type alone."""

from __future__ import annotations


class FinetunedError(Exception):
    """Base class of every error the daemon raises on purpose."""


class BadInput(FinetunedError):
    """Permanent: the user's input (spec, dataset) is wrong; retrying cannot help."""


class SpecError(BadInput):
    """A spec file that cannot be parsed or does not follow the schema; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DatasetError(BadInput):
    """The dataset cannot be loaded, mapped or validated."""


class TransientError(FinetunedError):
    """A remote call failed in a way that may succeed later (429, 5xx, timeout, connection reset)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.http_status = http_status


class Unavailable(TransientError):
    """The server answers no request now (connection refused, a 503: model loading, overloaded, not ready): every
    request to it would fail alike until it is back, so it is probed, not hammered."""


class RemoteRejected(FinetunedError):
    """Permanent: the remote API refused the request (400/404/422) or a limit of the spec (price) refuses it."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ContextLengthExceeded(RemoteRejected):
    """The prompt (plus max_tokens) does not fit the model's context: this item cannot be answered."""


class ContentFiltered(RemoteRejected):
    """The provider's content filter refused the prompt: this item cannot be answered."""


class RemoteJobFailed(FinetunedError):
    """The remote fine-tuning job ended in error, user_error or cancelled."""

    def __init__(self, message: str, *, remote_status: str) -> None:
        super().__init__(message)
        self.remote_status = remote_status


class Paused(FinetunedError):
    """Auth or spending problems (401/403/402, 429 insufficient_quota): all remote work waits for a fix."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class EvaluationIncomplete(FinetunedError):
    """The evaluation's deadline passed with more items missing (transient failures) than the spec allows; the
    answered ones are kept, and `finetuned retry` asks the missing ones again."""


class AttemptsExhausted(FinetunedError):
    """A step was started too many times without finishing (the process died while it ran, every time)."""


class DiskFull(FinetunedError):
    """A write failed for lack of space: the work waits for space and resumes; it is nobody's failure."""


class JobCancelled(FinetunedError):
    """The user asked for this job to be cancelled (`finetuned cancel`)."""


class StartupError(FinetunedError):
    """The daemon cannot start safely (spool on two filesystems, another instance running, ...)."""
