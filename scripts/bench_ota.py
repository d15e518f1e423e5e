#!/usr/bin/env python3
"""OTA benchmark: a release pushed to a running daemon over MQTT, measured from the subscriber's side.

Runs the real daemon (a subprocess) on the bundled face-detection demo at --rate frames per second
against a local mosquitto, with a release server on loopback over HTTPS (a CA made for the run). Then:
publishes version 2 of the model (the same BlazeFace file, signed), pushes on <prefix>/<device>/ota and
reports, from one run:

  - time from the push to the first result of the new version;
  - results lost in the swap (gaps in seq) and frames the daemon dropped (its final counters);
  - p99 end-to-end latency of results during the swap (push -> commit) vs in steady state before it;
  - bytes fetched twice after a download cut half-way (a second release, 3, with the cut).

    .venv/bin/python scripts/bench_ota.py [--rate 20] [--steady 100] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import paho.mqtt.publish as publish_mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.mqtt.localbroker import Mosquitto, free_port  # noqa: E402
from agent.ota.manifest import generate_keypair, load_private_key  # noqa: E402
from agent.ota.release import build_release, write_release  # noqa: E402
from tests.ota.https_server import ReleaseServer, make_pki  # noqa: E402  (the test suite's HTTPS server)

DEVICE = "bench"
MODEL = ROOT / "agent" / "demo" / "assets" / "face_detection_short_range.tflite"
DEMO = ROOT / "agent" / "demo" / "demo.toml"


class Listener:
    """Every message on the device's topics, with its arrival time."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        ready = queue.Queue[bool]()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-listener")
        self.client.on_connect = lambda c, *a: c.subscribe(f"edge/{DEVICE}/#", qos=1)
        self.client.on_subscribe = lambda *a: ready.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((time.monotonic(), m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.get(timeout=10)

    def next(self, timeout: float = 60.0) -> tuple[float, str, Any]:
        at, topic, payload = self.messages.get(timeout=timeout)
        try:
            return at, topic, json.loads(payload)
        except ValueError:
            return at, topic, payload.decode(errors="replace")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_release(root: Path, version: int, key: Any) -> int:
    for old in root.iterdir():
        old.unlink()
    shutil.copyfile(MODEL, root / "model.tflite")
    manifest = build_release(root, name="faces", version=version, model="model.tflite")
    write_release(root, manifest, [key])
    return sum(f.size for f in manifest.files.values())


def run(rate: float, steady: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-ota-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        private, public = generate_keypair(work, "fleet")
        key = load_private_key(private)
        served = work / "release"
        served.mkdir()
        with Mosquitto(free_port()) as broker, ReleaseServer(served, pki) as server:
            env = {
                "EDGE_AGENT_MQTT__PORT": str(broker.port),
                "EDGE_AGENT_AGENT__DEVICE_ID": DEVICE,
                "EDGE_AGENT_AGENT__STATE_DIR": str(work / "state"),
                "EDGE_AGENT_PIPELINES__0__SOURCE__RATE_HZ": str(rate),
                "EDGE_AGENT_PIPELINES__0__MODEL__RELEASE": "faces",
                "EDGE_AGENT_OTA__ENABLED": "true",
                "EDGE_AGENT_OTA__MANIFEST_URL": server.url("manifest.json"),
                "EDGE_AGENT_OTA__KEYS": json.dumps([str(public)]),
                "EDGE_AGENT_OTA__CA_FILE": str(pki.ca_cert),
                "EDGE_AGENT_OTA__INTERVAL_S": "0",
                "EDGE_AGENT_OTA__WATCH_S": "2",
            }
            listener = Listener(broker.port)
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(DEMO)],
                env={**os.environ, **env},
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                result = _measure(listener, broker.port, served, server, key, steady)
            finally:
                proc.terminate()
                _, log = proc.communicate(timeout=30)
                listener.close()
            final = [line for line in log.splitlines() if "final pipeline=faces" in line]
            result["frames_dropped"] = int(final[-1].split("frames_dropped=")[1].split()[0]) if final else None
            return result


def _measure(
    listener: Listener, port: int, served: Path, server: ReleaseServer, key: Any, steady: int
) -> dict[str, Any]:
    results: list[tuple[float, dict[str, Any]]] = []
    statuses: list[tuple[float, dict[str, Any]]] = []

    def until(done: Any) -> None:
        while True:
            at, topic, body = listener.next()
            if topic.endswith("/faces/result"):
                results.append((at, body))
            elif topic.endswith("/ota/status"):
                statuses.append((at, body))
            if done(topic, body):
                return

    until(lambda t, b: t.endswith("/ota/status") and b["state"] in ("failed", "idle"))  # the check at start
    count = len(results)
    until(lambda t, b: t.endswith("/faces/result") and len(results) >= count + steady)
    steady_lat = [b["latency_ms"] for _, b in results[count:]]
    size = make_release(served, 2, key)
    pushed = time.monotonic()
    publish_mqtt.single(f"edge/{DEVICE}/ota", b"{}", qos=1, hostname="127.0.0.1", port=port)
    first_new: list[float] = []

    def committed(topic: str, body: Any) -> bool:
        if topic.endswith("/faces/result") and body["version"] == "2" and not first_new:
            first_new.append(time.monotonic())
        return topic.endswith("/ota/status") and body["state"] in ("committed", "rolled-back", "failed")

    start = len(results)
    until(committed)
    if statuses[-1][1]["state"] != "committed":
        raise SystemExit(f"the update did not go through: {statuses[-1][1]}")
    until(lambda t, b: bool(first_new))
    swap_lat = [b["latency_ms"] for at, b in results[start:] if at >= pushed]
    seqs = [b["seq"] for _, b in results]
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(seqs))
    # a second release, its download cut half-way: what is fetched again when it resumes
    size3 = make_release(served, 3, key)
    cut = (served / "model.tflite").stat().st_size // 2
    server.cut_after("model.tflite", cut)
    publish_mqtt.single(f"edge/{DEVICE}/ota", b"{}", qos=1, hostname="127.0.0.1", port=port)
    until(lambda t, b: t.endswith("/ota/status") and b["state"] == "failed")
    server.clear()
    publish_mqtt.single(f"edge/{DEVICE}/ota", b"{}", qos=1, hostname="127.0.0.1", port=port)
    until(lambda t, b: t.endswith("/ota/status") and b["state"] == "committed" and b["version"] == 3)
    model_gets = [r for r in server.requests if r.path == "model.tflite" and r.method == "GET"][-2:]
    fetched = sum(r.bytes_sent for r in model_gets)
    model_size = (served / "model.tflite").stat().st_size
    return {
        "release_bytes": size,
        "push_to_serving_s": first_new[0] - pushed,
        "results_lost_in_swap": gaps,
        "steady_p99_ms": float(np.percentile(steady_lat, 99)),
        "swap_p99_ms": float(np.percentile(swap_lat, 99)),
        "swap_results": len(swap_lat),
        "p99_ratio": float(np.percentile(swap_lat, 99) / np.percentile(steady_lat, 99)),
        "cut_at_bytes": cut,
        "refetched_bytes": fetched - model_size,
        "resume_range": model_gets[-1].range_header,
        "release3_bytes": size3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second (default: 20)")
    parser.add_argument("--steady", type=int, default=100, help="steady-state results before the push")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rate, args.steady)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"push -> first result of the new version : {result['push_to_serving_s']:.2f} s "
        f"(release of {result['release_bytes']:,} bytes, download, checks and canary included)"
    )
    print(f"results lost in the swap (seq gaps)     : {result['results_lost_in_swap']}")
    print(f"frames dropped by the daemon (whole run): {result.get('frames_dropped', '?')}")
    print(f"p99 latency, steady state                : {result['steady_p99_ms']:.1f} ms")
    print(
        f"p99 latency, push -> commit ({result['swap_results']} results) : {result['swap_p99_ms']:.1f} ms "
        f"({result['p99_ratio']:.2f}x steady)"
    )
    print(f"download cut at byte {result['cut_at_bytes']:,}: resumed with {result['resume_range']}, "
          f"bytes fetched twice: {result['refetched_bytes']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
