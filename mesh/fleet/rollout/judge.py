"""The judgement of a stage: pass, fail or wait, on the canary's figures against a gate's fixed
bounds and against the baseline's figures over the same window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mesh.fleet.rollout.evidence import Figures
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


def slower_than(latency: Sequence[int], bound_ms: float) -> int:
    """Requests in the latency buckets whose upper edge is over ``bound_ms``: the ones a
    bucket quantile puts over the bound (so the share is over 1% when the p99 is)."""
    edges = (*LATENCY_BUCKETS_MS, math.inf)
    return sum(c for c, edge in zip(latency, edges, strict=False) if edge > bound_ms)


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
    measurable = canary.escalated + canary.audits > 0
    waiting = _waiting_for(gate, canary, baseline, measurable)
    if waiting is not None:
        return Verdict(VerdictResult.WAIT, reason=waiting)
    base = baseline if baseline is not None and baseline.nodes > 0 else None
    for check in (_rates, _latency, _drift):
        failed = check(gate, canary, base)
        if failed is not None:
            return failed
    if measurable:
        failed = _agreement(gate, canary, base)
        if failed is not None:
            return failed
    return Verdict(VerdictResult.PASS, reason="every gate holds")


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
