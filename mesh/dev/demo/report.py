"""The demo's report: typed, built from what the run observed, and written as JSON
(``mesh demo --report PATH``) whose keys other checks read, so they do not change. ``panel``
draws it on the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mesh.dev.demo.receiver import SpanRecord, draw_span_tree
from mesh.dev.demo.state import (
    BATTERY_NODE,
    EDGE_REPLICAS,
    BatteryView,
    DemoConfig,
    LinkView,
    Tally,
    Transition,
    hard_examples_buffered,
    tiers_in_order,
    transition_counts,
)

JsonObject = dict[str, object]

TRACING = "every request, OTLP/HTTP to the demo's receiver"


@dataclass(frozen=True)
class TierLatency:
    """Latency the application saw for the answers one tier gave, in milliseconds."""

    p50: float
    p99: float
    count: int

    def to_json(self) -> JsonObject:
        return {"p50": self.p50, "p99": self.p99, "count": self.count}


@dataclass(frozen=True)
class DegradedAnswers:
    count: int
    #: by reason, most frequent first.
    reasons: dict[str, int]
    by_tier: dict[str, int]

    def to_json(self) -> JsonObject:
        return {"count": self.count, "reasons": dict(self.reasons), "by_tier": dict(self.by_tier)}


@dataclass(frozen=True)
class HardExamples:
    """Cases the gateway kept while it could not reach the cloud, and what reached the hub."""

    buffered: int
    delivered: int
    backlog_peak: int
    backlog_left: int
    drained_at_s: float | None

    def to_json(self) -> JsonObject:
        return {
            "buffered": self.buffered,
            "delivered": self.delivered,
            "backlog_peak": self.backlog_peak,
            "backlog_left": self.backlog_left,
            "drained_at_s": self.drained_at_s,
        }


@dataclass(frozen=True)
class LinkOutage:
    """When the fault proxy cut and restored the site's link, and when the leaf was back."""

    cut_at_s: float | None
    restored_at_s: float | None
    leaf_reconnected_at_s: float | None

    def to_json(self) -> JsonObject:
        return {
            "cut_at_s": self.cut_at_s,
            "restored_at_s": self.restored_at_s,
            "leaf_reconnected_at_s": self.leaf_reconnected_at_s,
        }


@dataclass(frozen=True)
class FleetSummary:
    """What the fleet did during the run: nodes seen, versions swapped in, artifacts refused."""

    nodes: int
    swaps: int
    rejected: int
    #: one line per fleet event, in order (``edge-0 swapped digits 1-edge-int8 -> 2-edge``).
    events: list[str] = field(default_factory=list)

    def to_json(self) -> JsonObject:
        return {
            "nodes": self.nodes,
            "swaps": self.swaps,
            "rejected": self.rejected,
            "events": list(self.events),
        }


@dataclass(frozen=True)
class EventsSummary:
    """The demo's publisher: events published, results stored, error results, alerts fired."""

    published: int
    results: int
    errors: int
    alerts: int

    def to_json(self) -> JsonObject:
        return {
            "published": self.published,
            "results": self.results,
            "errors": self.errors,
            "alerts": self.alerts,
        }


@dataclass(frozen=True)
class ReviewSummary:
    """The review queue at the end of the run, its rates at the demo's load, and the simulated
    reviewer that labelled it."""

    queued: int
    labelled: int
    pending: int
    skipped: int
    by_reason: dict[str, int]
    queued_per_min: float
    labelled_per_min: float
    reviewer: dict[str, object]

    def to_json(self) -> JsonObject:
        return {
            "queued": self.queued,
            "labelled": self.labelled,
            "pending": self.pending,
            "skipped": self.skipped,
            "by_reason": dict(self.by_reason),
            "queued_per_min": self.queued_per_min,
            "labelled_per_min": self.labelled_per_min,
            "reviewer": dict(self.reviewer),
        }


@dataclass(frozen=True)
class Improvement:
    """The edge before and after the improve loop, on held-out rows no training saw: the share
    of them it answers itself, the accuracy of its classes on all of them, and of the answers
    it keeps."""

    version_before: str
    version_after: str
    labels_used: int
    trained_on: int
    held_back: int
    heldout_rows: int
    before: dict[str, float]
    after: dict[str, float]

    def line(self) -> str:
        b, a = self.before, self.after
        return (
            f"{self.version_before} answers {b['share']:.1%} at the edge, accuracy "
            f"{b['accuracy']:.1%}; {self.version_after} answers {a['share']:.1%}, accuracy "
            f"{a['accuracy']:.1%} (its own answers {b['answered_accuracy']:.1%} -> "
            f"{a['answered_accuracy']:.1%}), from {self.labels_used} labels"
        )

    def to_json(self) -> JsonObject:
        b, a = self.before, self.after
        return {
            "version_before": self.version_before,
            "version_after": self.version_after,
            "labels_used": self.labels_used,
            "edge_share_before": b["share"],
            "edge_share_after": a["share"],
            "edge_accuracy_before": b["accuracy"],
            "edge_accuracy_after": a["accuracy"],
            "edge_answered_accuracy_before": b["answered_accuracy"],
            "edge_answered_accuracy_after": a["answered_accuracy"],
            "threshold_before": b["threshold"],
            "threshold_after": a["threshold"],
            "trained_on": self.trained_on,
            "held_back": self.held_back,
            "heldout_rows": self.heldout_rows,
        }


