"""Configuration: one TOML file validated by pydantic, with ``EDGE_AGENT_<SECTION>__<FIELD>`` overrides.

Relative paths in a file are resolved against the file's folder. With no file at all the bundled demo
configuration (``agent/demo/demo.toml``) is used, so a fresh install does something visible.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from accelerators.base import BackendConfig
from accelerators.registry import config_models
from agent.errors import ConfigError
from agent.mqtt.outbox import OutboxSettings
from agent.mqtt.security import SECURITY_FILES, load_security
from agent.mqtt.settings import MqttSection
from agent.ota.faults import CRASH_ENV
from agent.ota.settings import OtaSection
from agent.schema import NAME_PATTERN, Section
from agent.sources.audio import MicrophoneSource, WavSource
from agent.sources.http_input import HttpInputSource
from agent.sources.lines import LinesSource, SerialSource
from agent.sources.mqtt_input import MqttInputSource
from agent.sources.post_extra_settings import (
    ScalarPostprocess,
    SegmentationPostprocess,
    VadPostprocess,
    YoloPostprocess,
)
from agent.sources.synthetic import SyntheticSource
from agent.sources.video import CameraSource, VideoSource
from agent.telemetry_settings import TelemetrySection

ENV_PREFIX = "EDGE_AGENT_"
ENV_CONFIG_FILE = "EDGE_AGENT_CONFIG"  # names the file; not a section override
ENV_NOT_OVERRIDES = frozenset({ENV_CONFIG_FILE, CRASH_ENV})  # the OTA fault-injection switch is no setting either
DEFAULT_CONFIG_FILE = Path("/etc/edge-agent/config.toml")
DEMO_CONFIG_FILE = Path(__file__).parent / "demo" / "demo.toml"


def _hostname_id() -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0])[:64].strip("-.")
    return cleaned or "edge-device"


class AgentSection(Section):
    device_id: str = Field(
        default_factory=_hostname_id,
        pattern=NAME_PATTERN,
        description="This device's id in MQTT topics; defaults to the host name.",
    )
    state_dir: Path | None = Field(
        None,
        description="Where the agent keeps state (sequence numbers, later the outbox and models). "
        "Default: $STATE_DIRECTORY under systemd, else /var/lib/edge-agent if writable, "
        "else ~/.local/state/edge-agent.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    stats_interval_s: float = Field(
        60.0, gt=0, description="How often per-pipeline counters (frames, results, drops) are logged."
    )
    shutdown_timeout_s: float = Field(
        5.0, gt=0, le=60, description="On SIGTERM, how long in-flight results may take to be acknowledged."
    )
    status_file: Path | None = Field(
        None,
        description="Where the running agent keeps its state for 'edge-agent status' (pipelines, placement, queues, "
        "outbox, last update), rewritten every status_interval_s. Default: $RUNTIME_DIRECTORY/status.json under "
        "systemd, else status.json in the state folder.",
    )
    status_interval_s: float = Field(2.0, gt=0, le=3600, description="How often the status file is rewritten.")
    inference_stall_s: float = Field(
        60.0,
        gt=0,
        description="An inference (re-planning after a failure included) that has not returned after this long "
        "counts as wedged: the agent stops its systemd watchdog pings, so that systemd restarts the service.",
    )


class ReplaySource(Section):
    type: Literal["replay"] = Field(description="Replay image files (.jpg, .png, ...) or .npy tensors.")
    path: Path = Field(description="A file, or a folder whose matching files are replayed in name order.")
    pattern: str = Field("*", description="Glob for files in the folder, e.g. '*.jpg'.")
    rate_hz: float = Field(1.0, ge=0, description="Frames per second; 0 replays as fast as inference takes them.")
    loop: bool = Field(True, description="Start over after the last file; false stops the pipeline after one pass.")
    cache_mb: float = Field(
        0.0,
        ge=0,
        description="Keep decoded files in memory, up to this many MB, so that later passes of a loop do not "
        "decode them again; 0 (the memory-lean default) decodes every time.",
    )


SingleSource = Annotated[
    ReplaySource
    | LinesSource
    | SerialSource
    | WavSource
    | MicrophoneSource
    | SyntheticSource
    | MqttInputSource
    | HttpInputSource
    | VideoSource
    | CameraSource,
    Field(discriminator="type"),
]


# sources read from files: their paths resolve against the config file, and opening them at start finds what a
# config check can report (a damaged video, a non-WAV file); live inputs (camera, microphone, serial port, MQTT,
# HTTP) depend on the moment, and wait or retry
FILE_SOURCES = (ReplaySource, LinesSource, WavSource, VideoSource)


class MultiSource(Section):
    type: Literal["multi"] = Field(
        description="Several inputs into one model, e.g. two cameras: each runs as a source of its own, their frames "
        "share the pipeline's queue (and its batches, with batch_size > 1), and each result says which input it "
        "came from in source.input."
    )
    sources: list[SingleSource] = Field(min_length=2, description="The inputs, each configured as a source.")
    names: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, description="A name per input, for results' source.input; default <type>-<index>."
    )

    @model_validator(mode="after")
    def _names_match(self) -> MultiSource:
        if self.names and len(self.names) != len(self.sources):
            raise ValueError(f"{len(self.names)} name(s) for {len(self.sources)} sources: give one per source")
        if len(set(self.input_names())) != len(self.sources):
            raise ValueError("names must be unique")
        return self

    def input_names(self) -> list[str]:
        return self.names or [f"{s.type}-{i}" for i, s in enumerate(self.sources)]


SourceConfig = Annotated[SingleSource | MultiSource, Field(discriminator="type")]  # one tagged union of them all


class PreprocessConfig(Section):
    resize: Literal["letterbox", "stretch", "none"] = Field(
        "stretch", description="Fit the image to the model input: keep aspect ratio and pad, or stretch."
    )
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="Channel order the model expects.")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="Subtracted per channel (0..255 scale).")
    std: list[float] = Field(default_factory=lambda: [1.0], description="Divisor per channel after the mean.")
    layout: Literal["auto", "nhwc", "nchw"] = Field("auto", description="Tensor layout; auto reads the model.")
    crop: list[int] | None = Field(
        None,
        description="[x, y, width, height] in source pixels: only this region is fed to the model (before the "
        "resize); results stay in source-image pixels.",
    )

    @field_validator("crop")
    @classmethod
    def _region(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 4 or min(value[:2]) < 0 or min(value[2:]) < 1):
            raise ValueError("give [x, y, width, height] with x, y >= 0 and width, height >= 1")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _one_or_three(cls, value: list[float]) -> list[float]:
        if len(value) not in (1, 3):
            raise ValueError("give one value, or one per channel (three)")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: list[float]) -> list[float]:
        if any(v == 0 for v in value):
            raise ValueError("std must not be 0")
        return value


class AnchorConfig(Section):
    """SSD anchor grid; the defaults are those of the BlazeFace short-range face detector."""

    input_size: int = Field(128, ge=1, description="Model input width and height in pixels.")
    strides: list[int] = Field(
        default_factory=lambda: [8, 16, 16, 16], min_length=1, description="Feature-map stride of each anchor layer."
    )
    anchors_per_layer: int = Field(2, ge=1, description="Anchors per grid cell contributed by each layer.")
    offset: float = Field(0.5, description="Anchor centre offset within a cell.")


class DetectionPostprocess(Section):
    type: Literal["ssd"] = Field(description="SSD-style box regression over an anchor grid.")
    anchors: AnchorConfig = Field(default_factory=AnchorConfig, description="Anchor grid of the model.")
    boxes_output: str | None = Field(None, description="Output holding box regressions; default the first.")
    scores_output: str | None = Field(None, description="Output holding class logits; default the second.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Detections below this score are dropped.")
    iou_threshold: float = Field(0.3, gt=0, le=1, description="Non-maximum suppression overlap limit.")
    max_detections: int = Field(50, ge=1, description="At most this many detections per frame, best first.")
    keypoints: int = Field(6, ge=0, description="Keypoints regressed after each box (x, y pairs).")
    labels: list[str] | Path = Field(
        default_factory=lambda: ["object"], description="Class names, or a text file with one per line."
    )


class ClassificationPostprocess(Section):
    type: Literal["classification"] = Field(description="Top-k labels from a score vector.")
    top_k: int = Field(3, ge=1, le=100, description="How many best classes to report.")
    softmax: bool = Field(False, description="Apply softmax first (for models that output logits).")
    labels: list[str] | Path | None = Field(None, description="Class names, or a text file with one per line.")


class RawPostprocess(Section):
    type: Literal["raw"] = Field(description="Publish the output tensors as nested lists.")


PostprocessConfig = Annotated[
    DetectionPostprocess
    | ClassificationPostprocess
    | RawPostprocess
    | YoloPostprocess
    | SegmentationPostprocess
    | ScalarPostprocess
    | VadPostprocess,
    Field(discriminator="type"),
]


class ModelConfig(Section):
    path: Path = Field(description="Model file: .onnx (onnxruntime) or .tflite (LiteRT).")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="Name in results; default the file stem.")
    version: str = Field("1", min_length=1, description="Version reported in results.")
    backend: str = Field(
        "auto",
        description="An accelerator name (see 'edge-agent doctor') to run the whole model there, or 'auto': plan "
        "the model across the available accelerators by measured cost, and fail over when one fails.",
    )
    accelerators: list[str] = Field(
        default_factory=list, description="With backend = 'auto': only these accelerators; empty: every available one."
    )
    variants: list[Path] = Field(
        default_factory=list,
        description="With backend = 'auto': the same model in other files (e.g. model.tflite beside model.onnx, or "
        "model_edgetpu.tflite); each is planned and the fastest used. Inputs and outputs must have the same names.",
    )
    measure: bool = Field(
        True,
        description="With backend = 'auto': time the model on each candidate accelerator when it is first planned "
        "(seconds; cached per model and hardware) and keep the placement that measures fastest; false: place by "
        "the catalog and calibration figures alone (re-planned by measurement when live latency drifts).",
    )
    objective: Literal["latency", "throughput"] = Field(
        "latency", description="What the plan minimises: one frame's latency, or the slowest pipeline stage."
    )
    input_shapes: dict[str, list[Annotated[int, Field(ge=1)]]] = Field(
        default_factory=dict,
        description="Shapes for inputs with dynamic dimensions, by input name, e.g. {images = [1, 3, 320, 320]}; "
        "other dynamic dimensions are 1.",
    )
    replan_drift: float = Field(
        0.5,
        ge=0,
        description="Plan again when a segment's live median latency leaves predicted x (1 +/- this) over a "
        "window of runs; 0 disables.",
    )
    threads: int = Field(1, ge=1, le=64, description="CPU threads for one inference.")
    state: dict[str, str] = Field(
        default_factory=dict,
        description="For recurrent models: input name -> the output that feeds it at the next inference (e.g. "
        "{state = 'stateN'} for Silero VAD); zeros at the start. The state carries across windows of one source.",
    )
    constants: dict[str, float | int | list[float] | list[int]] = Field(
        default_factory=dict,
        description="Inputs fed the same value at every inference (e.g. {sr = 16000}); the source feeds the one "
        "input left.",
    )
    release: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Follow the OTA release of this name (see [ota]): once one is installed it replaces path "
        "(and its variants, and pre/post-processing where the release sets them); path stays the factory model.",
    )


class PipelineConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Pipeline name; also its result topic level.")
    source: SourceConfig = Field(description="Where the input comes from.")
    model: ModelConfig = Field(description="The model to run and where.")
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig, description="How a sample becomes the model's input tensor."
    )
    postprocess: PostprocessConfig = Field(
        default_factory=lambda: RawPostprocess(type="raw"), description="How outputs become the published result."
    )
    queue_size: int = Field(4, ge=1, le=10_000, description="Frames that may wait for inference.")
    batch_size: int = Field(
        1,
        ge=1,
        le=256,
        description="Infer up to this many queued frames together, as one batch (e.g. from the inputs of a multi "
        "source). Only models whose batch dimension is dynamic take batches; others infer frame by frame.",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="With batch_size > 1: how long a frame may wait for others to fill its batch.",
    )
    snapshot_interval_s: float = Field(
        0.0,
        ge=0,
        description="Publish an annotated JPEG of a frame with detections (retained, on <prefix>/<device_id>/"
        "<pipeline>/snapshot) at most this often; 0: no snapshots.",
    )
    overflow: Literal["auto", "drop_oldest", "drop_newest", "block"] = Field(
        "auto",
        description="When the frame queue is full: drop the oldest frame, drop the new one, or make the source "
        "wait. Drops are counted. auto: block for a replay at rate_hz = 0 (every file is inferred), else drop_oldest "
        "(live input: the freshest frame wins).",
    )

    def frame_overflow(self) -> Literal["drop_oldest", "drop_newest", "block"]:
        if self.overflow != "auto":
            return self.overflow
        if isinstance(self.source, MultiSource):  # inputs that may all wait for inference make the queue wait
            kinds = {_auto_overflow(s) for s in self.source.sources}
            return "block" if kinds == {"block"} else "drop_oldest"
        return _auto_overflow(self.source)

    @property
    def inputs(self) -> list[Any]:
        """The source configs of this pipeline: its one source, or each input of a multi source."""
        return list(self.source.sources) if isinstance(self.source, MultiSource) else [self.source]

    @model_validator(mode="after")
    def _batching_needs_stateless(self) -> PipelineConfig:
        if self.batch_size > 1 and self.model.state:
            raise ValueError(
                "batch_size > 1 with model.state: a recurrent model's state belongs to one stream of windows; "
                "use batch_size = 1"
            )
        if isinstance(self.source, MultiSource) and (self.model.state or self.postprocess.type == "vad"):
            raise ValueError(
                "a multi source with a stateful model or vad postprocess would mix the inputs' streams; give each "
                "input a pipeline of its own"
            )
        return self


def _auto_overflow(src: Any) -> Literal["drop_oldest", "block"]:
    """One input's queue policy by default: block where every frame is meant to be inferred, else drop_oldest."""
    if src.type == "http":  # a program waits for each answer: its requests queue rather than drop
        return "block"
    if src.type in ("serial", "microphone", "mqtt", "camera"):  # live input cannot wait: the freshest window wins
        return "drop_oldest"
    if isinstance(src, VideoSource):
        as_fast = src.rate_hz == 0 or (src.rate_hz is None and not src.realtime)
    else:
        as_fast = not src.realtime if isinstance(src, WavSource) else getattr(src, "rate_hz", 1.0) == 0
    return "block" if as_fast else "drop_oldest"


