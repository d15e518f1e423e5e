"""Fixtures shared by the split and executor tests: the reference networks, built and profiled once a module."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.models.ir import ModelProfile
from agent.models.onnx_profile import profile_onnx
from tests.runtime.test_split import build_nets


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_nets(tmp_path_factory.mktemp("nets"))


@pytest.fixture(scope="module")
def profiles(nets: dict[str, Path]) -> dict[str, ModelProfile]:
    return {name: profile_onnx(path) for name, path in nets.items()}
