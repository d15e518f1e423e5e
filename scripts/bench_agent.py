#!/usr/bin/env python3
"""What the agent itself costs: bare LiteRT throughput vs the daemon end to end, memory, start and stop times.

A benchmark, not a test: nothing is asserted. ``.venv/bin/python scripts/bench_agent.py [--seconds N] [--json]``.
The bare runtime and the agent are measured one after the other, never at the same time. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from accelerators.base import BackendOptions
from accelerators.litert import LiteRtConfig, LiteRtCpu
from agent.config import DEMO_CONFIG_FILE, load_config
from agent.mqtt.localbroker import Mosquitto, free_port
from agent.sources.preprocess import Preprocessor
from agent.sources.replay import read_file

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "agent/demo/assets/face_detection_short_range.tflite"
WAIT_S = 60.0  # generous limit for anything the benchmark waits on


def write_inputs(folder: Path) -> list[np.ndarray]:
    """The demo photos pre-processed as the demo config does, saved as float32 .npy tensors."""
    pipeline = load_config(DEMO_CONFIG_FILE).pipelines[0]
    session = LiteRtCpu(LiteRtConfig()).load(pipeline.model.path, BackendOptions(threads=pipeline.model.threads))
    pre = Preprocessor(pipeline.preprocess, session.inputs[0])
    session.close()
    folder.mkdir(parents=True)
    tensors = []
    for image in sorted((pipeline.model.path.parent / "images").glob("*.jpg")):
        tensor, _ = pre(read_file(image))
        np.save(folder / f"{image.stem}.npy", tensor.astype(np.float32))
        tensors.append(tensor)
    return tensors


def bare_throughput(tensors: list[np.ndarray], seconds: float, windows: int = 5) -> list[float]:
    """frames/s of set_tensor -> invoke -> get_tensor (every output), one thread, per window."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    interp = Interpreter(model_path=str(MODEL), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = [d["index"] for d in interp.get_output_details()]
    i = 0
    rates = []
    for w in range(windows + 1):  # window 0 is the warm-up
        n, t0 = 0, time.perf_counter()
        end = t0 + (1.0 if w == 0 else seconds / windows)
        while (now := time.perf_counter()) < end:
            interp.set_tensor(inp, tensors[i % len(tensors)])
            interp.invoke()
            for o in outs:
                interp.get_tensor(o)
            i, n = i + 1, n + 1
        if w:
            rates.append(n / (now - t0))
    return rates


