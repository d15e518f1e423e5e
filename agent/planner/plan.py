"""A placement plan: ordered segments of a model's layers, each on one accelerator, with the reasons.

Layers are those of the model's profile (``agent.models.ir``), in their topological order; a segment
is a contiguous range ``[start, stop)`` of that order. Plans are JSON-serialisable and cached per
(model digest, hardware fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Objective = Literal["latency", "throughput"]
PLAN_VERSION = 1


@dataclass(frozen=True)
class Segment:
    accelerator: str
    start: int  # index of its first layer
    stop: int  # one past its last layer
    predicted_ms: float  # compute + dispatch overhead (+ parameters streamed past on-chip memory)
    transfer_ms: float = 0.0  # moving its inputs onto its accelerator from where they were produced
    return_ms: float = 0.0  # the last segment: moving the model's outputs back to the host
    inputs: tuple[str, ...] = ()  # activation tensors it reads that are produced before it (or model inputs)
    outputs: tuple[str, ...] = ()  # activation tensors it produces that later segments or the caller read
    # the cost model's figure where predicted_ms was calibrated to a measurement (agent.runtime.verify)
    estimated_ms: float | None = None

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class Plan:
    model_path: str
    model_digest: str
    fingerprint: str  # hardware (and runtimes) the plan was made for
    objective: Objective
    segments: tuple[Segment, ...]
    predicted_ms: float  # latency: sum of segments and transfers; throughput: the busiest accelerator's stages
    single: dict[str, float | None] = field(
        default_factory=dict
    )  # accelerator -> predicted whole-model ms, None: cannot run it
    reasons: tuple[str, ...] = ()  # why this placement, in words a person reads
    excluded: dict[str, str] = field(default_factory=dict)  # accelerator -> why it was not considered
    created_at: float = 0.0
    # measured at plan time, in interleaved rounds (agent.runtime.verify): median ms of the split plan
    # ("split") and of each accelerator running the whole model; empty where the plan was not verified
    verified: dict[str, float] = field(default_factory=dict)

    @property
    def accelerators(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.accelerator for s in self.segments))

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["version"] = PLAN_VERSION
        data["accelerators"] = list(self.accelerators)
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Plan:
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')!r}, expected {PLAN_VERSION}")
        raw_segments = data["segments"]
        assert isinstance(raw_segments, list)
        segments = tuple(
            Segment(
                accelerator=str(s["accelerator"]),
                start=int(s["start"]),
                stop=int(s["stop"]),
                predicted_ms=float(s["predicted_ms"]),
                transfer_ms=float(s.get("transfer_ms", 0.0)),
                return_ms=float(s.get("return_ms", 0.0)),
                inputs=tuple(s.get("inputs", ())),
                outputs=tuple(s.get("outputs", ())),
                estimated_ms=None if s.get("estimated_ms") is None else float(s["estimated_ms"]),
            )
            for s in raw_segments
        )
        single = data.get("single", {})
        excluded = data.get("excluded", {})
        verified = data.get("verified", {})
        assert isinstance(single, dict) and isinstance(excluded, dict) and isinstance(verified, dict)
        objective = data["objective"]
        if objective not in ("latency", "throughput"):
            raise ValueError(f"unknown objective {objective!r}")
        return cls(
            model_path=str(data["model_path"]),
            model_digest=str(data["model_digest"]),
            fingerprint=str(data["fingerprint"]),
            objective=objective,
            segments=segments,
            predicted_ms=float(data["predicted_ms"]),  # type: ignore[arg-type]
            single={str(k): None if v is None else float(v) for k, v in single.items()},
            reasons=tuple(str(r) for r in data.get("reasons", ())),  # type: ignore[attr-defined]
            excluded={str(k): str(v) for k, v in excluded.items()},
            created_at=float(data.get("created_at", 0.0)),  # type: ignore[arg-type]
            verified={str(k): float(v) for k, v in verified.items()},
        )
