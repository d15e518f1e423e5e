"""The Prometheus endpoint: a real HTTP server on loopback, scraped with httpx."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from agent import __version__
from agent.errors import ConfigError
from agent.metrics import MetricsServer, start_metrics_server
from agent.telemetry import LatencyWindow, system_snapshot, telemetry_message

# the endpoint is an optional extra; the dev extra installs it so that CI runs these
prometheus_parser = pytest.importorskip("prometheus_client.parser")


class Source:
    """What the agent hands the endpoint: the current telemetry message, or an exception."""

    def __init__(self, message: Mapping[str, Any]) -> None:
        self.message = message
        self.error: Exception | None = None
        self.calls = 0

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.message


def _message(inferences: int = 42, backlog: int = 7) -> dict[str, Any]:
    window = LatencyWindow()
    for ms in (1.0, 2.0, 3.0, 4.0):
        window.add(ms)
    stats = {
        "frames": 50,
        "frames_dropped": 3,
        "bad_inputs": 1,
        "inferences": inferences,
        "inference_errors": 2,
        "published": 40,
        "publish_failed": 0,
        "queue_depth": 5,
        "latency_ms": window,
    }
    idle = {"frames": 0, "inferences": 0}  # no latency yet: its quantiles are left out, not reported as 0
    accel = {"openvino": {"inferences": 9, "latency_ms": window.snapshot()}}
    outbox = {
        "backlog": backlog,
        "backlog_bytes": 4096,
        "appended": 100,
        "delivered": 93,
        "evicted_full": 4,
        "evicted_age": 1,
        "quarantined": 2,
        "duplicates_possible": 0,
    }
    system = system_snapshot()
    system["temperatures"] = {"cpu_thermal/": 48.5}
    return telemetry_message(system, {"cam": stats, "idle": idle}, accel, outbox, {}, None)


@pytest.fixture
def source() -> Source:
    return Source(_message())


@pytest.fixture
def server(source: Source) -> Iterator[MetricsServer]:
    srv = start_metrics_server("127.0.0.1", 0, source)
    try:
        yield srv
    finally:
        srv.close()


def _scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(server.url, timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_scrape_shows_the_values_of_the_source(server: MetricsServer, source: Source) -> None:
    assert server.port > 0
    samples = _scrape(server)
    system = source.message["system"]
    expected = {
        ("edge_agent_telemetry_up", ()): 1.0,
        ("edge_agent_info", (("version", __version__),)): 1.0,
        ("edge_agent_inferences_total", (("pipeline", "cam"),)): 42.0,
        ("edge_agent_inferences_total", (("pipeline", "idle"),)): 0.0,
        ("edge_agent_frames_total", (("pipeline", "cam"),)): 50.0,
        ("edge_agent_frames_dropped_total", (("pipeline", "cam"),)): 3.0,
        ("edge_agent_bad_inputs_total", (("pipeline", "cam"),)): 1.0,
        ("edge_agent_inference_errors_total", (("pipeline", "cam"),)): 2.0,
        ("edge_agent_published_total", (("pipeline", "cam"),)): 40.0,
        ("edge_agent_queue_depth", (("pipeline", "cam"),)): 5.0,
        ("edge_agent_inference_latency_ms", (("pipeline", "cam"), ("quantile", "0.5"))): 2.5,
        ("edge_agent_inference_latency_ms", (("pipeline", "cam"), ("quantile", "0.99"))): 3.97,
        ("edge_agent_accelerator_inferences_total", (("accelerator", "openvino"),)): 9.0,
        ("edge_agent_accelerator_latency_ms", (("accelerator", "openvino"), ("quantile", "0.9"))): 3.7,
        ("edge_agent_outbox_backlog", ()): 7.0,
        ("edge_agent_outbox_backlog_bytes", ()): 4096.0,
        ("edge_agent_outbox_appended_total", ()): 100.0,
        ("edge_agent_outbox_delivered_total", ()): 93.0,
        ("edge_agent_outbox_quarantined_total", ()): 2.0,
        ("edge_agent_outbox_evicted_total", (("reason", "full"),)): 4.0,
        ("edge_agent_outbox_evicted_total", (("reason", "age"),)): 1.0,
        ("edge_agent_cpu_percent", ()): system["cpu_percent"],
        ("edge_agent_memory_percent", ()): system["memory"]["percent"],
        ("edge_agent_memory_total_bytes", ()): float(system["memory"]["total"]),
        ("edge_agent_process_rss_bytes", ()): float(system["process"]["rss"]),
        ("edge_agent_load_average", (("period", "1m"),)): system["load_average"][0],
        ("edge_agent_temperature_celsius", (("sensor", "cpu_thermal/"),)): 48.5,
    }
    for key, value in expected.items():
        assert key in samples, key
        assert samples[key] == pytest.approx(value), key
    # a pipeline without latencies has no quantile samples rather than zeros
    assert not [k for k in samples if k[0] == "edge_agent_inference_latency_ms" and ("pipeline", "idle") in k[1]]


def test_values_are_read_at_scrape_time(server: MetricsServer, source: Source) -> None:
    first = _scrape(server)
    source.message = _message(inferences=1000, backlog=0)
    second = _scrape(server)
    key = ("edge_agent_inferences_total", (("pipeline", "cam"),))
    assert (first[key], second[key]) == (42.0, 1000.0)
    assert second[("edge_agent_outbox_backlog", ())] == 0.0
    assert source.calls == 2  # once per scrape, no state kept between


def test_a_failing_source_still_gives_a_valid_scrape(server: MetricsServer, source: Source) -> None:
    source.error = RuntimeError("telemetry not ready")
    samples = _scrape(server)
    assert samples == {("edge_agent_telemetry_up", ()): 0.0}
    source.error = None
    assert _scrape(server)[("edge_agent_telemetry_up", ())] == 1.0


def test_no_outbox_and_partial_messages_are_fine(server: MetricsServer, source: Source) -> None:
    source.message = {"ts": "x", "pipelines": {"cam": {"frames": 1, "latency_ms": None}}, "outbox": None}
    samples = _scrape(server)
    assert samples[("edge_agent_frames_total", (("pipeline", "cam"),))] == 1.0
    assert not [k for k in samples if k[0].startswith(("edge_agent_outbox", "edge_agent_cpu"))]


def test_close_stops_the_server(source: Source) -> None:
    srv = start_metrics_server("127.0.0.1", 0, source)
    url = srv.url
    assert httpx.get(url, timeout=10).status_code == 200
    srv.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=10)


def test_a_port_in_use_is_a_config_error(source: Source) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_metrics_server("127.0.0.1", port, source)


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch, source: Source) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'edge-agent\[prometheus\]'"):
        start_metrics_server("127.0.0.1", 0, source)
