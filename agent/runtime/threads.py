"""Blocking work in named daemon threads, awaited from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


def run_in_thread(fn: Callable[[], None], name: str) -> asyncio.Future[None]:
    """Start ``fn`` in a daemon thread; the future completes with its outcome.

    Daemon threads, unlike the default executor's, cannot hold the process open if a runtime wedges.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    def main() -> None:
        outcome: BaseException | None = None
        try:
            fn()
        except BaseException as exc:
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone; nobody waits for us
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=main, name=name, daemon=True).start()
    return fut