def _accelerator_config_type() -> Any:
    """One ``[[accelerators]]`` entry: the settings model of the backend type named by ``type``."""
    models = tuple(config_models())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007  (a tuple of types needs Union[])


AcceleratorConfig: Any = _accelerator_config_type()
ACCELERATOR_TYPES = tuple(sorted(m.model_fields["type"].default for m in config_models()))


class Config(Section):
    agent: AgentSection = Field(default_factory=AgentSection, description="The daemon itself.")
    mqtt: MqttSection = Field(default_factory=MqttSection, description="The MQTT broker connection.")
    accelerators: list[AcceleratorConfig] = Field(
        default_factory=list,
        description="Settings per backend type (one entry per type, e.g. type = 'edgetpu'); types not listed "
        f"use their defaults. Types: {', '.join(ACCELERATOR_TYPES)}.",
    )
    pipelines: list[PipelineConfig] = Field(min_length=1, description="What to run: source -> model -> MQTT.")
    ota: OtaSection = Field(default_factory=OtaSection, description="Model updates over HTTPS (signed releases).")
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="The durable queue of results not yet acknowledged by the broker."
    )
    telemetry: TelemetrySection = Field(
        default_factory=TelemetrySection, description="Health messages, Home Assistant discovery, Prometheus."
    )

    @property
    def backend_configs(self) -> tuple[BackendConfig, ...]:
        return tuple(self.accelerators)

    @model_validator(mode="after")
    def _unique_accelerator_types(self) -> Config:
        types = [a.type for a in self.accelerators]
        dupes = sorted({t for t in types if types.count(t) > 1})
        if dupes:
            raise ValueError(f"one [[accelerators]] entry per type; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _unique_pipelines(self) -> Config:
        names = [p.name for p in self.pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pipeline names must be unique; repeated: {', '.join(dupes)}")
        return self


def default_config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The file ``run`` uses without --config: $EDGE_AGENT_CONFIG, else /etc/edge-agent/config.toml if present."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG_FILE):
        return Path(env[ENV_CONFIG_FILE])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None, check_files: bool = True) -> Config:
    """Read, override from the environment, validate and resolve paths. Raises ConfigError (one line)."""
    env = os.environ if env is None else env
    source = path if path is not None else DEMO_CONFIG_FILE
    data = _read_toml(source)
    overridden = apply_env_overrides(data, env)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, overridden)}") from None
    config = _resolve_paths(config, source.resolve().parent)
    if check_files:
        check_config_files(config, source)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Apply EDGE_AGENT_<SECTION>__<FIELD>[__<FIELD>...] in place; list items are addressed by index.

    Values are parsed as JSON when they parse (numbers, booleans, lists), else taken as strings.
    Returns {location: variable name}, so that validation errors can name the variable.
    """
    applied: dict[tuple[str, ...], str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_OVERRIDES:
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"{var}: environment overrides look like EDGE_AGENT_<SECTION>__<FIELD>, e.g. EDGE_AGENT_MQTT__PORT"
            )
        node: Any = data
        for depth, key in enumerate(parts[:-1]):
            node = _step(node, key, var, parts[: depth + 1])
        last = parts[-1]
        value = _parse_env_value(env[var])
        if isinstance(node, list):
            node[_index(node, last, var)] = value
        else:
            node[last] = value
        applied[tuple(parts)] = var
    return applied


def _step(node: Any, key: str, var: str, where: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, var)]
    if not isinstance(node, dict):
        raise ConfigError(f"{var}: {'.'.join(where[:-1])} is not a section")
    child = node.setdefault(key, {})
    if not isinstance(child, dict | list):
        raise ConfigError(f"{var}: {'.'.join(where)} is a value, not a section")
    return child


def _index(items: list[Any], key: str, var: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"{var}: {key!r} is not an index of a list with {len(items)} item(s)")
    return int(key)


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def format_validation_error(exc: ValidationError, overridden: Mapping[tuple[str, ...], str] | None = None) -> str:
    """pydantic's errors as one line: ``mqtt.port: must be <= 65535 (got 70000)``; unknown keys named."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        # discriminated unions add the tag to the location ("source.replay.path"); it only confuses
        tags = {"replay", "ssd", "classification", "raw", *ACCELERATOR_TYPES}
        loc = [x for i, x in enumerate(loc) if not (i > 0 and x in tags)]
        where = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            section = ".".join(loc[:-1]) or "the top level"
            text = f"unknown key {loc[-1]!r} in [{section}]"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            text = f"{where}.type: unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif err["type"] == "missing":
            text = f"{where}: required but missing"
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
            text = f"{where}: {err['msg']}{shown}"
        var = (overridden or {}).get(tuple(x.lower() for x in loc))
        parts.append(f"{text} [from {var}]" if var else text)
    return "; ".join(parts)


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def _resolve_paths(config: Config, base: Path) -> Config:
    pipelines = []
    for p in config.pipelines:
        post = p.postprocess
        labels = getattr(post, "labels", None)
        if isinstance(labels, Path):
            post = post.model_copy(update={"labels": _resolve(labels, base)})
        pipelines.append(
            p.model_copy(
                update={
                    "source": _source_paths(p.source, base),
                    "model": p.model.model_copy(
                        update={
                            "path": _resolve(p.model.path, base),
                            "variants": [_resolve(v, base) for v in p.model.variants],
                        }
                    ),
                    "postprocess": post,
                }
            )
        )
    agent = config.agent
    if agent.state_dir is not None:
        agent = agent.model_copy(update={"state_dir": _resolve(agent.state_dir, base)})
    mqtt = config.mqtt.model_copy(update=_files(config.mqtt, (*SECURITY_FILES, "command_secret_file"), base))
    pipelines = [p.model_copy(update={"source": _source_broker(p.source, mqtt)}) for p in pipelines]
    ota = config.ota
    files = {k: _resolve(v, base) for k in ("ca_file", "client_cert", "client_key") if (v := getattr(ota, k))}
    # a key given as a file (a PEM path) is resolved like every path; base64 key text is left as it is
    keys = [str(_resolve(Path(k), base)) if k.endswith((".pub", ".pem")) or k.startswith(("/", ".", "~")) else k
            for k in ota.keys]  # fmt: skip
    ota = ota.model_copy(update={**files, "keys": keys})
    return config.model_copy(update={"pipelines": pipelines, "agent": agent, "ota": ota, "mqtt": mqtt})


