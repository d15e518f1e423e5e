"""An optional Prometheus endpoint that serves the telemetry message as metrics.

prometheus-client is an optional extra, imported only when the endpoint is switched on. The values are read
from ``source()`` at scrape time through a custom collector, so the agent keeps no second copy of its counters.
``source`` runs on the HTTP server's thread: return the last telemetry message (``agent.telemetry``), or build
one from parts that are safe to read from another thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

TelemetrySource = Callable[[], Mapping[str, Any]]

INSTALL_HINT = "pip install 'edge-agent[prometheus]'"

# pipeline counters (Pipeline.stats()) -> help text; exposed as edge_agent_<name>_total{pipeline}
PIPELINE_COUNTERS = {
    "frames": "Frames taken from the source.",
    "frames_dropped": "Frames dropped because inference fell behind.",
    "bad_inputs": "Inputs the model could not take.",
    "inferences": "Inferences run.",
    "inference_errors": "Inferences or post-processing steps that failed.",
    "published": "Results acknowledged by the broker.",
    "publish_failed": "Results the broker refused or never acknowledged.",
}
OUTBOX_COUNTERS = {
    "appended": "Messages written to the durable outbox.",
    "delivered": "Outbox messages acknowledged by the broker.",
    "quarantined": "Outbox messages the broker refused too often, kept aside.",
    "duplicates_possible": "Messages re-sent after a restart that the broker may already have had.",
}
QUANTILES = {"p50": "0.5", "p90": "0.9", "p99": "0.99"}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(f"metrics: the Prometheus endpoint needs prometheus-client ({INSTALL_HINT})") from None
    return prometheus_client


@dataclass
class MetricsServer:
    """A running endpoint; ``port`` is the bound one (ask for port 0 to let the system choose)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(host: str, port: int, source: TelemetrySource) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread until ``close()``. ConfigError when
    prometheus-client is missing or the address cannot be bound."""
    _prometheus()
    from prometheus_client import start_http_server
    from prometheus_client.registry import Collector, CollectorRegistry

    class TelemetryCollector(Collector):
        def __init__(self) -> None:
            self.health = SourceHealth()

        def collect(self) -> Iterable[Metric]:
            return scrape(source, self.health)

    # a registry of our own: the default one would add the client library's process metrics and would clash
    # with a second server in the same process (tests, a reload)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector())
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"metrics: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port"
        ) from None
    running = MetricsServer(host, int(server.server_address[1]), server, thread)
    log.info("Prometheus metrics on %s", running.url)
    return running


@dataclass
class SourceHealth:
    failing: bool = False  # the last scrape could not read the telemetry


def scrape(source: TelemetrySource, health: SourceHealth | None = None) -> list[Metric]:
    """One scrape: the families for ``source()``'s message. A source that raises gives a valid scrape with
    ``edge_agent_telemetry_up 0`` (Prometheus would otherwise record the target as down, losing why)."""
    from prometheus_client.core import GaugeMetricFamily

    up = GaugeMetricFamily("edge_agent_telemetry_up", "1 when the agent's telemetry could be read.")
    try:
        message = source()
    except Exception as exc:
        # once per outage at warning level: Prometheus scrapes every few seconds
        health = health or SourceHealth()
        level = logging.DEBUG if health.failing else logging.WARNING
        log.log(level, "metrics: reading telemetry failed: %s: %s", type(exc).__name__, exc)
        health.failing = True
        up.add_metric([], 0)
        return [up]
    if health is not None:
        health.failing = False
    up.add_metric([], 1)
    return [up, *families(message)]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _get(message: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(message, Mapping):
            return None
        message = message.get(key)  # type: ignore[assignment]
    return message


def _items(value: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if not isinstance(value, Mapping):
        return []
    return [(str(k), v) for k, v in value.items() if isinstance(v, Mapping)]


def families(message: Mapping[str, Any]) -> list[Metric]:
    """Metric families for one telemetry message; missing or null figures are left out, never reported as 0."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    out: list[Metric] = []
    info = InfoMetricFamily("edge_agent", "The agent's version.")
    info.add_metric([], {"version": __version__})
    out.append(info)

    def labelled(family: GaugeMetricFamily | CounterMetricFamily, rows: Iterable[tuple[list[str], Any]]) -> None:
        for labels, value in rows:
            v = _num(value)
            if v is not None:
                family.add_metric(labels, v)
        if family.samples:
            out.append(family)

    def gauge(name: str, doc: str, value: Any) -> None:
        labelled(GaugeMetricFamily(name, doc), [([], value)])

    pipelines = _items(message.get("pipelines"))
    for key, doc in PIPELINE_COUNTERS.items():
        family = CounterMetricFamily(f"edge_agent_{key}", doc, labels=["pipeline"])
        labelled(family, [([name], stats.get(key)) for name, stats in pipelines])
    labelled(
        GaugeMetricFamily("edge_agent_queue_depth", "Frames waiting for inference.", labels=["pipeline"]),
        [([name], stats.get("queue_depth")) for name, stats in pipelines],
    )
    labelled(
        GaugeMetricFamily(
            "edge_agent_inference_latency_ms",
            "Inference latency over the recent window, in milliseconds.",
            labels=["pipeline", "quantile"],
        ),
        [([name, q], _get(stats, "latency_ms", p)) for name, stats in pipelines for p, q in QUANTILES.items()],
    )

    accelerators = _items(message.get("accelerators"))
    labelled(
        CounterMetricFamily(
            "edge_agent_accelerator_inferences", "Inferences run per accelerator.", labels=["accelerator"]
        ),
        [([name], stats.get("inferences")) for name, stats in accelerators],
    )
    labelled(
        GaugeMetricFamily(
            "edge_agent_accelerator_latency_ms",
            "Latency per accelerator over the recent window, in milliseconds.",
            labels=["accelerator", "quantile"],
        ),
        [([name, q], _get(stats, "latency_ms", p)) for name, stats in accelerators for p, q in QUANTILES.items()],
    )

    outbox = message.get("outbox")
    if isinstance(outbox, Mapping):
        gauge("edge_agent_outbox_backlog", "Messages in the outbox waiting for the broker.", outbox.get("backlog"))
        gauge("edge_agent_outbox_backlog_bytes", "Payload bytes in the outbox.", outbox.get("backlog_bytes"))
        for key, doc in OUTBOX_COUNTERS.items():
            labelled(CounterMetricFamily(f"edge_agent_outbox_{key}", doc), [([], outbox.get(key))])
        labelled(
            CounterMetricFamily(
                "edge_agent_outbox_evicted", "Outbox messages evicted unsent, oldest first.", labels=["reason"]
            ),
            [(["full"], outbox.get("evicted_full")), (["age"], outbox.get("evicted_age"))],
        )

    system = message.get("system")
    if isinstance(system, Mapping):
        _system(system, gauge, labelled)
    return out


