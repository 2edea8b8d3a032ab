"""Settings: built once at the edge (the CLI) from the environment and passed down; the only reader of env vars."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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
    "FINETUNED_MIN_FREE_BYTES": "min_free_bytes",
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
    "FINETUNED_ENDPOINT_KEYS": "endpoint_keys",
    "FINETUNED_ALLOW_LINK_LOCAL": "allow_link_local",
    "TOGETHER_API_KEY": "together_api_key",
    "TOGETHER_BASE_URL": "together_base_url",
    "TOGETHER_PROJECT_ID": "together_project_id",
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
    # Below this much free space on the outbox's or the state folder's filesystem, writing work waits (disk full).
    min_free_bytes: int = 16 * 1024 * 1024
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
    # Which key variables a spec's evaluate.endpoints.*.api_key_env may name, for which hosts (the operator's
    # choice, not the spec's): `VAR=host[:port]|host2,VAR2=*` (see daemon/remote/hosts.py). TOGETHER_API_KEY is
    # sent only to the Together base URL, whatever this says.
    endpoint_keys: str = ""
    # Allow evaluation endpoints on link-local / cloud metadata addresses (169.254.0.0/16, fe80::/10,
    # fd00:ec2::254, metadata.google.internal); refused by default.
    allow_link_local: bool = False
    together_api_key: str | None = dataclasses.field(default=None, repr=False)
    together_base_url: str | None = None
    together_project_id: str | None = None  # the project dedicated endpoints live in; else whoami's
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

    def __post_init__(self) -> None:
        problems = [f"{_name_of(f)}={getattr(self, f)!r}: {why}" for f, why in _problems(self)]
        if problems:
            raise StartupError("invalid settings: " + "; ".join(problems))

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
    def retry_dir(self) -> Path:
        """`finetuned retry` leaves one empty file per request here; the daemon acts on it and removes it."""
        return self.state_dir / "retry"

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


# Settings that must be positive (a zero would stall the daemon or spin it), and those that may be zero.
_POSITIVE = (
    "max_concurrent_jobs",
    "max_step_attempts",
    "retry_attempts",
    "max_spec_bytes",
    "reconcile_interval_s",
    "poll_min_s",
    "poll_max_s",
    "pause_probe_s",
    "request_timeout_s",
)
_NOT_NEGATIVE = ("settle_s", "shutdown_grace_s", "retry_base_s", "retry_cap_s", "retry_max_s", "min_free_bytes")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _problems(settings: Settings) -> list[tuple[str, str]]:
    """(field, why) for every value a daemon cannot work with."""
    found = [(f, "must be greater than 0") for f in _POSITIVE if getattr(settings, f) <= 0]
    found += [(f, "must not be negative") for f in _NOT_NEGATIVE if getattr(settings, f) < 0]
    if settings.poll_max_s < settings.poll_min_s:
        found.append(("poll_max_s", f"must be at least FINETUNED_POLL_MIN_S ({settings.poll_min_s})"))
    if not 0 <= settings.status_port <= 65535:
        found.append(("status_port", "must be a TCP port, 0 to 65535 (0: no status server)"))
    if settings.log_level.lower() not in LOG_LEVELS:
        found.append(("log_level", f"must be one of {', '.join(LOG_LEVELS)}"))
    return found


def _name_of(field: str) -> str:
    """The environment variable that sets a field (or the field's name)."""
    return next((var for var, f in USER_VARIABLES.items() if f == field), field)


def _credential(directory: str | None, name: str) -> str | None:
    """A systemd credential (LoadCredential=): the safe way to hand a service a secret."""
    if not directory:
        return None
    path = Path(directory) / name
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def _flag(raw: str) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off."""
    value = raw.strip().lower()
    if value not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ValueError(raw)
    return value in {"1", "true", "yes", "on"}


def _convert(var: str, field: str, raw: str) -> object:
    kinds: dict[str, Callable[[str], object]] = {
        "inbox": Path,
        "outbox": Path,
        "state_dir": Path,
        "max_concurrent_jobs": int,
        "max_step_attempts": int,
        "retry_attempts": int,
        "max_spec_bytes": int,
        "min_free_bytes": int,
        "status_port": int,
        "watchdog_usec": int,
        "allow_link_local": _flag,
    }
    kind = kinds.get(field)
    if kind is None and field.endswith("_s"):
        kind = float
    try:
        return kind(raw) if kind is not None else raw
    except ValueError as exc:
        raise StartupError(
            f"environment variable {var}={raw!r} is not a valid {getattr(kind, '__name__', 'value').strip('_')}"
        ) from exc
