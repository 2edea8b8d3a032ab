"""sd_notify written by hand (path and abstract sockets): READY, STATUS, WATCHDOG and STOPPING for Type=notify.

Fifteen lines of stdlib beat a dependency: the PyPI `sdnotify` encodes latin-1 and swallows errors.
"""

from __future__ import annotations

import socket

import structlog

log = structlog.get_logger()


class Notifier:
    """Sends datagrams to $NOTIFY_SOCKET; a no-op when the daemon does not run under systemd."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def send(self, *lines: str) -> None:
        """Send `KEY=value` lines in one datagram (UTF-8, as sd_notify(3) specifies)."""
        if self._sock is None or self._address is None:
            return
        # "@name" is the Linux abstract namespace: the leading "@" becomes a NUL byte.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as exc:
            log.warning("notify_failed", error=str(exc))

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
