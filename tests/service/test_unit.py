"""The hardened systemd unit: systemd itself checks it (verify, security), then the lines users rely on.

systemd-analyze judges the unit file offline, so no running systemd is needed; `verify` runs against a
scratch root holding the unit, stub targets and a stub /opt/edge-agent/bin/edge-agent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import AgentSection

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge-agent.service"
SYSUSERS = ROOT / "systemd" / "edge-agent.sysusers"
NAME = "edge-agent.service"
EXEC = "/opt/edge-agent/bin/edge-agent"
MAX_EXPOSURE = 2.0
# The units the agent's unit pulls in by name or by default dependencies; empty stand-ins in the scratch root.
STUB_UNITS = ("sysinit.target", "basic.target", "shutdown.target", "network-online.target", "multi-user.target")
# Plain output: no colours, no pager, whatever the terminal.
ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/bin/{name}") if Path(p).exists()), None)
    if path is None:
        why = f"{name} is not installed (Debian: apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs it")
        pytest.skip(why)
    return path


def _parse(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; comments and blank lines dropped."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):  # continuation: systemd joins it with the next line
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(section: str, key: str) -> list[str]:
    return [v for s, k, v in _parse(UNIT.read_text()) if s == section and k == key]


def _one(section: str, key: str) -> str:
    values = _values(section, key)
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}


def _seconds(span: str) -> float:
    """A systemd time span ("30s", "10min", "1min 30s", bare seconds) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"unparsed time span {span!r}"
    return sum(float(n) * _SPAN_UNITS[u] for n, u in parts)


def _scratch_root(tmp_path: Path, unit_text: str, *, with_binary: bool = True) -> Path:
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / NAME).write_text(unit_text)
    for stub in STUB_UNITS:
        (units / stub).write_text(f"[Unit]\nDescription=stand-in for {stub}\n")
    if with_binary:
        binary = root / EXEC.lstrip("/")
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return root


