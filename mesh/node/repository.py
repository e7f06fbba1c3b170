"""Where a tier's models come from: today a local directory, tomorrow the fleet's registry.

``load_model`` is the one seam: it reads the manifest, checks the artifact's sha256, loads the
ONNX model, warms it up and returns a ``ServedModel`` ready for the request path.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import onnx

from mesh.errors import InvalidArgumentError
from mesh.models.manifest import ModelManifest, load_manifest, sha256_of, verify_artifact
from mesh.node.fused import FusedOutputs, Unfusable, agrees, flags_non_finite, fuse
from mesh.node.policy import Thresholds
from mesh.node.runtime import ModelRunner, OnnxModel
from mesh.node.served import ServedModel
from mesh.scoring.confidence import ConfidenceKind
from mesh.scoring.drift import DriftMonitor
from mesh.scoring.novelty import NoveltyScorer
from mesh.settings import ModelSettings

log = logging.getLogger("mesh.repository")

#: escalation threshold when neither the config nor the manifest gives one.
DEFAULT_THRESHOLD = 0.9


def _verified_artifact(settings: ModelSettings) -> tuple[ModelManifest | None, Path]:
    """The blocking part, for a worker thread: read the manifest and check the file's hash."""
    manifest: ModelManifest | None = None
    path: Path | None = settings.path
    if settings.manifest is not None:
        manifest = load_manifest(settings.manifest)
        verified = verify_artifact(manifest, settings.manifest)
        if path is not None and path.resolve() != verified:
            # Otherwise the file loaded would not be the one whose hash was checked.
            raise InvalidArgumentError(
                f"model {settings.name}: path {path} is not the artifact {verified} that its "
                "manifest names and hashes; set the manifest alone"
            )
        path = verified
    assert path is not None
    if manifest is None:
        actual = sha256_of(path)
        if settings.sha256 is None or actual != settings.sha256.lower():
            raise InvalidArgumentError(
                f"model {settings.name}: {path} has sha256 {actual}, the settings expect "
                f"{settings.sha256}; the file is corrupt or not the one configured"
            )
    return manifest, path


def _load_scored(
    settings: ModelSettings,
    path: Path,
    scored_output: str,
    kind: ConfidenceKind,
    novelty: NoveltyScorer | None,
) -> tuple[OnnxModel, FusedOutputs | None, bool]:
    """Load and warm the model, with its scores in its graph when that works and gives the
    scores numpy gives (``mesh.node.fused``); otherwise as it is, scored with numpy. The flag says
    whether its fused novelty flags NaN and infinite inputs (``fused.flags_non_finite``)."""
    if settings.fuse_scores:
        try:
            graph, names = fuse(
                onnx.load(str(path), load_external_data=False),
                scored_output=scored_output,
                kind=kind,
                novelty=novelty,
            )
            model = OnnxModel.load(
                path,
                intra_op_threads=settings.intra_op_threads,
                graph=graph.SerializeToString(),
                hidden_outputs=names.names,
            )
            feeds = model.sample_feeds(8)
            problem = agrees(
                feeds,
                model.run(feeds),
                names,
                scored_output=scored_output,
                kind=kind,
                novelty=novelty,
            )
            if problem is None:
                flags = flags_non_finite(model.run, feeds, names)
                model.warmup()
                return model, names, flags
            log.warning(
                "model %s: scores computed in its graph differ from numpy's (%s); scoring it "
                "with numpy",
                settings.name,
                problem,
            )
        except Unfusable as why:
            log.info("model %s: scores stay out of its graph: %s", settings.name, why.message)
        except Exception as exc:
            # ONNX or ONNX Runtime refused the extended graph: the model itself may be fine
            # (its own load below says so), served with numpy scoring.
            log.warning(
                "model %s: could not extend its graph with the scores (%s); scoring it with numpy",
                settings.name,
                exc,
            )
    model = OnnxModel.load(path, intra_op_threads=settings.intra_op_threads)
    model.warmup()
    return model, None, False


