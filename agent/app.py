"""The Agent: loads the pipelines, owns the event loop's tasks, the MQTT link and the signals."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from agent import __version__
from agent.config import Config, PipelineConfig
from agent.control import Control
from agent.errors import AgentError
from agent.liveness import Liveness
from agent.mqtt.homeassistant import discovery_messages
from agent.mqtt.link import MqttLink
from agent.mqtt.outbox import Outbox, outbox_path
from agent.mqtt.sender import OutboxSender
from agent.mqtt.topics import Topics
from agent.ota.serving import load_serving, recover
from agent.ota.store import ReleaseStore
from agent.pipeline import Pipeline
from agent.state import SeqAllocator, resolve_state_dir
from agent.status_file import status_path
from agent.systemd import Notifier

if TYPE_CHECKING:
    from agent.ota.updater import Updater

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix, config.agent.device_id)
        self.pipelines: list[Pipeline] = []
        self.updater: Updater | None = None
        self.sender: OutboxSender | None = None
        self.control: Control | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.started = time.monotonic()
        self._tasks: dict[str, asyncio.Future[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.notifier = Notifier()
        # pipelines whose model could not be loaded at start: shown in the status, retried by restart-pipeline
        self.unloaded: dict[str, tuple[PipelineConfig, AgentError]] = {}
        self.liveness: Liveness | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or until every pipeline's source has ended. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        self.state_dir = state_dir = resolve_state_dir(self.config.agent.state_dir)
        self.liveness = liveness = Liveness(self, self.notifier, status_path(self.config))
        outbox = await liveness.loading(self._load(state_dir))
        link = MqttLink(self.config.mqtt, self.topics, loop)
        self.sender = sender = OutboxSender(outbox, link, self.config.mqtt.max_inflight, self._delivered)
        self.control = control = Control(self, link)
        if self.config.mqtt.commands:
            control.listen()
        updater = self._updater(link, state_dir) if self.config.ota.enabled else None
        metrics = self._metrics(control)
        link.start()
        self._announce(link)
        self._log_ready()
        self.ready.set()
        liveness.ready()
        timeout = self.config.agent.shutdown_timeout_s
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for p in self.pipelines:
                    self._start(p)
                side = [
                    tg.create_task(sender.run(), name="outbox"),
                    tg.create_task(self._report_stats(), name="stats"),
                    tg.create_task(self._stop_on_request(), name="stop"),
                    tg.create_task(liveness.run(), name="liveness"),
                ]
                if updater:
                    side.append(tg.create_task(updater.run(), name="ota"))
                if self.config.telemetry.interval_s > 0:
                    side.append(tg.create_task(control.publish_telemetry(self.config.telemetry.interval_s)))
                # restart-pipeline replaces a pipeline's task: wait until none is left running
                while running := [t for t in self._tasks.values() if not t.done()]:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                left = await sender.drain(timeout)
                if left:
                    log.warning("%d result(s) not yet acknowledged stay in the outbox for the next start", left)
                for p in self.pipelines:
                    p.counters.unacked_at_stop = left
                for task in side:
                    task.cancel()
        finally:
            liveness.stopping()
            await link.stop(timeout)
            await asyncio.to_thread(outbox.close)
            if metrics is not None:
                metrics.close()
            self._log_stats("final")
            liveness.stopped()
        failed = [p for p in self.pipelines if p.error is not None]  # each logged by Pipeline.run as it failed
        if failed and len(failed) == len(self.pipelines):
            raise failed[0].error or AgentError("every pipeline failed")
        return 0

    async def _load(self, state_dir: Path) -> Outbox:
        """Models (after the release store recovered from any crash), pipelines, and the outbox."""
        # loading models is blocking work; errors here are the user's to fix (exit 2 via the CLI)
        backends = self.config.backend_configs
        self.store = ReleaseStore(state_dir / "ota")
        await asyncio.to_thread(recover, self.store, self.config.pipelines)
        models = await asyncio.gather(
            *(asyncio.to_thread(load_serving, p, backends, state_dir, self.store) for p in self.config.pipelines),
            return_exceptions=True,
        )
        for p, m in zip(self.config.pipelines, models, strict=True):
            if isinstance(m, AgentError):  # this pipeline's model is unusable: the others still serve
                log.error("pipeline %s not started: %s", p.name, m)
                self.unloaded[p.name] = (p, m)
            elif isinstance(m, BaseException):
                raise m
            else:
                self.pipelines.append(Pipeline(p, m, self.topics, SeqAllocator(state_dir, p.name)))
        if not self.pipelines:  # nothing to serve: the user's to fix (exit 2 via the CLI)
            raise next(iter(self.unloaded.values()))[1]
        outbox = await asyncio.to_thread(Outbox, outbox_path(self.config.outbox, state_dir), self.config.outbox)
        left = outbox.mark_restart()
        if left:
            log.warning("%d result(s) from before the last stop are still undelivered; sending them first", left)
        return outbox

    def _log_ready(self) -> None:
        for p in self.pipelines:
            log.info(
                "pipeline %s: %s on %s -> %s",
                p.name,
                p.model.cfg.model.path.name,
                ", ".join(p.model.session.accelerators),
                p.topic,
            )
        log.info(
            "ready %.0f ms after process start (models loaded in %.0f ms, pid %d)",
            (time.time() - psutil.Process().create_time()) * 1000,
            (time.monotonic() - self.started) * 1000,
            os.getpid(),
        )

    def _start(self, p: Pipeline) -> None:
        assert self._tg is not None and self.sender is not None
        qos, timeout = self.config.mqtt.qos, self.config.agent.shutdown_timeout_s
        self._tasks[p.name] = self._tg.create_task(p.run(self.sender, qos, timeout), name=f"pipeline:{p.name}")

    async def restart_pipeline(self, name: str) -> None:
        """Stop a pipeline (its queued frames are still inferred and stored), then start it afresh: its source
        from the beginning, and its model loaded again if the pipeline had failed."""
        if name in self.unloaded:
            await self._start_unloaded(name)
            return
        index = next(i for i, p in enumerate(self.pipelines) if p.name == name)
        old = self.pipelines[index]
        # the run loop waits on this stand-in meanwhile, so it never sees the pipeline as finished for good
        running, standin = self._tasks[name], asyncio.get_running_loop().create_future()
        self._tasks[name] = standin
        try:
            old.stop()
            await asyncio.wait({running})
            model = old.model
            if old.error is not None:
                model = await asyncio.to_thread(
                    load_serving, old.cfg, self.config.backend_configs, self.state_dir, self.store
                )
            fresh = Pipeline(old.cfg, model, self.topics, old.seq)
            fresh.source.rate_hz = old.source.rate_hz
            self.pipelines[index] = fresh
            if self.updater is not None:
                self.updater.serve([fresh], replace=old)
            if not self._stop.is_set():
                self._start(fresh)
        finally:
            standin.set_result(None)  # a failed restart leaves the pipeline stopped; the reply says why
        log.info("pipeline %s restarted", name)

    async def _start_unloaded(self, name: str) -> None:
        """Try again to load the model of a pipeline that could not start (e.g. its file was fixed since)."""
        cfg, _ = self.unloaded[name]
        model = await asyncio.to_thread(load_serving, cfg, self.config.backend_configs, self.state_dir, self.store)
        fresh = Pipeline(cfg, model, self.topics, SeqAllocator(self.state_dir, name))
        del self.unloaded[name]
        self.pipelines.append(fresh)
        if self.updater is not None:
            self.updater.serve([fresh])
        if not self._stop.is_set():
            self._start(fresh)
        log.info("pipeline %s started: its model loaded this time", name)

    def _delivered(self, topic: str) -> None:
        for p in self.pipelines:
            if p.topic == topic:
                p.counters.published += 1
                return

    def _announce(self, link: MqttLink) -> None:
        """Home Assistant discovery (retained), when asked for."""
        tele = self.config.telemetry
        if not tele.homeassistant:
            return
        kinds = {p.name: p.postprocess.type for p in self.config.pipelines}
        names = [p.name for p in self.config.pipelines]
        for topic, payload in discovery_messages(
            self.topics, self.topics.device_id, names, __version__, tele.discovery_prefix, kinds=kinds
        ):
            fut = link.publish(topic, payload, qos=1, retain=True)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _metrics(self, control: Control) -> Any:
        port = self.config.telemetry.prometheus_port
        if port is None:
            return None
        from agent.metrics import start_metrics_server

        return start_metrics_server(self.config.telemetry.prometheus_host, port, control.telemetry)

    def _updater(self, link: MqttLink, state_dir: Path) -> Updater:
        """The OTA updater, checking on its interval and on pushes to the device's and the fleet's topics."""
        from agent.ota.updater import Updater  # cryptography and httpx: only where updates are enabled

        def report(status: dict[str, Any]) -> None:
            fut = link.publish(self.topics.ota_status, json.dumps(status).encode(), qos=1, retain=True)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a lost status is superseded

        releases = {p.model.release for p in self.config.pipelines if p.model.release}
        updater = Updater(self.config.ota, state_dir, releases, self.config.backend_configs, report)
        updater.serve(self.pipelines)
        for topic in filter(None, (self.topics.ota, self.config.ota.fleet_topic)):
            link.subscribe(topic, lambda t, _payload, _props: updater.trigger(f"message on {t}"))
        self.updater = updater
        return updater

    async def _stop_on_request(self) -> None:
        await self._stop.wait()
        log.info("stopping: finishing queued frames and waiting for acknowledgements")
        if self.liveness is not None:
            self.liveness.stopping()
        for p in list(self.pipelines):
            p.stop()

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.agent.stats_interval_s)
            self._log_stats("stats")

    def _log_stats(self, label: str) -> None:
        for p in self.pipelines:
            fields: dict[str, Any] = p.stats()
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            log.info("%s pipeline=%s %s", label, p.name, text)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(signum: int) -> None:
            if self._stop.is_set():
                log.warning("second %s: exiting at once", signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info("received %s", signal.Signals(signum).name)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
