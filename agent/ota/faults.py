"""Fault injection for the kill -9 tests: named points where an update may be cut off by SIGKILL.

``EDGE_AGENT_OTA_CRASH_AT=<point>`` makes the process kill itself, without cleanup, when it reaches that
point, so the tests can prove that whatever is left on disk is recovered. Without the variable a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "EDGE_AGENT_OTA_CRASH_AT"


def crashpoint(name: str) -> None:
    """Die here by SIGKILL (no finally blocks, no flushing) when the environment names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