@dataclass(frozen=True)
class EnergySummary:
    """The edge device on battery, by its own ledger: joules per answer, what an answer would
    have cost it had every request gone up (one request and its reply over its link, at the
    sizes it saw), and each step its governor took or gave back."""

    node: str
    profile: str
    device_joules_per_answer: float | None
    cloud_only_device_joules_per_answer: float | None
    answers: int
    battery_percent: float | None
    #: {at_s, step, action (applied or released), watts, budget_w}, in order.
    governor_steps: list[JsonObject] = field(default_factory=list)

    @classmethod
    def of(cls, view: BatteryView) -> EnergySummary:
        return cls(
            node=BATTERY_NODE,
            profile=view.profile,
            device_joules_per_answer=view.joules_per_answer,
            cloud_only_device_joules_per_answer=view.upstream_j,
            answers=view.answers,
            battery_percent=view.percent,
            governor_steps=[
                {
                    "at_s": at,
                    "step": step,
                    "action": "applied" if applied else "released",
                    "watts": watts,
                    "budget_w": budget,
                }
                for at, step, applied, watts, budget in view.changes
            ],
        )

    def to_json(self) -> JsonObject:
        return {
            "device_joules_per_answer": self.device_joules_per_answer,
            "cloud_only_device_joules_per_answer": self.cloud_only_device_joules_per_answer,
            "governor_steps": [dict(s) for s in self.governor_steps],
            "node": self.node,
            "profile": self.profile,
            "answers": self.answers,
            "battery_percent": self.battery_percent,
        }


@dataclass(frozen=True)
class RunSettings:
    rate_per_s: float
    concurrency: int
    budget_ms: float
    edge_replicas: int
    tracing: str

    def to_json(self) -> JsonObject:
        return {
            "rate_per_s": self.rate_per_s,
            "concurrency": self.concurrency,
            "budget_ms": self.budget_ms,
            "edge_replicas": self.edge_replicas,
            "tracing": self.tracing,
        }


@dataclass(frozen=True)
class TraceSummary:
    """One escalated request's trace across the tiers, drawn as a tree."""

    trace_id: str | None
    request_id: str | None
    spans: int
    tree: list[str]

    @classmethod
    def of(
        cls, trace_id: str | None, request_id: str | None, spans: Sequence[SpanRecord]
    ) -> TraceSummary:
        return cls(trace_id, request_id, len(spans), draw_span_tree(spans))

    def to_json(self) -> JsonObject:
        return {
            "trace_id": self.trace_id,
            "request_id": self.request_id,
            "spans": self.spans,
            "tree": list(self.tree),
        }


@dataclass(frozen=True)
class DemoReport:
    requests: int
    sent: int
    answered: int
    #: requests without an answer: error replies and requests never answered.
    lost: int
    #: error replies by exception name.
    errors: dict[str, int]
    #: share of the answers each tier gave, in chain order.
    by_tier: dict[str, float]
    answered_by_tier: dict[str, int]
    accuracy: float
    #: accuracy of the cloud tier alone on the same inputs, weighted as they were sent.
    cloud_only_accuracy: float
    cloud_only_distinct_inputs: int
    degraded: DegradedAnswers
    latency_ms: dict[str, TierLatency]
    upstream_bytes: int
    #: "gateway metrics", or "client request sizes" when the gateway could not be scraped.
    upstream_bytes_source: str
    #: bytes a cloud-only deployment would have sent up: every request.
    cloud_only_upstream_bytes: int
    breaker_transitions: list[Transition]
    breaker_transition_counts: dict[str, int]
    hard_examples: HardExamples
    link: LinkOutage
    duration_s: float
    drain_s: float
    config: RunSettings
    trace: TraceSummary
    fleet: FleetSummary = field(default_factory=lambda: FleetSummary(0, 0, 0))
    events: EventsSummary = field(default_factory=lambda: EventsSummary(0, 0, 0, 0))
    #: the staged rollouts of the run: model, version, outcome (completed, rolled_back,
    #: aborted), failed_gate, max_nodes_serving, canary_nodes, shadow and
    #: answers_served_before_decision.
    rollouts: list[JsonObject] = field(default_factory=list)
    review: ReviewSummary | None = None
    improvement: Improvement | None = None
    energy: EnergySummary = field(
        default_factory=lambda: EnergySummary(BATTERY_NODE, "", None, None, 0, None)
    )

    @property
    def passed(self) -> bool:
        """Nothing lost, no error reply, a result for every event: the demo's exit status."""
        return self.lost == 0 and not self.errors and self.events.results >= self.events.published

    def to_json(self) -> JsonObject:
        return {
            "requests": self.requests,
            "sent": self.sent,
            "answered": self.answered,
            "lost": self.lost,
            "errors": dict(self.errors),
            "by_tier": dict(self.by_tier),
            "answered_by_tier": dict(self.answered_by_tier),
            "accuracy": self.accuracy,
            "cloud_only_accuracy": self.cloud_only_accuracy,
            "cloud_only_distinct_inputs": self.cloud_only_distinct_inputs,
            "degraded": self.degraded.to_json(),
            "latency_ms": {tier: lat.to_json() for tier, lat in self.latency_ms.items()},
            "upstream_bytes": self.upstream_bytes,
            "upstream_bytes_source": self.upstream_bytes_source,
            "cloud_only_upstream_bytes": self.cloud_only_upstream_bytes,
            "breaker_transitions": [
                {"at_s": t.at_s, "from": t.before, "to": t.after} for t in self.breaker_transitions
            ],
            "breaker_transition_counts": dict(self.breaker_transition_counts),
            "hard_examples": self.hard_examples.to_json(),
            "link": self.link.to_json(),
            "duration_s": self.duration_s,
            "drain_s": self.drain_s,
            "config": self.config.to_json(),
            "trace": self.trace.to_json(),
            "fleet": self.fleet.to_json(),
            "events": self.events.to_json(),
            "rollouts": [dict(r) for r in self.rollouts],
            "review": self.review.to_json() if self.review is not None else None,
            "improvement": self.improvement.to_json() if self.improvement is not None else None,
            "energy": self.energy.to_json(),
        }


