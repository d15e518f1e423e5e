"""systemd's notify protocol, spoken directly over ``$NOTIFY_SOCKET`` (no libsystemd dependency).

The service manager hands a unix datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, the watchdog period in ``WATCHDOG_USEC`` (microseconds).
Each message is one datagram of ``KEY=value`` lines: ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``,
``STATUS=<text for systemctl status>``, ``EXTEND_TIMEOUT_USEC=<n>``. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to the service manager; silent when not started by one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_period(env)
        self._sock: socket.socket | None = None
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one message of ``KEY=value`` fields; False when there is no manager or the send failed
        (logged once: the service keeps running, systemd's own timeouts decide what that means)."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never block: this runs on the event loop, and a manager that stopped reading must not wedge it
            self._sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("cannot notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start (or stop) time: first-start planning measures the model on every engine."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: a leading NUL byte instead of the @
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an @abstract name", value)
    return None


def _watchdog_period(env: Mapping[str, str]) -> float | None:
    """The watchdog period in seconds when it is meant for this process, else None."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):  # set for another process (e.g. a wrapper that exec'd us kept it)
        return None
    try:
        period = int(usec) / 1_000_000
    except ValueError:
        return None
    return period if period > 0 else None