def _files(section: Any, names: tuple[str, ...], base: Path) -> dict[str, Path]:
    """``section``'s file fields among ``names`` that are set, resolved against ``base``."""
    return {name: _resolve(value, base) for name in names if (value := getattr(section, name, None)) is not None}


def _source_paths(source: Any, base: Path) -> Any:
    """A source with its file paths resolved against the config file's folder (each input of a multi source)."""
    if isinstance(source, MultiSource):
        return source.model_copy(update={"sources": [_source_paths(s, base) for s in source.sources]})
    if isinstance(source, FILE_SOURCES):
        return source.model_copy(update={"path": _resolve(source.path, base)})
    if isinstance(source, MqttInputSource):  # its own broker's files; without host it takes [mqtt]'s, resolved too
        return source.model_copy(update=_files(source, SECURITY_FILES, base))
    return source


def _source_broker(source: Any, mqtt: MqttSection) -> Any:
    if isinstance(source, MultiSource):
        return source.model_copy(update={"sources": [_source_broker(s, mqtt) for s in source.sources]})
    if isinstance(source, MqttInputSource):
        return source.model_copy(update=_broker_of(source, mqtt))
    return source


def _broker_of(source: MqttInputSource, mqtt: MqttSection) -> dict[str, Any]:
    """An MQTT input without its own broker reads from the agent's, connected to as the agent is (TLS included)."""
    return source.on_agent_broker(mqtt)


