"""The systemd side: the unit passes `systemd-analyze verify` and the offline security check; sd_notify works on
path and abstract sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from daemon.systemd import Notifier

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "finetuned.service"
SECURITY_THRESHOLD = 20  # exposure on systemd's 0-100 scale; a bare unit scores about 96

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_for_checks(tmp_path: Path) -> Path:
    unit = tmp_path / "finetuned.service"
    text = UNIT.read_text().replace("ExecStart=/opt/finetuned/venv/bin/finetuned run", "ExecStart=/bin/true")
    assert "ExecStart=/bin/true" in text
    unit.write_text(text)
    return unit


@needs_systemd
def test_unit_verifies_without_any_message(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and prints nothing (it only warns, with rc 0, on unknown keys)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_checks(tmp_path))], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


@needs_systemd
def test_unit_security_exposure_is_within_threshold(tmp_path: Path) -> None:
    """The hardening keeps `systemd-analyze security --offline=yes` under the threshold."""
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--threshold={SECURITY_THRESHOLD}",
            str(unit_for_checks(tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level" in result.stdout


def test_unit_essentials() -> None:
    """The unit is Type=notify with a watchdog, restarts on failure, and has exactly one writable root."""
    lines = UNIT.read_text().splitlines()
    assert "Type=notify" in lines and "Restart=on-failure" in lines and "WatchdogSec=120s" in lines
    assert [line for line in lines if line.startswith("ReadWritePaths=")] == ["ReadWritePaths=/srv/finetuned"]
    assert "ProtectSystem=strict" in lines and "NoNewPrivileges=yes" in lines and "User=finetuned" in lines


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_utf8_datagrams(tmp_path: Path, abstract: bool) -> None:
    """READY/STATUS lines arrive as one UTF-8 datagram on a path socket and on an abstract one ("@name")."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@finetuned-test-{os.getpid()}"
        server.bind("\0" + name[1:])
    else:
        name = str(tmp_path / "notify.sock")
        server.bind(name)
    server.settimeout(2)
    notifier = Notifier(name)
    notifier.send("READY=1", "STATUS=2 jobs ✓ running")
    assert server.recv(4096).decode("utf-8") == "READY=1\nSTATUS=2 jobs ✓ running"
    notifier.close()
    server.close()
    assert not Notifier(None).enabled
