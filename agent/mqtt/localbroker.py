"""A broker on loopback for the demo and the tests: mosquitto when installed, else the built-in one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from agent.errors import AgentError
from agent.mqtt.embedded_broker import BrokerThread


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """mosquitto's path; Debian installs it in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


class Mosquitto:
    """A real mosquitto on 127.0.0.1:port with anonymous access; ``persistence``: sessions and queued messages
    saved on a clean stop and restored at the next start (outage tests whose subscriber must miss nothing)."""

    def __init__(self, port: int, binary: str | None = None, persistence: bool = False) -> None:
        self.port = port
        self.persistence = persistence
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise AgentError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self._dir = tempfile.TemporaryDirectory(prefix="edge-agent-mosquitto-")
        self.log_path = Path(self._dir.name) / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        conf = Path(self._dir.name) / "mosquitto.conf"
        if self.persistence:  # started as root, mosquitto drops to its own user: it must be able to write here
            Path(self._dir.name).chmod(0o777)
        persist = (
            f"persistence true\npersistence_location {self._dir.name}/\n" if self.persistence else "persistence false\n"
        )
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persist}max_queued_messages 100000\n")
        with self.log_path.open("wb") as logfile:
            self._proc = subprocess.Popen(
                [self.binary or "mosquitto", "-c", str(conf)], stdout=logfile, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not reachable("127.0.0.1", self.port, timeout=0.2):
            if self._proc.poll() is not None:
                raise AgentError(f"mosquitto exited at start: {self.log_path.read_text(errors='replace').strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AgentError(f"mosquitto did not listen on port {self.port} within {timeout:.0f} s")
            time.sleep(0.05)  # polling a port that is not yet open; there is nothing to wait on
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Stop without a clean shutdown (for outage tests)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBroker:
    """Start mosquitto if installed, else the embedded broker, on a port of loopback."""

    def __init__(self, port: int, kind: str = "auto") -> None:
        if kind not in ("auto", "mosquitto", "builtin"):
            raise ValueError(f"unknown broker kind {kind!r}")
        self.port = port
        self.wanted = kind
        self.kind = ""
        self._mosquitto: Mosquitto | None = None
        self._embedded: BrokerThread | None = None

    def __enter__(self) -> LocalBroker:
        if self.wanted == "mosquitto" or (self.wanted == "auto" and find_mosquitto() is not None):
            self._mosquitto = Mosquitto(self.port).start()
            self.kind = "mosquitto"
        else:
            thread = BrokerThread("127.0.0.1", self.port)
            self.port = thread.start()
            self._embedded = thread
            self.kind = "built-in broker"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._mosquitto is not None:
            self._mosquitto.close()
        if self._embedded is not None:
            self._embedded.stop()
