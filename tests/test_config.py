"""Config validation: unknown keys named, bad values explained, environment overrides, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    DEMO_CONFIG_FILE,
    Config,
    DetectionPostprocess,
    apply_env_overrides,
    check_config_files,
    default_config_file,
    load_config,
)
from agent.errors import ConfigError
from tests.conftest import ASSETS

PIPELINE = """
[[pipelines]]
name = "p"
source = { type = "replay", path = "images" }
model = { path = "model.tflite" }
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "model.tflite").write_bytes(b"x")
    return tmp_path


def load(folder: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = folder / "c.toml"
    path.write_text(text)
    return load_config(path, env or {})


def error(folder: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(folder, text, env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_demo_config_loads_with_paths_resolved_next_to_it() -> None:
    config = load_config(DEMO_CONFIG_FILE, {})
    (p,) = config.pipelines
    assert p.model.path == ASSETS / "face_detection_short_range.tflite"
    assert p.source.path == ASSETS / "images"
    assert isinstance(p.postprocess, DetectionPostprocess)
    assert p.postprocess.labels == ASSETS / "face_labels.txt"


def test_relative_paths_resolve_against_the_config_folder(folder: Path) -> None:
    config = load(folder, PIPELINE)
    assert config.pipelines[0].model.path == folder / "model.tflite"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[mqtt]\nhots = 'x'\n" + PIPELINE, "unknown key 'hots' in [mqtt]"),
        ("colour = 1\n" + PIPELINE, "unknown key 'colour' in [the top level]"),
        (PIPELINE.replace('name = "p"', 'name = "p"\nspeed = 2'), "unknown key 'speed' in [pipelines.0]"),
        ("[mqtt]\nport = 0\n" + PIPELINE, "mqtt.port"),
        ("[mqtt]\nqos = 2\n" + PIPELINE, "mqtt.qos"),
        ("[mqtt]\nport = 'many'\n" + PIPELINE, "got 'many'"),
        ("[agent]\nlog_level = 'loud'\n", "log_level"),
        ("", "pipelines: required but missing"),
        (PIPELINE.replace('"replay"', '"telepathy"'), "pipelines.0.source"),
        (PIPELINE.replace('name = "p"', 'name = "a/b"'), "pipelines.0.name"),
        (PIPELINE + PIPELINE, "pipeline names must be unique; repeated: p"),
        (PIPELINE + "preprocess = { std = [0] }\n", "std must not be 0"),
        (
            "[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 1\n" + PIPELINE,
            "reconnect_max_s must be >= reconnect_min_s",
        ),
    ],
)
def test_invalid_configs_get_one_line_naming_the_problem(folder: Path, text: str, needle: str) -> None:
    assert needle in error(folder, text)


def test_missing_files_are_named(folder: Path) -> None:
    assert "model file not found" in error(folder, PIPELINE.replace("model.tflite", "other.tflite"))
    # a missing input file fails only its own pipeline in the daemon; `config check` names it
    path = folder / "c.toml"
    path.write_text(PIPELINE.replace('"images"', '"cams"'))
    config = load_config(path, {})
    assert config.pipelines[0].source.path == folder / "cams"
    with pytest.raises(ConfigError) as info:
        check_config_files(config, path, sources=True)
    assert str(info.value) == f"{path}: pipelines.p.source.path: no such file or folder: {folder / 'cams'}"


def test_mqtt_files_resolve_against_the_config_folder(folder: Path) -> None:
    text = (
        '[mqtt]\ntls = true\nca_file = "pki/ca.pem"\nclient_cert = "/etc/pki/c.pem"\nclient_key = "~/c.key"\n'
        'command_secret_file = "secret"\n' + PIPELINE
    )
    mqtt = load(folder, text).mqtt
    assert mqtt.ca_file == folder / "pki" / "ca.pem"
    assert mqtt.client_cert == Path("/etc/pki/c.pem")  # absolute: as it is
    assert mqtt.client_key == Path("~/c.key").expanduser()
    assert mqtt.command_secret_file == folder / "secret"
    # unset files stay unset; an override from the environment is resolved the same way
    assert load(folder, PIPELINE).mqtt.ca_file is None
    env = {"EDGE_AGENT_MQTT__TLS": "true", "EDGE_AGENT_MQTT__CA_FILE": "ca.pem"}
    assert load(folder, PIPELINE, env).mqtt.ca_file == folder / "ca.pem"


def test_environment_overrides_sections_and_list_items(folder: Path) -> None:
    env = {
        "EDGE_AGENT_MQTT__PORT": "1884",
        "EDGE_AGENT_MQTT__HOST": "broker.lan",
        "EDGE_AGENT_PIPELINES__0__SOURCE__RATE_HZ": "7.5",
        "EDGE_AGENT_AGENT__DEVICE_ID": "cam-7",
        "EDGE_AGENT_CONFIG": "/ignored/here.toml",
        "UNRELATED": "1",
    }
    config = load(folder, PIPELINE, env)
    assert config.mqtt.port == 1884 and config.mqtt.host == "broker.lan"
    assert config.pipelines[0].source.rate_hz == 7.5
    assert config.agent.device_id == "cam-7"


def test_environment_errors_name_the_variable(folder: Path) -> None:
    assert "[from EDGE_AGENT_MQTT__PORT]" in error(folder, PIPELINE, {"EDGE_AGENT_MQTT__PORT": "99999"})
    assert "unknown key 'colour' in [mqtt] [from EDGE_AGENT_MQTT__COLOUR]" in error(
        folder, PIPELINE, {"EDGE_AGENT_MQTT__COLOUR": "red"}
    )
    assert "EDGE_AGENT_<SECTION>__<FIELD>" in error(folder, PIPELINE, {"EDGE_AGENT_PORT": "1"})
    assert "not an index" in error(folder, PIPELINE, {"EDGE_AGENT_PIPELINES__3__NAME": "x"})


def test_env_values_parse_as_json_else_string() -> None:
    data: dict[str, object] = {}
    apply_env_overrides(data, {"EDGE_AGENT_A__N": "3", "EDGE_AGENT_A__S": "hello", "EDGE_AGENT_A__B": "true"})
    assert data == {"a": {"n": 3, "s": "hello", "b": True}}


def test_default_config_file_prefers_the_environment(tmp_path: Path) -> None:
    assert default_config_file({"EDGE_AGENT_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"


def test_not_toml_at_all(folder: Path) -> None:
    path = folder / "c.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match=r"invalid TOML|not a text file"):
        load_config(path, {})
