"""Staged rollouts: the plan, the gates and every step, as data and pure functions.

A rollout takes one model version to the nodes matching a selector in stages (a node count or a
cumulative share of those nodes; the last stage is all of them). Each stage:

1. **deploying**: the controller assigns the version to the stage's nodes (``desired_for``) and
   waits until every one of them that is online serves it. A node that refuses it (signature,
   manifest or its device gate) fails the stage at once.
2. **soaking**: a window opens with a snapshot of every target node's evidence (``Window``).
   After ``soak_s`` the stage is judged on the differences since the snapshot: the canary
   nodes (serving the new version) against the baseline (the rollout's other nodes, still on
   the previous version, over the same window) and against any fixed bound (``judge``). Too
   little evidence waits; waiting past ``max_wait_s`` pauses the rollout for a person.
3. a pass moves to the next stage (or completes: the whole selector is assigned the version);
   a failure rolls every node of the rollout back to the previous version and names the gate
   and its figures.

Nodes whose telemetry does not add up are left out of the judgement and listed in ``flagged``.
The controller (``mesh.fleet.controller``) runs ``step`` and writes what it returns; nothing
here does I/O, so every rule is tested with a fake clock (``tests/unit/test_rollout.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.fleet.desired import Selector, check_token
from mesh.observability.metrics import LATENCY_BUCKETS_MS, bucket_quantile
from mesh.wire import EVIDENCE_COUNTERS, VersionEvidence

KIND = "rollout"
CONTRACT = 1
#: a rollout in one of these states owns its model: no other may start.
ACTIVE = ("pending", "in_progress", "paused", "rolling_back")
FINAL = ("completed", "rolled_back", "aborted", "failed")
#: what ``mesh demo --report`` and the status print: how a finished rollout ended.
OUTCOMES = ("completed", "rolled_back", "aborted")
#: a p99 under this is never a regression against the baseline: the latency buckets below it
#: (1, 2, 5 ms) are finer than the noise of a shared machine.
P99_FLOOR_MS = 10.0
#: one-sided 90% for the agreement's Wilson bound.
_Z = 1.2816
#: how long a rollback waits for online nodes to report the previous version before it ends.
ROLLBACK_WAIT_S = 120.0
#: answers a drift score needs before it is compared with the baseline's: a population
#: stability index over a few hundred rows of a version just swapped in is mostly noise.
DRIFT_MIN_REQUESTS = 1000
#: answers a node must have given with a version before its drift counts: the node's window
#: (500 rows by default) is full then. PSI over a window not yet full is biased upwards by
#: about (bins - 1) / rows, so a node just swapped in reads as drifting next to one that has
#: run for a while (0.155 against 0.03 on 500 simulated nodes, same model, same inputs).
DRIFT_NODE_ROWS = 500
#: most nodes listed in ``flagged``.
MAX_FLAGGED = 50


# --- gates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """What a stage must show before the rollout moves on (``schemas/rollout.schema.json``).

    Fixed bounds are optional; the comparisons with the baseline (nodes still on the previous
    version, same window) always apply once both sides have enough evidence."""

    soak_s: float = 30.0
    min_requests: int = 50
    #: answers compared with the tier above before agreement is judged: with 150, a version
    #: agreeing 15 points less than a 0.93 baseline fails (its 90% upper bound is under the
    #: bound) 97% of the time, and one as good as the baseline passes 99.99%.
    min_samples: int = 150
    max_wait_s: float = 600.0
    deploy_timeout_s: float = 300.0
    max_error_rate: float | None = None
    max_degraded_rate: float | None = None
    max_escalation_rate: float | None = None
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_drift: float | None = None
    min_agreement: float | None = None
    max_error_rate_increase: float = 0.01
    max_escalation_rate_increase: float = 0.10
    max_p99_ratio: float = 3.0
    #: off unless declared: a version's drift is scored against its own reference, taken from
    #: its training split, so versions are not alike there (the float edge MLP reads 0.137 on
    #: held-out digits, its int8 build 0.0; the inputs are the same), and a default bound
    #: rolled a good version back on 500 simulated nodes. A fixed ``max_drift`` applies as set.
    max_drift_increase: float | None = None
    max_agreement_drop: float = 0.05

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Gate | None = None) -> Gate:
        """A gate from ``data`` over ``base``; an unknown metric or a bad value is refused."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in known:
                raise InvalidArgumentError(
                    f"gate on unknown metric {name!r}; gates know {', '.join(sorted(known))}"
                )
            values[name] = _gate_value(name, raw)
        return replace(base or cls(), **values)

    @classmethod
    def parse(cls, terms: Iterable[str], base: Gate | None = None) -> Gate:
        """``max_error_rate=0.01``, ``soak_s=30s``, ``min_agreement=0.9``... (``--gate``)."""
        data: dict[str, str] = {}
        for term in terms:
            for part in term.split(","):
                part = part.strip()
                if not part:
                    continue
                name, sep, value = part.partition("=")
                if not sep:
                    raise InvalidArgumentError(f"gate term {part!r} is not metric=value")
                data[name.strip()] = value.strip()
        return cls.from_dict(data, base)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _gate_value(name: str, raw: Any) -> float | int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if name.endswith("_s"):
            return parse_duration(text)
        try:
            raw = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
        except ValueError:
            raise InvalidArgumentError(f"gate {name}={raw!r} is not a number") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise InvalidArgumentError(f"gate {name}={raw!r} is not a finite number")
    if raw < 0:
        raise InvalidArgumentError(f"gate {name}={raw} must not be negative")
    rate = name.endswith(("_rate", "_increase", "_drop")) or name == "min_agreement"
    if rate and raw > 1:
        raise InvalidArgumentError(f"gate {name}={raw} is a share, in [0, 1]")
    if name in ("min_requests", "min_samples"):
        if raw != int(raw):
            raise InvalidArgumentError(f"gate {name}={raw} must be a whole number")
        return int(raw)
    return float(raw)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InvalidArgumentError(f"duration {text!r} is not like 30s, 2m, 500ms")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]