def build_report(
    config: DemoConfig,
    tally: Tally,
    view: LinkView,
    *,
    run_s: float,
    drain_s: float,
    cloud_accuracy: float,
    cloud_inputs: int,
    gateway_figures: dict[str, float],
    trace: TraceSummary,
    fleet: FleetSummary | None = None,
    events: EventsSummary | None = None,
    rollouts: list[JsonObject] | None = None,
    review: ReviewSummary | None = None,
    improvement: Improvement | None = None,
) -> DemoReport:
    """The report of a finished run; ``gateway_figures`` are the gateway's counters, if scraped."""
    answered = max(tally.answered, 1)
    tiers = tiers_in_order(tally.by_tier)
    return DemoReport(
        requests=config.requests,
        sent=tally.sent,
        answered=tally.answered,
        lost=config.requests - tally.answered,
        errors=dict(tally.errors),
        by_tier={t: round(tally.by_tier[t] / answered, 4) for t in tiers},
        answered_by_tier={t: tally.by_tier[t] for t in tiers},
        accuracy=round(tally.correct / answered, 4),
        cloud_only_accuracy=round(cloud_accuracy, 4),
        cloud_only_distinct_inputs=cloud_inputs,
        degraded=DegradedAnswers(
            count=tally.degraded,
            reasons=dict(tally.reasons.most_common()),
            by_tier=dict(tally.degraded_by_tier),
        ),
        latency_ms=_latencies(tally, tiers),
        upstream_bytes=_upstream_bytes(tally, gateway_figures),
        upstream_bytes_source="gateway metrics" if gateway_figures else "client request sizes",
        cloud_only_upstream_bytes=tally.request_bytes,
        breaker_transitions=list(view.transitions),
        breaker_transition_counts=transition_counts(gateway_figures),
        hard_examples=HardExamples(
            buffered=hard_examples_buffered(view, tally),
            delivered=view.delivered,
            backlog_peak=view.backlog_peak,
            backlog_left=view.backlog,
            drained_at_s=_round(view.drained_at_s),
        ),
        link=LinkOutage(
            cut_at_s=_round(view.cut_at_s),
            restored_at_s=_round(view.healed_at_s),
            leaf_reconnected_at_s=_round(view.relinked_at_s),
        ),
        duration_s=round(run_s, 2),
        drain_s=round(drain_s, 2),
        config=RunSettings(
            rate_per_s=config.rate_per_s,
            concurrency=config.concurrency,
            budget_ms=config.budget_ms,
            edge_replicas=EDGE_REPLICAS,
            tracing=TRACING,
        ),
        trace=trace,
        fleet=fleet or FleetSummary(0, 0, 0),
        events=events or EventsSummary(0, 0, 0, 0),
        rollouts=list(rollouts or []),
        review=review,
        improvement=improvement,
        energy=EnergySummary.of(view.battery),
    )


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _latencies(tally: Tally, tiers: Sequence[str]) -> dict[str, TierLatency]:
    return {
        tier: TierLatency(
            p50=round(float(np.percentile(values, 50)), 2),
            p99=round(float(np.percentile(values, 99)), 2),
            count=len(values),
        )
        for tier in tiers
        if (values := tally.latencies_ms.get(tier))
    }


def _upstream_bytes(tally: Tally, gateway_figures: dict[str, float]) -> int:
    """Bytes the site sent up: the gateway's counters, or the client's sizes without them."""
    if gateway_figures:
        return int(
            sum(v for k, v in gateway_figures.items() if k.startswith("mesh_upstream_bytes"))
        )
    return tally.escalated_bytes
