"""Cutting real ONNX models into segment files: boundaries, shapes, caching, external data, bad plans.

Every split is checked by running the segment files one after another, in onnxruntime and in
OpenVINO, against the whole model in onnxruntime.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest

from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.models.onnx_profile import profile_onnx
from agent.planner.plan import Plan, Segment
from agent.runtime.split import SegmentModel, split_onnx
from tests.conftest import DIGITS_MODEL
from tests.models import nets_onnx

NETS: dict[str, Callable[[Path], Path]] = {
    "mobilenet_v2": nets_onnx.build_mobilenet_v2,
    "mobilenet_v2_fp16": lambda p: nets_onnx.build_mobilenet_v2(p, fp16=True),
    "resnet18": nets_onnx.build_resnet18,
    "small_convnet": nets_onnx.build_small_convnet,
    "small_convnet_constants": lambda p: nets_onnx.build_small_convnet(p, "constant"),
    "small_convnet_int8": lambda p: nets_onnx.build_small_convnet(p, "int8"),
    "small_convnet_graph_input": lambda p: nets_onnx.build_small_convnet(p, "graph_input"),
    "transformer_block": nets_onnx.build_transformer_block,
    "lstm": nets_onnx.build_recurrent,
}


def build_nets(folder: Path) -> dict[str, Path]:
    models = {name: build(folder / f"{name}.onnx") for name, build in NETS.items()}
    models["digits"] = DIGITS_MODEL
    return models


def make_plan(profile: ModelProfile, cuts: Sequence[int], accelerators: Sequence[str]) -> Plan:
    """A hand-made plan: layers [cuts[i], cuts[i+1]) on accelerators[i % len(accelerators)]."""
    bounds = [0, *cuts, len(profile.layers)]
    segments = tuple(
        Segment(accelerators[i % len(accelerators)], start, stop, predicted_ms=1.0)
        for i, (start, stop) in enumerate(itertools.pairwise(bounds))
    )
    return Plan(profile.path, profile.digest, "test", "latency", segments, predicted_ms=float(len(segments)))


def even_cuts(profile: ModelProfile, parts: int) -> list[int]:
    n = len(profile.layers)
    return sorted({max(1, min(n - 1, n * i // parts)) for i in range(1, parts)})


def random_inputs(profile: ModelProfile, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in profile.inputs}


def reference(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The whole model in onnxruntime: what every split must reproduce."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def chain(parts: Sequence[SegmentModel], inputs: Mapping[str, np.ndarray], runtime: str) -> dict[str, np.ndarray]:
    """Run segment files one after another, straight on the runtime (not through our backends)."""
    live = dict(inputs)
    for part in parts:
        feed = {name: live[name] for name in part.inputs}
        if runtime == "onnxruntime":
            session = ort.InferenceSession(str(part.path), providers=["CPUExecutionProvider"])
            live.update(zip(part.outputs, session.run(list(part.outputs), feed), strict=True))
        else:
            compiled = ov.Core().compile_model(str(part.path), "CPU")
            result = compiled.create_infer_request().infer(feed)
            live.update({name: np.asarray(result[compiled.output(name)]) for name in part.outputs})
    return {name: live[name] for name in parts[0].graph_outputs}


def assert_same(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    """rtol 1e-4, atol 1e-5 relative to the output's scale: runtimes (and one runtime across a cut) fuse
    and order float32 sums differently, and deep nets with outputs in the hundreds (ResNet-18 here: up
    to 155) differ by ~1e-4 absolute near zero; for outputs within +-1 this is atol=1e-5 exactly."""
    assert set(got) == set(want)
    for name, value in want.items():
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("name", [*NETS, "digits"])
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_segments_reproduce_the_whole_model(
    name: str, parts: int, nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles[name]
    cuts = even_cuts(profile, parts)
    plan = make_plan(profile, cuts, ["onnxruntime-cpu"])
    split = split_onnx(nets[name], profile, plan.segments, tmp_path)
    assert len(split) == len(cuts) + 1
    inputs = random_inputs(profile)
    want = reference(nets[name], inputs)
    assert_same(chain(split, inputs, "onnxruntime"), want)
    assert_same(chain(split, inputs, "openvino"), want)


@pytest.mark.parametrize("name", ["mobilenet_v2_fp16", "small_convnet_constants", "resnet18", "transformer_block"])
def test_segment_files_are_valid_and_hold_each_layer_once(
    name: str, nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles[name]
    split = split_onnx(nets[name], profile, make_plan(profile, even_cuts(profile, 3), ["x"]).segments, tmp_path)
    layer_outputs = {layer.outputs[0] for layer in profile.layers}
    seen: list[str] = []
    for part in split:
        model = onnx.load(str(part.path))
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == onnx.load(str(nets[name])).ir_version
        assert [(o.domain, o.version) for o in model.opset_import] == [
            (o.domain, o.version) for o in onnx.load(str(nets[name])).opset_import
        ]
        seen += [n.output[0] for n in model.graph.node if n.output[0] in layer_outputs]
        assert [i.name for i in model.graph.input] == list(part.inputs)
        assert [o.name for o in model.graph.output] == list(part.outputs)
        for boundary in (*model.graph.input, *model.graph.output):
            tensor = boundary.type.tensor_type
            assert tensor.elem_type != onnx.TensorProto.UNDEFINED
            assert all(d.HasField("dim_value") and d.dim_value > 0 for d in tensor.shape.dim), boundary.name
            expected = profile.tensors[boundary.name].shape
            assert tuple(d.dim_value for d in tensor.shape.dim) == expected
    assert sorted(seen) == sorted(layer_outputs)  # every layer in exactly one segment


def test_a_cut_across_a_skip_connection_passes_both_tensors(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles["resnet18"]
    # Cut right after the first conv of the second residual block: that conv's output and the block's
    # input (the skip connection, read again by the block's Add) both cross the cut.
    first_add = next(layer.index for layer in profile.layers if layer.op == "Add")
    block_input = profile.layers[first_add + 1].outputs[0]  # the Relu after the first block's Add
    block_conv = first_add + 2
    block_add = next(layer.index for layer in profile.layers[block_conv:] if layer.op == "Add")
    plan = make_plan(profile, [block_conv + 1, block_add + 1], ["onnxruntime-cpu"])
    split = split_onnx(nets["resnet18"], profile, plan.segments, tmp_path)
    assert set(split[1].inputs) == {profile.layers[block_conv].outputs[0], block_input}
    assert set(split[0].outputs) == set(split[1].inputs)
    inputs = random_inputs(profile)
    assert_same(chain(split, inputs, "onnxruntime"), reference(nets["resnet18"], inputs))
    assert_same(chain(split, inputs, "openvino"), reference(nets["resnet18"], inputs))


def test_one_segment_uses_the_model_file_itself(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles["mobilenet_v2"]
    (part,) = split_onnx(nets["mobilenet_v2"], profile, make_plan(profile, [], ["a"]).segments, tmp_path / "out")
    assert part.path == nets["mobilenet_v2"]
    assert part.inputs == ("input",) and part.outputs == part.graph_outputs
    assert not (tmp_path / "out").exists()


def test_segment_files_are_cached_and_rebuilt_when_damaged(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles["small_convnet"]
    segments = make_plan(profile, [3, 6], ["a", "b"]).segments
    first = split_onnx(nets["small_convnet"], profile, segments, tmp_path)
    assert all(profile.digest[:16] in p.path.name and f"{p.segment.start}-{p.segment.stop}" in p.path.name
               for p in first)  # fmt: skip
    written = {p.path: (p.path.stat().st_mtime_ns, p.path.read_bytes()) for p in first}
    assert split_onnx(nets["small_convnet"], profile, segments, tmp_path) == first
    assert {p.path: (p.path.stat().st_mtime_ns, p.path.read_bytes()) for p in first} == written  # reused as is

    damaged = first[1].path
    damaged.write_bytes(damaged.read_bytes()[:100])  # a crash or a full disk mid-write
    again = split_onnx(nets["small_convnet"], profile, segments, tmp_path)
    assert again == first
    assert damaged.read_bytes() == written[damaged][1]
    inputs = random_inputs(profile)
    assert_same(chain(again, inputs, "onnxruntime"), reference(nets["small_convnet"], inputs))


def test_external_data_models_split_into_self_contained_segments(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    external = tmp_path / "model" / "mobilenet_v2.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(nets["mobilenet_v2"])), str(external), save_as_external_data=True, location="w.bin")
    profile = profile_onnx(external)
    split = split_onnx(external, profile, make_plan(profile, even_cuts(profile, 3), ["a"]).segments, tmp_path / "s")
    assert sorted(p.suffix for p in (tmp_path / "s").iterdir()) == [".json"] * 3 + [".onnx"] * 3
    inputs = random_inputs(profile)
    want = reference(external, inputs)
    assert_same(chain(split, inputs, "onnxruntime"), want)
    assert_same(chain(split, inputs, "openvino"), want)


def test_heavy_segments_keep_their_weights_in_a_data_file(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles["resnet18"]
    segments = make_plan(profile, even_cuts(profile, 2), ["a"]).segments
    split = split_onnx(nets["resnet18"], profile, segments, tmp_path, inline_limit=1 << 20)
    for part in split:
        data = part.path.with_suffix(".data")
        assert data.is_file() and data.stat().st_size > part.path.stat().st_size
    inputs = random_inputs(profile)
    want = reference(nets["resnet18"], inputs)
    assert_same(chain(split, inputs, "onnxruntime"), want)
    assert_same(chain(split, inputs, "openvino"), want)
    assert split_onnx(nets["resnet18"], profile, segments, tmp_path, inline_limit=1 << 20) == split  # cached
    data = split[0].path.with_suffix(".data")
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[: size // 2])  # truncated weights: rebuilt, not appended to
    assert split_onnx(nets["resnet18"], profile, segments, tmp_path, inline_limit=1 << 20) == split
    assert data.stat().st_size == size
    assert_same(chain(split, inputs, "openvino"), want)


def test_pinned_input_shapes_carry_into_every_segment(nets: dict[str, Path], tmp_path: Path) -> None:
    profile = profile_onnx(nets["mobilenet_v2"], input_shapes={"input": [2, 3, 224, 224]})
    split = split_onnx(nets["mobilenet_v2"], profile, make_plan(profile, [40], ["a"]).segments, tmp_path)
    boundary = onnx.load(str(split[1].path)).graph.input[0].type.tensor_type.shape
    assert boundary.dim[0].dim_value == 2
    inputs = random_inputs(profile)
    assert_same(chain(split, inputs, "onnxruntime"), reference(nets["mobilenet_v2"], inputs))


def test_plans_that_do_not_fit_the_model_are_refused(
    nets: dict[str, Path], profiles: dict[str, ModelProfile], tmp_path: Path
) -> None:
    profile = profiles["small_convnet"]
    n = len(profile.layers)
    path = nets["small_convnet"]
    gap = (Segment("a", 0, 3, 1.0), Segment("a", 4, n, 1.0))
    with pytest.raises(ModelError, match="contiguous"):
        split_onnx(path, profile, gap, tmp_path)
    with pytest.raises(ModelError, match="covers"):
        split_onnx(path, profile, (Segment("a", 0, 3, 1.0), Segment("a", 3, n - 1, 1.0)), tmp_path)
    with pytest.raises(ModelError, match="no segments"):
        split_onnx(path, profile, (), tmp_path)
    other = profiles["digits"]
    with pytest.raises(ModelError, match="changed since it was profiled"):
        split_onnx(path, other, make_plan(other, [2], ["a"]).segments, tmp_path)