# --- stages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step: a node count, a cumulative share of the targets, or named nodes."""

    name: str
    gate: Gate
    count: int | None = None
    share: float | None = None
    nodes: tuple[str, ...] = ()

    def size(self, total: int) -> int:
        """How many of ``total`` targets serve the version once this stage is reached."""
        if self.share is not None:
            return min(total, max(1, math.ceil(self.share * total - 1e-9)))
        if self.count is not None:
            return min(total, self.count)
        return min(total, len(self.nodes))

    @property
    def is_whole(self) -> bool:
        return self.share is not None and self.share >= 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "gate": self.gate.as_dict()}
        if self.share is not None:
            out["share"] = self.share
        elif self.count is not None:
            out["count"] = self.count
        else:
            out["nodes"] = list(self.nodes)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Stage:
        gate = Gate.from_dict(obj.get("gate") or {})
        share, count, nodes = obj.get("share"), obj.get("count"), obj.get("nodes")
        if sum(x is not None for x in (share, count, nodes)) != 1:
            raise InvalidArgumentError("a stage names one of share, count or nodes")
        return cls(
            name=str(obj.get("name", "")),
            gate=gate,
            share=float(share) if share is not None else None,
            count=int(count) if count is not None else None,
            nodes=tuple(str(n) for n in nodes) if nodes is not None else (),
        )


