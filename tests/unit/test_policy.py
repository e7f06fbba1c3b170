"""The escalation policy as a pure function: no NATS, no models."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.node.policy import (
    Action,
    Assessment,
    DegradedReason,
    EscalationReason,
    Thresholds,
    UpstreamView,
    decide,
)

SURE = Assessment(confidence=0.99, novelty=0.5)
UNSURE = Assessment(confidence=0.40, novelty=0.5)
NOVEL = Assessment(confidence=0.99, novelty=50.0)
NOT_SERVED = Assessment(confidence=None)
THRESHOLDS = Thresholds(confidence=0.9, novelty=10.0)
HEALTHY = UpstreamView(zone="cloud", breaker_open=False, p95_ms=20.0)


def test_a_confident_answer_stays_here_and_is_not_degraded() -> None:
    decision = decide(SURE, THRESHOLDS, budget_ms=500, residency="any", upstream=HEALTHY)
    assert decision.action is Action.ANSWER
    assert decision.escalation is None and decision.degraded is None


@pytest.mark.parametrize(
    ("assessment", "reason"),
    [
        (UNSURE, EscalationReason.LOW_CONFIDENCE),
        (NOVEL, EscalationReason.NOVEL),
        (NOT_SERVED, EscalationReason.NOT_SERVED),
    ],
)
def test_unsure_novel_or_unserved_cases_escalate_with_their_reason(
    assessment: Assessment, reason: EscalationReason
) -> None:
    decision = decide(assessment, THRESHOLDS, budget_ms=500, residency="any", upstream=HEALTHY)
    assert decision.action is Action.ESCALATE
    assert decision.escalation is reason
    assert decision.degraded is None


def test_novelty_escalates_even_when_the_model_is_sure() -> None:
    assert NOVEL.confidence is not None and NOVEL.confidence > THRESHOLDS.confidence
    decision = decide(NOVEL, THRESHOLDS, budget_ms=500, residency="any", upstream=HEALTHY)
    assert decision.escalation is EscalationReason.NOVEL


def test_without_a_novelty_threshold_only_confidence_counts() -> None:
    decision = decide(
        NOVEL, Thresholds(confidence=0.9), budget_ms=500, residency="any", upstream=HEALTHY
    )
    assert decision.action is Action.ANSWER


def test_the_top_tier_answers_an_unsure_case_without_marking_it_degraded() -> None:
    decision = decide(UNSURE, THRESHOLDS, budget_ms=500, residency="any", upstream=None)
    assert decision.action is Action.ANSWER
    assert decision.escalation is EscalationReason.LOW_CONFIDENCE
    assert decision.degraded is None


@pytest.mark.parametrize(
    ("residency", "upstream_zone", "allowed"),
    [
        ("device", "site", False),
        ("device", "cloud", False),
        ("site", "site", True),
        ("site", "cloud", False),
        ("cloud", "cloud", True),
        ("any", "cloud", True),
    ],
)
def test_residency_keeps_the_input_in_the_zones_its_label_allows(
    residency: str, upstream_zone: str, allowed: bool
) -> None:
    upstream = UpstreamView(zone=upstream_zone, breaker_open=False, p95_ms=None)
    decision = decide(UNSURE, THRESHOLDS, budget_ms=500, residency=residency, upstream=upstream)
    if allowed:
        assert decision.action is Action.ESCALATE
    else:
        assert (decision.action, decision.degraded) == (Action.ANSWER, DegradedReason.RESIDENCY)


def test_an_open_breaker_answers_here_degraded() -> None:
    upstream = UpstreamView(zone="cloud", breaker_open=True, p95_ms=20.0)
    decision = decide(UNSURE, THRESHOLDS, budget_ms=500, residency="any", upstream=upstream)
    assert (decision.action, decision.degraded) == (Action.ANSWER, DegradedReason.BREAKER_OPEN)


def test_a_budget_smaller_than_the_upstream_p95_answers_here_degraded() -> None:
    slow = UpstreamView(zone="cloud", breaker_open=False, p95_ms=300.0)
    decision = decide(UNSURE, THRESHOLDS, budget_ms=100, residency="any", upstream=slow)
    assert (decision.action, decision.degraded) == (Action.ANSWER, DegradedReason.BUDGET)
    assert decide(UNSURE, THRESHOLDS, budget_ms=400, residency="any", upstream=slow).action is (
        Action.ESCALATE
    )


def test_an_exhausted_budget_never_escalates_even_before_any_latency_is_known() -> None:
    cold = UpstreamView(zone="cloud", breaker_open=False, p95_ms=None)
    decision = decide(UNSURE, THRESHOLDS, budget_ms=0, residency="any", upstream=cold)
    assert decision.degraded is DegradedReason.BUDGET
    assert decide(UNSURE, THRESHOLDS, budget_ms=1, residency="any", upstream=cold).action is (
        Action.ESCALATE
    )


def test_residency_outranks_the_breaker_and_the_budget() -> None:
    broken = UpstreamView(zone="cloud", breaker_open=True, p95_ms=900.0)
    decision = decide(UNSURE, THRESHOLDS, budget_ms=1, residency="device", upstream=broken)
    assert decision.degraded is DegradedReason.RESIDENCY


@given(
    confidence=st.floats(0, 1),
    novelty=st.one_of(st.none(), st.floats(0, 100)),
    budget=st.floats(-10, 5000),
    p95=st.one_of(st.none(), st.floats(0, 5000)),
    breaker_open=st.booleans(),
    residency=st.sampled_from(["device", "site", "cloud", "any"]),
    zone=st.sampled_from(["device", "site", "cloud"]),
)
def test_a_decision_is_always_consistent(
    confidence: float,
    novelty: float | None,
    budget: float,
    p95: float | None,
    breaker_open: bool,
    residency: str,
    zone: str,
) -> None:
    upstream = UpstreamView(zone=zone, breaker_open=breaker_open, p95_ms=p95)
    decision = decide(
        Assessment(confidence, novelty),
        THRESHOLDS,
        budget_ms=budget,
        residency=residency,
        upstream=upstream,
    )
    if decision.action is Action.ESCALATE:
        assert decision.escalation is not None and decision.degraded is None
        assert not breaker_open and budget > 0
        assert p95 is None or budget >= p95
    elif decision.degraded is not None:
        assert decision.escalation is not None
    if decision.escalation is None:
        assert decision.action is Action.ANSWER and decision.degraded is None
