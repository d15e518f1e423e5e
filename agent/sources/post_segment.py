"""Segmentation outputs -> per-class area, pixel count and bounding box in source-image pixels (+ mask PNG)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from accelerators.base import TensorSpec, format_shape
from agent.errors import ModelError
from agent.sources.post_extra_settings import SegmentationPostprocess
from agent.sources.postprocess import load_labels
from agent.sources.preprocess import Letterbox


class Segmenter:
    def __init__(self, cfg: SegmentationPostprocess, spec: TensorSpec) -> None:
        self.cfg = cfg
        self.name = spec.name
        self.labels = load_labels(cfg.labels)
        shape = spec.shape
        if len(shape) not in (3, 4) or shape[0] not in (1, None):
            raise ModelError(
                f"model output {spec.name!r} has shape {format_shape(shape)}; segmentation needs (1, H, W, C), "
                "(1, C, H, W), (1, H, W) or (1, H, W, 1)"
            )

    def __call__(self, outputs: Mapping[str, np.ndarray], box: Letterbox) -> dict[str, Any]:
        mask, single = self._class_mask(outputs[self.name])  # (h, w) class indices at output resolution
        full = self._to_source(mask, box)  # (src_h, src_w)
        counts = np.bincount(full.reshape(-1), minlength=2)
        wanted = self.cfg.classes if self.cfg.classes is not None else range(1, len(counts))
        total = float(full.size)
        classes = []
        for c in wanted:
            pixels = int(counts[c]) if 0 <= c < len(counts) else 0
            if pixels == 0:
                continue
            hit = full == c  # (src_h, src_w)
            rows = np.flatnonzero(hit.any(axis=1))
            cols = np.flatnonzero(hit.any(axis=0))
            classes.append(
                {
                    "class_id": int(c),
                    "label": self._label(int(c), single),
                    "pixels": pixels,
                    "area": round(pixels / total, 6),
                    # edges, like detection boxes: a one-pixel region at (x, y) is [x, y, x + 1, y + 1]
                    "box": [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1],
                }
            )
        result: dict[str, Any] = {"classes": classes}
        if self.cfg.mask_png:
            result["mask_png"] = _png(full)
        return result

    def _class_mask(self, raw: np.ndarray) -> tuple[np.ndarray, bool]:
        """Class-index mask (h, w) and whether it came from a single foreground probability."""
        scores = raw[0] if raw.ndim in (3, 4) else raw  # drop the batch axis
        if scores.ndim == 2:
            return (scores >= self.cfg.threshold).astype(np.int64), True  # (h, w)
        if scores.ndim != 3:
            raise ModelError(f"segmentation output {self.name!r} came back with shape {raw.shape}")
        layout = self.cfg.layout
        if layout == "auto":
            layout = "nchw" if scores.shape[0] < scores.shape[2] else "nhwc"
        if layout == "nchw":
            scores = scores.transpose(1, 2, 0)  # (h, w, c)
        if scores.shape[2] == 1:
            return (scores[:, :, 0] >= self.cfg.threshold).astype(np.int64), True
        return scores.argmax(axis=2), False  # (h, w)

    def _to_source(self, mask: np.ndarray, box: Letterbox) -> np.ndarray:
        """Crop the letterbox padding and resize (nearest) to the source image: (src_h, src_w)."""
        out_h, out_w = mask.shape
        in_w, in_h = self.cfg.input_size or (out_w, out_h)
        fx, fy = out_w / in_w, out_h / in_h  # model-input pixels -> output cells
        x0 = int(np.clip(round(box.pad_x * fx), 0, out_w - 1))
        y0 = int(np.clip(round(box.pad_y * fy), 0, out_h - 1))
        x1 = int(np.clip(round((box.pad_x + box.src_width * box.scale_x) * fx), x0 + 1, out_w))
        y1 = int(np.clip(round((box.pad_y + box.src_height * box.scale_y) * fy), y0 + 1, out_h))
        crop = mask[y0:y1, x0:x1]
        # uint8 keeps the PNG small and PIL's nearest resize exact; beyond 256 classes fall back to 32-bit
        img = Image.fromarray(crop.astype(np.uint8)) if crop.max() < 256 else Image.fromarray(crop.astype(np.int32))
        size = (box.src_width, box.src_height)
        resized = img if img.size == size else img.resize(size, Image.Resampling.NEAREST)
        return np.asarray(resized).astype(np.int64)

    def _label(self, index: int, single: bool) -> str:
        if self.labels and index < len(self.labels):
            return self.labels[index]
        return "foreground" if single and index == 1 else str(index)


def _png(mask: np.ndarray) -> str:
    """Base64 PNG of the class-index mask: 8-bit grey when it fits, else 16-bit."""
    dtype = np.uint8 if mask.max(initial=0) < 256 else np.uint16
    buf = io.BytesIO()
    Image.fromarray(mask.astype(dtype)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