def _system(system: Mapping[str, Any], gauge: Callable[..., None], labelled: Callable[..., None]) -> None:
    from prometheus_client.core import GaugeMetricFamily

    gauge("edge_agent_cpu_percent", "Host CPU use since the previous report, percent.", system.get("cpu_percent"))
    load = system.get("load_average")
    if isinstance(load, list | tuple) and len(load) == 3:
        labelled(
            GaugeMetricFamily("edge_agent_load_average", "Host load average.", labels=["period"]),
            list(zip([["1m"], ["5m"], ["15m"]], load, strict=True)),
        )
    gauge("edge_agent_memory_total_bytes", "Host memory.", _get(system, "memory", "total"))
    gauge("edge_agent_memory_available_bytes", "Host memory available.", _get(system, "memory", "available"))
    gauge("edge_agent_memory_percent", "Host memory in use, percent.", _get(system, "memory", "percent"))
    gauge("edge_agent_process_rss_bytes", "The agent's resident memory.", _get(system, "process", "rss"))
    gauge("edge_agent_process_cpu_percent", "The agent's CPU use, percent.", _get(system, "process", "cpu_percent"))
    gauge("edge_agent_disk_total_bytes", "Size of the state directory's file system.", _get(system, "disk", "total"))
    gauge(
        "edge_agent_disk_free_bytes", "Free space on the state directory's file system.", _get(system, "disk", "free")
    )
    gauge("edge_agent_disk_used_percent", "Use of the state directory's file system.", _get(system, "disk", "percent"))
    temps = system.get("temperatures")
    if isinstance(temps, Mapping):
        labelled(
            GaugeMetricFamily("edge_agent_temperature_celsius", "Temperature sensors.", labels=["sensor"]),
            [([str(k)], v) for k, v in temps.items()],
        )
    gauge("edge_agent_uptime_seconds", "Host uptime.", system.get("uptime_s"))
    gauge("edge_agent_process_uptime_seconds", "The agent's uptime.", _get(system, "process", "uptime_s"))
