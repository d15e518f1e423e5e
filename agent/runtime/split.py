"""Cut an ONNX model into one model file per plan segment, so each segment loads on its own accelerator.

A segment file holds the nodes of its layers, the constant-only nodes (Constant, Cast/Dequantize of
weights, ...) those layers read, and the initializers all of them read. Its inputs are the activations
it reads that earlier segments produce (or the model's inputs); its outputs are what later segments or
the caller read. Every boundary tensor is declared with the dtype and shape that shape inference gives
on the model with its dynamic input dimensions pinned as in the profile, so runtimes that compile for
static shapes (OpenVINO, NPUs) get them. The boundaries come from the graph, not from the plan's
``Segment.inputs``: outer-scope names read inside If/Loop bodies are inputs too, and profiles omit them.

Files are cached in ``out_dir``, named by the model digest and the layer range, with a JSON manifest
beside each recording the sha256 of what was written: a later run reuses them when the manifest
matches, without parsing the model. A one-segment plan uses the model file itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from accelerators.errors import ModelLoadError
from accelerators.onnx_file import GiB, load_onnx_checked, tensor_nbytes
from agent.errors import ModelError
from agent.models.ir import ModelProfile
from agent.planner.plan import Segment
from agent.runtime.split_graph import Graph, infer_types, value_info

log = logging.getLogger(__name__)

SPLIT_VERSION = 1  # bump when segment files change meaning, so old cached files are not reused
INLINE_LIMIT = GiB  # segment weights beyond this go to a .data file beside it: protobuf caps a file at 2 GiB


@dataclass(frozen=True)
class SegmentModel:
    """One segment's model file and the tensors crossing its boundary."""

    segment: Segment
    path: Path
    inputs: tuple[str, ...]  # tensors it reads: model inputs or outputs of earlier segments
    outputs: tuple[str, ...]  # tensors it writes that later segments or the caller read
    graph_inputs: tuple[str, ...]  # the whole model's inputs, in declared order (the same on every segment)
    graph_outputs: tuple[str, ...]  # the whole model's outputs, in declared order


