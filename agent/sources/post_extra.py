"""More post-processors: YOLO detections, scalar/regression outputs, voice activity (segmentation: post_segment).

``build_extra`` picks the model output each one reads and checks its shape once, when the pipeline is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from accelerators.base import TensorSpec, format_shape
from agent.errors import ConfigError, ModelError
from agent.sources.post_extra_settings import (
    ExtraPostprocessConfig,
    ScalarPostprocess,
    SegmentationPostprocess,
    VadPostprocess,
    YoloPostprocess,
)
from agent.sources.post_segment import Segmenter
from agent.sources.postprocess import Postprocessor, load_labels, nms
from agent.sources.preprocess import Letterbox

VadEvent = Literal["speech_start", "speech_end"]


class YoloDecoder:
    def __init__(self, cfg: YoloPostprocess, spec: TensorSpec) -> None:
        self.cfg = cfg
        self.name = spec.name
        self.labels = load_labels(cfg.labels)
        shape = spec.shape[1:] if len(spec.shape) == 3 and spec.shape[0] in (1, None) else None
        if shape is None:
            raise ModelError(
                f"model output {spec.name!r} has shape {format_shape(spec.shape)}; YOLO post-processing needs "
                "(1, boxes, attributes) or (1, attributes, boxes)"
            )
        a, b = shape
        attrs: int | None = None  # one dynamic axis with auto layout: decided per frame
        if a is not None and b is not None:
            attrs = a if self._transposed(a, b) else b
        elif cfg.transposed is not None:
            attrs = a if cfg.transposed else b
        need = 6 if cfg.objectness else 5
        if attrs is not None and attrs < need:
            raise ModelError(
                f"model output {spec.name!r} {format_shape(spec.shape)} has {attrs} attributes per box; "
                f"YOLO needs at least {need} (cx, cy, w, h{', objectness' if cfg.objectness else ''}, classes)"
            )

    def _transposed(self, a: int, b: int) -> bool:
        """(attributes, boxes) rather than (boxes, attributes): as configured, else the shorter axis."""
        return self.cfg.transposed if self.cfg.transposed is not None else a < b

    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        raw = outputs[self.name]
        a, b = raw.shape[-2:]
        rows = raw.reshape(a, b)  # drop the batch axis
        if self._transposed(a, b):
            rows = rows.T  # (boxes, attributes): YOLOv8 exports (attributes, boxes)
        rows = rows.astype(np.float32, copy=False)
        first = 5 if self.cfg.objectness else 4
        class_scores = rows[:, first:]  # (boxes, classes)
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), classes]
        if self.cfg.objectness:
            scores = scores * rows[:, 4]
        hit = np.flatnonzero(scores >= self.cfg.score_threshold)
        if hit.size == 0:
            return {"detections": []}
        cx, cy, w, h = (rows[hit, i] for i in range(4))
        if self.cfg.normalized:
            in_w, in_h = self.cfg.input_size or _input_size(box)
            cx, cy, w, h = cx * in_w, cy * in_h, w * in_w, h * in_h
        x1, y1 = box.to_source(cx - w / 2, cy - h / 2)
        x2, y2 = box.to_source(cx + w / 2, cy + h / 2)
        boxes = np.stack([x1, y1, x2, y2], axis=1)  # (k, 4) source pixels
        # class-aware NMS in one pass: shift each class's boxes to their own region so classes never overlap
        shift = (classes[hit] * (max(box.src_width, box.src_height) + 1)).astype(np.float64)[:, None]  # (k, 1)
        keep = nms(boxes + shift, scores[hit], self.cfg.iou_threshold, self.cfg.max_detections)
        detections = []
        for i in keep:
            class_id = int(classes[hit[i]])
            detections.append(
                {
                    "label": self.labels[class_id] if self.labels and class_id < len(self.labels) else str(class_id),
                    "score": round(float(scores[hit[i]]), 4),
                    "box": [round(float(v), 1) for v in boxes[i]],
                    "class_id": class_id,
                }
            )
        return {"detections": detections}


def _input_size(box: Letterbox) -> tuple[float, float]:
    """Model input (width, height) read back from the letterbox: the image's scaled size plus padding both sides."""
    return box.src_width * box.scale_x + 2 * box.pad_x, box.src_height * box.scale_y + 2 * box.pad_y


