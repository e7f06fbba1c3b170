"""The fleet as a rollout sees it: each node's view of one model, whether its counters can be
true, what a version did over a stage's evidence window, and the figures of a group of nodes,
each node's share bounded by what the tier above saw (``witness``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mesh.fleet.rollout.record import Rollout
from mesh.fleet.rollout.statistics import rounded
from mesh.fleet.rollout.witness import Witness, answered_since, bound
from mesh.observability.metrics import LATENCY_BUCKETS_MS, bucket_quantile
from mesh.wire import EVIDENCE_COUNTERS, SHADOW_COUNTERS, ShadowEvidence, VersionEvidence
from mesh.wire.records import EvidenceCounters, evidence_to_map
from mesh.wire.shadow import shadow_to_map

#: answers a node must have given with a version before its drift counts: the node's window
#: (500 rows by default) is full then. PSI over a window not yet full is biased upwards by
#: about (bins - 1) / rows, so a node just swapped in reads as drifting next to one that has
#: run for a while (0.155 against 0.03 on 500 simulated nodes, same model, same inputs).
DRIFT_NODE_ROWS = 500
#: the counters a stage's figures record: audit failures are summed but no gate judges them,
#: and stored rollouts keep the figures they were written with.
RECORDED_COUNTERS = tuple(name for name in EVIDENCE_COUNTERS if name != "audit_failures")
#: most nodes a stage's figures name as bounded.
MAX_BOUNDED = 20


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
    #: what the node answered for the tier below, for this model (None: it does not count).
    witness: Witness | None = None
    #: the version it runs in shadow beside the served one, and what that did.
    shadow: ShadowEvidence | None = None

    @property
    def shadowing(self) -> str | None:
        return None if self.shadow is None else self.shadow.version

    @property
    def answers_served(self) -> int:
        """Answers the served version gave callers here (escalated ones were the tier
        above's), as far as its running totals say."""
        e = self.evidence
        if e is None:
            return 0
        return max(0, e.requests - e.errors - e.escalated + e.degraded)


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
    if e.compared > e.requests:
        return f"compared {e.compared} > requests {e.requests}"
    if e.compared > e.escalated + e.audits:
        return f"compared {e.compared} > escalated {e.escalated} + audits {e.audits}"
    if e.escalated + e.audits > e.requests:
        return f"escalated {e.escalated} + audits {e.audits} > requests {e.requests}"
    if e.audit_failures > e.audits:
        return f"audit failures {e.audit_failures} > audits {e.audits}"
    if e.drift is not None and e.drift < 0:
        return f"drift {e.drift} < 0"
    if now is not None and e.since > now + 300:
        return "evidence dated in the future"
    return None


def shadow_problem(e: ShadowEvidence) -> str | None:
    """Why a shadow's counters cannot be true, or None."""
    counts = {name: getattr(e, name) for name in SHADOW_COUNTERS}
    negative = [k for k, v in counts.items() if v < 0]
    if negative or any(c < 0 for c in e.latency) or e.busy_s < 0:
        return f"negative shadow counters {negative or ['latency']}"
    for part in ("errors", "matched", "compared"):
        if counts[part] > e.requests:
            return f"shadow {part} {counts[part]} > requests {e.requests}"
    for part in ("agreed", "serving_agreed"):
        if counts[part] > e.compared:
            return f"shadow {part} {counts[part]} > compared {e.compared}"
    if sum(e.latency) > e.requests:
        return f"shadow latencies {sum(e.latency)} > requests {e.requests}"
    return None


def shadow_delta(now: ShadowEvidence, then: ShadowEvidence | None) -> ShadowEvidence | str:
    """What a shadow did since ``then``, as ``delta`` for a served version."""
    if then is None or (then.version, then.since, then.serving) != (
        now.version, now.since, now.serving,
    ):  # fmt: skip
        return now
    diffs = {name: getattr(now, name) - getattr(then, name) for name in SHADOW_COUNTERS}
    latency = tuple(a - b for a, b in zip(now.latency, then.latency, strict=False))
    if any(v < 0 for v in diffs.values()) or any(v < 0 for v in latency):
        return "shadow counters went backwards within one run of the version"
    return replace(now, latency=latency, busy_s=max(0.0, now.busy_s - then.busy_s), **diffs)


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


@dataclass(frozen=True, kw_only=True)
class Figures(EvidenceCounters):
    """Evidence of a group of nodes over a window."""

    nodes: int = 0
    latency: tuple[int, ...] = ()
    drift: float | None = None
    #: nodes whose comparisons or weight the tier above's answers bounded, and how.
    bounded: dict[str, str] = field(default_factory=dict)

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
            **{name: getattr(self, name) for name in RECORDED_COUNTERS},
            "latency": list(self.latency),
            "drift": self.drift,
            "error_rate": rounded(self.error_rate),
            "escalation_rate": rounded(self.escalation_rate),
            "agreement": rounded(self.agreement),
            "p99_ms": self.quantile(0.99),
            "bounded": dict(list(self.bounded.items())[:MAX_BOUNDED]),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Figures:
        return cls(
            **{
                f.name: obj[f.name]
                for f in fields(cls)
                if f.name in obj and f.name not in ("latency", "bounded")
            },
            latency=tuple(obj.get("latency") or ()),
            bounded=dict(obj.get("bounded") or {}),
        )


def aggregate(
    windows: Iterable[VersionEvidence], bounded: Mapping[str, str] | None = None
) -> Figures:
    items = list(windows)
    if not items:
        return Figures(bounded=dict(bounded or {}))
    width = len(LATENCY_BUCKETS_MS) + 1
    latency = [0] * width
    for e in items:
        for i, c in enumerate(e.latency[:width]):
            latency[i] += c
    drifts = [e.drift for e in items if e.drift is not None]
    return Figures(
        nodes=len(items),
        latency=tuple(latency),
        # the median node's drift: one node's skewed inputs are not the version's doing
        drift=sorted(drifts)[len(drifts) // 2] if drifts else None,
        bounded=dict(bounded or {}),
        **{name: sum(getattr(e, name) for e in items) for name in EVIDENCE_COUNTERS},
    )


# --- a stage's evidence window --------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The evidence window of a stage: when it opened and every target's counters then."""

    rollout: str
    stage: int
    started_at: float
    snapshot: dict[str, VersionEvidence]
    #: what each node had answered for the tier below then (the caps are differences).
    answered: dict[str, Witness] = field(default_factory=dict)
    #: what each target's shadow had done then (a shadow stage's window).
    shadows: dict[str, ShadowEvidence] = field(default_factory=dict)


def encode_window(w: Window) -> bytes:
    return json.dumps(
        {
            "rollout": w.rollout,
            "stage": w.stage,
            "started_at": w.started_at,
            "snapshot": {n: evidence_to_map(e) for n, e in w.snapshot.items()},
            "answered": {
                n: {"since": a.since, "counts": dict(a.counts)} for n, a in w.answered.items()
            },
            "shadows": {n: shadow_to_map(e) for n, e in w.shadows.items()},
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
            answered={
                str(n): Witness(
                    since=float(a["since"]), counts={str(c): int(k) for c, k in a["counts"].items()}
                )
                for n, a in (obj.get("answered") or {}).items()
            },
            shadows={
                str(n): ShadowEvidence(**{**e, "latency": tuple(e["latency"])})
                for n, e in (obj.get("shadows") or {}).items()
            },
        )
    except (ValueError, KeyError, TypeError):
        return None


def open_window(
    r: Rollout, nodes: Mapping[str, NodeView], now: float, excluded: Collection[str] = ()
) -> Window:
    targets = set(r.targets)
    return Window(
        rollout=r.id,
        stage=r.current_stage,
        started_at=now,
        snapshot={
            n: v.evidence
            for n in r.targets
            if (v := nodes.get(n)) is not None and v.evidence is not None and v.problem is None
        },
        answered={
            n: Witness(v.witness.since, {c: k for c, k in v.witness.counts.items() if c in targets})
            for n, v in nodes.items()
            if v.witness is not None and v.problem is None and n not in excluded
        },
        shadows={
            n: v.shadow
            for n in r.targets
            if (v := nodes.get(n)) is not None and v.shadow is not None and v.problem is None
        },
    )


def _witnessed(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window,
    excluded: Collection[str],
    flagged: dict[str, str],
    *groups: Sequence[tuple[str, VersionEvidence]],
) -> list[tuple[list[VersionEvidence], dict[str, str]]]:
    """Each group bounded by what the tier above answered for its nodes since the window opened
    (``witness.bound``); witnesses whose counts went back are added to ``flagged``."""
    witnesses = {
        n: v.witness
        for n, v in nodes.items()
        if v.witness is not None and v.problem is None and n not in excluded
    }
    answered, broken = answered_since(window.answered, witnesses, r.targets)
    flagged.update(broken)
    witnessed = any(answered.values())
    return [bound(group, answered, witnessed) for group in groups]


@dataclass(frozen=True)
class StageFigures:
    """What a stage is judged on: the canary's figures and the baseline's (None when every
    target is in the stage; no node in it when the rollout's others give no trusted evidence),
    and the nodes to flag (counters gone back, answers gone back)."""

    canary: Figures
    baseline: Figures | None
    flagged: dict[str, str]


def stage_figures(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window,
    members: Sequence[str],
    excluded: Collection[str] = (),
) -> StageFigures:
    """The canary's figures (the stage's nodes on the new version) and the baseline's (the
    rollout's other nodes, still on the previous one) since the window opened, each node's
    comparisons and weight bounded by what the tier above answered for it meanwhile
    (``witness``); nodes in ``excluded`` (flagged) count for nothing."""
    flagged: dict[str, str] = {}
    canary: list[tuple[str, VersionEvidence]] = []
    baseline: list[tuple[str, VersionEvidence]] = []
    in_stage = set(members)
    others = [n for n in r.targets if n not in in_stage]
    for name in r.targets:
        view = nodes.get(name)
        if view is None or not view.online or view.evidence is None or view.problem is not None:
            continue
        if name in excluded:
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
        group.append((name, since))
    (canary_kept, canary_cut), (base_kept, base_cut) = _witnessed(
        r, nodes, window, excluded, flagged, canary, baseline
    )
    return StageFigures(
        canary=aggregate(canary_kept, canary_cut),
        baseline=aggregate(base_kept, base_cut) if others else None,
        flagged=flagged,
    )


@dataclass(frozen=True)
class ShadowFigures:
    """What a shadow stage is judged on, over its window: the version in shadow (requests,
    errors, comparisons with the tier above, its model calls' latency) and the serving version
    on the same requests (its comparisons with the tier above), each node bounded by what the
    tier above answered for it; how often the two answered alike; and the nodes to flag."""

    shadow: Figures
    serving: Figures
    matched: int
    skipped: int
    #: whether the serving version asks the tier above at all (a top tier does not).
    asks_above: bool
    flagged: dict[str, str]

    def as_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        shadow = self.shadow.as_dict()
        rate = self.matched / self.shadow.requests if self.shadow.requests else None
        shadow.update(matched=self.matched, skipped=self.skipped, serving_agreement=rounded(rate))
        return shadow, self.serving.as_dict()


def shadow_figures(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window,
    members: Sequence[str],
    excluded: Collection[str] = (),
) -> ShadowFigures:
    """The shadow stage's figures since the window opened: each member's shadow of the
    rollout's version, and its serving version on the same requests."""
    flagged: dict[str, str] = {}
    shadow: list[tuple[str, VersionEvidence]] = []
    serving: list[tuple[str, VersionEvidence]] = []
    matched = skipped = 0
    asks_above = False
    for name in members:
        view = nodes.get(name)
        if view is None or not view.online or view.problem is not None or name in excluded:
            continue
        if view.shadow is None or view.shadow.version != r.version:
            continue
        since = shadow_delta(view.shadow, window.shadows.get(name))
        if isinstance(since, str):
            flagged[name] = since
            continue
        if view.evidence is not None and view.evidence.escalated + view.evidence.audits > 0:
            asks_above = True
        matched += since.matched
        skipped += since.skipped
        shadow.append((name, VersionEvidence(
            version=since.version, since=since.since, requests=since.requests,
            errors=since.errors, compared=since.compared, agreed=since.agreed,
            latency=since.latency,
        )))  # fmt: skip
        serving.append((name, VersionEvidence(
            version=since.serving, since=since.since, requests=since.requests,
            compared=since.compared, agreed=since.serving_agreed,
        )))  # fmt: skip
    (shadow_kept, shadow_cut), (serving_kept, serving_cut) = _witnessed(
        r, nodes, window, excluded, flagged, shadow, serving
    )
    figures = aggregate(shadow_kept, shadow_cut)
    return ShadowFigures(
        shadow=figures,
        serving=aggregate(serving_kept, serving_cut),
        matched=min(matched, figures.requests),
        skipped=skipped,
        asks_above=asks_above,
        flagged=flagged,
    )
