"""systemd's readiness protocol, sd_notify(3), without libsystemd.

The service manager passes ``NOTIFY_SOCKET`` (a file-system path or an abstract ``@name``)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Each notification is
one datagram of ``KEY=VALUE`` lines on a non-blocking AF_UNIX socket. Without
``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op; a failed send is logged
and never raised, so the daemon cannot be taken down by its supervisor's socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("stird.sdnotify")


def _socket_address(value: str) -> str | None:
    """The sendto() address for ``NOTIFY_SOCKET``: an absolute path or ``@abstract``."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying", value)
    return None


def _one_line(value: object) -> str:
    """A field value: the protocol is line-based, so no newlines inside a value."""
    return " ".join(str(value).splitlines())


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": status}


class SystemdNotifier:
    """Tells systemd about readiness, reloads, shutdown, status and liveness."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one notification, e.g. ``send(READY=1, STATUS="serving")``; True if sent."""
        if self.address is None or not fields:
            return False
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            self._socket().sendto(message.encode(), self.address)
        except OSError as exc:
            self._report(exc)
            return False
        self._failing = False
        return True

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def _report(self, exc: OSError) -> None:
        """Log a failed send: a warning the first time, then quietly until one succeeds."""
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "sd_notify to %s failed: %s", self._printable_address(), exc)
        self._failing = True

    def _printable_address(self) -> str:
        return (self.address or "").replace("\0", "@", 1)

    def ready(self, status: str | None = None) -> bool:
        """Startup or a reload finished: the service is serving."""
        return self.send(READY=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload started (answer it with ``ready()`` when done)."""
        return self.send(RELOADING=1, MONOTONIC_USEC=_monotonic_usec(), **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **_status(status))

    def status(self, text: str) -> bool:
        """Free-form state shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive: with ``WatchdogSec=``, a missing ping in time kills the service."""
        return self.send(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog watches this process."""
        if not self.enabled or not self._watchdog_usec.isdigit():
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        usec = int(self._watchdog_usec)
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(notifier: SystemdNotifier, interval: float) -> None:
    """Ping the watchdog every ``interval / 2`` seconds until cancelled.

    Runs as a task on the daemon's event loop, so a blocked loop stops the pings and
    systemd restarts the service.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval}")
    period = interval / 2
    while True:
        notifier.watchdog()
        await asyncio.sleep(period)


__all__ = ["SystemdNotifier", "run_watchdog"]
