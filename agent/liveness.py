"""Keeps systemd and ``edge-agent status`` informed about the running agent.

- ``READY=1`` once the accelerators were probed and every model loaded (and planned);
- ``WATCHDOG=1`` every half watchdog period, but only while inference makes progress: a pipeline whose
  inference has not returned for ``inference_stall_s`` holds the pings back, so systemd's ``WatchdogSec=``
  restarts a wedged service. The pings come from the event loop, so a blocked loop stops them too;
- ``STOPPING=1`` on shutdown, and a one-line ``STATUS=`` for ``systemctl status``;
- the status file (agent.status_file), rewritten every ``status_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent import __version__
from agent.status_file import write_status
from agent.systemd import Notifier

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.pipeline import Pipeline

log = logging.getLogger(__name__)

T = TypeVar("T")


class Liveness:
    def __init__(self, agent: Agent, notifier: Notifier, path: Path | None) -> None:
        self.agent = agent
        self.notifier = notifier
        self.path = path
        self.state = "starting"
        self.pings = 0  # watchdog pings sent
        self.withheld = 0  # ticks on which a stuck inference held the ping back
        self._reported_stuck: set[str] = set()
        self._write_failed = False
        cfg = agent.config.agent
        self.stall_s = cfg.inference_stall_s
        self.period_s = cfg.status_interval_s
        if notifier.watchdog_s is not None:  # systemd's advice: ping at half the period
            self.period_s = min(self.period_s, notifier.watchdog_s / 2)

    # ---- the agent's life ------------------------------------------------------------------------

    async def loading(self, work: Awaitable[T]) -> T:
        """Await the start-up ``work`` (probing accelerators, loading and planning the models), pinging the
        watchdog meanwhile: a first start measures every model on every engine, which may outlast one watchdog
        period; a start that hangs is bounded by the unit's TimeoutStartSec instead."""
        self.notifier.status("probing accelerators and loading models")
        self.write()
        pinging = asyncio.ensure_future(self._ping_forever())
        try:
            return await work
        finally:
            pinging.cancel()

    async def _ping_forever(self) -> None:
        if self.notifier.watchdog_s is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.period_s)

    def ready(self) -> None:
        self.state = "running"
        self.write()  # first: whoever acts on READY finds the file saying so
        self.notifier.ready(self.summary())

    def stopping(self) -> None:
        if self.state == "stopping":
            return
        self.state = "stopping"
        self.notifier.stopping("stopping: finishing queued frames and waiting for acknowledgements")
        self.write()

    def stopped(self) -> None:
        self.state = "stopped"
        self.write()
        self.notifier.close()

    # ---- every period ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.period_s)

    def tick(self) -> None:
        stuck = self.stuck()
        for name, seconds in stuck.items():
            if name not in self._reported_stuck:
                self._reported_stuck.add(name)
                log.error(
                    "pipeline %s: an inference has not returned for %.0f s (agent.inference_stall_s = %g); "
                    "watchdog pings stop so that systemd restarts the service",
                    name,
                    seconds,
                    self.stall_s,
                )
        for name in self._reported_stuck - set(stuck):
            log.warning("pipeline %s: the stuck inference returned; watchdog pings resume", name)
        self._reported_stuck = set(stuck)
        self.write(stuck)  # before the ping: whoever hears it finds the file as current as the ping
        if self.notifier.watchdog_s is not None:
            if stuck:
                self.withheld += 1
                self.notifier.status(f"inference stuck in {', '.join(sorted(stuck))}")
            elif self.notifier.watchdog(self.summary()):
                self.pings += 1
        elif self.notifier.enabled:
            self.notifier.status(self.summary())

    def stuck(self) -> dict[str, float]:
        """Pipelines whose inference in progress has run longer than the stall bound, with how long."""
        now = time.monotonic()
        out = {}
        for p in self.agent.pipelines:
            seconds = p.inference_stuck_s(now)
            if seconds > self.stall_s:
                out[p.name] = round(seconds, 1)
        return out

    def summary(self) -> str:
        """One line for ``systemctl status``."""
        parts = [_pipeline_line(p) for p in self.agent.pipelines]
        parts += [f"{name} not started (model)" for name in self.agent.unloaded]
        sender = self.agent.sender
        backlog = sender.outbox.stats().backlog if sender is not None else 0
        tail = f"; {backlog} result(s) waiting in the outbox" if backlog else ""
        return f"{self.state}: {'; '.join(parts) or 'no pipelines'}{tail}"

    # ---- the status file -------------------------------------------------------------------------

    def snapshot(self, stuck: dict[str, float] | None = None) -> dict[str, Any]:
        agent = self.agent
        body: dict[str, Any] = agent.control.status() if agent.control is not None else {}
        return {
            "state": self.state,
            "pid": os.getpid(),
            "version": __version__,
            "written_at": round(time.time(), 3),
            "interval_s": self.period_s,
            "started_at": round(time.time() - (time.monotonic() - agent.started), 3),
            "watchdog": {
                "period_s": self.notifier.watchdog_s,
                "pings": self.pings,
                "stall_s": self.stall_s,
                "stuck": stuck or {},
            },
            **body,
        }

    def write(self, stuck: dict[str, float] | None = None) -> None:
        if self.path is None:
            return
        try:
            write_status(self.path, self.snapshot(stuck))
        except OSError as exc:
            if not self._write_failed:  # once: the service itself is unaffected
                self._write_failed = True
                log.warning("cannot write the status file %s: %s", self.path, exc.strerror or exc)


def _pipeline_line(p: Pipeline) -> str:
    counters = p.counters
    where = ", ".join(p.model.session.accelerators)
    flags = " (degraded)" if p.model.session.degraded else ""
    if p.error is not None:
        return f"{p.name} stopped: {p.error}"
    return f"{p.name} {counters.inferences} inferences on {where}{flags}"
