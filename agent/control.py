"""What the outside world sees of a running agent and may do to it: remote commands and telemetry.

Commands arrive on ``<prefix>/<device_id>/cmd/<name>`` (``agent.mqtt.commands`` parses and validates
them; every failure becomes an error reply) and are answered on ``.../cmd/<name>/reply``, or on the MQTT
5 response topic with the request's correlation data. Telemetry goes out every ``telemetry.interval_s``
on ``<prefix>/<device_id>/telemetry`` (QoS 1, straight to the link: a message missed while the broker
is away is superseded by the next one, so it does not take room in the results' outbox).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from agent.mqtt.commands import CommandAuth, CommandError, Dispatcher, Request, load_secret
from agent.mqtt.link import Incoming, MqttLink
from agent.ota.serving import load_serving
from agent.telemetry import system_snapshot, telemetry_message

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.pipeline import Pipeline

log = logging.getLogger(__name__)


class Control:
    def __init__(self, agent: Agent, link: MqttLink) -> None:
        self.agent = agent
        self.link = link
        secret = agent.config.mqtt.command_secret_file
        self.dispatcher = Dispatcher(CommandAuth(load_secret(secret)) if secret else None)
        for name, handler in {
            "status": self._status,
            "ota-check": self._ota_check,
            "reload": self._reload,
            "replan": self._replan,
            "pipeline-rate": self._pipeline_rate,
            "restart-pipeline": self._restart_pipeline,
        }.items():
            self.dispatcher.register(name, handler)
        self._tasks: set[asyncio.Task[None]] = set()
        self._previous: dict[str, Any] | None = None
        self.commands = 0

    def listen(self) -> None:
        self.link.subscribe(self.agent.topics.commands, self._on_command)

    def _on_command(self, topic: str, payload: bytes, incoming: Incoming) -> None:
        name = topic.rsplit("/", 1)[-1]
        task = asyncio.create_task(self._answer(name, payload, incoming), name=f"cmd:{name}")
        self._tasks.add(task)  # held until done: a command runs concurrently with the pipelines
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, name: str, payload: bytes, incoming: Incoming) -> None:
        self.commands += 1
        topic, body = await self.dispatcher.handle(name, payload, incoming.response_topic, incoming.correlation)
        where = topic or self.agent.topics.command_reply(name)
        fut = self.link.publish(where, body, qos=1, correlation=incoming.correlation)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # the requester retries if it got nothing

    # ---- commands -------------------------------------------------------------------------------

    def _pipeline(self, name: str) -> Pipeline:
        for p in self.agent.pipelines:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.agent.pipelines)
        raise CommandError("invalid", f"no pipeline {name!r} (pipelines: {known})")

    def _chosen(self, name: str | None) -> list[Pipeline]:
        return [self._pipeline(name)] if name else list(self.agent.pipelines)

    async def _status(self, request: Request) -> dict[str, Any]:
        return self.status()

    async def _ota_check(self, request: Request) -> dict[str, Any]:
        updater = self.agent.updater
        if updater is None:
            raise CommandError("failed", "model updates are not enabled here (set [ota] enabled = true)")
        updater.trigger("the ota-check command")
        return {"checking": True, "last": updater.status.to_json()}

    async def _reload(self, request: Request) -> dict[str, Any]:
        """Load each pipeline's model again (the installed release, or the factory model) and swap it in."""
        agent = self.agent
        out = {}
        for p in self._chosen(getattr(request.args, "pipeline", None)):
            fresh = await asyncio.to_thread(
                load_serving, p.cfg, agent.config.backend_configs, agent.state_dir, agent.store
            )
            p.swap_model(fresh).close()
            out[p.name] = {"model": fresh.name, "version": fresh.version}
        return {"reloaded": out}

    async def _replan(self, request: Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self._chosen(getattr(request.args, "pipeline", None)):
            placed = p.model.session
            plan = await asyncio.to_thread(placed.replan)
            if plan is None:
                out[p.name] = {"replanned": False, "why": f"runs directly on {', '.join(placed.accelerators)}"}
            else:
                segments = [{"accelerator": s.accelerator, "layers": [s.start, s.stop - 1],
                             "predicted_ms": round(s.predicted_ms, 3)} for s in plan.segments]  # fmt: skip
                out[p.name] = {"replanned": True, "predicted_ms": round(plan.predicted_ms, 3), "segments": segments}
        return out

    async def _pipeline_rate(self, request: Request) -> dict[str, Any]:
        args: Any = request.args
        p = self._pipeline(args.pipeline)
        before = p.source.rate_hz
        p.source.rate_hz = args.rate_hz
        log.info("pipeline %s: rate %.3g -> %.3g frames/s (command)", p.name, before, args.rate_hz)
        return {"pipeline": p.name, "rate_hz": args.rate_hz, "was": before}

    async def _restart_pipeline(self, request: Request) -> dict[str, Any]:
        args: Any = request.args
        if args.pipeline not in self.agent.unloaded:
            self._pipeline(args.pipeline)  # a clear error for an unknown name
        await self.agent.restart_pipeline(args.pipeline)
        return {"pipeline": args.pipeline, "restarted": True}

    # ---- status and telemetry -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        agent = self.agent
        pipelines = {}
        for p in agent.pipelines:
            session = p.model.session
            pipelines[p.name] = {
                **p.stats(),
                "model": p.model.name,
                "version": p.model.version,
                "accelerators": list(session.accelerators),
                "degraded": session.degraded,
                "failed": session.failed,
                "rate_hz": p.source.rate_hz,
                "error": None if p.error is None else str(p.error),
                "placement": _placement(session),
            }
        for name, (cfg, error) in agent.unloaded.items():
            pipelines[name] = {
                "model": cfg.model.name or cfg.model.path.stem,
                "version": cfg.model.version,
                "accelerators": [],
                "error": f"not started: {error}",
            }
        return {
            "device": agent.topics.device_id,
            "uptime_s": round(time.monotonic() - agent.started, 1),
            "pipelines": pipelines,
            "outbox": agent.sender.stats() if agent.sender else None,
            "ota": agent.updater.status.to_json() if agent.updater else None,
            "mqtt": {"connected": self.link.connected.is_set(), "connections": self.link.connections},
        }

    def telemetry(self) -> dict[str, Any]:
        agent = self.agent
        pipelines: dict[str, dict[str, Any]] = {}
        accelerators: dict[str, dict[str, Any]] = {}
        placement: dict[str, dict[str, Any]] = {}
        for p in agent.pipelines:
            session = p.model.session
            health = p.model.health.snapshot()
            latency = {"count": health.runs, "p50": health.p50_ms, "p99": health.p99_ms}
            pipelines[p.name] = {**p.stats(), "latency_ms": latency, "version": p.model.version}
            plan = getattr(session, "plan", None)
            placement[p.name] = {
                "accelerators": list(session.accelerators),
                "degraded": session.degraded,
                "failed": session.failed,
                "predicted_ms": None if plan is None else round(plan.predicted_ms, 3),
            }
            for name in session.accelerators:
                entry = accelerators.setdefault(name, {"inferences": 0, "pipelines": []})
                entry["inferences"] += health.runs
                entry["pipelines"].append(p.name)
        message = telemetry_message(
            system_snapshot(agent.state_dir),
            pipelines,
            accelerators,
            agent.sender.stats() if agent.sender else None,
            placement,
            agent.updater.status.to_json() if agent.updater else None,
            previous=self._previous,
        )
        self._previous = message
        return message

    async def publish_telemetry(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            body = json.dumps(self.telemetry()).encode()
            fut = self.link.publish(self.agent.topics.telemetry, body, qos=1)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())


def _placement(session: Any) -> list[dict[str, Any]] | None:
    """The plan's segments (accelerator, layers, predicted ms); None where the model runs directly."""
    plan = getattr(session, "plan", None)
    if plan is None:
        return None
    return [
        {"accelerator": s.accelerator, "layers": [s.start, s.stop - 1], "predicted_ms": round(s.predicted_ms, 3)}
        for s in plan.segments
    ]
