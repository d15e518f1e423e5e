"""Replay, pre-processing and post-processing, on the real demo models and photos."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from accelerators.base import TensorSpec
from accelerators.registry import select
from agent.config import (
    AnchorConfig,
    ClassificationPostprocess,
    DetectionPostprocess,
    PreprocessConfig,
    ReplaySource,
)
from agent.errors import ModelError, SourceError
from agent.sources.base import Frame
from agent.sources.postprocess import build_postprocessor, nms, ssd_anchors
from agent.sources.preprocess import Preprocessor
from agent.sources.replay import ReplayRunner, list_files, read_file
from tests.conftest import ASSETS, DIGITS_MODEL, FACE_MODEL

FACE_PRE = PreprocessConfig(resize="letterbox", mean=[127.5], std=[127.5])
NHWC = TensorSpec("input", (1, 128, 128, 3), "float32")


def test_blazeface_anchor_grid() -> None:
    anchors = ssd_anchors(AnchorConfig())
    assert anchors.shape == (896, 2)  # 16*16*2 + 8*8*6
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[1], anchors[0])  # two anchors per cell on the stride-8 layer
    assert np.allclose(anchors[512], [0.5 / 8, 0.5 / 8])  # first stride-16 cell
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.3, 10) == [1, 2]
    assert nms(boxes, scores, 0.3, 1) == [1]
    assert nms(boxes, scores, 0.9, 10) == [1, 0, 2]


def test_letterbox_maps_model_pixels_back_to_the_image() -> None:
    pre = Preprocessor(FACE_PRE, NHWC)
    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, 200:] = 255  # right half white
    tensor, box = pre(Frame(wide, 0.0, "wide"))
    assert tensor.shape == (1, 128, 128, 3) and tensor.dtype == np.float32
    assert box.scale_x == pytest.approx(128 / 400) and box.pad_y == pytest.approx((128 - 32) // 2)
    assert tensor[0, 0, 0, 0] == -1.0  # black padding -> -1 after normalisation
    assert tensor[0, 64, 100, 0] == pytest.approx(1.0)  # white -> 1
    x, y = box.to_source(np.array([64.0]), np.array([64.0]))
    assert x[0] == pytest.approx(200, abs=2) and y[0] == pytest.approx(50, abs=2)


def test_nchw_gray_and_bgr_layouts() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = Preprocessor(PreprocessConfig(color="bgr"), TensorSpec("x", (1, 3, 8, 8), "float32"))
    tensor, _ = bgr(Frame(rgb, 0.0, "red"))
    assert bgr.layout == "nchw" and tensor.shape == (1, 3, 8, 8)
    assert tensor[0, 2].max() == 200 and tensor[0, 0].max() == 0  # red moved to the last channel
    gray = Preprocessor(PreprocessConfig(color="gray"), TensorSpec("x", (None, 1, 8, 8), "float32"))
    tensor, _ = gray(Frame(rgb, 0.0, "red"))
    assert tensor.shape == (1, 1, 8, 8)


def test_models_with_inputs_images_cannot_fill_are_refused() -> None:
    tensors_only = Preprocessor(PreprocessConfig(), TensorSpec("x", (1, 64), "float32"))
    with pytest.raises(SourceError, match="takes tensors"):
        tensors_only(Frame(np.zeros((8, 8, 3), np.uint8), 0.0, "photo.jpg"))
    window, _ = tensors_only(Frame(np.arange(64, dtype=np.float64), 0.0, "audio", is_tensor=True))
    assert window.shape == (1, 64) and window.dtype == np.float32 and window[0, 5] == 5.0  # a window reshaped
    with pytest.raises(ModelError, match="dynamic height"):
        Preprocessor(PreprocessConfig(), TensorSpec("x", (1, None, None, 3), "float32"))


def test_tensor_frames_are_checked_against_the_model_input() -> None:
    pre = Preprocessor(FACE_PRE, NHWC)
    ok, _ = pre(Frame(np.zeros((128, 128, 3), np.float64), 0.0, "t.npy", is_tensor=True))
    assert ok.shape == (1, 128, 128, 3) and ok.dtype == np.float32
    with pytest.raises(SourceError, match=r"t\.npy: tensor of shape \(3, 3\)"):
        pre(Frame(np.zeros((3, 3)), 0.0, "t.npy", is_tensor=True))


def run_face_model(path: Path) -> list[dict[str, object]]:
    session = select(FACE_MODEL).load(FACE_MODEL)
    pre = Preprocessor(FACE_PRE, session.inputs[0])
    post = build_postprocessor(DetectionPostprocess(type="ssd", labels=["face"]), session.outputs)
    tensor, box = pre(read_file(path))
    dets = post(session.run({session.inputs[0].name: tensor}), box)["detections"]
    assert isinstance(dets, list)
    return dets


def test_the_face_detector_finds_the_astronauts_face() -> None:
    (face,) = run_face_model(ASSETS / "images" / "astronaut.jpg")
    x1, y1, x2, y2 = face["box"]  # type: ignore[misc]
    # her face spans roughly x 180..275, y 80..180 in the 512x512 photo
    assert 160 < x1 < 200 and 60 < y1 < 100 and 255 < x2 < 295 and 160 < y2 < 200
    right_eye, left_eye = face["keypoints"][:2]  # type: ignore[index]
    assert right_eye[0] < left_eye[0] and y1 < right_eye[1] < y2


def test_no_face_on_the_coffee_cup() -> None:
    assert run_face_model(ASSETS / "images" / "coffee.jpg") == []


def test_digits_classifier_on_onnxruntime() -> None:
    backend = select(DIGITS_MODEL)
    assert backend.name == "onnxruntime-cpu"
    session = backend.load(DIGITS_MODEL)
    pre = Preprocessor(PreprocessConfig(color="gray", mean=[255.0], std=[-255.0]), session.inputs[0])
    post = build_postprocessor(
        ClassificationPostprocess(type="classification", top_k=3, labels=ASSETS / "digits" / "labels.txt"),
        session.outputs,
    )
    for digit in range(10):
        tensor, box = pre(read_file(ASSETS / "digits" / "images" / f"digit_{digit}.png"))
        out = post(session.run({session.inputs[0].name: tensor}), box)
        assert out["label"] == str(digit)
        assert len(out["top"]) == 3


def test_replay_lists_images_and_tensors_in_name_order(tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", np.zeros((2, 2), np.float32))
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an input")
    files = list_files(ReplaySource(type="replay", path=tmp_path))
    assert [f.name for f in files] == ["a.png", "b.npy"]
    with pytest.raises(SourceError, match="no image"):
        list_files(ReplaySource(type="replay", path=tmp_path, pattern="*.jpg"))


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("cut.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "unreadable image"),
        ("empty.png", b"", "unreadable image"),
        ("evil.npy", b"\x93NUMPY\x01\x00garbage", "not a readable .npy"),
    ],
)
def test_unreadable_inputs_raise_one_line(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=needle) as info:
        read_file(path)
    assert "\n" not in str(info.value)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"obj\.npy"):
        read_file(path)


def test_replay_skips_bad_files_counts_them_and_stops_after_one_pass(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), "white").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"broken")
    Image.new("L", (4, 4)).save(tmp_path / "c.png")
    frames: list[Frame] = []
    runner = ReplayRunner(
        ReplaySource(type="replay", path=tmp_path, rate_hz=0, loop=False), frames.append, threading.Event()
    )
    runner.run()
    assert [f.origin for f in frames] == ["a.png", "c.png"]
    assert runner.bad_inputs == 1
    assert frames[1].data.shape == (4, 4, 1)


def test_replay_of_only_bad_files_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"broken")
    runner = ReplayRunner(ReplaySource(type="replay", path=tmp_path, rate_hz=0), lambda f: None, threading.Event())
    with pytest.raises(SourceError, match="none of 1 file"):
        runner.run()


def test_replay_loops_until_stopped(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    stop = threading.Event()
    frames: list[Frame] = []

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) == 5:
            stop.set()

    ReplayRunner(ReplaySource(type="replay", path=tmp_path, rate_hz=0, loop=True), emit, stop).run()
    assert len(frames) == 5


def test_tensor_frames_keep_results_in_model_input_pixels() -> None:
    _, box = Preprocessor(FACE_PRE, NHWC)(Frame(np.zeros((128, 128, 3), np.float32), 0.0, "t.npy", is_tensor=True))
    x, y = box.to_source(np.array([3.0, 127.0]), np.array([4.0, 200.0]))
    assert x.tolist() == [3.0, 127.0] and y.tolist() == [4.0, 128.0]  # clipped only at the input's edge


def test_face_boxes_from_a_tensor_frame_match_the_image_path() -> None:
    session = select(FACE_MODEL).load(FACE_MODEL)
    pre = Preprocessor(FACE_PRE, session.inputs[0])
    post = build_postprocessor(DetectionPostprocess(type="ssd", labels=["face"]), session.outputs)
    tensor, _ = pre(read_file(ASSETS / "images" / "astronaut.jpg"))  # (1, 128, 128, 3)
    frame = Frame(tensor[0], 0.0, "astronaut.npy", is_tensor=True)
    again, box = pre(frame)
    (face,) = post(session.run({session.inputs[0].name: again}), box)["detections"]
    # 512 px photo -> 128 px input: the face is a quarter of its image-pixel box
    assert 40 < face["box"][0] < 50 and 65 < face["box"][2] < 74


def test_replay_cache_decodes_each_file_once_and_restamps_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.sources import replay

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    decoded: list[Path] = []
    real_read = replay.read_file

    def counting_read(path: Path) -> Frame:
        decoded.append(path)
        return real_read(path)

    monkeypatch.setattr(replay, "read_file", counting_read)
    stop = threading.Event()
    frames: list[Frame] = []

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) == 4:
            stop.set()

    ReplayRunner(ReplaySource(type="replay", path=tmp_path, rate_hz=0, cache_mb=1), emit, stop).run()
    assert len(decoded) == 1 and len(frames) == 4
    assert frames[3].ts >= frames[0].ts and frames[3].data is frames[0].data


def test_float_input_for_a_quantized_model_is_quantized_with_its_scale_and_zero_point() -> None:
    pre = Preprocessor(PreprocessConfig(), TensorSpec("x", (1, 4), "int8", quantization=(0.5, 10)))
    q, _ = pre(Frame(np.array([1.0, -3.0, 1000.0, -1000.0]), 0.0, "r", is_tensor=True))
    assert q.dtype == np.int8 and q.tolist() == [[12, 4, 127, -128]]  # x / 0.5 + 10, rounded, clipped


def test_a_crop_feeds_only_its_region_and_boxes_stay_in_source_pixels() -> None:
    from agent.config import load_config
    from agent.pipeline import LoadedModel
    from agent.sources.replay import read_file
    from tests.conftest import ASSETS, DEMO_TOML

    cfg = load_config(DEMO_TOML).pipelines[0]
    photo = read_file(ASSETS / "images" / "astronaut.jpg")  # 512x512, her face around (226, 128)

    def cropped_to(crop: list[int] | None) -> LoadedModel:
        return LoadedModel(cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"crop": crop})}))

    found = {}
    for crop in (None, [120, 20, 240, 240], [300, 300, 200, 200]):
        model = cropped_to(crop)
        result = model.infer(photo)
        found[str(crop)] = model.post(result.outputs, result.box)["detections"]
    (whole,), (cropped,) = found["None"], found["[120, 20, 240, 240]"]
    assert np.allclose(whole["box"], cropped["box"], atol=12)  # the same face, in the same source pixels
    assert cropped["box"][0] < 226 and cropped["box"][2] > 226
    assert found["[300, 300, 200, 200]"] == []  # a region without her face
    with pytest.raises(SourceError, match="reaches past"):
        LoadedModel(
            cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"crop": [500, 0, 50, 50]})})
        ).infer(photo)
