"""images/build-rootfs end to end: a Debian rootfs by debootstrap with the agent installed, dependencies and
all, and enabled. Minutes, root, debootstrap and network access to a Debian mirror and to pip's index:
run only when asked, with EDGE_AGENT_ROOTFS=1 (e.g. in a nightly CI job):

    EDGE_AGENT_ROOTFS=1 .venv/bin/python -m pytest tests/service/test_rootfs.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("EDGE_AGENT_ROOTFS") != "1", reason="builds a rootfs: set EDGE_AGENT_ROOTFS=1"),
]

CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def mounts_under(path: Path) -> list[str]:
    with Path("/proc/mounts").open() as fh:
        return [line.split()[1] for line in fh if line.split()[1].startswith(str(path))]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("EDGE_AGENT_ROOTFS=1 needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        pytest.fail("EDGE_AGENT_ROOTFS=1 needs debootstrap (apt-get install debootstrap)")
    out = tmp_path_factory.mktemp("rootfs") / "rootfs"
    proc = subprocess.run(
        [ROOT / "images" / "build-rootfs", out], capture_output=True, text=True, timeout=1800, check=False
    )
    assert proc.returncode == 0, f"build-rootfs exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert mounts_under(out) == [], "build-rootfs left file systems mounted in the rootfs"
    yield out
    if not mounts_under(out):  # never delete through a mount
        shutil.rmtree(out, ignore_errors=True)


def in_root(rootfs: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(rootfs), *cmd], env=CHROOT_ENV, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_service_is_enabled(rootfs: Path) -> None:
    link = rootfs / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert link.is_symlink()
    assert (rootfs / str(link.readlink()).lstrip("/")).is_file()
    assert (rootfs / "usr/lib/sysusers.d/edge-agent.conf").is_file()
    assert (rootfs / "etc/udev/rules.d/60-edge-agent-accelerators.rules").is_file()
    assert "edge-agent:" in (rootfs / "etc/passwd").read_text()


def test_the_agent_runs_inside(rootfs: Path) -> None:
    proc = in_root(rootfs, "/opt/edge-agent/bin/edge-agent", "--help")
    assert proc.returncode == 0, proc.stderr
    proc = in_root(rootfs, "/opt/edge-agent/bin/edge-agent", "config", "check", "/etc/edge-agent/config.toml")
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_nothing_of_the_build_host_stays(rootfs: Path) -> None:
    assert not (rootfs / "etc/pip.conf").exists()
    assert not (rootfs / "root/.config/pip").exists()
    assert not (rootfs / "tmp/edge-agent-src").exists()
    assert not (rootfs / "usr/sbin/policy-rc.d").exists()
    assert (rootfs / "etc/machine-id").read_text() == "", "each device makes its own"
    assert list((rootfs / "var/lib/apt/lists").glob("*_Packages")) == []
