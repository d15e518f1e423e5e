"""An annotated JPEG of a frame with its detections: what a person looks at to see what the agent saw."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 200, 200))


def annotated_jpeg(pixels: np.ndarray, detections: Sequence[dict[str, Any]], quality: int = 80) -> bytes:
    """``pixels`` (H, W, 3) or (H, W, 1) uint8, boxes [x1, y1, x2, y2] in its pixels, labels and scores drawn."""
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 200))
    labels = sorted({str(d.get("label", "")) for d in detections})
    for det in detections:
        colour = COLOURS[labels.index(str(det.get("label", ""))) % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{det.get('label', '')} {float(det.get('score', 0.0)):.2f}".strip()
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        lift = bottom - top + 2
        draw.rectangle((x1, y1 - lift, x1 + right - left + 4, y1), fill=colour)
        draw.text((x1 + 2, y1 - lift), text, fill=(0, 0, 0))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
