"""The learn job (``mesh learn run``): from the review queue's labels to a better version rolling
out, with the controller's identity (it may read the review queue, push and start rollouts).

1. **export** every labelled item of the model (inputs and provenance), and refuse to go on
   with fewer than ``min_labels``;
2. **split** it: about ``held_share`` of its distinct inputs are held back from the trainer to
   calibrate what it makes;
3. **train**: the user's command on the rest (``train``), which writes an ONNX model;
4. **make the candidate** (``candidate``): imported as a node loads it, named and budgeted as
   the version it replaces (the one most of the tier's nodes serve), its threshold
   recalibrated on the reference data plus the held-back labels, through the evidence gate,
   signed;
5. **push** it and **roll it out** over the tier, beginning in shadow: it passes the gates any
   version does.

Nothing is pushed or rolled out unless every step before succeeded; each failure is a typed
error naming the step and why.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.fleet import registry
from mesh.fleet.admin import start_rollout
from mesh.fleet.desired import Selector
from mesh.fleet.signing import SigningKey, load_trusted_keys
from mesh.learn.candidate import Candidate, CandidateSpec, make_candidate
from mesh.learn.export import ReviewReader, export_labelled, split, write_export
from mesh.learn.train import run_training
from mesh.models.bump import next_version
from mesh.models.importer import TIER_ORDER
from mesh.wire import NodeStatus

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LearnSettings:
    """What the job learns, how, and how its result rolls out."""

    model: str
    #: the training command (text or arguments), with ``{data}``, ``{provenance}``, ``{out}``.
    train: str | Sequence[str]
    #: labelled rows of the tier's serving distribution (``x``, ``y``): reference statistics,
    #: calibration and the evidence gate's accuracy. Never given to the trainer.
    reference: Path
    work_dir: Path
    tier: str = "edge"
    #: the top tier's manifest; None: the version the top tier's nodes serve, from the registry.
    upstream: Path | None = None
    #: the version improved on; None: the one most of the tier's nodes serve.
    base: str | None = None
    #: the new version's name; None: the model's next, ``<n>-<tier>-learned``.
    version: str | None = None
    min_labels: int = 300
    held_share: float = 0.25
    max_drop: float = 0.005
    train_timeout_s: float = 600.0
    seed: int = 0
    rollout: bool = True
    shadow: bool = True
    stages: str = "1,10%,50%,100%"
    soak: str | None = None
    gates: tuple[str, ...] = ()
    offline_after_s: float = 10.0


@dataclass(frozen=True)
class LearnResult:
    model: str
    base: str
    version: str
    labels: int
    trained_on: int
    held_back: int
    by_reason: dict[str, int]
    threshold: float
    accuracy: float
    min_accuracy: float
    export: str
    #: the signed manifest pushed (beside its artifact).
    manifest: str
    rollout: str | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def learn(
    js: JetStreamContext,
    review: ReviewReader,
    settings: LearnSettings,
    key: SigningKey,
    trusted_keys: Sequence[str],
    *,
    progress: Progress | None = None,
) -> LearnResult:
    """Run the job once; a typed error (nothing pushed) when a step fails."""
    say = progress or (lambda text: None)
    s = settings
    trusted = load_trusted_keys(list(trusted_keys))
    labelled = await export_labelled(review, s.model)
    if len(labelled) < s.min_labels:
        raise InvalidArgumentError(
            f"{len(labelled)} labelled items of {s.model} with their inputs; the job needs "
            f"{s.min_labels} (label more: mesh review list)"
        )
    beats = await registry.read_heartbeats(js)
    base = s.base or _most_served(beats, s.model, s.tier)
    base_artifact = await registry.fetch(js, s.model, base)
    upstream = s.upstream or await _top_manifest(js, beats, s.model, s.work_dir)
    train_rows, held_rows = split(labelled, s.held_share, s.seed)
    work = s.work_dir
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    export = work / "export.npz"
    note = {"held_back": len(held_rows), "trained_on": len(train_rows)}
    await asyncio.to_thread(write_export, labelled, export, note=note)
    train_set = labelled.take(train_rows)
    data = work / "train.npz"
    provenance = await asyncio.to_thread(write_export, train_set, data)
    say(f"exported {len(labelled)} labels of {s.model}: {len(train_rows)} to train on, "
        f"{len(held_rows)} held back to calibrate")  # fmt: skip
    trained = await run_training(
        s.train, data=data, provenance=provenance, out=work / "model.onnx", cwd=work,
        timeout_s=s.train_timeout_s,
    )  # fmt: skip
    say(f"trained in {trained.seconds:.1f} s")
    version = s.version or await _next_name(js, s.model, s.tier)
    held = labelled.take(held_rows)
    held_xy = (next(iter(held.inputs.values())), held.y) if held.inputs else None
    spec = CandidateSpec(
        s.model, version, base_artifact.manifest, s.reference, upstream, s.max_drop
    )
    candidate: Candidate = await asyncio.to_thread(
        make_candidate, trained.model, spec, held_xy, work / version, key, trusted
    )
    await registry.push(js, candidate.artifact)
    say(
        f"{s.model}@{version} signed and pushed: threshold {candidate.threshold:.4f}, accuracy "
        f"{candidate.accuracy:.4f} on the reference data (its bar {candidate.min_accuracy:.4f})"
    )
    rollout_id = None
    if s.rollout:
        started = await start_rollout(
            js, s.model, version, stages=s.stages, soak=s.soak, gate_terms=s.gates,
            selector=Selector(tier=s.tier), trusted_keys=list(trusted_keys), by="learn job",
            offline_after_s=s.offline_after_s, shadow=s.shadow,
        )  # fmt: skip
        rollout_id = started.id
    return LearnResult(
        model=s.model, base=base, version=version, labels=len(labelled),
        trained_on=len(train_rows), held_back=len(held_rows), by_reason=labelled.by_reason(),
        threshold=candidate.threshold, accuracy=candidate.accuracy,
        min_accuracy=candidate.min_accuracy, export=str(export),
        manifest=str(candidate.manifest), rollout=rollout_id,
        notes=candidate.notes,
    )  # fmt: skip


def _most_served(beats: dict[str, NodeStatus | str], model: str, tier: str) -> str:
    served = Counter(
        b.models[model] for b in beats.values()
        if isinstance(b, NodeStatus) and b.tier == tier and model in b.models
    )  # fmt: skip
    if not served:
        raise NotFoundError(f"no node of tier {tier} serves {model}: nothing to improve on")
    return served.most_common(1)[0][0]


async def _top_manifest(
    js: JetStreamContext, beats: dict[str, NodeStatus | str], model: str, work: Path
) -> Path:
    """The manifest of the version the highest tier serving ``model`` serves, from the
    registry, written into ``work`` beside its artifact (the threshold keeps up with it)."""
    known = [
        b for b in beats.values() if isinstance(b, NodeStatus) and model in b.models
        and b.tier in TIER_ORDER
    ]  # fmt: skip
    if not known:
        raise NotFoundError(f"no node serves {model}: give the top tier's manifest (--upstream)")
    top = max(known, key=lambda b: TIER_ORDER.index(b.tier))
    version = top.models[model]
    if not await registry.has_version(js, model, version):
        raise NotFoundError(
            f"the {top.tier} tier serves {model}@{version}, which is not in the registry: give "
            "its manifest (--upstream)"
        )
    artifact = await registry.fetch(js, model, version)

    def write() -> Path:
        folder = work / "upstream"
        folder.mkdir(parents=True, exist_ok=True)
        manifest = dict(artifact.manifest)
        (folder / str(manifest["artifact"])).write_bytes(artifact.onnx)
        path = folder / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return path

    return await asyncio.to_thread(write)


async def _next_name(js: JetStreamContext, model: str, tier: str) -> str:
    existing = [v.version for v in await registry.list_versions(js) if v.model == model]
    return next_version(f"1-{tier}-learned", existing)


__all__ = ["LearnResult", "LearnSettings", "learn"]