async def load_model(settings: ModelSettings, tier: str) -> ServedModel:
    """Load, verify and warm a model for ``tier``; the caller starts and stops its runner."""
    manifest, path = await asyncio.to_thread(_verified_artifact, settings)
    novelty: NoveltyScorer | None = None
    if settings.novelty and manifest is not None and manifest.reference is not None:
        novelty = NoveltyScorer.from_reference(manifest.reference)
    kind = settings.confidence or (
        ConfidenceKind(manifest.confidence) if manifest else ConfidenceKind.MAX_PROB
    )
    scored_output = settings.scored_output or (
        manifest.scored_output if manifest else "probabilities"
    )
    onnx_model, fused, checks_after = await asyncio.to_thread(
        _load_scored, settings, path, scored_output, kind, novelty
    )
    runner = ModelRunner(
        onnx_model,
        max_batch_size=settings.batching.max_batch_size,
        max_delay_ms=settings.batching.max_delay_ms,
        inline_below_us=settings.inline_below_us,
    )
    threshold = settings.threshold
    if threshold is None:
        threshold = (
            manifest.threshold_for(tier, DEFAULT_THRESHOLD) if manifest else DEFAULT_THRESHOLD
        )
    served = ServedModel(
        name=settings.name,
        version=settings.version or (manifest.version if manifest else "1"),
        runner=runner,
        inputs=onnx_model.inputs,
        scored_output=scored_output,
        confidence_kind=kind,
        thresholds=Thresholds(
            confidence=threshold, novelty=novelty.threshold if novelty is not None else None
        ),
        novelty=novelty,
        drift=DriftMonitor.from_reference(manifest.reference)
        if manifest is not None and manifest.reference is not None
        else None,
        max_rows=settings.max_rows,
        max_batch_rows=max(settings.batching.max_batch_size, 1),
        max_request_bytes=settings.max_request_bytes,
        audit_rate=settings.audit_rate,
        fused=fused,
        checks_inputs_after=checks_after,
        classes=tuple(manifest.labels) if manifest is not None else (),
    )
    await asyncio.to_thread(check_scorable, served, onnx_model)
    return served


class ModelConfigError(InvalidArgumentError):
    """A model that cannot be served as configured: found at load, never per request."""


def check_scorable(served: ServedModel, onnx: OnnxModel) -> None:
    """Run the model once on a sample shaped like its inputs and score the result, so that a
    model whose outputs cannot be scored is refused at start with what to change."""
    outputs = {spec.name: spec for spec in onnx.outputs}
    scored = outputs.get(served.scored_output)
    if scored is None:
        maps = [spec.name for spec in onnx.outputs if spec.dtype == "object"]
        hint = (
            f" Output {maps[0]!r} is not a tensor (scikit-learn's ZipMap makes a sequence of "
            "maps): export with skl2onnx's options={id(model): {'zipmap': False}}, then set "
            "scored_output to the probabilities tensor."
            if maps
            else " Set scored_output (or the manifest's scored_output) to the output that holds "
            "the class probabilities."
        )
        raise ModelConfigError(
            f"model {served.name}: no output {served.scored_output!r} to score; its outputs are "
            f"{sorted(outputs)}.{hint}"
        )
    if scored.dtype not in ("float16", "float32", "float64") or len(scored.shape) != 2:
        raise ModelConfigError(
            f"model {served.name}: output {scored.name!r} is {scored.dtype} of rank "
            f"{len(scored.shape)}; the scored output must hold class probabilities, a float "
            "tensor of shape [N, classes]"
        )
    try:
        feeds = onnx.sample_feeds(2)
        served.score(feeds, onnx.run(feeds))
    except Exception as exc:
        raise ModelConfigError(
            f"model {served.name}: a sample run could not be scored ({exc}); the scored output "
            f"{served.scored_output!r} must hold class probabilities, shape [N, classes >= 2]"
        ) from None
