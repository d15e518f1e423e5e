"""YOLO, segmentation, scalar and voice-activity post-processing on hand-built tensors (and one real ONNX net)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pydantic
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from accelerators.base import TensorSpec
from accelerators.registry import select
from agent.config import PreprocessConfig
from agent.errors import ConfigError, ModelError
from agent.sources.base import Frame
from agent.sources.post_extra import VoiceActivity, build_extra
from agent.sources.post_extra_settings import (
    ScalarPostprocess,
    SegmentationPostprocess,
    VadPostprocess,
    YoloPostprocess,
)
from agent.sources.preprocess import Letterbox, Preprocessor

# a 400x200 image letterboxed into 128x128: scale 0.32, 32 rows of padding above and below
WIDE = Letterbox(0.32, 0.32, 0.0, 32.0, 400, 200)


def spec(shape: tuple[int | None, ...], name: str = "out") -> TensorSpec:
    return TensorSpec(name, shape, "float32")


# rows of (cx, cy, w, h, objectness, class 0, class 1) in model-input pixels, padded with empty rows to 20
# (real models have thousands: with auto layout the shorter axis is taken for the attributes)
V5_ROWS = np.zeros((20, 7), np.float32)
V5_ROWS[:4] = np.array(
    [
        [64, 64, 32, 16, 0.9, 0.8, 0.1],  # A: class 0, 0.72 -> source [150, 75, 250, 125]
        [66, 64, 32, 16, 0.8, 0.7, 0.2],  # B: overlaps A, class 0, 0.56 -> suppressed by A
        [64, 64, 32, 16, 0.9, 0.1, 0.6],  # C: same place as A but class 1, 0.54 -> kept
        [20, 40, 8, 8, 0.1, 0.9, 0.0],  # D: 0.09, below the threshold
    ],
    np.float32,
)


def test_yolov5_objectness_boxes_in_source_pixels_with_class_aware_nms() -> None:
    cfg = YoloPostprocess(type="yolo", objectness=True, labels=["cat", "dog"])
    post = build_extra(cfg, (spec((1, None, 7)),))
    dets = post({"out": V5_ROWS[None]}, WIDE)["detections"]
    assert [(d["label"], d["class_id"], d["score"]) for d in dets] == [("cat", 0, 0.72), ("dog", 1, 0.54)]
    assert dets[0]["box"] == pytest.approx([150.0, 75.0, 250.0, 125.0])
    assert dets[1]["box"] == dets[0]["box"]


def test_yolo_thresholds_and_limits() -> None:
    out = {"out": V5_ROWS[None]}
    higher = build_extra(YoloPostprocess(type="yolo", objectness=True, score_threshold=0.6), (spec((1, 20, 7)),))
    assert [d["class_id"] for d in higher(out, WIDE)["detections"]] == [0]
    loose = build_extra(YoloPostprocess(type="yolo", objectness=True, iou_threshold=0.95), (spec((1, 20, 7)),))
    assert [d["score"] for d in loose(out, WIDE)["detections"]] == [0.72, 0.56, 0.54]  # B survives, best first
    one = build_extra(YoloPostprocess(type="yolo", objectness=True, max_detections=1), (spec((1, 20, 7)),))
    assert len(one(out, WIDE)["detections"]) == 1
    none = build_extra(YoloPostprocess(type="yolo", objectness=True, score_threshold=0.99), (spec((1, 20, 7)),))
    assert none(out, WIDE) == {"detections": []}


def test_yolov8_transposed_and_normalized() -> None:
    # v8: no objectness, (1, 4 + classes, boxes); 3 classes, 8 boxes, all but two empty
    rows = np.zeros((8, 7), np.float32)
    rows[2] = [64, 64, 32, 16, 0.1, 0.0, 0.9]  # class 2 at A's place
    rows[5] = [32, 48, 16, 16, 0.0, 0.7, 0.0]  # class 1 -> source [75, 25, 125, 75]
    post = build_extra(YoloPostprocess(type="yolo", labels=["a", "b"]), (spec((1, 7, 8)),))
    dets = post({"out": rows.T[None]}, WIDE)["detections"]
    assert [(d["label"], d["score"]) for d in dets] == [("2", 0.9), ("b", 0.7)]  # no label for 2: its index
    assert dets[0]["box"] == pytest.approx([150.0, 75.0, 250.0, 125.0])
    assert dets[1]["box"] == pytest.approx([75.0, 25.0, 125.0, 75.0])
    normed = rows.copy()
    normed[:, :4] /= 128
    for size in ((128, 128), None):  # given, or read back from the letterbox
        cfg = YoloPostprocess(type="yolo", normalized=True, input_size=size)
        again = build_extra(cfg, (spec((1, 7, None)),))({"out": normed.T[None]}, WIDE)["detections"]
        assert np.allclose([d["box"] for d in again], [d["box"] for d in dets])


def test_yolo_checks_the_model_output() -> None:
    with pytest.raises(ConfigError, match="model has no output 'boxes'; it has out"):
        build_extra(YoloPostprocess(type="yolo", output="boxes"), (spec((1, 100, 6)),))
    with pytest.raises(ModelError, match=r"needs \(1, boxes, attributes\)"):
        build_extra(YoloPostprocess(type="yolo"), (spec((1, 100, 6, 1)),))
    with pytest.raises(ModelError, match="has 5 attributes per box; YOLO needs at least 6"):
        build_extra(YoloPostprocess(type="yolo", objectness=True), (spec((1, 100, 5)),))


def class_scores() -> np.ndarray:
    """(1, 3, 64, 64) scores for the 128x128 input of WIDE: the image covers output rows 16..48."""
    classes = np.zeros((64, 64), np.int64)
    classes[:16] = 1  # padding: must not count
    classes[16:24, :16] = 1  # source [0, 0, 100, 50]: each cell is 6.25 source pixels
    classes[40:48, 48:] = 2  # source [300, 150, 400, 200]
    return np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1)[None]


def test_segmentation_areas_boxes_and_mask_png() -> None:
    cfg = SegmentationPostprocess(type="segmentation", input_size=(128, 128), labels=["bg", "road"], mask_png=True)
    post = build_extra(cfg, (spec((1, 3, 64, 64)),))
    out = post({"out": class_scores()}, WIDE)
    assert out["classes"] == [
        {"class_id": 1, "label": "road", "pixels": 5000, "area": 0.0625, "box": [0, 0, 100, 50]},
        {"class_id": 2, "label": "2", "pixels": 5000, "area": 0.0625, "box": [300, 150, 400, 200]},
    ]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["mask_png"]))))
    assert mask.shape == (200, 400) and set(np.unique(mask)) == {0, 1, 2}
    assert mask[49, 99] == 1 and mask[50, 99] == 0 and mask[150, 300] == 2 and mask[100, 200] == 0
    nhwc = build_extra(cfg.model_copy(update={"mask_png": False, "classes": [2]}), (spec((1, 64, 64, 3)),))
    assert [c["class_id"] for c in nhwc({"out": class_scores().transpose(0, 2, 3, 1)}, WIDE)["classes"]] == [2]


@pytest.mark.parametrize("shape", [(1, 20, 40), (1, 20, 40, 1)])
def test_segmentation_of_one_foreground_probability(shape: tuple[int, ...]) -> None:
    prob = np.full((20, 40), 0.2, np.float32)
    prob[5:10, 10:30] = 0.8
    cfg = SegmentationPostprocess(type="segmentation", threshold=0.5)
    stretch = Letterbox(40 / 400, 20 / 200, 0.0, 0.0, 400, 200)  # output = input size, stretched
    out = build_extra(cfg, (spec(shape),))({"out": prob.reshape(shape)}, stretch)
    assert out == {
        "classes": [
            {"class_id": 1, "label": "foreground", "pixels": 50 * 200, "area": 0.125, "box": [100, 50, 300, 100]}
        ]
    }
    assert build_extra(cfg, (spec(shape),))({"out": np.zeros(shape, np.float32)}, stretch) == {"classes": []}


def test_segmentation_refuses_other_shapes() -> None:
    with pytest.raises(ModelError, match=r"segmentation needs \(1, H, W, C\)"):
        build_extra(SegmentationPostprocess(type="segmentation"), (spec((1, 10)),))


def tiny_segmenter(path: Path) -> Path:
    """1x1 convolution on a (1, 3, 16, 16) image: class 1 where red > 128, else class 0 (constant 128)."""
    weight = np.zeros((2, 3, 1, 1), np.float32)
    weight[1, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["scores"])],
        "segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 16, 16])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([128, 0], np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_segmentation_on_a_real_onnx_model(tmp_path: Path) -> None:
    model = tiny_segmenter(tmp_path / "seg.onnx")
    session = select(model).load(model)
    pre = Preprocessor(PreprocessConfig(), session.inputs[0])
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32, 0] = 255  # left half red
    tensor, box = pre(Frame(image, 0.0, "half-red"))  # letterboxed to 16x8 with 4 rows of padding each side
    cfg = SegmentationPostprocess(type="segmentation", labels=["other", "red"], mask_png=True)
    out = build_extra(cfg, session.outputs)(session.run({"input": tensor}), box)
    (red,) = out["classes"]
    assert red["label"] == "red" and red["area"] == pytest.approx(0.5, abs=0.05)
    assert red["box"][:3] == [0, 0, pytest.approx(32, abs=4)] and red["box"][3] == 32
    assert Image.open(io.BytesIO(base64.b64decode(out["mask_png"]))).size == (64, 32)


def test_scalar_and_vector_outputs() -> None:
    cfg = ScalarPostprocess(type="scalar", scale=2.0, offset=1.0)
    assert build_extra(cfg, (spec((1, 1)),))({"out": np.array([[0.25]])}, WIDE) == {"value": 1.5}
    named = build_extra(cfg.model_copy(update={"name": "age"}), (spec((1,)),))
    assert named({"out": np.array([20.0])}, WIDE) == {"age": 41.0}
    second = ScalarPostprocess(type="scalar", output="b")
    vector = build_extra(second, (spec((1, 1), "a"), spec((1, 3), "b")))
    assert vector({"a": np.zeros((1, 1)), "b": np.array([[1.0, 2.0, 3.5]])}, WIDE) == {"values": [1.0, 2.0, 3.5]}


def run_vad(post: Any, probabilities: list[float]) -> list[tuple[bool, str | None]]:
    return [(r["speech"], r["event"]) for r in (post({"p": np.array([[p]], np.float32)}, WIDE) for p in probabilities)]


def test_vad_hysteresis_gives_exactly_one_start_and_one_end() -> None:
    cfg = VadPostprocess(type="vad", start_threshold=0.5, end_threshold=0.35, min_speech_windows=2)
    vad = build_extra(cfg, (spec((1, 1), "p"),))
    # hovering around 0.5 while speaking and around 0.35 once: neither flaps
    probs = [0.1, 0.6, 0.2, 0.6, 0.7, 0.49, 0.51, 0.4, 0.36, 0.6, 0.3, 0.6, 0.3, 0.2]
    events = run_vad(vad, probs)
    # one window above start is not enough (min 2); below end once ends speech (min 1)
    assert [e for _, e in events] == [None] * 4 + ["speech_start"] + [None] * 5 + ["speech_end"] + [None] * 3
    assert [s for s, _ in events] == [False] * 4 + [True] * 6 + [False] * 4


def test_vad_min_silence_offsets_and_reset() -> None:
    cfg = VadPostprocess(type="vad", min_silence_windows=3)
    vad = build_extra(cfg, (spec((1,), "p"),))
    assert isinstance(vad, VoiceActivity)
    results = [
        vad({"p": np.array([p])}, WIDE, offset=i * 512) for i, p in enumerate([0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    ]
    assert [r["event"] for r in results] == ["speech_start", None, None, None, None, None, "speech_end"]
    assert results[0]["event_offset"] == 0 and results[6]["event_offset"] == 4 * 512 and results[6]["offset"] == 6 * 512
    assert vad.speech is False
    vad({"p": np.array([0.9])}, WIDE)
    assert vad.speech is True
    vad.reset()
    assert vad.speech is False and run_vad(vad, [0.2]) == [(False, None)]


def test_vad_config_and_output_checks() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"end_threshold 0\.6 is above start_threshold 0\.5"):
        VadPostprocess(type="vad", start_threshold=0.5, end_threshold=0.6)
    with pytest.raises(ModelError, match="needs one speech probability per window"):
        build_extra(VadPostprocess(type="vad"), (spec((1, 2)),))