def split_onnx(
    model_path: Path,
    profile: ModelProfile,
    segments: Sequence[Segment],
    out_dir: Path,
    *,
    inline_limit: int = INLINE_LIMIT,
) -> list[SegmentModel]:
    """One model file per segment (cached in ``out_dir``); raises ModelError (one line) if the plan and
    the model do not fit together or the model cannot be cut."""
    _check_ranges(model_path, profile, segments)
    graph_inputs = tuple(t.name for t in profile.inputs)
    graph_outputs = tuple(t.name for t in profile.outputs)
    if len(segments) == 1:  # nothing to cut: the runtime loads the original, external data and all
        return [SegmentModel(segments[0], model_path, graph_inputs, graph_outputs, graph_inputs, graph_outputs)]
    key = _cache_key(profile)
    names = [f"{profile.digest[:16]}_{s.start}-{s.stop}_{key[:8]}" for s in segments]
    cached = [_cached(out_dir / name, key, segment) for name, segment in zip(names, segments, strict=True)]
    if all(c is not None for c in cached):
        log.debug("reusing %d cached segment files of %s in %s", len(cached), model_path.name, out_dir)
        return [c for c in cached if c is not None]

    if _sha256(model_path) != profile.digest:
        raise ModelError(f"{model_path}: the file changed since it was profiled; profile and plan it again")
    try:
        types = infer_types(model_path, profile)
        model = load_onnx_checked(model_path, external="all")
    except ModelLoadError as exc:
        raise ModelError(str(exc)) from exc
    graph = Graph(model_path, model.graph, profile.layers)
    cuts = graph.cut([s.layers for s in segments], graph_inputs, graph_outputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: list[SegmentModel] = []
    for segment, name, cut, hit in zip(segments, names, cuts, cached, strict=True):
        if hit is not None:
            result.append(hit)
            continue
        part = SegmentModel(segment, out_dir / f"{name}.onnx", cut.inputs, cut.outputs, graph_inputs, graph_outputs)
        nodes, initializers, sparse = graph.parts(cut)
        try:
            declared = [value_info(model_path, types, n, "input") for n in cut.inputs]
            produced = [value_info(model_path, types, n, "output") for n in cut.outputs]
        except ModelError as exc:
            raise ModelError(f"{exc} (cutting segment [{segment.start}, {segment.stop}))") from None
        inner = [types[n] for n in cut.internal if n in types and types[n].type.HasField("tensor_type")]
        body = onnx.helper.make_graph(
            nodes, name, declared, produced, initializers, value_info=inner, sparse_initializer=sparse
        )
        seg = onnx.ModelProto()
        seg.ir_version = model.ir_version
        seg.opset_import.extend(model.opset_import)
        seg.functions.extend(model.functions)  # model-local functions the nodes may call
        seg.producer_name = "edge-agent split"
        seg.graph.CopyFrom(body)
        for k, v in (("model_digest", profile.digest), ("layers", f"{segment.start}-{segment.stop}")):
            seg.metadata_props.add(key=k, value=v)
        files = _write(seg, part.path, inline_limit)
        _write_manifest(part, key, files)
        result.append(part)
    log.info("split %s into %d segments in %s", model_path.name, len(result), out_dir)
    return result


def _check_ranges(model_path: Path, profile: ModelProfile, segments: Sequence[Segment]) -> None:
    """Segments must cover the profile's layers in order, each at least one layer, without gaps."""
    if profile.format != "onnx" and len(segments) > 1:
        raise ModelError(f"{model_path}: only ONNX models can be split, this profile is {profile.format}")
    if not segments:
        raise ModelError(f"{model_path}: the plan has no segments; plan the model again")
    at = 0
    for segment in segments:
        if segment.start != at or segment.stop <= segment.start:
            raise ModelError(
                f"{model_path}: the plan's segments must be contiguous non-empty layer ranges from 0; got "
                f"{', '.join(f'[{s.start}, {s.stop})' for s in segments)}; plan the model again"
            )
        at = segment.stop
    if at != len(profile.layers):
        raise ModelError(
            f"{model_path}: the plan covers {at} layers, the profile has {len(profile.layers)}; plan the model again"
        )


def _cache_key(profile: ModelProfile) -> str:
    """What a segment file depends on besides its range: the model, its pinned input shapes, this code."""
    shapes = [(t.name, list(t.shape), t.dtype) for t in profile.inputs]
    text = json.dumps([SPLIT_VERSION, profile.digest, shapes], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _cached(stem: Path, key: str, segment: Segment) -> SegmentModel | None:
    """The segment file written earlier for this key, if its manifest matches and its files are intact."""
    manifest = stem.with_suffix(".json")
    try:
        data = json.loads(manifest.read_text())
        if data.get("key") != key:
            return None
        for name, digest in data["files"].items():
            if Path(name).name != name or _sha256(stem.parent / name) != digest:
                return None
        return SegmentModel(
            segment,
            stem.with_suffix(".onnx"),
            tuple(map(str, data["inputs"])),
            tuple(map(str, data["outputs"])),
            tuple(map(str, data["graph_inputs"])),
            tuple(map(str, data["graph_outputs"])),
        )
    except (ModelError, OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, partial, foreign
        return None


def _write(model: onnx.ModelProto, path: Path, inline_limit: int) -> dict[str, str]:
    """Write ``model`` to ``path`` (atomically for the .onnx); return file name -> sha256 of what was written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    weights = sum(tensor_nbytes(t) for t in _tensors(model.graph))
    files: dict[str, str] = {}
    try:
        if weights <= inline_limit:
            data = model.SerializeToString()
            tmp.write_bytes(data)
        else:  # the data file is named after the final .onnx: the path recorded in the graph must not change
            location = path.with_suffix(".data").name
            (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
            onnx.save_model(
                model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                size_threshold=1024,
            )  # fmt: skip
            files[location] = _sha256(path.parent / location)
            data = tmp.read_bytes()
        tmp.replace(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot write the segment model: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    files[path.name] = hashlib.sha256(data).hexdigest()
    return files


def _write_manifest(part: SegmentModel, key: str, files: dict[str, str]) -> None:
    """Written last: a segment without a valid manifest is rebuilt, so a crash mid-write costs a rebuild."""
    manifest = part.path.with_suffix(".json")
    data = {
        "key": key,
        "files": files,
        "inputs": list(part.inputs),
        "outputs": list(part.outputs),
        "graph_inputs": list(part.graph_inputs),
        "graph_outputs": list(part.graph_outputs),
    }
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(manifest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{manifest}: cannot write the segment manifest: {exc.strerror or exc}") from exc


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    return digest.hexdigest()