class Subscriber:
    """Counts result messages, checks their seq, and notes when 'online' arrives."""

    def __init__(self, port: int, warmup: int) -> None:
        self.warmup = warmup
        self.lock = threading.Lock()
        self.arrivals: list[float] = []  # perf_counter of each result
        self.last_seq: int | None = None
        self.gaps = self.regressions = 0
        self.online_at = 0.0
        self.online, self.warm, self.subscribed = threading.Event(), threading.Event(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-agent-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe([("edge/+/+/result", 1), ("edge/+/availability", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(WAIT_S):
            raise RuntimeError("subscriber: no SUBACK from mosquitto")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/availability"):
            if msg.payload == b"online" and not self.online.is_set():
                self.online_at = time.perf_counter()
                self.online.set()
            return
        now, seq = time.perf_counter(), int(json.loads(msg.payload)["seq"])
        with self.lock:
            if self.last_seq is not None and seq <= self.last_seq:
                self.regressions += 1
            elif self.last_seq is not None and seq != self.last_seq + 1:
                self.gaps += 1
            self.last_seq = seq
            self.arrivals.append(now)
            if len(self.arrivals) >= self.warmup:
                self.warm.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentProc:
    """``python -m agent run ARGS`` with its stderr drained (and watched for 'ready') by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.ready, self.exited = threading.Event(), threading.Event()
        self.ready_at = 0.0
        self.started = time.perf_counter()
        cmd = [sys.executable, "-m", "agent", "run", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " ready " in line and not self.ready.is_set():
                self.ready_at = time.perf_counter()
                self.ready.set()
            self.lines.append(line.rstrip())
        self.exited.set()

    def wait_for(self, event: threading.Event, what: str) -> None:
        if not event.wait(WAIT_S) or self.proc.poll() is not None:
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(f"agent: {what} did not happen (exit {self.proc.poll()}):\n{tail}")

    def stop(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(WAIT_S)
        return time.perf_counter() - t0, rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _teardown(agent: AgentProc | None, sub: Subscriber | None, broker: Mosquitto) -> None:
    """Stop what one run started, newest first."""
    if agent is not None:
        agent.kill()
    if sub is not None:
        sub.close()
    broker.close()


def idle_run(tmp: Path, index: int) -> dict[str, Any]:
    """The bundled demo unchanged (2 Hz): start-up times, RSS once results flow, SIGTERM."""
    port = free_port()
    broker = Mosquitto(port).start()  # fresh broker: no retained 'online' from an earlier run
    sub = agent = None
    try:
        sub = Subscriber(port, warmup=4)
        env = dict(os.environ, EDGE_AGENT_MQTT__PORT=str(port), EDGE_AGENT_AGENT__STATE_DIR=str(tmp / f"idle{index}"))
        agent = AgentProc(["--config", str(DEMO_CONFIG_FILE)], env)
        agent.wait_for(agent.ready, "'ready' log line")
        agent.wait_for(sub.online, "'online' on MQTT")
        agent.wait_for(sub.warm, "4 results")
        rss = psutil.Process(agent.proc.pid).memory_info().rss
        stop_s, rc = agent.stop()
        return {
            "ready_log_s": agent.ready_at - agent.started,
            "ready_online_s": sub.online_at - agent.started,
            "idle_rss_mb": rss / 1e6,
            "stop_s": stop_s,
            "exit_code": rc,
        }
    finally:
        _teardown(agent, sub, broker)


def _cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    times = {name: p.cpu_times() for name, p in procs.items()}
    out = {name: t.user + t.system for name, t in times.items()}
    for t in procs["agent"].threads():
        out[f"agent-thread-{t.id}"] = t.user_time + t.system_time
    return out


def throughput_run(tmp: Path, npy_dir: Path, seconds: float, warmup: int = 50) -> dict[str, Any]:
    """The daemon replaying the tensors as fast as it can; results/s counted at a subscriber."""
    port = free_port()
    broker = Mosquitto(port).start()
    config = tmp / "bench.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 3600\n\n[mqtt]\nport = {port}\n\n'
        '[[pipelines]]\nname = "bench"\n\n'
        f'[pipelines.source]\ntype = "replay"\npath = "{npy_dir}"\nrate_hz = 0\nloop = true\ncache_mb = 16\n\n'
        f'[pipelines.model]\npath = "{MODEL}"\n\n'
        '[pipelines.postprocess]\ntype = "ssd"\nlabels = ["face"]\n'
    )
    sub = agent = None
    try:
        sub = Subscriber(port, warmup)
        agent = AgentProc(["--config", str(config)], dict(os.environ))
        agent.wait_for(agent.ready, "'ready' log line")
        agent.wait_for(sub.warm, f"{warmup} results")
        mosq = [c for c in psutil.Process().children() if c.name() == "mosquitto"]
        procs = {"agent": psutil.Process(agent.proc.pid), "bench": psutil.Process(), "mosquitto": mosq[0]}
        cpu0, t0 = _cpu(procs), time.perf_counter()
        agent.exited.wait(seconds)  # the window; ends early only if the agent dies
        t1, cpu1 = time.perf_counter(), _cpu(procs)
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        hwm_kb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
        stop_s, rc = agent.stop()
        agent.exited.wait(WAIT_S)
        cpu = {k: 100 * (cpu1[k] - cpu0.get(k, 0.0)) / (t1 - t0) for k in cpu1}
        threads = sorted((v for k, v in cpu.items() if k.startswith("agent-thread")), reverse=True)
        with sub.lock:
            arrivals = np.asarray(sub.arrivals)
        per_window = np.histogram(arrivals, bins=5, range=(t0, t1))[0] / ((t1 - t0) / 5)
        final = next((ln.split(": ", 1)[1] for ln in agent.lines if "final pipeline=" in ln), "")
        return {
            "results_per_s": int(((arrivals >= t0) & (arrivals < t1)).sum()) / (t1 - t0),
            "windows": [round(float(x), 1) for x in per_window],
            "seq_gaps": sub.gaps,
            "seq_regressions": sub.regressions,
            "peak_rss_mb": hwm_kb * 1024 / 1e6,
            "stop_s": stop_s,
            "exit_code": rc,
            "cpu_percent": {k: round(v, 1) for k, v in cpu.items() if not k.startswith("agent-thread")},
            "agent_threads_cpu_percent": [round(v, 1) for v in threads if v >= 0.5],
            "agent_final_stats": final,
        }
    finally:
        _teardown(agent, sub, broker)


def report(r: dict[str, Any]) -> str:
    t, bw = r["throughput"], r["bare_windows"]
    bad = t["seq_gaps"] or t["seq_regressions"]
    seq = f"seq gaps {t['seq_gaps']}, regressions {t['seq_regressions']}" if bad else "seq ok"
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in t["cpu_percent"].items())
    return "\n".join(
        [
            f"edge-agent overhead benchmark (model: {MODEL.name}, LiteRT XNNPACK, 1 thread, {os.cpu_count()} cores; "
            "agent replays the same .npy tensors, decoded once: source.cache_mb = 16)",
            f"bare runtime            : {r['bare_frames_per_s']:.1f} frames/s "
            f"(median of {len(bw)} windows before and after the agent run, {min(bw):.0f}..{max(bw):.0f})",
            f"agent end to end        : {t['results_per_s']:.1f} results/s "
            f"(broker-acknowledged, {seq}; windows {min(t['windows']):.0f}..{max(t['windows']):.0f})",
            f"ratio agent/bare        : {r['ratio']:.2f}   (target >= 0.95)",
            f"idle RSS (demo loaded)  : {r['idle_rss_mb']:.1f} MB (target <= 60 MB)",
            f"peak RSS (throughput)   : {t['peak_rss_mb']:.1f} MB",
            f"ready (log line)        : {r['ready_log_s']:.2f} s median of {r['runs']} (target <= 2 s)",
            f"ready (online on MQTT)  : {r['ready_online_s']:.2f} s",
            f"stop after SIGTERM      : {r['stop_idle_s']:.2f} s idle, {t['stop_s']:.2f} s after throughput run, "
            f"exit {'/'.join(map(str, r['exit_codes']))}",
            f"cpu during window       : {cpu} (100% = one core)",
            f"agent threads cpu       : {', '.join(f'{v:.0f}%' for v in t['agent_threads_cpu_percent'])}",
            f"agent final stats       : {t['agent_final_stats']}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as name:
        tmp = Path(name)
        npy_dir = tmp / "tensors"
        tensors = write_inputs(npy_dir)
        bare = bare_throughput(tensors, args.seconds / 2)  # half before the agent run, half after:
        throughput = throughput_run(tmp, npy_dir, args.seconds)  # this machine's speed drifts
        bare += bare_throughput(tensors, args.seconds / 2)
        idle = [idle_run(tmp, i) for i in range(3)]
    med = {k: statistics.median(run[k] for run in idle) for k in ("ready_log_s", "ready_online_s", "idle_rss_mb")}
    result: dict[str, Any] = {
        "bare_frames_per_s": statistics.median(bare),
        "bare_windows": [round(x, 1) for x in bare],
        "throughput": throughput,
        "ratio": throughput["results_per_s"] / statistics.median(bare),
        **med,
        "idle_runs": idle,
        "runs": len(idle),
        "stop_idle_s": statistics.median(run["stop_s"] for run in idle),
        "exit_codes": [throughput["exit_code"], *(run["exit_code"] for run in idle)],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
