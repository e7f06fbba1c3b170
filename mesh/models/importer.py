"""``mesh models import``: an ONNX classifier into the model repository, manifest written.

What a user would otherwise write by hand (and get wrong): the inputs and outputs read from the
graph, the output that holds class probabilities found (and made, where the export does not give
one as a tensor), the sha256, the reference statistics for novelty and drift, and the tier's
escalation threshold calibrated on labelled data. Then the version is loaded exactly as a node
loads it, sample run and scoring included, so a model that imports is a model a node serves.

Two exports are converted rather than refused, with a note:

- scikit-learn through skl2onnx with its default ZipMap: the probabilities come as a sequence of
  maps, which nothing downstream can batch. The ZipMap node is removed and the tensor it was fed
  becomes the output ``probabilities``; its class labels become the manifest's labels.
- a classifier exporting logits (PyTorch's ``torch.onnx.export`` of a model ending in a Linear
  layer): a Softmax over the classes is appended as the output ``probabilities``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mesh.errors import InvalidArgumentError
from mesh.models.manifest import (
    HardwareProfile,
    ModelManifest,
    QualityTarget,
    ReferenceStats,
    TensorSpec,
    save_manifest,
    sha256_of,
)
from mesh.models.store import ARTIFACT, MANIFEST, ModelRepository
from mesh.node.repository import ModelConfigError
from mesh.node.runtime import OnnxModel
from mesh.topology.subjects import check_token

#: tiers lowest first: a version is calibrated against the newest one of the next tier up.
TIER_ORDER = ("edge", "gateway", "cloud")
PROBABILITIES = "probabilities"
#: threshold a lower tier gets when there is nothing to calibrate it against.
DEFAULT_THRESHOLD = 0.9
PREPROCESSING = "as the exported graph expects: the mesh applies no scaling"
ZIPMAP_FIX = (
    "export with skl2onnx's options={id(model): {'zipmap': False}} (or let mesh models import "
    "convert it)"
)


@dataclass(frozen=True)
class ImportResult:
    manifest_path: Path
    version: int
    scored_output: str
    notes: list[str] = field(default_factory=list)


def import_model(
    onnx_path: Path,
    *,
    name: str,
    tier: str,
    repo: Path,
    labels: list[str] | None = None,
    data: Path | None = None,
    scored_output: str | None = None,
    max_drop: float | None = None,
) -> ImportResult:
    """Add ``onnx_path`` to ``repo`` as the next version of ``name`` for ``tier``.

    ``data`` is an ``.npz`` with ``x`` (sample inputs, for reference statistics) and optionally
    ``y`` (labels, to calibrate the threshold against the next tier's newest version)."""
    try:
        check_token(name, "model name")
        check_token(tier, "tier")
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    notes: list[str] = []
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:
        raise InvalidArgumentError(f"{onnx_path} is not an ONNX model: {exc}") from None
    x, y = _load_data(data)
    zip_labels = _remove_zipmap(proto, notes)
    repository = ModelRepository(repo)
    version = repository.next_version(name)
    folder = repository.version_dir(name, version)
    artifact, scored, label_names, sample = _stage(
        proto, folder, scored_output, x, labels or zip_labels, notes
    )
    model = OnnxModel.load(artifact)
    single_s = _single_row_p99(model, sample[:1] if sample.ndim > 1 else sample)
    top = _is_top(tier)
    manifest = ModelManifest(
        name=name,
        version=str(version),
        tier_hint=tier,
        inputs=[_tensor_spec(t) for t in model.inputs],
        outputs=[_tensor_spec(t) for t in model.outputs],
        labels=label_names,
        preprocessing=PREPROCESSING,
        artifact=ARTIFACT,
        sha256=sha256_of(artifact),
        scored_output=scored,
        confidence="max_prob",
        thresholds={tier: 0.0 if top else DEFAULT_THRESHOLD},
        reference=_reference(model, scored, x) if x is not None else None,
        # A budget with room: three times the p99 measured here, at least 1 ms.
        profile=HardwareProfile(
            latency_p99_ms=round(max(single_s * 3000.0, 1.0), 3),
            memory_mb=round(max(artifact.stat().st_size / 1e6 * 4 + 32.0, 64.0), 1),
        ),
        quality=_quality(model, scored, x, y),
    )
    manifest_path = folder / MANIFEST
    save_manifest(manifest, manifest_path)
    notes.extend(_finish(repository, manifest_path, artifact, name, tier, top, x, y, max_drop))
    return ImportResult(manifest_path, version, scored, notes)


def _stage(
    proto: onnx.ModelProto,
    folder: Path,
    scored_output: str | None,
    x: np.ndarray[Any, Any] | None,
    labels: list[str] | None,
    notes: list[str],
) -> tuple[Path, str, list[str], np.ndarray[Any, Any]]:
    """The artifact written into ``folder`` once it is known to score: its path, the output
    that holds probabilities (a Softmax appended where the export gives scores), the label
    names and the sample rows it was tried on."""
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / ARTIFACT
        onnx.save(proto, str(staged))
        model = OnnxModel.load(staged)
        scored = _scored_output(model, scored_output)
        sample = x[:64] if x is not None else model.sample_feeds(8)[model.inputs[0].name]
        probabilities = _run(model, sample)[scored]
        if not _are_probabilities(probabilities):
            _append_softmax(proto, scored)
            notes.append(
                f"output {scored!r} holds scores, not probabilities (rows do not sum to 1): "
                f"appended a Softmax as output {PROBABILITIES!r}"
            )
            scored = PROBABILITIES
            onnx.save(proto, str(staged))
            model = OnnxModel.load(staged)
        classes = _classes(model, scored, sample)
        label_names = labels or [str(i) for i in range(classes)]
        if len(label_names) != classes:
            raise InvalidArgumentError(
                f"{len(label_names)} labels given for a model of {classes} classes"
            )
        folder.mkdir(parents=True, exist_ok=False)
        artifact = folder / ARTIFACT
        artifact.write_bytes(staged.read_bytes())
    return artifact, scored, label_names, sample


def _finish(
    repository: ModelRepository,
    manifest_path: Path,
    artifact: Path,
    name: str,
    tier: str,
    top: bool,
    x: np.ndarray[Any, Any] | None,
    y: np.ndarray[Any, Any] | None,
    max_drop: float | None,
) -> list[str]:
    """Calibrate below the top tier, then load the version as a node would; a version a node
    would refuse is removed again. Returns what to tell the user."""
    notes: list[str] = []
    folder = manifest_path.parent
    if x is None:
        notes.append("no --data: no reference statistics, so no novelty or drift checks")
    if not top and y is not None:
        notes.extend(_calibrate(repository, manifest_path, tier, x, y, max_drop))
    elif not top:
        notes.append(
            f"no labels (--data with y): threshold {DEFAULT_THRESHOLD} for tier {tier}, "
            "not calibrated"
        )
    try:
        _check_as_a_node_loads_it(name, manifest_path, tier)
    except Exception:
        for path in (manifest_path, artifact):
            path.unlink(missing_ok=True)
        folder.rmdir()
        raise
    return notes


def _load_data(
    data: Path | None,
) -> tuple[np.ndarray[Any, Any] | None, np.ndarray[Any, Any] | None]:
    if data is None:
        return None, None
    try:
        arrays = np.load(data)
        x = np.asarray(arrays["x"])
        y = np.asarray(arrays["y"]).astype(np.int64) if "y" in arrays else None
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgumentError(
            f"{data}: an .npz with an array x (and y) is needed: {exc}"
        ) from None
    if y is not None and len(y) != len(x):
        raise InvalidArgumentError(f"{data}: x has {len(x)} rows but y has {len(y)}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return x, y


def _remove_zipmap(proto: onnx.ModelProto, notes: list[str]) -> list[str] | None:
    """Replace a final ZipMap by the probability tensor it was fed; its class labels."""
    graph = proto.graph
    zipmaps = [node for node in graph.node if node.op_type == "ZipMap"]
    if not zipmaps:
        return None
    if len(zipmaps) > 1:
        raise ModelConfigError(f"the graph has {len(zipmaps)} ZipMap nodes; {ZIPMAP_FIX}")
    zipmap = zipmaps[0]
    outputs = [o for o in graph.output if o.name == zipmap.output[0]]
    if not outputs or any(zipmap.output[0] in node.input for node in graph.node):
        raise ModelConfigError(f"the ZipMap output is used inside the graph; {ZIPMAP_FIX}")
    labels: list[str] = []
    for attribute in zipmap.attribute:
        if attribute.name == "classlabels_int64s":
            labels = [str(v) for v in attribute.ints]
        elif attribute.name == "classlabels_strings":
            labels = [v.decode() for v in attribute.strings]
    source = zipmap.input[0]
    graph.node.remove(zipmap)
    graph.output.remove(outputs[0])
    _rename_tensor(graph, source, PROBABILITIES)
    graph.output.append(
        helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, [None, len(labels)])
    )
    notes.append(
        "the graph ended in scikit-learn's ZipMap (a sequence of maps): removed it, its input "
        f"is the output {PROBABILITIES!r}"
    )
    return labels or None


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    if any(new in (*node.input, *node.output) for node in graph.node):
        raise ModelConfigError(f"the graph already has a tensor named {new!r}; {ZIPMAP_FIX}")
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _append_softmax(proto: onnx.ModelProto, scores: str) -> None:
    graph = proto.graph
    source = next(o for o in graph.output if o.name == scores)
    dims = source.type.tensor_type.shape.dim
    classes = dims[1].dim_value if len(dims) == 2 and dims[1].dim_value else None
    graph.node.append(helper.make_node("Softmax", [scores], [PROBABILITIES], axis=1))
    graph.output.append(
        helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, [None, classes])
    )


