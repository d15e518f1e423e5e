"""The command line as a user meets it: --version, --help everywhere, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from tests.conftest import ASSETS, DEMO_TOML, ROOT


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-agent: error: "), proc.stderr
    for needle in needles:
        assert needle in last, last
    return last


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edge-agent {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["demo"],
        ["config"],
        ["config", "schema"],
        ["config", "check"],
        ["config", "show"],
        ["doctor"],
        ["profile"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: edge-agent")


def test_unknown_command_is_one_line() -> None:
    proc = cli("fly")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "invalid choice" in proc.stderr


def test_config_schema_describes_every_field() -> None:
    proc = cli("config", "schema")
    schema = json.loads(proc.stdout)
    undocumented = []
    for name, definition in schema["$defs"].items():
        for field, spec in definition.get("properties", {}).items():
            if "description" not in spec:
                undocumented.append(f"{name}.{field}")
    undocumented += [f for f, spec in schema["properties"].items() if "description" not in spec]
    assert "pipelines" in schema["properties"]
    assert undocumented == []


def test_config_check_accepts_the_demo() -> None:
    proc = cli("config", "check", str(DEMO_TOML))
    assert proc.returncode == 0 and "valid (1 pipeline(s): faces)" in proc.stdout


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


PIPELINE = f"""
[[pipelines]]
name = "faces"
source = {{ type = "replay", path = "{ASSETS / "images"}" }}
model = {{ path = "{ASSETS / "face_detection_short_range.tflite"}" }}
"""


def test_config_check_names_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nprot = 1884\n" + PIPELINE)
    assert_one_line_error(cli("config", "check", str(path)), "unknown key 'prot' in [mqtt]")


def test_run_names_a_bad_value_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, PIPELINE)
    proc = cli("run", "--config", str(path), env={"EDGE_AGENT_MQTT__PORT": "70000"})
    assert_one_line_error(proc, "mqtt.port", "EDGE_AGENT_MQTT__PORT")


def test_run_with_a_missing_model_file(tmp_path: Path) -> None:
    path = write(tmp_path, PIPELINE.replace("face_detection_short_range.tflite", "nope.tflite"))
    assert_one_line_error(cli("run", "--config", str(path)), "model file not found", "nope.tflite")


def test_run_with_a_model_file_that_is_not_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"this is not a flatbuffer" * 10)
    path = write(tmp_path, PIPELINE.replace(str(ASSETS / "face_detection_short_range.tflite"), str(bogus)))
    assert_one_line_error(cli("run", "--config", str(path)), "bogus.tflite", "not a loadable TFLite model")


def test_run_with_an_unreadable_image(tmp_path: Path) -> None:
    image = tmp_path / "broken.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    text = PIPELINE.replace(f'path = "{ASSETS / "images"}"', f'path = "{image}", loop = false, rate_hz = 0')
    path = write(tmp_path, f'[agent]\nstate_dir = "{tmp_path}"\n[mqtt]\nport = 9\n' + text)
    proc = cli("run", "--config", str(path))
    last = assert_one_line_error(proc, "broken.jpg", "could be read")
    assert "unreadable image" in proc.stderr, last


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt\nport = 1\n")
    assert_one_line_error(cli("config", "check", str(path)), "invalid TOML")


def test_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(cli("run", "--config", str(tmp_path / "absent.toml")), "config file not found")


def test_config_show_applies_environment_overrides() -> None:
    proc = cli("config", "show", "--config", str(DEMO_TOML), env={"EDGE_AGENT_MQTT__HOST": "broker.lan"})
    shown: dict[str, Any] = json.loads(proc.stdout)
    assert shown["mqtt"]["host"] == "broker.lan"
    assert "password" not in shown["mqtt"]


def test_demo_with_the_builtin_broker() -> None:
    from agent.mqtt.localbroker import free_port

    proc = cli("demo", "--count", "3", "--port", str(free_port()), "--broker", "builtin", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started built-in broker" in proc.stdout
    assert "astronaut.jpg" in proc.stdout and "face 0.9" in proc.stdout
    assert "availability went online -> offline" in proc.stdout


def test_demo_uses_a_reachable_broker(mosquitto: Any) -> None:
    proc = cli("demo", "--count", "2", "--port", str(mosquitto.port), "--host", "127.0.0.1", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"using the MQTT broker at 127.0.0.1:{mosquitto.port}" in proc.stdout
    assert "seq=1 astronaut.jpg" in proc.stdout


def test_config_check_refuses_a_model_file_that_is_not_a_model(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    path = write(tmp_path, PIPELINE.replace(str(ASSETS / "face_detection_short_range.tflite"), str(fake)))
    assert_one_line_error(cli("config", "check", str(path)), "pipelines.", "fake.tflite")
