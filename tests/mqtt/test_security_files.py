"""The certificate, key and password files of [mqtt] and of MQTT inputs: relative paths resolved against the
config file's folder like every other path, loaded by `edge-agent config check` (one line, exit 2 when one is
bad), and [mqtt] sharing its TLS fields and checks with the inputs' own brokers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import check_broker_files, load_config
from agent.errors import ConfigError
from agent.mqtt.security import BrokerSecurity, BrokerTls
from agent.mqtt.settings import MqttSection
from agent.sources.mqtt_input import MqttInputSource
from tests.conftest import ASSETS, ROOT
from tests.mqtt.test_connection import publish_once
from tests.mqtt.tls_broker import tls_mosquitto
from tests.ota.https_server import Pki, make_pki

PIPELINE = f"""
[[pipelines]]
name = "faces"
source = {{ type = "replay", path = "{ASSETS / "images"}" }}
model = {{ path = "{ASSETS / "face_detection_short_range.tflite"}" }}
"""

OWN_INPUT = """
[[pipelines]]
name = "remote"
model = {{ path = "{model}" }}
[pipelines.source]
type = "mqtt"
topic = "t"
host = "localhost"
tls = true
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
username = "u"
password_file = "{password}"
"""

AGENTS_BROKER_INPUT = f"""
[[pipelines]]
name = "local"
source = {{ type = "mqtt", topic = "t2" }}
model = {{ path = "{ASSETS / "face_detection_short_range.tflite"}" }}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config folder with its PKI in certs/, a password and a command secret next to the config file."""
    folder = tmp_path / "site"
    make_pki(folder / "certs")
    (folder / "password").write_text("s3cret\n")
    secret = folder / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    return folder


def relative_mqtt(extra: str = "") -> str:
    return (
        '[mqtt]\nhost = "localhost"\ntls = true\nca_file = "certs/ca.pem"\nclient_cert = "certs/client.pem"\n'
        f'client_key = "certs/client.key"\ncommand_secret_file = "secret"\n{extra}'
    )


def write(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False, env={**os.environ, **(env or {})})  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("edge-agent: error: "), line
    return line


def test_relative_mqtt_files_resolve_against_the_config_folder(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the config's folder: resolution must not depend on the working directory
    config = load_config(write(site, relative_mqtt() + PIPELINE), {})
    mqtt = config.mqtt
    assert (mqtt.ca_file, mqtt.client_cert, mqtt.client_key) == (
        site / "certs" / "ca.pem",
        site / "certs" / "client.pem",
        site / "certs" / "client.key",
    )
    assert mqtt.command_secret_file == site / "secret"
    check_broker_files(config, site / "config.toml")  # every one of them loads


def test_an_environment_override_is_a_path_like_the_files(site: Path) -> None:
    env = {"EDGE_AGENT_MQTT__CA_FILE": "certs/ca.pem", "EDGE_AGENT_MQTT__TLS": "true"}
    config = load_config(write(site, PIPELINE), env)
    assert config.mqtt.ca_file == site / "certs" / "ca.pem" and config.mqtt.tls


def test_an_input_resolves_its_own_brokers_files_and_inherits_the_agents(site: Path) -> None:
    own = OWN_INPUT.format(
        ca="certs/ca.pem",
        cert="certs/client.pem",
        key="certs/client.key",
        password="password",
        model=ASSETS / "face_detection_short_range.tflite",
    )
    config = load_config(write(site, relative_mqtt() + own + AGENTS_BROKER_INPUT), {})
    remote, local = (p.source for p in config.pipelines)
    assert isinstance(remote, MqttInputSource) and isinstance(local, MqttInputSource)
    assert (remote.ca_file, remote.client_cert, remote.client_key, remote.password_file) == (
        site / "certs" / "ca.pem",
        site / "certs" / "client.pem",
        site / "certs" / "client.key",
        site / "password",
    )
    # without host, the agent's connection: [mqtt]'s files, resolved as well
    mqtt = config.mqtt
    assert (local.ca_file, local.client_cert, local.client_key) == (mqtt.ca_file, mqtt.client_cert, mqtt.client_key)
    assert local.ca_file == site / "certs" / "ca.pem"
    check_broker_files(config, site / "config.toml")


def test_config_check_accepts_relative_files_that_load(site: Path) -> None:
    proc = cli("config", "check", str(write(site, relative_mqtt() + PIPELINE)))
    assert proc.returncode == 0, proc.stderr
    assert "valid (1 pipeline(s): faces)" in proc.stdout


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            ("certs/ca.pem", "certs/nope.pem"),
            "mqtt: cannot load the CA bundle ca_file = {site}/certs/nope.pem: No such",
        ),
        (("certs/ca.pem", "password"), "mqtt: cannot load the CA bundle ca_file = {site}/password"),
        (("certs/client.key", "certs/ca.key"), "mqtt: cannot load the client certificate client_cert = {site}/certs"),
        (('"secret"', '"no-secret"'), "mqtt.command_secret_file {site}/no-secret does not exist"),
    ],
)
def test_config_check_loads_the_mqtt_files(site: Path, change: tuple[str, str], needle: str) -> None:
    config = write(site, relative_mqtt().replace(*change) + PIPELINE)
    line = one_line_error(cli("config", "check", str(config)))
    assert line.startswith(f"edge-agent: error: {config}: "), line
    assert needle.format(site=site) in line, line
    with pytest.raises(ConfigError, match=r"cannot load|does not exist"):
        check_broker_files(load_config(config, {}), config)


def test_config_check_loads_an_inputs_own_files(site: Path) -> None:
    fields = {
        "ca": "certs/ca.pem",
        "cert": "certs/client.pem",
        "key": "certs/client.key",
        "password": "password",
        "model": ASSETS / "face_detection_short_range.tflite",
    }
    good = write(site, OWN_INPUT.format(**fields))
    assert cli("config", "check", str(good)).returncode == 0
    (site / "empty").write_text("")
    for change, needle in [
        ({"password": "nope"}, f"mqtt input t: password_file {site / 'nope'} does not exist"),
        ({"password": "empty"}, f"mqtt input t: password_file {site / 'empty'} is empty"),
        ({"ca": "certs/client.key"}, f"mqtt input t: cannot load the CA bundle ca_file = {site / 'certs/client.key'}"),
    ]:
        config = write(site, OWN_INPUT.format(**{**fields, **change}))
        line = one_line_error(cli("config", "check", str(config)))
        assert line.startswith(f"edge-agent: error: {config}: pipelines.remote.source: {needle}"), line


@pytest.fixture
def broker_with_relative_pki(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with tls_mosquitto(tmp_path / "broker") as broker:
        site = tmp_path / "site"
        (site / "certs").mkdir(parents=True)
        pki: Pki = broker.pki
        for src, name in ((pki.ca_cert, "ca.pem"), (pki.client_cert, "client.pem"), (pki.client_key, "client.key")):
            shutil.copy(src, site / "certs" / name)
        yield broker.port, site


def test_the_link_connects_with_files_named_relative_to_the_config(
    broker_with_relative_pki: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, site = broker_with_relative_pki
    monkeypatch.chdir(tmp_path)
    mqtt = relative_mqtt().replace('command_secret_file = "secret"\n', "")
    text = mqtt + f'port = {port}\nusername = "device"\npassword = "s3cret"\nreconnect_max_s = 1.0\n' + PIPELINE
    config = load_config(write(site, text), {})
    assert asyncio.run(publish_once(config.mqtt))


def test_mqtt_shares_the_inputs_tls_fields_and_checks() -> None:
    shared = set(BrokerTls.model_fields)
    assert shared == {"tls", "ca_file", "client_cert", "client_key", "username", "password"}
    assert shared <= set(MqttSection.model_fields) and shared <= set(BrokerSecurity.model_fields)
    assert "password_file" not in MqttSection.model_fields  # an input's own broker only
    for section in (MqttSection, MqttInputSource):
        extra = {"type": "mqtt", "topic": "t", "host": "h"} if section is MqttInputSource else {}
        with pytest.raises(ValidationError, match="set client_cert and client_key together"):
            section.model_validate({**extra, "tls": True, "client_cert": "c.pem"})
        with pytest.raises(ValidationError, match="need tls = true"):
            section.model_validate({**extra, "ca_file": "ca.pem"})
    # [mqtt] accepts what it always did, and never writes its password out
    section = MqttSection(password="hunter2-password")
    assert "hunter2" not in section.model_dump_json() and section.password == "hunter2-password"
