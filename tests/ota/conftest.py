"""OTA fixtures: a test CA (one per session) and a real HTTPS release server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ota.https_server import Pki, ReleaseServer, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def release_root(tmp_path: Path) -> Path:
    """The folder the release server serves; files written here are served at once."""
    root = tmp_path / "release"
    root.mkdir()
    return root


@pytest.fixture
def release_server(release_root: Path, pki: Pki) -> Iterator[ReleaseServer]:
    with ReleaseServer(release_root, pki) as server:
        yield server