class ScalarReader:
    def __init__(self, cfg: ScalarPostprocess, spec: TensorSpec) -> None:
        self.cfg = cfg
        self.name = spec.name

    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        values = outputs[self.name].reshape(-1).astype(np.float64) * self.cfg.scale + self.cfg.offset  # (n,)
        if values.size == 1:
            return {self.cfg.name or "value": float(values[0])}
        return {self.cfg.name or "values": [float(v) for v in values]}


class VoiceActivity:
    """Speech on/off with hysteresis over consecutive windows; one instance per pipeline, as it keeps state.

    Speech starts after ``min_speech_windows`` windows in a row at or above ``start_threshold`` and ends after
    ``min_silence_windows`` windows in a row below ``end_threshold``; probabilities between the two thresholds
    break a run without changing the state, so a probability hovering around one threshold cannot flap.
    """

    takes_offset = True  # the pipeline passes each window's offset in the stream (seconds)

    def __init__(self, cfg: VadPostprocess, spec: TensorSpec) -> None:
        self.cfg = cfg
        self.name = spec.name
        if any(d is not None and d > 1 for d in spec.shape):
            raise ModelError(
                f"model output {spec.name!r} has shape {format_shape(spec.shape)}; voice activity needs one "
                "speech probability per window"
            )
        self.reset()

    def reset(self) -> None:
        """Back to silence, e.g. when the audio stream restarts."""
        self.speech = False
        self._run = 0  # consecutive windows pushing towards the other state
        self._run_offset: float | None = None  # offset of the first window of that run

    def __call__(
        self, outputs: Mapping[str, np.ndarray], box: Letterbox, *, offset: float | None = None
    ) -> dict[str, Any]:
        raw = outputs[self.name]
        if raw.size != 1:
            raise ModelError(f"voice activity output {self.name!r} came back with {raw.size} values, not one")
        p = float(raw.reshape(-1)[0])
        if self.speech:
            towards = p < self.cfg.end_threshold
            needed = self.cfg.min_silence_windows
        else:
            towards = p >= self.cfg.start_threshold
            needed = self.cfg.min_speech_windows
        if not towards:
            self._run = 0
        else:
            if self._run == 0:
                self._run_offset = offset
            self._run += 1
        event: VadEvent | None = None
        if self._run >= needed:
            self.speech = not self.speech
            event = "speech_start" if self.speech else "speech_end"
            self._run = 0
        result: dict[str, Any] = {"probability": round(p, 4), "speech": self.speech, "event": event}
        if offset is not None:
            result["offset"] = offset
            if event is not None:
                # where the change began, not where it was confirmed: min_*_windows earlier
                result["event_offset"] = self._run_offset
        return result


def _pick(name: str | None, outputs: tuple[TensorSpec, ...]) -> TensorSpec:
    if not outputs:
        raise ModelError("the model has no outputs to post-process")
    if name is None:
        return outputs[0]
    for spec in outputs:
        if spec.name == name:
            return spec
    raise ConfigError(f"postprocess: model has no output {name!r}; it has {', '.join(o.name for o in outputs)}")


def build_extra(cfg: ExtraPostprocessConfig, outputs: tuple[TensorSpec, ...]) -> Postprocessor:
    spec = _pick(cfg.output, outputs)
    if isinstance(cfg, YoloPostprocess):
        return YoloDecoder(cfg, spec)
    if isinstance(cfg, SegmentationPostprocess):
        return Segmenter(cfg, spec)
    if isinstance(cfg, ScalarPostprocess):
        return ScalarReader(cfg, spec)
    assert isinstance(cfg, VadPostprocess)
    return VoiceActivity(cfg, spec)
