"""Config models of the extra post-processors (YOLO, segmentation, scalar, voice activity).

They live apart from ``post_extra`` so that ``agent.config`` can put them in its postprocess union without
importing ``agent.sources.postprocess``, which imports ``agent.config`` (a cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.schema import Section


class YoloPostprocess(Section):
    type: Literal["yolo"] = Field(description="YOLOv5/v8-style box outputs: cx, cy, w, h and class scores per row.")
    output: str | None = Field(None, description="Output holding the predictions; default the first.")
    objectness: bool = Field(
        False,
        description="Rows are (cx, cy, w, h, objectness, classes...) as in YOLOv5; false for YOLOv8's "
        "(cx, cy, w, h, classes...). A row's score is objectness times its best class score.",
    )
    transposed: bool | None = Field(
        None,
        description="Output is (1, attributes, boxes) as YOLOv8 exports it; default auto: the shorter axis "
        "holds the attributes.",
    )
    normalized: bool = Field(False, description="Boxes are in 0..1 of the model input instead of its pixels.")
    input_size: tuple[int, int] | None = Field(
        None,
        description="Model input (width, height) in pixels, used only with normalized boxes; default read "
        "back from the letterbox (may be a pixel short when the padding is odd).",
    )
    score_threshold: float = Field(0.25, ge=0, le=1, description="Detections below this score are dropped.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="Non-maximum suppression overlap limit, per class.")
    max_detections: int = Field(100, ge=1, description="At most this many detections per frame, best first.")
    labels: list[str] | Path | None = Field(
        None, description="Class names by class index, or a text file with one per line; default the index."
    )


class SegmentationPostprocess(Section):
    type: Literal["segmentation"] = Field(
        description="Per-pixel class scores (1, H, W, C) / (1, C, H, W), or one foreground probability "
        "(1, H, W) / (1, H, W, 1): area, pixel count and bounding box of each class present."
    )
    output: str | None = Field(None, description="Output holding the scores; default the first.")
    layout: Literal["auto", "nhwc", "nchw"] = Field(
        "auto", description="Layout of a 4-D output; auto takes the shorter of axes 1 and 3 as the classes."
    )
    threshold: float = Field(
        0.5, description="Foreground when a single-channel output is at least this (use 0 for logits)."
    )
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Class indices to report; default every class but background 0 (foreground is 1)."
    )
    labels: list[str] | Path | None = Field(
        None,
        description="Class names by class index, or a text file with one per line; default the index "
        "('foreground' for a single-channel output).",
    )
    input_size: tuple[int, int] | None = Field(
        None,
        description="Model input (width, height) in pixels when the output has a lower resolution; "
        "default the output's own size.",
    )
    mask_png: bool = Field(False, description="Add the class-index mask, resized to the source image, as a base64 PNG.")


class ScalarPostprocess(Section):
    type: Literal["scalar"] = Field(description="Regression outputs: one number, or a list for a vector output.")
    output: str | None = Field(None, description="Output to read; default the first.")
    scale: float = Field(1.0, description="Multiplies the raw value (value = raw * scale + offset).")
    offset: float = Field(0.0, description="Added after scaling.")
    name: str | None = Field(
        None, min_length=1, description="Key in the result; default 'value' for one number, 'values' for a list."
    )


class VadPostprocess(Section):
    type: Literal["vad"] = Field(
        description="Voice activity from a speech probability, with hysteresis; keeps state across windows."
    )
    output: str | None = Field(None, description="Output holding the probability; default the first.")
    start_threshold: float = Field(0.5, ge=0, le=1, description="Speech may start at or above this probability.")
    end_threshold: float = Field(
        0.35, ge=0, le=1, description="Speech may end below this probability; at most start_threshold."
    )
    min_speech_windows: int = Field(
        1, ge=1, description="Consecutive windows at or above start_threshold before speech starts."
    )
    min_silence_windows: int = Field(1, ge=1, description="Consecutive windows below end_threshold before speech ends.")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> VadPostprocess:
        if self.end_threshold > self.start_threshold:
            raise ValueError(
                f"end_threshold {self.end_threshold} is above start_threshold {self.start_threshold}; "
                "speech would flap between the two"
            )
        return self


ExtraPostprocessConfig = YoloPostprocess | SegmentationPostprocess | ScalarPostprocess | VadPostprocess
