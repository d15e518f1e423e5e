"""Model outputs -> results that mean something: detections in image pixels, top-k labels, raw tensors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from accelerators.base import TensorSpec
from agent.config import (
    AnchorConfig,
    ClassificationPostprocess,
    DetectionPostprocess,
    PostprocessConfig,
    RawPostprocess,
)
from agent.errors import ConfigError, ModelError
from agent.sources.preprocess import Letterbox


class Postprocessor(Protocol):
    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]: ...


def load_labels(labels: list[str] | Path | None) -> list[str] | None:
    if labels is None or isinstance(labels, list):
        return labels
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{labels}: cannot read labels file ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def ssd_anchors(cfg: AnchorConfig) -> np.ndarray:
    """Anchor centres (N, 2) in [0, 1], layer by layer, with consecutive layers of one stride merged.

    For BlazeFace short-range (strides 8, 16, 16, 16; 2 anchors each; 128 px) this gives 16*16*2 + 8*8*6 = 896.
    """
    centres = []
    i = 0
    strides = cfg.strides
    while i < len(strides):
        stride = strides[i]
        same = 0
        while i < len(strides) and strides[i] == stride:
            same += 1
            i += 1
        cells = int(np.ceil(cfg.input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + cfg.offset) / cells, (ys + cfg.offset) / cells], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, same * cfg.anchors_per_layer, axis=0))
    return np.concatenate(centres).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression over (N, 4) x1, y1, x2, y2 boxes; indices kept, best first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class SsdDecoder:
    def __init__(self, cfg: DetectionPostprocess, outputs: tuple[TensorSpec, ...]) -> None:
        self.cfg = cfg
        self.anchors = ssd_anchors(cfg.anchors)  # (N, 2)
        self.labels = load_labels(cfg.labels) or ["object"]
        names = [o.name for o in outputs]
        if len(names) < 2 and (cfg.boxes_output is None or cfg.scores_output is None):
            raise ModelError(f"SSD post-processing needs a boxes and a scores output; the model has {names}")
        self.boxes_name = cfg.boxes_output or names[0]
        self.scores_name = cfg.scores_output or names[1]
        for name in (self.boxes_name, self.scores_name):
            if name not in names:
                raise ConfigError(f"postprocess: model has no output {name!r}; it has {', '.join(names)}")

    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        raw = outputs[self.boxes_name].reshape(len(self.anchors), -1)  # (896, 16)
        logits = outputs[self.scores_name].reshape(len(self.anchors), -1)  # (896, classes)
        size = float(self.cfg.anchors.input_size)
        scores_all = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
        classes = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(len(classes)), classes]
        hit = np.flatnonzero(scores >= self.cfg.score_threshold)
        if hit.size == 0:
            return {"detections": []}
        anchors = self.anchors[hit] * size  # (k, 2) centres in model pixels
        cx = raw[hit, 0] + anchors[:, 0]
        cy = raw[hit, 1] + anchors[:, 1]
        half_w, half_h = raw[hit, 2] / 2, raw[hit, 3] / 2
        x1, y1 = box.to_source(cx - half_w, cy - half_h)
        x2, y2 = box.to_source(cx + half_w, cy + half_h)
        boxes = np.stack([x1, y1, x2, y2], axis=1)  # (k, 4) source pixels
        keep = nms(boxes, scores[hit], self.cfg.iou_threshold, self.cfg.max_detections)
        detections = []
        for i in keep:
            det: dict[str, Any] = {
                "label": self._label(int(classes[hit[i]])),
                "score": round(float(scores[hit[i]]), 4),
                "box": [round(float(v), 1) for v in boxes[i]],
            }
            if self.cfg.keypoints:
                kp = raw[hit[i], 4 : 4 + 2 * self.cfg.keypoints].reshape(-1, 2) + anchors[i]
                kx, ky = box.to_source(kp[:, 0], kp[:, 1])
                det["keypoints"] = [[round(float(a), 1), round(float(b), 1)] for a, b in zip(kx, ky, strict=True)]
            detections.append(det)
        return {"detections": detections}

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


class TopK:
    def __init__(self, cfg: ClassificationPostprocess, outputs: tuple[TensorSpec, ...]) -> None:
        self.cfg = cfg
        self.labels = load_labels(cfg.labels)
        self.output = outputs[0].name

    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        scores = outputs[self.output].reshape(-1).astype(np.float64)  # (classes,)
        if self.cfg.softmax:
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        top = np.argsort(-scores)[: self.cfg.top_k]
        ranked = [
            {
                "label": self.labels[i] if self.labels and i < len(self.labels) else str(i),
                "index": int(i),
                "score": round(float(scores[i]), 4),
            }
            for i in top
        ]
        return {"label": ranked[0]["label"], "top": ranked}


class Raw:
    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


def build_postprocessor(cfg: PostprocessConfig, outputs: tuple[TensorSpec, ...]) -> Postprocessor:
    if isinstance(cfg, DetectionPostprocess):
        return SsdDecoder(cfg, outputs)
    if isinstance(cfg, ClassificationPostprocess):
        return TopK(cfg, outputs)
    if isinstance(cfg, RawPostprocess):
        return Raw()
    from agent.sources.post_extra import build_extra  # YOLO, segmentation, scalar, voice activity

    return build_extra(cfg, outputs)
