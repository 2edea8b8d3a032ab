"""Settings: built once at the edge (the CLI) from the environment and passed down; the only reader of env vars."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import StartupError

if TYPE_CHECKING:
    from daemon.remote.backoff import RetryPolicy

# The variables a user sets (and `.env.example` lists, exactly): variable name -> Settings field.
USER_VARIABLES: dict[str, str] = {
    "FINETUNED_INBOX": "inbox",
    "FINETUNED_OUTBOX": "outbox",
    "FINETUNED_STATE_DIR": "state_dir",
    "FINETUNED_MAX_CONCURRENT_JOBS": "max_concurrent_jobs",
    "FINETUNED_MAX_STEP_ATTEMPTS": "max_step_attempts",
    "FINETUNED_RECONCILE_INTERVAL_S": "reconcile_interval_s",
    "FINETUNED_SETTLE_S": "settle_s",
    "FINETUNED_MAX_SPEC_BYTES": "max_spec_bytes",
    "FINETUNED_SHUTDOWN_GRACE_S": "shutdown_grace_s",
    "FINETUNED_POLL_MIN_S": "poll_min_s",
    "FINETUNED_POLL_MAX_S": "poll_max_s",
    "FINETUNED_PAUSE_PROBE_S": "pause_probe_s",
    "FINETUNED_REQUEST_TIMEOUT_S": "request_timeout_s",
    "FINETUNED_RETRY_ATTEMPTS": "retry_attempts",
    "FINETUNED_RETRY_BASE_S": "retry_base_s",
    "FINETUNED_RETRY_CAP_S": "retry_cap_s",
    "FINETUNED_RETRY_MAX_S": "retry_max_s",
    "FINETUNED_STATUS_HOST": "status_host",
    "FINETUNED_STATUS_PORT": "status_port",
    "FINETUNED_LOG_LEVEL": "log_level",
    "FINETUNED_CRASH_AT": "crash_at",
    "TOGETHER_API_KEY": "together_api_key",
    "TOGETHER_BASE_URL": "together_base_url",
    "FINETUNED_WEBHOOK_URL": "webhook_url",
    "FINETUNED_WEBHOOK_TOKEN": "webhook_token",
    "FINETUNED_WEBHOOK_FORMAT": "webhook_format",
}

SECRET_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET", "_WEBHOOK_URL")

# Set by systemd, not by users; read here so that nothing else touches os.environ.
SYSTEMD_VARIABLES: dict[str, str] = {
    "NOTIFY_SOCKET": "notify_socket",
    "WATCHDOG_USEC": "watchdog_usec",
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one daemon; durations in seconds, sizes in bytes."""

    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    state_dir: Path = Path("state")
    max_concurrent_jobs: int = 4
    max_step_attempts: int = 3
    reconcile_interval_s: float = 60.0
    settle_s: float = 5.0
    max_spec_bytes: int = 1024 * 1024
    shutdown_grace_s: float = 20.0
    poll_min_s: float = 30.0
    poll_max_s: float = 600.0
    pause_probe_s: float = 60.0
    request_timeout_s: float = 60.0
    # One Together management call (upload, estimate, create, retrieve, ...) on a transient failure: see RetryPolicy.
    retry_attempts: int = 8
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    retry_max_s: float = 900.0
    status_host: str = "127.0.0.1"
    status_port: int = 0
    log_level: str = "info"
    crash_at: str = ""
    together_api_key: str | None = dataclasses.field(default=None, repr=False)
    together_base_url: str | None = None
    notify_socket: str | None = None
    watchdog_usec: int = 0
    # Keys a spec may name by variable (evaluate.endpoints.*.api_key_env, finetune.wandb_api_key_env,
    # notify.webhook_url_env): every *_API_KEY / *_KEY / *_TOKEN / *_SECRET / *_WEBHOOK_URL variable of the
    # environment, held here so nothing else reads os.environ.
    named_secrets: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    # Notifications (daemon/notify.py): a JSON POST per job end to this URL (a secret: never logged), with
    # `Authorization: Bearer <token>` when a token is set; format `json` or `slack` ({"text": ...}).
    webhook_url: str | None = dataclasses.field(default=None, repr=False)
    webhook_token: str | None = dataclasses.field(default=None, repr=False)
    webhook_format: str = "json"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Settings:
        """Build settings: explicit overrides (CLI flags) win over env vars, which win over defaults."""
        values: dict[str, object] = {}
        for var, field in {**USER_VARIABLES, **SYSTEMD_VARIABLES}.items():
            raw = environ.get(var, "").strip()
            if raw:
                values[field] = _convert(var, field, raw)
        values["named_secrets"] = {k: v for k, v in environ.items() if k.endswith(SECRET_SUFFIXES) and v.strip()}
        if "together_api_key" not in values:
            values["together_api_key"] = _credential(environ.get("CREDENTIALS_DIRECTORY"), "together_api_key")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def jobs_dir(self) -> Path:
        """Per-job working folders (claimed specs, scratch files) live here."""
        return self.state_dir / "jobs"

    @property
    def db_path(self) -> Path:
        """The SQLite state database."""
        return self.state_dir / "state.db"

    @property
    def cancel_dir(self) -> Path:
        """`finetuned cancel` leaves one empty file per request here; the daemon acts on it and removes it."""
        return self.state_dir / "cancel"

    @property
    def lock_path(self) -> Path:
        """The single-instance lock file."""
        return self.state_dir / "finetuned.lock"

    @property
    def retry_policy(self) -> RetryPolicy:
        """How a Together management call is retried (the one retry layer's settings)."""
        from daemon.remote.backoff import RetryPolicy  # the retry layer logs; `finetuned status` needs none of it

        return RetryPolicy(
            attempts=self.retry_attempts, base_s=self.retry_base_s, cap_s=self.retry_cap_s, max_total_s=self.retry_max_s
        )

    def secrets(self) -> list[str]:
        """Values that must never appear in logs, outbox files, status output or errors."""
        values = (self.together_api_key, self.webhook_url, self.webhook_token, *self.named_secrets.values())
        return list(dict.fromkeys(s for s in values if s))


def _credential(directory: str | None, name: str) -> str | None:
    """A systemd credential (LoadCredential=): the safe way to hand a service a secret."""
    if not directory:
        return None
    path = Path(directory) / name
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def _convert(var: str, field: str, raw: str) -> object:
    kind = {
        "inbox": Path,
        "outbox": Path,
        "state_dir": Path,
        "max_concurrent_jobs": int,
        "max_step_attempts": int,
        "retry_attempts": int,
        "max_spec_bytes": int,
        "status_port": int,
        "watchdog_usec": int,
    }.get(field)
    if kind is None and field.endswith("_s"):
        kind = float
    try:
        return kind(raw) if kind is not None else raw
    except ValueError as exc:
        raise StartupError(
            f"environment variable {var}={raw!r} is not a valid {kind.__name__ if kind else 'value'}"
        ) from exc