def check_config_files(config: Config, source: Path, sources: bool = False) -> None:
    """Every file the config names exists and is readable: one line naming the first that is not.

    Source files only with ``sources`` (``edge-agent config check``): the daemon lets a pipeline whose input
    file is missing fail on its own, while the others serve.
    """
    for p in config.pipelines:
        where = f"{source}: pipelines.{p.name}"
        if not p.model.path.is_file():
            raise ConfigError(f"{where}.model.path: model file not found: {p.model.path}")
        if not os.access(p.model.path, os.R_OK):
            raise ConfigError(f"{where}.model.path: model file not readable: {p.model.path}")
        for variant in p.model.variants:
            if not variant.is_file():
                raise ConfigError(f"{where}.model.variants: model file not found: {variant}")
        for i, src in enumerate(p.inputs if sources else []):
            at = f"{where}.source.sources[{i}]" if isinstance(p.source, MultiSource) else f"{where}.source"
            if isinstance(src, FILE_SOURCES) and not src.path.exists():
                raise ConfigError(f"{at}.path: no such file or folder: {src.path}")
        labels = getattr(p.postprocess, "labels", None)
        if isinstance(labels, Path) and not labels.is_file():
            raise ConfigError(f"{where}.postprocess.labels: labels file not found: {labels}")


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()


def check_broker_files(config: Config, source: Path) -> None:
    """Load the CA, certificate, key and password files of [mqtt] (and its command secret) and of every MQTT
    input with a broker of its own, as the daemon does when it connects: one line naming the first that fails."""
    from agent.mqtt.commands import load_secret  # the command machinery: only where a check asks for it

    try:
        load_security(config.mqtt, "mqtt")
        if config.mqtt.command_secret_file is not None:
            load_secret(config.mqtt.command_secret_file)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for p in config.pipelines:
        for i, src in enumerate(p.inputs):
            if not isinstance(src, MqttInputSource) or src.host is None:  # without host: [mqtt]'s, loaded above
                continue
            at = f"pipelines.{p.name}.source" + (f".sources[{i}]" if isinstance(p.source, MultiSource) else "")
            try:
                load_security(src, f"mqtt input {src.topic}", src.password_file)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {at}: {exc}") from None
