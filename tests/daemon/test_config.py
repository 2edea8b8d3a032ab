"""Settings: flags over environment over defaults, .env.example lists exactly what is read, systemd credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import load_environment
from daemon.config import USER_VARIABLES, Settings
from daemon.errors import StartupError

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_exactly_the_variables_read() -> None:
    """Every variable in .env.example is read by Settings, and every user variable is in .env.example."""
    names = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names == set(USER_VARIABLES)


def test_precedence_and_units() -> None:
    """Explicit overrides beat env vars, env vars beat defaults; numbers are converted by the field's unit."""
    env = {"FINETUNED_INBOX": "/srv/in", "FINETUNED_SETTLE_S": "2.5", "FINETUNED_MAX_CONCURRENT_JOBS": "7"}
    settings = Settings.from_env(env, inbox=Path("/cli/in"), outbox=None)
    assert settings.inbox == Path("/cli/in") and settings.outbox == Path("outbox")
    assert settings.settle_s == 2.5 and settings.max_concurrent_jobs == 7
    with pytest.raises(StartupError, match="FINETUNED_MAX_CONCURRENT_JOBS='many'"):
        Settings.from_env({"FINETUNED_MAX_CONCURRENT_JOBS": "many"})


def test_api_key_from_systemd_credential_and_never_in_repr(tmp_path: Path) -> None:
    """LoadCredential= provides the key; it is not part of the settings' repr."""
    (tmp_path / "together_api_key").write_text("tk-credential-123456\n")
    settings = Settings.from_env({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.together_api_key == "tk-credential-123456"
    assert "tk-credential" not in repr(settings)
    assert Settings.from_env({"TOGETHER_API_KEY": "tk-env-abcdef"}).secrets() == ["tk-env-abcdef"]


def test_env_file_values_lose_to_the_environment(tmp_path: Path) -> None:
    """Variables already set win over the .env file; a named env file that is missing is an error."""
    env_file = tmp_path / "dev.env"
    env_file.write_text("FINETUNED_INBOX=from-file\nFINETUNED_OUTBOX=from-file\n")
    merged = load_environment(env_file, {"FINETUNED_INBOX": "from-env"})
    assert merged["FINETUNED_INBOX"] == "from-env" and merged["FINETUNED_OUTBOX"] == "from-file"
    with pytest.raises(StartupError, match="no such file"):
        load_environment(tmp_path / "missing.env", {})


def test_no_env_file_is_read_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env in the working directory is not read without --env-file (systemd and cron see what they are given)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FINETUNED_INBOX=from-dotenv\n")
    assert load_environment(None, {"PATH": "/bin"}) == {"PATH": "/bin"}


def test_named_secrets_are_available_by_variable_and_redacted() -> None:
    """A spec may name a key variable (OPENAI_API_KEY); its value is held as a secret, never shown."""
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-abcdef123456", "FINETUNED_LOG_LEVEL": "debug"})
    assert settings.named_secrets == {"OPENAI_API_KEY": "sk-abcdef123456"}
    assert "sk-abcdef123456" in settings.secrets() and "sk-abcdef" not in repr(settings)