def _scored_output(model: OnnxModel, wanted: str | None) -> str:
    float_2d = [
        t.name for t in model.outputs if t.dtype in ("float16", "float32", "float64")
        and len(t.shape) == 2
    ]  # fmt: skip
    names = [t.name for t in model.outputs]
    if wanted is not None:
        if wanted not in float_2d:
            raise ModelConfigError(
                f"--scored-output {wanted!r} is not a float tensor [N, classes]; the outputs "
                f"are {names}"
            )
        return wanted
    for preferred in (PROBABILITIES, "output_probability"):
        if preferred in float_2d:
            return preferred
    if len(float_2d) == 1:
        return float_2d[0]
    if not float_2d:
        raise ModelConfigError(
            f"no output is a float tensor [N, classes] of class probabilities or scores; the "
            f"outputs are {names}"
        )
    raise ModelConfigError(
        f"outputs {float_2d} could each hold the class probabilities: name one with "
        "--scored-output NAME"
    )


def _run(model: OnnxModel, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    name = model.inputs[0].name
    dtype = np.dtype(model.inputs[0].dtype)
    return dict(model.run({name: np.ascontiguousarray(x, dtype=dtype)}))


def _are_probabilities(values: np.ndarray[Any, Any]) -> bool:
    p = np.asarray(values, dtype=np.float64)
    return bool(p.ndim == 2 and np.all(p >= -1e-6) and np.allclose(p.sum(axis=1), 1.0, atol=1e-3))


def _classes(model: OnnxModel, scored: str, sample: np.ndarray[Any, Any]) -> int:
    classes = int(_run(model, sample)[scored].shape[1])
    if classes < 2:
        raise ModelConfigError(f"output {scored!r} has {classes} class; a classifier needs 2+")
    return classes


def _tensor_spec(tensor: Any) -> TensorSpec:
    return TensorSpec(name=tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))


