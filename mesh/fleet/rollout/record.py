"""A rollout as it lives in KV (``schemas/rollout.schema.json``): the record, its states, its
codec and what ``mesh demo --report`` lists of it."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.fleet.desired import Selector, check_token
from mesh.fleet.rollout.plan import Stage

KIND = "rollout"
CONTRACT = 1


class RolloutPhase(StrEnum):
    """Where a rollout is; the values are the record's and every status's words."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    FAILED = "failed"


class StagePhase(StrEnum):
    """Within a running stage: its nodes take the version, then its evidence is gathered."""

    DEPLOYING = "deploying"
    SOAKING = "soaking"


#: a rollout in one of these states owns its model: no other may start.
ACTIVE = (
    RolloutPhase.PENDING,
    RolloutPhase.IN_PROGRESS,
    RolloutPhase.PAUSED,
    RolloutPhase.ROLLING_BACK,
)
FINAL = (
    RolloutPhase.COMPLETED,
    RolloutPhase.ROLLED_BACK,
    RolloutPhase.ABORTED,
    RolloutPhase.FAILED,
)
#: what ``mesh demo --report`` and the status print: how a finished rollout ended.
OUTCOMES = (RolloutPhase.COMPLETED, RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED)


@dataclass(frozen=True)
class StageLog:
    """When a stage started, was reached by its nodes and was judged, and on what figures."""

    started_at: float | None = None
    reached_at: float | None = None
    judged_at: float | None = None
    result: str | None = None
    canary: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    #: labelled accuracy of the version and of the one it replaces, when the stage was judged.
    labels: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rollout:
    """One rollout as it lives in KV (``schemas/rollout.schema.json``)."""

    id: str
    model: str
    version: str
    previous_version: str | None
    selector: Selector
    stages: tuple[Stage, ...]
    #: the nodes the rollout covers, in the order they get the version.
    targets: tuple[str, ...]
    state: RolloutPhase = RolloutPhase.PENDING
    current_stage: int = 0
    phase: StagePhase = StagePhase.DEPLOYING
    created_at: float = 0.0
    updated_at: float = 0.0
    by: str = ""
    log: tuple[StageLog, ...] = ()
    failed_gate: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    outcome: RolloutPhase | None = None
    #: most nodes ever seen serving the version at once during the rollout.
    max_nodes_serving: int = 0
    #: nodes whose telemetry was ignored, and why.
    flagged: dict[str, str] = field(default_factory=dict)
    #: what each target served when the rollout started: a failure returns each node to its
    #: own version (``previous_version`` is the one most of them served).
    previous_versions: dict[str, str] = field(default_factory=dict)
    #: one more at every write of the record (a start after an earlier rollout of the model
    #: included): readers drop a record older than one they have seen for its key.
    generation: int = 0
    #: per target, the most answers it was seen giving callers with the version (answered
    #: there, degraded ones included; escalated ones got the tier above's answer).
    answers_served: dict[str, int] = field(default_factory=dict)
    #: their sum when the rollout was decided (completed, failed a gate, aborted, revoked):
    #: 0 for a version stopped in its shadow stage. None until then.
    answers_served_before_decision: int | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def shadow(self) -> bool:
        """Whether the rollout began with a shadow stage."""
        return bool(self.stages) and self.stages[0].shadow

    @property
    def in_shadow(self) -> bool:
        """Whether the stage running now is a shadow stage."""
        return self.stages[self.current_stage].shadow

    def stage_size(self, index: int) -> int:
        return self.stages[index].size(len(self.targets))

    @property
    def canary_nodes(self) -> int:
        """Nodes of the first stage that serves the version (after a shadow stage, if any)."""
        return self.stage_size(1 if self.shadow and len(self.stages) > 1 else 0)

    def decided(self) -> Rollout:
        """The record as its decision leaves it: the answers the version served so far."""
        if self.answers_served_before_decision is not None:
            return self
        return replace(self, answers_served_before_decision=sum(self.answers_served.values()))


def new_rollout(
    model: str,
    version: str,
    previous_version: str | None,
    selector: Selector,
    stages: Sequence[Stage],
    targets: Sequence[str],
    *,
    now: float,
    by: str = "",
    suspect: Collection[str] = (),
    previous_versions: Mapping[str, str] | None = None,
    generation: int = 1,
) -> Rollout:
    """A pending rollout over ``targets``; the ``suspect`` ones (telemetry that cannot be true)
    come last: a canary is there for its evidence, and a stage of nodes not to be trusted has
    nothing to judge (nor anything to wait for: they are flagged, not waited on)."""
    check_token(model, "model name")
    if not targets:
        raise InvalidArgumentError(f"no node matching the selector serves {model}")
    rollout_id = uuid.uuid4().hex[:12]
    # Spread each stage over sites and names: order the targets by a hash with the rollout id.
    order = sorted(
        targets,
        key=lambda n: (n in suspect, hashlib.sha256(f"{rollout_id}/{n}".encode()).digest()),
    )
    return Rollout(
        id=rollout_id,
        model=model,
        version=version,
        previous_version=previous_version,
        selector=selector,
        stages=tuple(stages),
        targets=tuple(order),
        created_at=now,
        updated_at=now,
        by=by,
        log=tuple(StageLog() for _ in stages),
        previous_versions=dict(previous_versions or {}),
        generation=generation,
    )