def _verify(root: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify's exit status and the stderr lines about the agent's unit."""
    done = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", NAME],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    return done.returncode, [line for line in done.stderr.splitlines() if NAME in line]


# --- systemd's own checks ---------------------------------------------------------------------------------------


def test_verify_passes_without_warnings(tmp_path: Path) -> None:
    rc, about_unit = _verify(_scratch_root(tmp_path, UNIT.read_text()))
    assert rc == 0, about_unit
    assert about_unit == []


@pytest.mark.parametrize(
    ("change", "with_binary", "expected"),
    [
        pytest.param(("TasksMax=", "TaskMax="), True, "Unknown key 'TaskMax'", id="misspelt-key"),
        pytest.param(("DevicePolicy=closed", "DevicePolicy=shut"), True, "device policy", id="bad-value"),
        pytest.param(None, False, "is not executable", id="no-binary"),
    ],
)
def test_verify_reports_a_broken_unit(
    tmp_path: Path, change: tuple[str, str] | None, with_binary: bool, expected: str
) -> None:
    """The check above is not vacuous: a misspelt key, a bad value, a missing binary each show up."""
    text = UNIT.read_text()
    if change is not None:
        assert change[0] in text
        text = text.replace(change[0], change[1], 1)
    rc, about_unit = _verify(_scratch_root(tmp_path, text, with_binary=with_binary))
    assert any(expected in line for line in about_unit), (rc, about_unit)


def test_security_exposure_at_most_2() -> None:
    done = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=true", "--threshold=20", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    # --threshold counts tenths: 20 is an exposure of 2.0
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in done.stderr.splitlines() if NAME in line] == []
    found = re.search(rf"Overall exposure level for {re.escape(NAME)}: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout


def test_sysusers_creates_the_user_and_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    done = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "group").read_text().splitlines()}
    user = users["edge-agent"]
    assert int(user[2]) < 1000  # a system user
    assert user[3] == groups["edge-agent"][2]  # its primary group is edge-agent
    assert user[5] == "/var/lib/edge-agent"
    assert user[6].endswith("nologin")
    # GPU render nodes and accel NPUs belong to the group render: the service reaches them as a member
    assert "edge-agent" in groups["render"][3].split(",")


# --- what users and the rest of the agent rely on -------------------------------------------------------------


def test_exec_start_matches_the_install_layout() -> None:
    assert _one("Service", "ExecStart") == f"{EXEC} run --config /etc/edge-agent/config.toml"
    assert _one("Service", "User") == "edge-agent"
    assert _one("Service", "Group") == "edge-agent"


def test_readiness_and_watchdog() -> None:
    assert _one("Service", "Type") == "notify"
    assert _one("Service", "NotifyAccess") == "main"
    assert _seconds(_one("Service", "WatchdogSec")) > 0
    # READY=1 waits for first-start planning, which measures each model on each engine: minutes
    assert _seconds(_one("Service", "TimeoutStartSec")) >= 120


def test_stop_timeout_covers_the_daemons_own_shutdown() -> None:
    # after SIGTERM: the outbox drain, then the broker disconnect, each up to shutdown_timeout_s
    default = AgentSection.model_fields["shutdown_timeout_s"].default
    assert _seconds(_one("Service", "TimeoutStopSec")) > 2 * default


def test_restarts_on_failure_within_a_start_limit() -> None:
    assert _one("Service", "Restart") == "on-failure"
    assert _seconds(_one("Service", "RestartSec")) > 0
    # the start limit is a [Unit] setting; in [Service] systemd 252 would ignore it with a warning
    assert int(_one("Unit", "StartLimitBurst")) > 1
    assert _seconds(_one("Unit", "StartLimitIntervalSec")) > 0
    # a user's mistake (exit 2, the CLI's one-line errors) is not retried: restarting would only repeat it
    from agent.cli import EXIT_USAGE

    assert _one("Service", "RestartPreventExitStatus") == str(EXIT_USAGE)


def test_broker_is_ordered_after_but_not_required() -> None:
    after = " ".join(_values("Unit", "After")).split()
    assert "network-online.target" in after
    assert "mosquitto.service" in after  # a local broker starts first and stops last
    for key in ("Wants", "Requires", "BindsTo", "Requisite"):
        assert "mosquitto.service" not in " ".join(_values("Unit", key)).split()  # the broker may be remote
    assert "network-online.target" in " ".join(_values("Unit", "Wants")).split()


def test_directories_the_daemon_uses() -> None:
    assert _one("Service", "StateDirectory") == "edge-agent"  # $STATE_DIRECTORY
    assert _one("Service", "CacheDirectory") == "edge-agent"
    assert _one("Service", "ConfigurationDirectory") == "edge-agent"
    assert _one("Service", "RuntimeDirectory") == "edge-agent"
    # /run/edge-agent/status.json is read by `edge-agent status` as any user
    assert _one("Service", "RuntimeDirectoryMode") == "0755"


def test_write_execute_memory_stays_allowed() -> None:
    # XNNPACK, OpenVINO's CPU plugin and onnxruntime's MLAS JIT-compile kernels into memory that is writable,
    # then executable; MemoryDenyWriteExecute=yes would break every CPU backend.
    for value in _values("Service", "MemoryDenyWriteExecute"):
        assert value.lower() not in {"yes", "true", "on", "1"}


def test_accelerator_nodes_are_allowed_and_nothing_else() -> None:
    assert _one("Service", "DevicePolicy") == "closed"
    allowed = dict(value.split() for value in _values("Service", "DeviceAllow"))
    for node in ("/dev/apex_0", "/dev/apex_1", "char-usb_device", "/dev/rknpu", "/dev/dri/renderD128"):
        assert allowed.get(node) == "rw", node
    assert allowed.get("/dev/accel/accel0") == "rw"
    # PrivateDevices=yes would hide the very nodes allowed above
    assert _values("Service", "PrivateDevices") in ([], ["no"])


def test_no_privileges() -> None:
    assert _one("Service", "CapabilityBoundingSet") == ""
    assert _one("Service", "AmbientCapabilities") == ""
    assert _one("Service", "NoNewPrivileges") == "yes"
    assert _one("Service", "ProtectSystem") == "strict"
    assert "@system-service" in _values("Service", "SystemCallFilter")