def _single_row_p99(model: OnnxModel, row: np.ndarray[Any, Any]) -> float:
    times = []
    for _ in range(200):
        started = time.perf_counter()
        _run(model, row)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 99))


def _is_top(tier: str) -> bool:
    """Whether ``tier`` answers everything (threshold 0): the cloud, or a tier outside the
    known chain, which has nothing above it to escalate to."""
    return tier == TIER_ORDER[-1] or tier not in TIER_ORDER


def _reference(model: OnnxModel, scored: str, x: np.ndarray[Any, Any]) -> ReferenceStats:
    from mesh.models.reference import reference_stats
    from mesh.scoring.confidence import score as confidence_score
    from mesh.scoring.novelty import NoveltyScorer

    rows = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    probabilities = _run(model, x)[scored]
    confidence = confidence_score(np.asarray(probabilities), "max_prob")
    return reference_stats(rows, confidence, NoveltyScorer.fit(rows))


def _quality(
    model: OnnxModel,
    scored: str,
    x: np.ndarray[Any, Any] | None,
    y: np.ndarray[Any, Any] | None,
) -> QualityTarget:
    if x is None or y is None:
        # Nothing to measure against: the gate cannot refuse this version on accuracy.
        return QualityTarget(min_accuracy=0.0)
    accuracy = float((_run(model, x)[scored].argmax(axis=1) == y).mean())
    return QualityTarget(
        min_accuracy=round(max(accuracy - 0.02, 0.0), 4), reference_accuracy=round(accuracy, 4)
    )


def _calibrate(
    repository: ModelRepository,
    manifest_path: Path,
    tier: str,
    x: np.ndarray[Any, Any] | None,
    y: np.ndarray[Any, Any],
    max_drop: float | None,
) -> list[str]:
    """The tier's threshold against the newest version of the model on the top tier."""
    from mesh.models.calibrate import DEFAULT_MAX_DROP, calibrate, small_set_note

    name = manifest_path.parent.parent.name
    top = repository.latest(name, TIER_ORDER[-1])
    if top is None:
        return [
            f"no {TIER_ORDER[-1]} version of {name} in the repository to calibrate against: "
            f"threshold {DEFAULT_THRESHOLD}; import the {TIER_ORDER[-1]} version first, then "
            "this one again"
        ]
    drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    note = small_set_note(len(y), drop)
    if note is not None:
        # Too few rows to prove the target: keep a usable default rather than "answer nothing".
        return [note.replace("the tier answers nothing locally", f"kept {DEFAULT_THRESHOLD}")]
    assert x is not None
    result = calibrate(manifest_path, [top.manifest_path], x, y, drop)
    chosen = result.tiers[0].chosen
    return [
        f"threshold {chosen.threshold:.4f} for tier {tier}, calibrated on {len(y)} labelled "
        f"rows against {name} v{top.version} ({TIER_ORDER[-1]}): answers "
        f"{chosen.share_local:.0%} locally, cascade accuracy {result.cascade_accuracy:.2%} "
        f"(top alone {result.top_accuracy:.2%})"
    ]


def _check_as_a_node_loads_it(name: str, manifest_path: Path, tier: str) -> None:
    from mesh.node.repository import load_model
    from mesh.settings import ModelSettings

    asyncio.run(load_model(ModelSettings(name=name, manifest=manifest_path), tier))


__all__ = ["ImportResult", "import_model"]
