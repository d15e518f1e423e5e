"""Image -> model input tensor: resize (letterbox or stretch), colour order, normalise, layout, dtype."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image

from accelerators.base import TensorSpec, format_shape
from agent.config import PreprocessConfig
from agent.errors import ModelError, SourceError
from agent.sources.base import Frame


@dataclass(frozen=True)
class Letterbox:
    """How model-input pixels map back to source-image pixels: src = (model - pad) / scale."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    src_width: int  # of the region the model saw: the crop, or the whole image
    src_height: int
    crop_x: float = 0.0  # where that region starts in the source image
    crop_y: float = 0.0

    def to_source(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx = np.clip((x - self.pad_x) / self.scale_x, 0, self.src_width)
        sy = np.clip((y - self.pad_y) / self.scale_y, 0, self.src_height)
        return sx + self.crop_x, sy + self.crop_y


class Preprocessor:
    """Built once per model input; ``__call__`` runs per frame in the inference thread."""

    def __init__(self, cfg: PreprocessConfig, spec: TensorSpec) -> None:
        self.cfg = cfg
        self.spec = spec
        shape = spec.shape
        self.dtype = np.dtype(spec.dtype)
        self.batch_shape = tuple(1 if d is None else d for d in shape)
        self.images = len(shape) == 4
        if not self.images:  # audio windows, sensor readings: tensors only
            self.width = self.height = 0
            return
        if len(shape) != 4:
            raise ModelError(
                f"model input {spec.name!r} has shape {format_shape(shape)}; image pre-processing needs "
                "a 4-D (batch, height, width, channels) or (batch, channels, height, width) input"
            )
        layout = cfg.layout
        if layout == "auto":
            layout = "nchw" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "nhwc"
        self.layout = layout
        h, w, c = (shape[2], shape[3], shape[1]) if layout == "nchw" else (shape[1], shape[2], shape[3])
        if h is None or w is None:
            raise ModelError(f"model input {spec.name!r} has a dynamic height or width; pin it in the model")
        self.height, self.width = h, w
        self.channels = c if c is not None else (1 if cfg.color == "gray" else 3)
        if self.channels not in (1, 3):
            raise ModelError(f"model input {spec.name!r} has {self.channels} channels; images give 1 or 3")
        self.mean = np.asarray(cfg.mean, np.float32)
        self.std = np.asarray(cfg.std, np.float32)

    def __call__(self, frame: Frame) -> tuple[np.ndarray, Letterbox]:
        if not frame.is_tensor and not self.images:
            raise SourceError(f"{frame.origin}: model input {self.spec.name!r} {format_shape(self.spec.shape)} takes "
                              "tensors (audio windows, readings), not images")  # fmt: skip
        if frame.is_tensor:
            # a tensor has no source image: results stay in model-input pixels
            return self._tensor(frame), Letterbox(1.0, 1.0, 0.0, 0.0, self.width, self.height)
        return self._image(frame.data)

    def _tensor(self, frame: Frame) -> np.ndarray:
        data = frame.data
        if data.ndim == len(self.batch_shape) - 1:
            data = data[None]
        if tuple(data.shape) != self.batch_shape and data.size == int(np.prod(self.batch_shape)):
            data = data.reshape(self.batch_shape)  # e.g. a (512,) audio window for a (1, 512) input
        if not self._fits(data.shape):
            raise SourceError(
                f"{frame.origin}: tensor of shape {tuple(frame.data.shape)} does not fit model input "
                f"{self.spec.name!r} {format_shape(self.spec.shape)}"
            )
        return self._cast(data)

    def _fits(self, shape: tuple[int, ...]) -> bool:
        """A dynamic dimension takes the frame's size (Silero VAD's input is (batch, samples), both dynamic),
        but a frame is one batch item: recurrent state and post-processing are built for a batch of one."""
        dims = self.spec.shape
        if len(shape) != len(dims) or (len(dims) > 1 and shape[0] != self.batch_shape[0]):
            return False
        return all(d is None or d == n for d, n in zip(dims, shape, strict=True))

    def _cast(self, data: np.ndarray) -> np.ndarray:
        """To the input's dtype; float data for a quantized integer input is quantized with its scale and
        zero point (q = x / scale + zero_point, rounded and clipped to the dtype's range)."""
        quant = self.spec.quantization
        if quant is not None and self.dtype.kind in "iu" and data.dtype.kind == "f":
            scale, zero = quant
            info = np.iinfo(self.dtype)
            data = np.clip(np.rint(data / scale + zero), info.min, info.max)
        return np.ascontiguousarray(data, dtype=self.dtype)

    def _image(self, pixels: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        crop = self.cfg.crop
        if crop is not None:
            x, y, w, h = crop
            if x + w > pixels.shape[1] or y + h > pixels.shape[0]:
                raise SourceError(f"crop {crop} reaches past the {pixels.shape[1]}x{pixels.shape[0]} image")
            pixels = pixels[y : y + h, x : x + w]  # (h, w, C)
        src_h, src_w = pixels.shape[:2]
        img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        if self.channels == 1 and img.mode != "L":
            img = img.convert("L")
        elif self.channels == 3 and img.mode != "RGB":
            img = img.convert("RGB")
        box = self._fit(img, src_w, src_h)
        arr = np.asarray(box[0], dtype=np.float32)  # (H, W) or (H, W, 3)
        if arr.ndim == 2:
            arr = arr[:, :, None]  # (H, W, 1)
        if self.cfg.color == "bgr" and self.channels == 3:
            arr = arr[:, :, ::-1]
        arr = (arr - self.mean) / self.std
        if self.layout == "nchw":
            arr = arr.transpose(2, 0, 1)  # (C, H, W)
        fitted = box[1] if crop is None else dataclasses.replace(box[1], crop_x=crop[0], crop_y=crop[1])
        return self._cast(arr[None]), fitted

    def _fit(self, img: Image.Image, src_w: int, src_h: int) -> tuple[Image.Image, Letterbox]:
        w, h = self.width, self.height
        mode = self.cfg.resize
        if mode == "none":
            if (src_w, src_h) != (w, h):
                raise SourceError(f"image is {src_w}x{src_h} but the model takes {w}x{h} and resize is 'none'")
            return img, Letterbox(1.0, 1.0, 0.0, 0.0, src_w, src_h)
        if mode == "stretch":
            resized = img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
            return resized, Letterbox(w / src_w, h / src_h, 0.0, 0.0, src_w, src_h)
        scale = min(w / src_w, h / src_h)
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        pad_x, pad_y = (w - new_w) // 2, (h - new_h) // 2
        canvas = Image.new(img.mode, (w, h))  # black padding
        canvas.paste(img.resize((new_w, new_h), Image.Resampling.BILINEAR), (pad_x, pad_y))
        return canvas, Letterbox(new_w / src_w, new_h / src_h, float(pad_x), float(pad_y), src_w, src_h)
