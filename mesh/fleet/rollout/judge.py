"""The judgement of a stage: pass, fail or wait, on the canary's figures against a gate's fixed
bounds and against the baseline's figures over the same window."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mesh.fleet.rollout.evidence import Figures, ShadowFigures
from mesh.fleet.rollout.plan import Gate
from mesh.fleet.rollout.statistics import (
    difference_lower,
    difference_upper,
    rounded,
    wilson_lower,
    wilson_upper,
)
from mesh.observability.metrics import LATENCY_BUCKETS_MS

#: a p99 under this is never a regression against the baseline: the latency buckets below it
#: (1, 2, 5 ms) are finer than the noise of a shared machine.
P99_FLOOR_MS = 10.0
#: answers a drift score needs before it is compared with the baseline's: a population
#: stability index over a few hundred rows of a version just swapped in is mostly noise.
DRIFT_MIN_REQUESTS = 1000


class VerdictResult(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class Verdict:
    result: VerdictResult
    gate: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class LabelFigures:
    """What people's labels say of the version and of the one it replaces, at the rollout's
    tier: labelled review items each answered, and how many as the person did (the review
    desk's ground truth, ``docs/review.md``)."""

    labelled: int = 0
    correct: int = 0
    baseline_labelled: int = 0
    baseline_correct: int = 0

    def as_dict(self) -> dict[str, Any]:
        def share(hits: int, total: int) -> float | None:
            return rounded(hits / total) if total else None

        return {
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": share(self.correct, self.labelled),
            "baseline_labelled": self.baseline_labelled,
            "baseline_correct": self.baseline_correct,
            "baseline_accuracy": share(self.baseline_correct, self.baseline_labelled),
        }


def label_figures(
    versions: Iterable[tuple[str, str, int, int]], version: str, baseline: str | None, tier: str
) -> LabelFigures | None:
    """The labels of ``version`` and of ``baseline`` at ``tier`` (every tier when empty), from
    the review desk's ground truth: (version, tier, labelled, correct) per version and tier.
    None when neither has a label."""
    mine = [0, 0]
    base = [0, 0]
    for v, t, labelled, correct in versions:
        if tier and t != tier:
            continue
        side = mine if v == version else base if v == baseline else None
        if side is not None:
            side[0] += max(0, labelled)
            side[1] += max(0, min(correct, labelled))
    if not mine[0] and not base[0]:
        return None
    return LabelFigures(mine[0], mine[1], base[0], base[1])


def slower_than(latency: Sequence[int], bound_ms: float) -> int:
    """Requests in the latency buckets whose upper edge is over ``bound_ms``: the ones a
    bucket quantile puts over the bound (so the share is over 1% when the p99 is)."""
    edges = (*LATENCY_BUCKETS_MS, math.inf)
    return sum(c for c, edge in zip(latency, edges, strict=False) if edge > bound_ms)


def judge(
    gate: Gate, canary: Figures, baseline: Figures | None, labels: LabelFigures | None = None
) -> Verdict:
    """Pass, fail or wait, on the canary's figures against fixed bounds and the baseline's.

    The baseline (when the stage has one) is waited for as the canary is.
    Agreement is judged by the upper bound of its one-sided 90% interval, and error,
    escalation and degraded rates and the shares of requests over a latency bound by the lower
    bound of theirs: a stage fails only when even that bound is on the wrong side, so a handful
    of unlucky samples (one slow request among forty) does not roll back a good version.
    Against the baseline it is the difference of the two shares that is bounded, since the
    baseline's own figure is a sample too. Agreement is not required of a version that never
    asks the tier above (a top tier). Labels judge once both sides have ``min_labels``."""
    measurable = canary.escalated + canary.audits > 0
    waiting = _waiting_for(gate, canary, baseline, measurable)
    if waiting is not None:
        return Verdict(VerdictResult.WAIT, reason=waiting)
    base = baseline if baseline is not None and baseline.nodes > 0 else None
    for check in (_rates, _latency, _drift):
        failed = check(gate, canary, base)
        if failed is not None:
            return failed
    return _last_gates(gate, canary, base, labels, compared=measurable, passed="every gate holds")


def judge_shadow(gate: Gate, figures: ShadowFigures, labels: LabelFigures | None = None) -> Verdict:
    """A shadow stage: pass, fail or wait, on the version run in shadow against the serving
    version on the same requests. Its errors against none; how often it answers as the serving
    version does against ``min_serving_agreement``; its agreement with the tier above against
    the serving version's on the very requests both were compared on (``max_agreement_drop``,
    ``min_agreement``); labels as any stage. Latency is judged once it serves: in shadow it runs
    at a bounded share of the CPU, not as a served version does."""
    shadow, serving = figures.shadow, figures.serving
    if shadow.nodes == 0:
        return Verdict(VerdictResult.WAIT, reason="no node of the stage runs the version yet")
    if shadow.requests < gate.min_requests:
        return Verdict(
            VerdictResult.WAIT,
            reason=f"{shadow.requests} of {gate.min_requests} requests run in shadow so far",
        )
    if figures.asks_above and shadow.compared < gate.min_samples:
        return Verdict(
            VerdictResult.WAIT,
            reason=f"{shadow.compared} of {gate.min_samples} shadow answers compared upstream "
            "so far (as far as the tier above reports answering them)",
        )
    n = shadow.requests
    if gate.max_error_rate is not None and (more := _over(shadow.errors, n, gate.max_error_rate)):
        return _fail("error_rate", shadow.errors / n, gate.max_error_rate, None, **more)
    lower = difference_lower(shadow.errors, n, 0, n)
    if lower > gate.max_error_rate_increase:
        return _fail(
            "error_rate", shadow.errors / n, gate.max_error_rate_increase, None,
            count=shadow.errors, requests=n, increase_lower_90=rounded(lower),
        )  # fmt: skip
    upper = wilson_upper(figures.matched, n)
    if upper < gate.min_serving_agreement:
        return _fail(
            "serving_agreement", figures.matched / n, gate.min_serving_agreement, None,
            samples=n, upper_90=rounded(upper),
        )  # fmt: skip
    return _last_gates(
        gate, shadow, serving, labels,
        compared=shadow.compared > 0, passed="every gate holds in shadow",
    )  # fmt: skip


def _last_gates(
    gate: Gate,
    figures: Figures,
    against: Figures | None,
    labels: LabelFigures | None,
    *,
    compared: bool,
    passed: str,
) -> Verdict:
    """The gates every stage ends on: agreement with the tier above (when its answers were
    compared), then labels; ``passed`` once both hold."""
    if compared:
        failed = _agreement(gate, figures, against)
        if failed is not None:
            return failed
    failed = _labelled(gate, labels)
    if failed is not None:
        return failed
    return Verdict(VerdictResult.PASS, reason=passed)


def _labelled(gate: Gate, labels: LabelFigures | None) -> Verdict | None:
    """Labelled accuracy against the replaced version's, once each has ``min_labels``."""
    if labels is None or min(labels.labelled, labels.baseline_labelled) < gate.min_labels:
        return None
    ahead = difference_upper(
        labels.correct, labels.labelled, labels.baseline_correct, labels.baseline_labelled
    )
    if ahead >= -gate.max_label_accuracy_drop:
        return None
    accuracy = labels.correct / labels.labelled
    baseline = labels.baseline_correct / labels.baseline_labelled
    return _fail(
        "labelled_accuracy", accuracy, baseline - gate.max_label_accuracy_drop, None,
        baseline=rounded(baseline), labelled=labels.labelled,
        baseline_labelled=labels.baseline_labelled, difference_upper_90=rounded(ahead),
    )  # fmt: skip


def _waiting_for(
    gate: Gate, canary: Figures, baseline: Figures | None, measurable: bool
) -> str | None:
    """What the stage still waits for before it can be judged, or None."""
    if canary.nodes == 0:
        return "no node of the stage reports the version yet"
    # A baseline none of whose nodes can be trusted (a liar claiming the new version emptied
    # one) is waited for, never skipped: more time will not bring it, so it is named first.
    if baseline is not None and baseline.nodes == 0:
        return "baseline: no trusted node outside the stage reports the previous version"
    if canary.requests < gate.min_requests:
        return f"{canary.requests} of {gate.min_requests} requests answered so far"
    if measurable and canary.compared < gate.min_samples:
        return (
            f"{canary.compared} of {gate.min_samples} answers compared upstream so far (as far "
            "as the tier above reports answering them)"
        )
    # Nodes still on the old version are waited for as the canary is: judging without them
    # would judge on fixed bounds alone, and a version confusing two classes passed the demo's
    # canary that way while its one baseline node had fewer compared answers than the canary.
    if baseline is not None:
        if baseline.requests < gate.min_requests:
            return f"baseline: {baseline.requests} of {gate.min_requests} requests so far"
        if measurable and baseline.compared < gate.min_samples:
            return (
                f"baseline: {baseline.compared} of {gate.min_samples} answers compared "
                "upstream so far"
            )
    return None


def _fail(
    name: str, value: float | None, bound: float, base: Figures | None, **more: Any
) -> Verdict:
    figures = {"canary": rounded(value), "bound": rounded(bound), **more}
    if base is not None and "baseline" not in figures:
        figures["baseline_nodes"] = base.nodes
    return Verdict(
        VerdictResult.FAIL,
        gate=name,
        figures=figures,
        reason=f"{name}: canary {_fmt(value)} against bound {_fmt(bound)}"
        + (f" (baseline {_fmt(more['baseline'])})" if "baseline" in more else ""),
    )


def _over(hits: int, requests: int, bound: float) -> dict[str, Any] | None:
    """The figures of a rate surely over ``bound`` (its lower bound is), else None."""
    lower = wilson_lower(hits, requests)
    if lower > bound:
        return {"count": hits, "requests": requests, "lower_90": rounded(lower)}
    return None


def _rates(gate: Gate, canary: Figures, base: Figures | None) -> Verdict | None:
    # rates are judged by the least they could plausibly be (see wilson_lower), and against
    # the baseline by the least the difference could plausibly be (see difference_lower)
    n = canary.requests
    for name, hits, fixed, increase, base_hits in (
        ("error_rate", canary.errors, gate.max_error_rate, gate.max_error_rate_increase,
         base.errors if base is not None else 0),
        ("escalation_rate", canary.escalated, gate.max_escalation_rate,
         gate.max_escalation_rate_increase, base.escalated if base is not None else 0),
        ("degraded_rate", canary.degraded, gate.max_degraded_rate, None, 0),
    ):  # fmt: skip
        rate = hits / n if n else 0.0
        if fixed is not None and (more := _over(hits, n, fixed)) is not None:
            return _fail(name, rate, fixed, base, **more)
        if base is not None and increase is not None and n > 0 and base.requests > 0:
            base_rate = base_hits / base.requests
            lower = difference_lower(hits, n, base_hits, base.requests)
            if lower > increase:
                return _fail(
                    name,
                    rate,
                    base_rate + increase,
                    base,
                    baseline=rounded(base_rate),
                    count=hits,
                    requests=n,
                    increase_lower_90=rounded(lower),
                )
    return None


def _latency(gate: Gate, canary: Figures, base: Figures | None) -> Verdict | None:
    # a quantile is over a bound when more than its share of requests surely are
    bounds: list[tuple[str, float, float, dict[str, Any]]] = []
    if gate.max_p99_ms is not None:
        bounds.append(("p99_ms", 0.99, gate.max_p99_ms, {}))
    base_p99 = base.quantile(0.99) if base is not None else None
    if base_p99 is not None:
        relative = max(base_p99 * gate.max_p99_ratio, P99_FLOOR_MS)
        bounds.append(("p99_ms", 0.99, relative, {"baseline": base_p99}))
    if gate.max_p95_ms is not None:
        bounds.append(("p95_ms", 0.95, gate.max_p95_ms, {}))
    for name, q, bound, compared_with in bounds:
        more = _over(slower_than(canary.latency, bound), canary.requests, 1.0 - q)
        if more is not None:
            return _fail(name, canary.quantile(q), bound, base, **compared_with, **more)
    return None


def _drift(gate: Gate, canary: Figures, base: Figures | None) -> Verdict | None:
    if canary.drift is None:
        return None
    if gate.max_drift is not None and canary.drift > gate.max_drift:
        return _fail("drift", canary.drift, gate.max_drift, base)
    if (
        gate.max_drift_increase is not None
        and base is not None
        and base.drift is not None
        and canary.requests >= DRIFT_MIN_REQUESTS
    ):
        bound = base.drift + gate.max_drift_increase
        if canary.drift > bound:
            return _fail("drift", canary.drift, bound, base, baseline=rounded(base.drift))
    return None


def _agreement(gate: Gate, canary: Figures, base: Figures | None) -> Verdict | None:
    upper = wilson_upper(canary.agreed, canary.compared)
    more = {"samples": canary.compared, "upper_90": rounded(upper)}
    if gate.min_agreement is not None and upper < gate.min_agreement:
        return _fail("agreement", canary.agreement, gate.min_agreement, base, **more)
    if base is not None and base.agreement is not None and canary.compared > 0:
        ahead = difference_upper(canary.agreed, canary.compared, base.agreed, base.compared)
        if ahead < -gate.max_agreement_drop:
            return _fail(
                "agreement",
                canary.agreement,
                base.agreement - gate.max_agreement_drop,
                base,
                baseline=rounded(base.agreement),
                baseline_samples=base.compared,
                difference_upper_90=rounded(ahead),
                **more,
            )
    return None


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4g}"


@dataclass(frozen=True)
class RateGate:
    """One rate a stage is held to, as a person reads it: the canary's rate, a fixed ceiling,
    an increase allowed over the baseline's rate, and that rate."""

    label: str
    rate: float | None
    fixed: float | None
    increase: float | None
    base_rate: float | None


def rate_gates(gate: Gate, canary: Figures, base: Figures | None) -> list[RateGate]:
    """The error, escalation and degraded rates and their bounds (``mesh rollout status`` and
    the console show the same rows)."""
    return [
        RateGate("error rate", canary.error_rate, gate.max_error_rate,
                 gate.max_error_rate_increase, base.error_rate if base else None),
        RateGate("escalation rate", canary.escalation_rate, gate.max_escalation_rate,
                 gate.max_escalation_rate_increase, base.escalation_rate if base else None),
        RateGate("degraded rate", canary.degraded_rate, gate.max_degraded_rate, None, None),
    ]  # fmt: skip
