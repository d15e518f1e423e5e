"""A real mosquitto with a TLS listener for the tests: a CA made by the test (``make_pki``), a server
certificate for localhost, client certificates required, and a password file with one user."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.localbroker import find_mosquitto, free_port, reachable
from tests.ota.https_server import Pki, make_pki

USER = "device"
PASSWORD = "s3cret"


@dataclass
class TlsBroker:
    port: int
    pki: Pki
    passwords: Path  # mosquitto's password file
    proc: subprocess.Popen[bytes]

    def set_password(self, user: str, password: str) -> None:
        """Add or change a user; mosquitto reads its password file again on SIGHUP."""
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwords), user, password], check=True, capture_output=True)
        self.proc.send_signal(signal.SIGHUP)

    def client(self, client_id: str, ca_file: Path | None = None) -> mqtt.Client:
        """A paho client set up for this broker (its CA, the client certificate, the user), not yet connected."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.tls_set(ca_certs=str(ca_file or self.pki.ca_cert), certfile=str(self.pki.client_cert),
                       keyfile=str(self.pki.client_key))  # fmt: skip
        client.username_pw_set(USER, PASSWORD)
        return client


@contextmanager
def tls_mosquitto(folder: Path) -> Iterator[TlsBroker]:
    """mosquitto on a free loopback port, TLS only, with a client certificate and USER/PASSWORD required."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    pki = make_pki(folder / "pki")
    passwords = folder / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD], check=True, capture_output=True)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {pki.ca_cert}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        f"require_certificate true\nallow_anonymous false\npassword_file {passwords}\n"
        # started as root, mosquitto would drop to its own user, who cannot read the test's private folder
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", port, timeout=0.2):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto with TLS did not start"
            time.sleep(0.05)  # polling a port that is not yet open; there is nothing to wait on
        yield TlsBroker(port, pki, passwords, proc)
    finally:
        proc.terminate()
        proc.wait(5)
