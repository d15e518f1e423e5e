"""Recurrent models: a state output fed back as an input at the next window, constant inputs, and the one
input left for the source -- with a real ONNX model whose state counts what it has seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.config import PipelineConfig
from agent.errors import ModelError
from agent.pipeline import LoadedModel
from agent.sources.base import Frame


def build_accumulator(path: Path) -> Path:
    """total = state + sum(x) * gain; stateN = total: the output grows window after window."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "gain"], ["scaled"]),
        helper.make_node("Add", ["state", "scaled"], ["total"]),
        helper.make_node("Identity", ["total"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, []),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def pipeline(model: Path, **extra: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "acc",
            "source": {"type": "replay", "path": str(model)},
            "model": {"path": str(model), "backend": "onnxruntime-cpu", **extra},
            "postprocess": {"type": "raw"},
        }
    )


def test_the_state_carries_from_window_to_window(tmp_path: Path) -> None:
    model = build_accumulator(tmp_path / "acc.onnx")
    loaded = LoadedModel(pipeline(model, state={"state": "stateN"}, constants={"gain": 2.0}))
    assert loaded.input.name == "x"
    totals = []
    for i in range(3):
        window = Frame(np.ones(4, np.float32), float(i), f"w{i}", is_tensor=True)  # a (4,) window for (1, 4)
        totals.append(float(loaded.infer(window).outputs["total"]))
    assert totals == [8.0, 16.0, 24.0]  # 4 ones x gain 2, accumulated


def test_inputs_left_unexplained_or_misnamed_are_refused_in_one_line(tmp_path: Path) -> None:
    model = build_accumulator(tmp_path / "acc.onnx")
    with pytest.raises(ModelError, match=r"3 inputs \(x, state, gain\) are left for the source"):
        LoadedModel(pipeline(model))
    with pytest.raises(ModelError, match=r"output\(s\) stateX that the model does not have"):
        LoadedModel(pipeline(model, state={"state": "stateX"}, constants={"gain": 1.0}))
    with pytest.raises(ModelError, match=r"constants\.gain does not fit"):
        LoadedModel(pipeline(model, state={"state": "stateN"}, constants={"gain": [1.0, 2.0]}))
