"""The escalation policy: answer here, or send the request up a tier. Pure and synchronous.

The tier escalates when it is unsure (confidence under its threshold), when the input looks unlike
what its model was built on (novelty over its threshold), or when it does not serve the model at
all. It holds the request back, answering with its own result marked degraded, when the
residency label forbids the raw input leaving the zone, when the remaining budget is smaller than
the upstream's recent p95, when the upstream's breaker is open, or when the node's power
governor holds it back (``power``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Residency labels, from most to least restrictive: the highest zone raw input may reach.
RESIDENCY_ZONES: tuple[str, ...] = ("device", "site", "cloud")
RESIDENCY_LABELS: frozenset[str] = frozenset({*RESIDENCY_ZONES, "any"})


def zone_rank(label: str) -> int:
    """Rank of a zone or residency label: ``any`` allows every zone."""
    if label == "any":
        return len(RESIDENCY_ZONES)
    return RESIDENCY_ZONES.index(label)


def may_reach(residency: str, zone: str) -> bool:
    """Whether input labelled ``residency`` may be sent to a tier in ``zone``."""
    return zone_rank(zone) <= zone_rank(residency)


class Action(StrEnum):
    ANSWER = "answer"
    ESCALATE = "escalate"


class EscalationReason(StrEnum):
    LOW_CONFIDENCE = "low_confidence"
    NOVEL = "novel"
    NOT_SERVED = "not_served"


class DegradedReason(StrEnum):
    """Why an answer is degraded: it is a lower tier's answer to a case meant for upstream."""

    RESIDENCY = "residency"
    BUDGET = "budget"
    BREAKER_OPEN = "breaker_open"
    NO_RESPONDERS = "no_responders"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    #: the node is over its power budget and answers a share of its unsure cases itself
    #: (``mesh.energy.governor``, the ladder's last step).
    POWER = "power"


DEGRADED_REASONS: frozenset[str] = frozenset(r.value for r in DegradedReason)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What this tier knows of its own answer. ``confidence`` is None when not served here."""

    confidence: float | None
    novelty: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    confidence: float
    novelty: float | None = None


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """The upstream tier as the policy sees it at this instant."""

    zone: str
    breaker_open: bool
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: why the case is meant for upstream (set whenever the tier would escalate).
    escalation: EscalationReason | None = None
    #: why the local answer is degraded (set when the case was meant for upstream but held back).
    degraded: DegradedReason | None = None


ANSWER = Decision(Action.ANSWER)


def confident(confidence: float, novelty: float | None, thresholds: Thresholds) -> bool:
    """Whether a tier answers a case itself on its own merits (``escalation_reason`` is None
    for a served model). Written so that a NaN confidence is never taken for confident."""
    return confidence >= thresholds.confidence and not _novel(novelty, thresholds)


def _novel(novelty: float | None, thresholds: Thresholds) -> bool:
    return thresholds.novelty is not None and novelty is not None and novelty > thresholds.novelty


def escalation_reason(assessment: Assessment, thresholds: Thresholds) -> EscalationReason | None:
    if assessment.confidence is None:
        return EscalationReason.NOT_SERVED
    if _novel(assessment.novelty, thresholds):
        return EscalationReason.NOVEL
    # Written so that a NaN confidence (a model gone wrong) is never taken for confident.
    if not assessment.confidence >= thresholds.confidence:
        return EscalationReason.LOW_CONFIDENCE
    return None


def decide(
    assessment: Assessment,
    thresholds: Thresholds,
    *,
    budget_ms: float,
    residency: str,
    upstream: UpstreamView | None,
    hold: bool = False,
) -> Decision:
    """Answer or escalate. ``budget_ms`` is what is left of the request's budget now; ``hold``
    keeps a case that could go up here, for the node's power budget."""
    reason = escalation_reason(assessment, thresholds)
    if reason is None:
        return ANSWER
    if upstream is None:
        # The top tier: its answer is the best the mesh has, so it is not degraded.
        return Decision(Action.ANSWER, escalation=reason)
    if not may_reach(residency, upstream.zone):
        return Decision(Action.ANSWER, reason, DegradedReason.RESIDENCY)
    if upstream.breaker_open:
        return Decision(Action.ANSWER, reason, DegradedReason.BREAKER_OPEN)
    if budget_ms <= 0 or (upstream.p95_ms is not None and budget_ms < upstream.p95_ms):
        return Decision(Action.ANSWER, reason, DegradedReason.BUDGET)
    if hold:
        return Decision(Action.ANSWER, reason, DegradedReason.POWER)
    return Decision(Action.ESCALATE, reason)