def encode_rollout(r: Rollout) -> bytes:
    obj: dict[str, Any] = {
        "v": CONTRACT,
        "kind": KIND,
        "id": r.id,
        "model": r.model,
        "version": r.version,
        "previous_version": r.previous_version,
        "selector": r.selector.as_dict(),
        "stages": [s.as_dict() for s in r.stages],
        "targets": list(r.targets),
        "state": r.state,
        "current_stage": r.current_stage,
        "phase": r.phase,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "by": r.by,
        "log": [{k: v for k, v in asdict(s).items() if v is not None} for s in r.log],
        "failed_gate": r.failed_gate,
        "figures": r.figures,
        "reason": r.reason,
        "outcome": r.outcome,
        "max_nodes_serving": r.max_nodes_serving,
        "canary_nodes": r.canary_nodes,
        "flagged": r.flagged,
        "previous_versions": r.previous_versions,
        "generation": r.generation,
        "shadow": r.shadow,
        "answers_served": r.answers_served,
        "answers_served_before_decision": r.answers_served_before_decision,
    }
    return json.dumps(obj, sort_keys=True).encode()


def decode_rollout(data: bytes) -> Rollout:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise InvalidArgumentError(f"rollout record is not JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise InvalidArgumentError("rollout record must be a map of kind 'rollout'")
    if not isinstance(obj.get("v"), int) or obj["v"] > CONTRACT:
        raise InvalidArgumentError(f"rollout record has contract version {obj.get('v')!r}")
    try:
        sel = obj.get("selector") or {}
        selector = Selector(
            tier=sel.get("tier"),
            site=sel.get("site"),
            node=sel.get("node"),
            labels=dict(sel.get("labels") or {}),
        )
        state = str(obj["state"])
        if state not in (*ACTIVE, *FINAL):
            raise InvalidArgumentError(f"rollout state {state!r} is unknown")
        stages = tuple(Stage.from_dict(s) for s in obj["stages"])
        log = tuple(StageLog(**s) for s in obj.get("log") or [])
        log = log + tuple(StageLog() for _ in range(len(stages) - len(log)))
        outcome = obj.get("outcome")
        return Rollout(
            id=str(obj["id"]),
            model=check_token(str(obj["model"]), "model name"),
            version=str(obj["version"]),
            previous_version=obj.get("previous_version"),
            selector=selector,
            stages=stages,
            targets=tuple(str(n) for n in obj["targets"]),
            state=RolloutPhase(state),
            current_stage=int(obj.get("current_stage", 0)),
            phase=StagePhase(str(obj.get("phase", StagePhase.DEPLOYING))),
            created_at=float(obj.get("created_at", 0.0)),
            updated_at=float(obj.get("updated_at", 0.0)),
            by=str(obj.get("by", "")),
            log=log[: len(stages)],
            failed_gate=obj.get("failed_gate"),
            figures=dict(obj.get("figures") or {}),
            reason=str(obj.get("reason", "")),
            outcome=RolloutPhase(outcome) if outcome is not None else None,
            max_nodes_serving=int(obj.get("max_nodes_serving", 0)),
            flagged=dict(obj.get("flagged") or {}),
            previous_versions={
                str(k): str(v) for k, v in (obj.get("previous_versions") or {}).items()
            },
            generation=int(obj.get("generation", 0)),
            answers_served={str(k): int(v) for k, v in (obj.get("answers_served") or {}).items()},
            answers_served_before_decision=_optional_int(obj.get("answers_served_before_decision")),
        )
    except InvalidArgumentError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"rollout record is malformed: {exc!r}") from None


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a count")
    return int(value)


def report(r: Rollout) -> dict[str, Any]:
    """The rollout as ``mesh demo --report`` lists it."""
    return {
        "model": r.model,
        "version": r.version,
        "outcome": None if r.outcome is None else str(r.outcome),
        "failed_gate": r.failed_gate,
        "max_nodes_serving": r.max_nodes_serving,
        "canary_nodes": r.canary_nodes,
        "shadow": r.shadow,
        "answers_served_before_decision": r.answers_served_before_decision,
    }
