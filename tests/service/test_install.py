"""scripts/install and scripts/uninstall into a staging root (--destdir), as an image build uses them.

Checked: every file is laid out; the venv names /opt/edge-agent, never the staging path, and still runs from
the staging path; the installed agent (not this source tree) validates the installed config; a second run
changes nothing but keeps an edited config.toml and puts the new default beside it; uninstall removes what
install laid out and can run twice.

The agent is installed with --no-deps and finds its dependencies in the test venv through a .pth file, so
that the test takes seconds rather than downloading and unpacking some 300 MB. The full install, dependencies
included, is what images/build-rootfs runs (tests/service/test_rootfs.py, with EDGE_AGENT_ROOTFS=1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSTALL = ROOT / "scripts" / "install"
UNINSTALL = ROOT / "scripts" / "uninstall"
PREFIX = "opt/edge-agent"
VENV_PYTHON = "/opt/edge-agent/bin/python"
LAID_OUT = {  # staged path -> the file in this tree it is a copy of
    "etc/systemd/system/edge-agent.service": "systemd/edge-agent.service",
    "usr/lib/sysusers.d/edge-agent.conf": "systemd/edge-agent.sysusers",
    "etc/udev/rules.d/60-edge-agent-accelerators.rules": "systemd/60-edge-agent-accelerators.rules",
    "etc/edge-agent/config.toml": "systemd/config.toml",
}


def run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGE_AGENT_", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def install(root: Path) -> subprocess.CompletedProcess[str]:
    # --python: the interpreter of the test venv, so that the .pth below matches its Python version
    return run(INSTALL, "--destdir", root, "--no-enable", "--no-deps", "--python", sys.executable, cwd=root.parent)


def site_packages(root: Path) -> Path:
    (found,) = (root / PREFIX / "lib").glob("python3.*/site-packages")
    return found


def provide_dependencies(root: Path) -> None:
    """The installed agent's dependencies, from the test venv: appended to sys.path after the staged
    site-packages (a .pth line is a plain path; the test venv's own .pth files, among them the editable
    install of this tree, are not processed)."""
    (site_packages(root) / "_edge_agent_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def tree(root: Path) -> dict[str, str]:
    """Every file and link under root: sha256 of a file, 'link -> target' of a link."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"link -> {path.readlink()}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def outside_venv(files: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in files.items() if not k.startswith(PREFIX + "/")}


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("install") / "root"
    install(root)
    provide_dependencies(root)
    yield root


def test_every_file_is_laid_out(staged: Path) -> None:
    for staged_path, source in LAID_OUT.items():
        assert (staged / staged_path).read_bytes() == (ROOT / source).read_bytes(), staged_path
    demo = staged / "etc/edge-agent/demo"
    assert demo.is_symlink() and not demo.readlink().is_absolute(), "a relative link holds in the copied tree"
    assert (demo / "assets" / "face_detection_short_range.tflite").is_file()
    assert not (staged / "etc/edge-agent/config.toml.dist").exists()


def test_venv_names_opt_not_the_staging_path(staged: Path) -> None:
    venv = staged / PREFIX
    script = (venv / "bin" / "edge-agent").read_text()
    assert script.splitlines()[0] == f"#!{VENV_PYTHON}"
    assert f'VIRTUAL_ENV="/{PREFIX}"' in (venv / "bin" / "activate").read_text()
    marker = str(staged).encode()
    mentions = [p for p in venv.rglob("*") if p.is_file() and not p.is_symlink() and marker in p.read_bytes()]
    assert mentions == [], "byte code, scripts and pyvenv.cfg must name /opt/edge-agent"


def test_staged_venv_runs_the_installed_agent(staged: Path) -> None:
    python = staged / PREFIX / "bin" / "python"
    # from the staging path, Python still finds the venv: pyvenv.cfg beside the executable's link
    proc = run(python, "-c", "import agent, sys; print(agent.__file__); print(sys.prefix)", cwd=staged.parent)
    agent_file, prefix = proc.stdout.splitlines()
    assert Path(agent_file).is_relative_to(site_packages(staged)), "the installed copy, not this source tree"
    assert Path(prefix) == staged / PREFIX


def test_installed_config_checks(staged: Path) -> None:
    # the shebang names /opt/edge-agent, which does not exist here: run the script with the staged python
    venv = staged / PREFIX
    config = staged / "etc/edge-agent/config.toml"
    proc = run(venv / "bin" / "python", venv / "bin" / "edge-agent", "config", "check", config, cwd=staged.parent)
    assert "valid (1 pipeline(s): faces)" in proc.stdout


def test_reinstall_changes_nothing_but_keeps_an_edited_config(staged: Path, tmp_path: Path) -> None:
    # a copy elsewhere: the staged tree must not depend on where it was staged
    root = tmp_path / "copy"
    shutil.copytree(staged, root, symlinks=True)
    before = tree(root)
    config = root / "etc/edge-agent/config.toml"
    edited = config.read_text().replace('host = "localhost"', 'host = "broker.lan"')
    assert edited != config.read_text()
    config.write_text(edited)

    proc = install(root)
    assert "reusing the venv" in proc.stdout
    after = tree(root)
    assert set(after) == set(before) | {"etc/edge-agent/config.toml.dist"}, "same files; nothing duplicated"
    assert config.read_text() == edited
    assert (root / "etc/edge-agent/config.toml.dist").read_bytes() == (ROOT / "systemd/config.toml").read_bytes()
    unchanged = {k for k in outside_venv(before) if k != "etc/edge-agent/config.toml"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}

    run(UNINSTALL, "--destdir", root, cwd=tmp_path)
    left = tree(root)
    assert set(left) == {"etc/edge-agent/config.toml"}, "without --purge only your config stays"
    run(UNINSTALL, "--destdir", root, "--purge", cwd=tmp_path)
    assert tree(root) == {}
    proc = run(UNINSTALL, "--destdir", root, "--purge", cwd=tmp_path)
    assert "nothing to remove" in proc.stdout