def parse_stages(text: str, gate: Gate) -> list[Stage]:
    """``1,10%,50%,100%``: a whole number is a node count, a percentage a share of the nodes
    matching the selector; the last stage must be 100% and the sizes must not shrink."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidArgumentError("give the stages, for example --stages 1,10%,50%,100%")
    stages: list[Stage] = []
    last_share = 0.0
    for i, part in enumerate(parts):
        name = "canary" if i == 0 and len(parts) > 1 else f"stage-{i + 1}"
        if i == len(parts) - 1:
            name = "all"
        if part.endswith("%"):
            try:
                share = float(part[:-1]) / 100.0
            except ValueError:
                raise InvalidArgumentError(f"stage {part!r} is not a percentage") from None
            if not 0.0 < share <= 1.0:
                raise InvalidArgumentError(f"stage {part!r} must be in (0%, 100%]")
            if share < last_share:
                raise InvalidArgumentError(f"stage {part!r} is smaller than the one before")
            last_share = share
            stages.append(Stage(name=name, gate=gate, share=share))
        else:
            try:
                count = int(part)
            except ValueError:
                raise InvalidArgumentError(
                    f"stage {part!r} is neither a node count nor a percentage"
                ) from None
            if count < 1:
                raise InvalidArgumentError(f"stage {part!r}: a stage has at least one node")
            stages.append(Stage(name=name, gate=gate, count=count))
    if not stages[-1].is_whole:
        raise InvalidArgumentError(
            f"the stages end at {parts[-1]}, not 100%: a rollout ends with every node matching "
            "its selector (add 100%)"
        )
    return stages


# --- the rollout record ---------------------------------------------------------------------


@dataclass(frozen=True)
class StageLog:
    """When a stage started, was reached by its nodes and was judged, and on what figures."""

    started_at: float | None = None
    reached_at: float | None = None
    judged_at: float | None = None
    result: str | None = None
    canary: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None


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
    state: str = "pending"
    current_stage: int = 0
    #: within a running stage: ``deploying`` (nodes taking the version) or ``soaking``.
    phase: str = "deploying"
    created_at: float = 0.0
    updated_at: float = 0.0
    by: str = ""
    log: tuple[StageLog, ...] = ()
    failed_gate: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    outcome: str | None = None
    #: most nodes ever seen serving the version at once during the rollout.
    max_nodes_serving: int = 0
    #: nodes whose telemetry was ignored, and why.
    flagged: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def stage_size(self, index: int) -> int:
        return self.stages[index].size(len(self.targets))

    @property
    def canary_nodes(self) -> int:
        return self.stage_size(0)


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
        return Rollout(
            id=str(obj["id"]),
            model=check_token(str(obj["model"]), "model name"),
            version=str(obj["version"]),
            previous_version=obj.get("previous_version"),
            selector=selector,
            stages=stages,
            targets=tuple(str(n) for n in obj["targets"]),
            state=state,
            current_stage=int(obj.get("current_stage", 0)),
            phase=str(obj.get("phase", "deploying")),
            created_at=float(obj.get("created_at", 0.0)),
            updated_at=float(obj.get("updated_at", 0.0)),
            by=str(obj.get("by", "")),
            log=log[: len(stages)],
            failed_gate=obj.get("failed_gate"),
            figures=dict(obj.get("figures") or {}),
            reason=str(obj.get("reason", "")),
            outcome=obj.get("outcome"),
            max_nodes_serving=int(obj.get("max_nodes_serving", 0)),
            flagged=dict(obj.get("flagged") or {}),
        )
    except InvalidArgumentError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"rollout record is malformed: {exc!r}") from None


def report(r: Rollout) -> dict[str, Any]:
    """The rollout as ``mesh demo --report`` lists it."""
    return {
        "model": r.model,
        "version": r.version,
        "outcome": r.outcome,
        "failed_gate": r.failed_gate,
        "max_nodes_serving": r.max_nodes_serving,
        "canary_nodes": r.canary_nodes,
    }


# --- desired state a rollout implies --------------------------------------------------------


@dataclass(frozen=True)
class Assignments:
    """The desired state a rollout implies now: the selector's version, and the versions of its
    target nodes that differ from it (the other targets' node keys are removed)."""

    base: str | None
    nodes: dict[str, str]


def desired_for(r: Rollout) -> Assignments:
    """What the controller makes the desired state say, written every tick (idempotent), so a
    new leader finishes what an old one started. A stage's nodes get node keys; the last stage
    (the whole selector) moves the selector's own assignment; the end removes the node keys."""
    if r.state in ("pending", "rolling_back", "rolled_back", "aborted", "failed"):
        return Assignments(r.previous_version, {})
    if r.state == "completed":
        return Assignments(r.version, {})
    stage = r.stages[r.current_stage]
    if stage.is_whole:
        earlier = r.stage_size(r.current_stage - 1) if r.current_stage else 0
        return Assignments(r.version, {n: r.version for n in r.targets[:earlier]})
    size = r.stage_size(r.current_stage)
    return Assignments(r.previous_version, {n: r.version for n in r.targets[:size]})


# --- the fleet as a rollout sees it ---------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """One node's latest heartbeat, as far as one model goes."""

    name: str
    online: bool
    #: the version of the model the node serves, if any.
    serving: str | None = None
    #: why the node refused the rollout's version, if it did.
    rejected: str | None = None
    evidence: VersionEvidence | None = None
    #: why this node's telemetry cannot be trusted (it is ignored and flagged).
    problem: str | None = None


def evidence_problem(e: VersionEvidence, now: float | None = None) -> str | None:
    """Why a version's counters cannot be true, or None."""
    counts = {name: getattr(e, name) for name in EVIDENCE_COUNTERS}
    negative = [k for k, v in counts.items() if v < 0]
    if negative or any(c < 0 for c in e.latency):
        return f"negative counters {negative or ['latency']}"
    if len(e.latency) != len(LATENCY_BUCKETS_MS) + 1:
        return f"{len(e.latency)} latency buckets, not {len(LATENCY_BUCKETS_MS) + 1}"
    for part in ("errors", "escalated", "degraded"):
        if counts[part] > e.requests:
            return f"{part} {counts[part]} > requests {e.requests}"
    if sum(e.latency) > e.requests:
        return f"{sum(e.latency)} latencies > requests {e.requests}"
    if e.agreed > e.compared:
        return f"agreed {e.agreed} > compared {e.compared}"
    if e.compared > e.escalated + e.audits:
        return f"compared {e.compared} > escalated {e.escalated} + audits {e.audits}"
    if e.audit_failures > e.audits:
        return f"audit failures {e.audit_failures} > audits {e.audits}"
    if e.drift is not None and e.drift < 0:
        return f"drift {e.drift} < 0"
    if now is not None and e.since > now + 300:
        return "evidence dated in the future"
    return None


def delta(now: VersionEvidence, then: VersionEvidence | None) -> VersionEvidence | str:
    """What a version did since ``then`` (the window's snapshot); the whole of ``now`` when the
    snapshot is of another version or an earlier start of it; a reason when counters went back."""
    if now.drift is not None and now.requests < DRIFT_NODE_ROWS:
        now = replace(now, drift=None)
    if then is None or then.version != now.version or then.since != now.since:
        return now
    diffs = {name: getattr(now, name) - getattr(then, name) for name in EVIDENCE_COUNTERS}
    latency = tuple(a - b for a, b in zip(now.latency, then.latency, strict=False))
    if any(v < 0 for v in diffs.values()) or any(v < 0 for v in latency):
        return "counters went backwards within one run of the version"
    return replace(now, latency=latency, **diffs)


@dataclass(frozen=True)
class Figures:
    """Evidence of a group of nodes over a window."""

    nodes: int = 0
    requests: int = 0
    errors: int = 0
    escalated: int = 0
    degraded: int = 0
    compared: int = 0
    agreed: int = 0
    audits: int = 0
    latency: tuple[int, ...] = ()
    drift: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.requests if self.requests else None

    @property
    def degraded_rate(self) -> float | None:
        return self.degraded / self.requests if self.requests else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def quantile(self, q: float) -> float | None:
        if not self.latency:
            return None
        return bucket_quantile(self.latency, LATENCY_BUCKETS_MS, q)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "requests": self.requests,
            "errors": self.errors,
            "escalated": self.escalated,
            "degraded": self.degraded,
            "compared": self.compared,
            "agreed": self.agreed,
            "audits": self.audits,
            "latency": list(self.latency),
            "drift": self.drift,
            "error_rate": _round(self.error_rate),
            "escalation_rate": _round(self.escalation_rate),
            "agreement": _round(self.agreement),
            "p99_ms": self.quantile(0.99),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Figures:
        return cls(
            **{f.name: obj[f.name] for f in fields(cls) if f.name in obj and f.name != "latency"},
            latency=tuple(obj.get("latency") or ()),
        )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def aggregate(windows: Iterable[VersionEvidence]) -> Figures:
    items = list(windows)
    if not items:
        return Figures()
    width = len(LATENCY_BUCKETS_MS) + 1
    latency = [0] * width
    for e in items:
        for i, c in enumerate(e.latency[:width]):
            latency[i] += c
    drifts = [e.drift for e in items if e.drift is not None]
    return Figures(
        nodes=len(items),
        requests=sum(e.requests for e in items),
        errors=sum(e.errors for e in items),
        escalated=sum(e.escalated for e in items),
        degraded=sum(e.degraded for e in items),
        compared=sum(e.compared for e in items),
        agreed=sum(e.agreed for e in items),
        audits=sum(e.audits for e in items),
        latency=tuple(latency),
        # the median node's drift: one node's skewed inputs are not the version's doing
        drift=sorted(drifts)[len(drifts) // 2] if drifts else None,
    )


def wilson_upper(agreed: int, total: int, z: float = _Z) -> float:
    """Upper bound of the agreement's one-sided 90% Wilson interval: the best the true
    agreement could plausibly be, given ``agreed`` of ``total``."""
    if total <= 0:
        return 1.0
    p = agreed / total
    denominator = 1 + z * z / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return min(1.0, (centre + spread) / denominator)


def wilson_lower(hits: int, total: int, z: float = _Z) -> float:
    """Lower bound of the one-sided 90% Wilson interval of ``hits`` of ``total``: the least
    the true share could plausibly be. A rate gate fails only when even this is over its
    bound, so one slow or failed request among a few dozen does not roll a version back."""
    if total <= 0:
        return 0.0
    return max(0.0, 1.0 - wilson_upper(total - hits, total, z))


def difference_upper(hits: int, total: int, base_hits: int, base_total: int) -> float:
    """Upper bound of the one-sided 90% interval of a canary's share minus the baseline's
    (Newcombe's hybrid score interval, built from the two Wilson intervals): the most the
    canary could plausibly be ahead. A baseline measured on few samples is uncertain too; a
    canary compared with its point estimate alone failed a good version when a baseline of 16
    answers had agreed on all 16."""
    p, q = hits / total, base_hits / base_total
    return (
        p - q + math.hypot(wilson_upper(hits, total) - p, q - wilson_lower(base_hits, base_total))
    )


def difference_lower(hits: int, total: int, base_hits: int, base_total: int) -> float:
    """Lower bound of the same interval: the least the canary's share could plausibly be over
    the baseline's (the baseline's most over the canary's, negated)."""
    return -difference_upper(base_hits, base_total, hits, total)


def slower_than(latency: Sequence[int], bound_ms: float) -> int:
    """Requests in the latency buckets whose upper edge is over ``bound_ms``: the ones a
    bucket quantile puts over the bound (so the share is over 1% when the p99 is)."""
    edges = (*LATENCY_BUCKETS_MS, math.inf)
    return sum(c for c, edge in zip(latency, edges, strict=False) if edge > bound_ms)


@dataclass(frozen=True)
class Verdict:
    result: str  # pass, fail or wait
    gate: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def judge(gate: Gate, canary: Figures, baseline: Figures | None) -> Verdict:
    """Pass, fail or wait, on the canary's figures against fixed bounds and the baseline's.

    The baseline (when the stage has one) is waited for as the canary is.
    Agreement is judged by the upper bound of its one-sided 90% interval, and error,
    escalation and degraded rates and the shares of requests over a latency bound by the lower
    bound of theirs: a stage fails only when even that bound is on the wrong side, so a handful
    of unlucky samples (one slow request among forty) does not roll back a good version.
    Against the baseline it is the difference of the two shares that is bounded, since the
    baseline's own figure is a sample too. Agreement is not required of a version that never
    asks the tier above (a top tier)."""
    if canary.nodes == 0:
        return Verdict("wait", reason="no node of the stage reports the version yet")
    if canary.requests < gate.min_requests:
        return Verdict(
            "wait", reason=f"{canary.requests} of {gate.min_requests} requests answered so far"
        )
    measurable = canary.escalated + canary.audits > 0
    if measurable and canary.compared < gate.min_samples:
        return Verdict(
            "wait",
            reason=f"{canary.compared} of {gate.min_samples} answers compared upstream so far",
        )
    # Nodes still on the old version are waited for as the canary is: judging without them
    # would judge on fixed bounds alone, and a version confusing two classes passed the demo's
    # canary that way while its one baseline node had fewer compared answers than the canary.
    if baseline is not None and baseline.nodes > 0:
        if baseline.requests < gate.min_requests:
            return Verdict(
                "wait",
                reason=f"baseline: {baseline.requests} of {gate.min_requests} requests so far",
            )
        if measurable and baseline.compared < gate.min_samples:
            return Verdict(
                "wait",
                reason=f"baseline: {baseline.compared} of {gate.min_samples} answers compared "
                "upstream so far",
            )
    base = baseline if baseline is not None and baseline.nodes > 0 else None

    def fail(name: str, value: float | None, bound: float, **more: Any) -> Verdict:
        figures = {"canary": _round(value), "bound": _round(bound), **more}
        if base is not None and "baseline" not in figures:
            figures["baseline_nodes"] = base.nodes
        return Verdict(
            "fail",
            gate=name,
            figures=figures,
            reason=f"{name}: canary {_fmt(value)} against bound {_fmt(bound)}"
            + (f" (baseline {_fmt(more['baseline'])})" if "baseline" in more else ""),
        )

    n = canary.requests

    def over(hits: int, bound: float) -> dict[str, Any] | None:
        """The figures of a rate surely over ``bound`` (its lower bound is), else None."""
        lower = wilson_lower(hits, n)
        return {"count": hits, "requests": n, "lower_90": _round(lower)} if lower > bound else None

    # rates are judged by the least they could plausibly be (see wilson_lower), and against
    # the baseline by the least the difference could plausibly be (see difference_lower)
    for name, hits, fixed, increase, base_hits in (
        ("error_rate", canary.errors, gate.max_error_rate, gate.max_error_rate_increase,
         base.errors if base is not None else 0),
        ("escalation_rate", canary.escalated, gate.max_escalation_rate,
         gate.max_escalation_rate_increase, base.escalated if base is not None else 0),
        ("degraded_rate", canary.degraded, gate.max_degraded_rate, None, 0),
    ):  # fmt: skip
        rate = hits / n if n else 0.0
        if fixed is not None and (more := over(hits, fixed)) is not None:
            return fail(name, rate, fixed, **more)
        if base is not None and increase is not None and n > 0 and base.requests > 0:
            base_rate = base_hits / base.requests
            lower = difference_lower(hits, n, base_hits, base.requests)
            if lower > increase:
                return fail(
                    name,
                    rate,
                    base_rate + increase,
                    baseline=_round(base_rate),
                    count=hits,
                    requests=n,
                    increase_lower_90=_round(lower),
                )
    # a quantile is over a bound when more than its share of requests surely are
    latency_bounds: list[tuple[str, float, float, dict[str, Any]]] = []
    if gate.max_p99_ms is not None:
        latency_bounds.append(("p99_ms", 0.99, gate.max_p99_ms, {}))
    base_p99 = base.quantile(0.99) if base is not None else None
    if base_p99 is not None:
        relative = max(base_p99 * gate.max_p99_ratio, P99_FLOOR_MS)
        latency_bounds.append(("p99_ms", 0.99, relative, {"baseline": base_p99}))
    if gate.max_p95_ms is not None:
        latency_bounds.append(("p95_ms", 0.95, gate.max_p95_ms, {}))
    for name, q, bound, compared_with in latency_bounds:
        if (more := over(slower_than(canary.latency, bound), 1.0 - q)) is not None:
            return fail(name, canary.quantile(q), bound, **compared_with, **more)
    if canary.drift is not None:
        if gate.max_drift is not None and canary.drift > gate.max_drift:
            return fail("drift", canary.drift, gate.max_drift)
        if (
            gate.max_drift_increase is not None
            and base is not None
            and base.drift is not None
            and canary.requests >= DRIFT_MIN_REQUESTS
        ):
            bound = base.drift + gate.max_drift_increase
            if canary.drift > bound:
                return fail("drift", canary.drift, bound, baseline=_round(base.drift))
    if measurable:
        upper = wilson_upper(canary.agreed, canary.compared)
        more = {"samples": canary.compared, "upper_90": _round(upper)}
        if gate.min_agreement is not None and upper < gate.min_agreement:
            return fail("agreement", canary.agreement, gate.min_agreement, **more)
        if base is not None and base.agreement is not None and canary.compared > 0:
            ahead = difference_upper(canary.agreed, canary.compared, base.agreed, base.compared)
            if ahead < -gate.max_agreement_drop:
                return fail(
                    "agreement",
                    canary.agreement,
                    base.agreement - gate.max_agreement_drop,
                    baseline=_round(base.agreement),
                    baseline_samples=base.compared,
                    difference_upper_90=_round(ahead),
                    **more,
                )
    return Verdict("pass", reason="every gate holds")


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4g}"


# --- one step of the controller ------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The evidence window of a stage: when it opened and every target's counters then."""

    rollout: str
    stage: int
    started_at: float
    snapshot: dict[str, VersionEvidence]


def encode_window(w: Window) -> bytes:
    return json.dumps(
        {
            "rollout": w.rollout,
            "stage": w.stage,
            "started_at": w.started_at,
            "snapshot": {
                n: {**asdict(e), "latency": list(e.latency)} for n, e in w.snapshot.items()
            },
        }
    ).encode()


def decode_window(data: bytes) -> Window | None:
    """A stored window, or None when it cannot be read (a new one is opened then)."""
    try:
        obj = json.loads(data)
        return Window(
            rollout=str(obj["rollout"]),
            stage=int(obj["stage"]),
            started_at=float(obj["started_at"]),
            snapshot={
                str(n): VersionEvidence(**{**e, "latency": tuple(e["latency"])})
                for n, e in obj["snapshot"].items()
            },
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    #: a window opened by this step, to store before the rollout.
    window: Window | None = None
    #: what happened, for the log.
    events: tuple[str, ...] = ()


def step(r: Rollout, nodes: Mapping[str, NodeView], window: Window | None, now: float) -> Step:
    """The rollout after one look at the fleet at ``now``."""
    serving = sum(1 for v in nodes.values() if v.online and v.serving == r.version)
    flagged = dict(r.flagged)
    for name in r.targets:
        view = nodes.get(name)
        if view is not None and view.problem is not None and len(flagged) < MAX_FLAGGED:
            flagged[name] = view.problem
    base = replace(r, max_nodes_serving=max(r.max_nodes_serving, serving), flagged=flagged)
    if r.state == "pending":
        log = _set_log(base.log, 0, started_at=now)
        return Step(
            replace(base, state="in_progress", phase="deploying", log=log, updated_at=now),
            events=(
                f"rollout {r.id} of {r.model}@{r.version} started over {len(r.targets)} nodes",
            ),
        )
    if r.state == "in_progress":
        return _step_stage(base, nodes, window, now)
    if r.state == "rolling_back":
        back = [
            n for n in r.targets if (v := nodes.get(n)) is not None and v.online
            and v.serving == r.version
        ]  # fmt: skip
        waited = now - r.updated_at
        if not back or waited > ROLLBACK_WAIT_S:
            outcome = r.outcome or "rolled_back"
            note = f"; {len(back)} online nodes still on {r.version}" if back else ""
            return Step(
                replace(base, state=outcome, outcome=outcome, updated_at=now),
                events=(f"rollout {r.id} ended {outcome}{note}",),
            )
    return Step(base)


def _step_stage(
    r: Rollout, nodes: Mapping[str, NodeView], window: Window | None, now: float
) -> Step:
    i = r.current_stage
    stage = r.stages[i]
    size = r.stage_size(i)
    members = r.targets[:size]
    gate = stage.gate
    refused = {n: v.rejected for n in members if (v := nodes.get(n)) is not None and v.rejected}
    if refused:
        first = next(iter(refused.values()))
        return _fail(
            r,
            now,
            "install",
            {"refused_by": dict(list(refused.items())[:10])},
            f"{len(refused)} node(s) refused {r.version}: {first}",
        )
    log = r.log[i]
    if r.phase == "deploying":
        # A node whose telemetry cannot be trusted is not waited for either (it is flagged).
        online = [
            n for n in members if (v := nodes.get(n)) is not None and v.online and not v.problem
        ]
        missing = [n for n in online if nodes[n].serving != r.version]
        started = log.started_at if log.started_at is not None else now
        if online and not missing:
            opened = _open_window(r, nodes, now)
            logs = _set_log(r.log, i, reached_at=now, started_at=started)
            return Step(
                replace(r, phase="soaking", log=logs, updated_at=now),
                window=opened,
                events=(
                    f"stage {i + 1}/{len(r.stages)} ({stage.name}) reached: {len(online)} of "
                    f"{size} nodes online serve {r.version} after {now - started:.1f}s",
                ),
            )
        if now - started > gate.deploy_timeout_s:
            return _fail(
                r,
                now,
                "deploy",
                {"not_serving": missing[:20], "online": len(online)},
                f"{len(missing)} of {len(online)} online nodes of stage {stage.name} "
                f"did not take {r.version} within {gate.deploy_timeout_s:.0f}s",
            )
        return Step(r)
    # soaking
    if window is None or window.rollout != r.id or window.stage != i:
        return Step(r, window=_open_window(r, nodes, now), events=("evidence window reopened",))
    if now - window.started_at < gate.soak_s:
        return Step(r)
    canary, baseline, flagged = _windows(r, nodes, window, members, now)
    if flagged:
        r = replace(r, flagged={**r.flagged, **dict(list(flagged.items())[:MAX_FLAGGED])})
    if stage.is_whole and i > 0:
        reference = r.log[i - 1].baseline
        baseline = Figures.from_dict(reference) if reference else None
    verdict = judge(gate, canary, baseline)
    if verdict.result == "wait":
        if now - window.started_at > gate.max_wait_s:
            return Step(
                replace(r, state="paused", reason=f"not enough evidence: {verdict.reason}",
                        updated_at=now),
                events=(f"rollout {r.id} paused: {verdict.reason}",),
            )  # fmt: skip
        return Step(r)
    figures_log = _set_log(
        r.log, i, judged_at=now, result=verdict.result, canary=canary.as_dict(),
        baseline=baseline.as_dict() if baseline is not None else None,
    )  # fmt: skip
    r = replace(r, log=figures_log)
    if verdict.result == "fail":
        assert verdict.gate is not None
        return _fail(r, now, verdict.gate, verdict.figures, verdict.reason)
    if i + 1 == len(r.stages):
        return Step(
            replace(r, state="completed", outcome="completed", updated_at=now),
            events=(f"rollout {r.id}: {r.model}@{r.version} completed on {len(r.targets)} nodes",),
        )
    logs = _set_log(r.log, i + 1, started_at=now)
    return Step(
        replace(r, current_stage=i + 1, phase="deploying", log=logs, updated_at=now),
        events=(f"stage {i + 1} ({stage.name}) passed: {verdict.reason}",),
    )


def _windows(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window,
    members: Sequence[str],
    now: float,
) -> tuple[Figures, Figures | None, dict[str, str]]:
    flagged: dict[str, str] = {}
    canary: list[VersionEvidence] = []
    baseline: list[VersionEvidence] = []
    in_stage = set(members)
    for name in r.targets:
        view = nodes.get(name)
        if view is None or not view.online or view.evidence is None or view.problem is not None:
            continue
        if view.serving == r.version and name in in_stage:
            group = canary
        elif view.serving == r.previous_version and name not in in_stage:
            group = baseline
        else:
            continue
        since = delta(view.evidence, window.snapshot.get(name))
        if isinstance(since, str):
            flagged[name] = since
            continue
        group.append(since)
    return aggregate(canary), (aggregate(baseline) if baseline else None), flagged


def _open_window(r: Rollout, nodes: Mapping[str, NodeView], now: float) -> Window:
    return Window(
        rollout=r.id,
        stage=r.current_stage,
        started_at=now,
        snapshot={
            n: v.evidence
            for n in r.targets
            if (v := nodes.get(n)) is not None and v.evidence is not None and v.problem is None
        },
    )


def _fail(r: Rollout, now: float, gate: str, figures: dict[str, Any], reason: str) -> Step:
    return Step(
        replace(r, state="rolling_back", outcome="rolled_back", failed_gate=gate,
                figures=figures, reason=reason, updated_at=now),
        events=(f"rollout {r.id} failed gate {gate}: {reason}; rolling back to "
                f"{r.previous_version}",),
    )  # fmt: skip


def _set_log(log: tuple[StageLog, ...], i: int, **changes: Any) -> tuple[StageLog, ...]:
    items = list(log)
    items[i] = replace(items[i], **changes)
    return tuple(items)


# --- what people ask of a rollout -----------------------------------------------------------


def request(r: Rollout, action: str, now: float, by: str = "") -> Rollout:
    """``pause``, ``resume`` or ``abort``, as the CLI asks; refused when it makes no sense."""
    if action == "pause":
        if r.state not in ("pending", "in_progress"):
            raise InvalidArgumentError(f"rollout {r.id} is {r.state}: only a running one pauses")
        return replace(r, state="paused", reason=f"paused by {by or 'a person'}", updated_at=now)
    if action == "resume":
        if r.state != "paused":
            raise InvalidArgumentError(f"rollout {r.id} is {r.state}, not paused")
        # The stage is deployed and soaked again from the start: what happened while paused
        # is not this stage's evidence.
        stage_log = r.log[r.current_stage]
        state = "in_progress" if stage_log.started_at is not None else "pending"
        logs = _set_log(r.log, r.current_stage, started_at=now) if stage_log.started_at else r.log
        return replace(r, state=state, phase="deploying", log=logs, reason="", updated_at=now)
    if action == "abort":
        if not r.active:
            raise InvalidArgumentError(f"rollout {r.id} already ended {r.state}")
        return replace(
            r,
            state="rolling_back",
            outcome="aborted",
            reason=f"aborted by {by or 'a person'}",
            updated_at=now,
        )
    raise InvalidArgumentError(f"unknown rollout action {action!r}")


def view_of(
    model: str,
    version: str,
    name: str,
    status: Any,
    *,
    now: float,
    offline_after_s: float,
) -> NodeView:
    """A node's heartbeat (a ``wire.NodeStatus``, or why it could not be decoded) as a rollout
    of ``model@version`` sees it."""
    if isinstance(status, str):
        return NodeView(name, online=False, problem=f"unreadable heartbeat: {status[:120]}")
    online = (now - status.time) <= offline_after_s and "stopped" not in status.problems
    serving = status.models.get(model)
    evidence = status.evidence.get(model)
    problem: str | None = None
    if evidence is not None:
        if evidence.version != serving:
            problem = f"evidence is of version {evidence.version}, the node serves {serving}"
        else:
            problem = evidence_problem(evidence, now)
    return NodeView(
        name=name,
        online=online,
        serving=serving,
        rejected=status.rejected.get(f"{model}@{version}"),
        evidence=evidence if problem is None else None,
        problem=problem,
    )
