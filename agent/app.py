"""The Agent: loads the pipelines, owns the event loop's tasks, the MQTT link and the signals."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from agent.config import Config
from agent.errors import AgentError
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import Topics
from agent.ota.serving import load_serving, recover
from agent.ota.store import ReleaseStore
from agent.ota.updater import Updater
from agent.pipeline import Pipeline
from agent.state import SeqAllocator, resolve_state_dir

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix, config.agent.device_id)
        self.pipelines: list[Pipeline] = []
        self.updater: Updater | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._started = time.monotonic()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or until every pipeline's source has ended. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        state_dir = resolve_state_dir(self.config.agent.state_dir)
        # loading models is blocking work; errors here are the user's to fix (exit 2 via the CLI)
        backends = self.config.backend_configs
        store = ReleaseStore(state_dir / "ota")
        await asyncio.to_thread(recover, store, self.config.pipelines)
        models = await asyncio.gather(
            *(asyncio.to_thread(load_serving, p, backends, state_dir, store) for p in self.config.pipelines)
        )
        self.pipelines = [
            Pipeline(p, m, self.topics, SeqAllocator(state_dir, p.name))
            for p, m in zip(self.config.pipelines, models, strict=True)
        ]
        link = MqttLink(self.config.mqtt, self.topics, loop)
        updater = self._updater(link, state_dir) if self.config.ota.enabled else None
        link.start()
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
            (time.monotonic() - self._started) * 1000,
            os.getpid(),
        )
        self.ready.set()
        mqtt = self.config.mqtt
        timeout = self.config.agent.shutdown_timeout_s
        try:
            async with asyncio.TaskGroup() as tg:
                runs = [
                    tg.create_task(p.run(link, mqtt.qos, mqtt.max_inflight, timeout), name=f"pipeline:{p.name}")
                    for p in self.pipelines
                ]
                stats = tg.create_task(self._report_stats(), name="stats")
                stopper = tg.create_task(self._stop_on_request(), name="stop")
                ota = tg.create_task(updater.run(), name="ota") if updater else None
                await asyncio.wait(runs)
                stats.cancel()
                stopper.cancel()
                if ota:
                    ota.cancel()
        finally:
            await link.stop(timeout)
            self._log_stats("final")
        failed = [p for p in self.pipelines if p.error is not None]
        for p in failed:
            log.error("pipeline %s stopped: %s", p.name, p.error)
        if failed and len(failed) == len(self.pipelines):
            raise failed[0].error or AgentError("every pipeline failed")
        return 0

    def _updater(self, link: MqttLink, state_dir: Path) -> Updater:
        """The OTA updater, checking on its interval and on pushes to the device's and the fleet's topics."""

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
        for p in self.pipelines:
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
