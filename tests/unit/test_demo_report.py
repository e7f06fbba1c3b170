"""The demo's pure parts: the span tree, the report built from a fixed run, its JSON and drawing."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from mesh.dev.demo.panel import breaker_summary, report_panel
from mesh.dev.demo.receiver import SpanRecord, draw_span_tree
from mesh.dev.demo.report import (
    DemoReport,
    Improvement,
    ReviewSummary,
    TraceSummary,
    build_report,
)
from mesh.dev.demo.state import (
    BatteryView,
    DemoConfig,
    LinkView,
    Tally,
    Transition,
    gateway_figures,
    tiers_in_order,
    transition_counts,
)
from mesh.dev.models.demo import DemoArtifacts
from mesh.observability import tracing

MS = 1_000_000


def span(
    span_id: str,
    parent_id: str | None,
    name: str,
    node: str,
    start_ms: float,
    end_ms: float,
    **attributes: str | int | float | bool,
) -> SpanRecord:
    return SpanRecord(
        trace_id="ab" * 16,
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        service=f"mesh-{node.split('-')[0]}",
        node=node,
        start_ns=int(1_000 * MS + start_ms * MS),
        end_ns=int(1_000 * MS + end_ms * MS),
        attributes=attributes,
    )


SPANS = [
    span("c1", "b1", "mesh.cloud.infer.digits process", "cloud-0", 1.5, 2.5),
    span(
        "a1",
        None,
        "mesh.infer.digits send",
        "demo",
        0.0,
        4.0,
        **{tracing.ANSWERED_BY: "cloud"},
    ),
    span("e1", "a1", "mesh.infer.digits process", "edge-1", 0.25, 3.5),
    span("b1", "e1", "mesh.gateway.infer.digits process", "gateway-0", 1.0, 3.0),
    span("e2", "a1", "hard example", "edge-1", 3.6, 3.8, **{tracing.DEGRADED_REASON: "timeout"}),
]


def test_the_span_tree_draws_each_span_under_its_parent_in_start_order() -> None:
    assert draw_span_tree(SPANS) == [
        "     start   duration  [node] span",
        "+  0.00 ms    4.00 ms  [demo] mesh.infer.digits send  → answered by cloud",
        "+  0.25 ms    3.25 ms  ├─ [edge-1] mesh.infer.digits process",
        "+  1.00 ms    2.00 ms     └─ [gateway-0] mesh.gateway.infer.digits process",
        "+  1.50 ms    1.00 ms        └─ [cloud-0] mesh.cloud.infer.digits process",
        "+  3.60 ms    0.20 ms  └─ [edge-1] hard example  ! timeout",
    ]


def test_a_span_whose_parent_was_not_received_is_drawn_as_a_root() -> None:
    orphan = span("x1", "missing", "late export", "gateway-0", 5.0, 6.0)
    lines = draw_span_tree([SPANS[1], orphan])
    assert lines[-1] == "+  5.00 ms    1.00 ms  [gateway-0] late export"
    assert draw_span_tree([]) == []


GATEWAY_METRICS = """\
# HELP mesh_upstream_bytes_total Bytes sent upstream.
# TYPE mesh_upstream_bytes_total counter
mesh_upstream_bytes_total{model="digits",tier="gateway"} 12000.0
mesh_upstream_bytes_created{model="digits",tier="gateway"} 1.7e9
mesh_breaker_transitions_total{from="closed",to="open",upstream="cloud"} 1.0
mesh_breaker_transitions_total{from="open",to="half_open",upstream="cloud"} 2.0
mesh_breaker_transitions_total{from="half_open",to="open",upstream="cloud"} 1.0
mesh_breaker_transitions_total{from="half_open",to="closed",upstream="cloud"} 1.0
mesh_requests_total{tier="gateway"} 99.0
"""


def test_gateway_counters_are_read_from_the_prometheus_exposition() -> None:
    figures = gateway_figures(GATEWAY_METRICS)
    assert figures['mesh_upstream_bytes_total{model="digits",tier="gateway"}'] == 12000.0
    assert len(figures) == 5
    assert transition_counts(figures) == {
        "closed->open": 1,
        "open->half_open": 2,
        "half_open->open": 1,
        "half_open->closed": 1,
    }


def fixed_run() -> tuple[DemoConfig, Tally, LinkView]:
    config = DemoConfig(requests=600, rate_per_s=50.0)
    tally = Tally(
        sent=600,
        answered=600,
        correct=582,
        by_tier=Counter({"cloud": 60, "edge": 420, "gateway": 120}),
        latencies_ms={"edge": [1.0, 2.0, 3.0], "gateway": [4.0, 6.0], "cloud": [30.0]},
        reasons=Counter({"breaker_open": 30, "no_responders": 10}),
        degraded_by_tier=Counter({"gateway": 40}),
        request_bytes=400_000,
        escalated_bytes=120_000,
        traced_id="req-1",
    )
    view = LinkView(
        backlog=0,
        backlog_peak=40,
        delivered=40,
        transitions=[
            Transition(4.5, "closed", "open"),
            Transition(5.1, "open", "half_open"),
            Transition(5.1, "half_open", "open"),
            Transition(8.4, "open", "half_open"),
            Transition(8.4, "half_open", "closed"),
        ],
        cut_at_s=4.2049,
        healed_at_s=7.8,
        relinked_at_s=8.0,
        drained_at_s=9.25,
        battery=BatteryView(
            percent=69.0,
            watts=0.09,
            budget_w=0.1,
            steps=["audits"],
            profile="rpi4",
            joules_per_answer=0.0012,
            upstream_j=0.0018,
            answers=300,
            changes=[(4.0, "audits", True, 0.15, 0.1)],
        ),
    )
    return config, tally, view


ROLLOUTS = [
    {
        "model": "digits",
        "version": "2-edge",
        "outcome": "completed",
        "failed_gate": None,
        "max_nodes_serving": 2,
        "canary_nodes": 1,
        "shadow": True,
        "answers_served_before_decision": 140,
    },
    {
        "model": "digits",
        "version": "3-confused",
        "outcome": "rolled_back",
        "failed_gate": "agreement",
        "max_nodes_serving": 0,
        "canary_nodes": 1,
        "shadow": True,
        "answers_served_before_decision": 0,
    },
]
REVIEWER: dict[str, object] = {
    "simulated": True,
    "delay_s": 0.5,
    "error_rate": 0.02,
    "labels": 320,
    "wrong_on_purpose": 6,
    "median_s_queued_to_label": 0.61,
}
REVIEW = ReviewSummary(
    queued=400,
    labelled=320,
    pending=70,
    skipped=10,
    by_reason={"unsure": 300, "disagreement": 60, "sampled": 40},
    queued_per_min=480.0,
    labelled_per_min=384.0,
    reviewer=REVIEWER,
)
IMPROVEMENT = Improvement(
    version_before="1-edge-weak",
    version_after="2-edge-learned",
    labels_used=320,
    trained_on=256,
    held_back=64,
    heldout_rows=360,
    before={"share": 0.5, "accuracy": 0.8, "answered_accuracy": 0.95, "threshold": 0.9},
    after={"share": 0.7, "accuracy": 0.9, "answered_accuracy": 0.97, "threshold": 0.8},
)


def fixed_report(**changes: object) -> DemoReport:
    config, tally, view = fixed_run()
    for name, value in changes.items():
        setattr(tally, name, value)
    return build_report(
        config,
        tally,
        view,
        run_s=12.3456,
        drain_s=1.004,
        cloud_accuracy=0.98765,
        cloud_inputs=360,
        gateway_figures=gateway_figures(GATEWAY_METRICS),
        trace=TraceSummary.of("ab" * 16, tally.traced_id, SPANS),
        rollouts=ROLLOUTS,
        review=REVIEW,
        improvement=IMPROVEMENT,
    )


def test_the_report_json_keeps_every_key_order_and_meaning() -> None:
    report = fixed_report().to_json()
    assert report == {
        "requests": 600,
        "sent": 600,
        "answered": 600,
        "lost": 0,
        "errors": {},
        "by_tier": {"edge": 0.7, "gateway": 0.2, "cloud": 0.1},
        "answered_by_tier": {"edge": 420, "gateway": 120, "cloud": 60},
        "accuracy": 0.97,
        "cloud_only_accuracy": 0.9877,
        "cloud_only_distinct_inputs": 360,
        "degraded": {
            "count": 40,
            "reasons": {"breaker_open": 30, "no_responders": 10},
            "by_tier": {"gateway": 40},
        },
        "latency_ms": {
            "edge": {"p50": 2.0, "p99": 2.98, "count": 3},
            "gateway": {"p50": 5.0, "p99": 5.98, "count": 2},
            "cloud": {"p50": 30.0, "p99": 30.0, "count": 1},
        },
        "upstream_bytes": 12000,
        "upstream_bytes_source": "gateway metrics",
        "cloud_only_upstream_bytes": 400_000,
        "breaker_transitions": [
            {"at_s": 4.5, "from": "closed", "to": "open"},
            {"at_s": 5.1, "from": "open", "to": "half_open"},
            {"at_s": 5.1, "from": "half_open", "to": "open"},
            {"at_s": 8.4, "from": "open", "to": "half_open"},
            {"at_s": 8.4, "from": "half_open", "to": "closed"},
        ],
        "breaker_transition_counts": {
            "closed->open": 1,
            "open->half_open": 2,
            "half_open->open": 1,
            "half_open->closed": 1,
        },
        "hard_examples": {
            "buffered": 40,
            "delivered": 40,
            "backlog_peak": 40,
            "backlog_left": 0,
            "drained_at_s": 9.25,
        },
        "link": {"cut_at_s": 4.2, "restored_at_s": 7.8, "leaf_reconnected_at_s": 8.0},
        "duration_s": 12.35,
        "drain_s": 1.0,
        "config": {
            "rate_per_s": 50.0,
            "concurrency": 32,
            "budget_ms": 500.0,
            "edge_replicas": 2,
            "tracing": "every request, OTLP/HTTP to the demo's receiver",
        },
        "trace": {
            "trace_id": "ab" * 16,
            "request_id": "req-1",
            "spans": 5,
            "tree": draw_span_tree(SPANS),
        },
        "fleet": {"nodes": 0, "swaps": 0, "rejected": 0, "events": []},
        "events": {"published": 0, "results": 0, "errors": 0, "alerts": 0},
        "rollouts": ROLLOUTS,
        "review": {
            "queued": 400,
            "labelled": 320,
            "pending": 70,
            "skipped": 10,
            "by_reason": {"unsure": 300, "disagreement": 60, "sampled": 40},
            "queued_per_min": 480.0,
            "labelled_per_min": 384.0,
            "reviewer": REVIEWER,
        },
        "improvement": {
            "version_before": "1-edge-weak",
            "version_after": "2-edge-learned",
            "labels_used": 320,
            "edge_share_before": 0.5,
            "edge_share_after": 0.7,
            "edge_accuracy_before": 0.8,
            "edge_accuracy_after": 0.9,
            "edge_answered_accuracy_before": 0.95,
            "edge_answered_accuracy_after": 0.97,
            "threshold_before": 0.9,
            "threshold_after": 0.8,
            "trained_on": 256,
            "held_back": 64,
            "heldout_rows": 360,
        },
        "energy": {
            "device_joules_per_answer": 0.0012,
            "cloud_only_device_joules_per_answer": 0.0018,
            "governor_steps": [
                {
                    "at_s": 4.0,
                    "step": "audits",
                    "action": "applied",
                    "watts": 0.15,
                    "budget_w": 0.1,
                },
            ],
            "node": "edge-1",
            "profile": "rpi4",
            "answers": 300,
            "battery_percent": 69.0,
        },
    }
    assert list(report) == list(json.loads(json.dumps(report)))


def test_without_gateway_metrics_the_report_counts_the_bytes_the_client_escalated() -> None:
    config, tally, view = fixed_run()
    report = build_report(
        config,
        tally,
        view,
        run_s=1.0,
        drain_s=0.0,
        cloud_accuracy=1.0,
        cloud_inputs=1,
        gateway_figures={},
        trace=TraceSummary.of(None, None, []),
    ).to_json()
    assert report["upstream_bytes"] == 120_000
    assert report["upstream_bytes_source"] == "client request sizes"
    assert report["breaker_transition_counts"] == {}
    assert report["trace"] == {"trace_id": None, "request_id": None, "spans": 0, "tree": []}


def render(report: DemoReport) -> str:
    console = Console(file=io.StringIO(), width=110, color_system=None, highlight=False)
    console.print(report_panel(report))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_the_rendered_report_states_the_run_its_tiers_and_its_trace() -> None:
    text = render(fixed_report())
    assert "edge mesh demo: report" in text
    assert "600 of 600 answered   lost 0   error replies 0   in 12.3 s" in text
    assert "cascade 97.00%   cloud alone 98.77%" in text
    assert "12,000 B from the site   cloud-only 400,000 B   (3.0% of it)" in text
    assert "40   (breaker_open 30, no_responders 10)" in text
    assert "cut at 4.2 s, restored at 7.8 s, leaf back at 8.0 s" in text
    assert "opened at 4.5 s, 1 failed probe, closed at 8.4 s   (5 transitions)" in text
    assert "buffered 40   delivered to the hub 40   backlog peak 40, drained at 9.2 s" in text
    assert f"one escalated request's trace {'ab' * 16}" in text
    assert "1.20 mJ an answer on rpi4 (cloud-only 1.80 mJ)   governor steps taken: audits" in text
    assert "[cloud-0] mesh.cloud.infer.digits process" in text
    rows = [line for line in text.splitlines() if "edge " in line and "70.0%" in line]
    assert len(rows) == 1 and "420" in rows[0] and "2.00" in rows[0] and "2.98" in rows[0]
    flat = " ".join(line.strip("│ ") for line in text.splitlines())
    assert (
        "digits@2-edge   completed   began in shadow   canary 1 node(s), at most 2 "
        "serving it, 140 answers before the decision"
    ) in flat
    assert (
        "digits@3-confused   rolled_back   gate agreement   began in shadow   canary 1 "
        "node(s), at most 0 serving it, 0 answers before the decision"
    ) in flat
    assert "queued 400 (480/min: disagreement 60, sampled 40, unsure 300)   labelled 320 by" in flat
    assert "the simulated reviewer (6 wrong on purpose)   pending 70" in flat
    assert (
        "on 360 held-out rows: 1-edge-weak answers 50.0% at the edge, accuracy 80.0%; "
        "2-edge-learned answers 70.0%, accuracy 90.0% (its own answers 95.0% -> 97.0%), "
        "from 320 labels"
    ) in flat


def test_a_report_with_losses_fails_and_says_how_many() -> None:
    report = fixed_report(answered=598, errors=Counter({"UnavailableError": 2}))
    assert report.lost == 2 and not report.passed
    assert "598 of 600 answered   lost 2   error replies 2" in render(report)
    assert fixed_report().passed


def test_the_breaker_summary_counts_failed_probes() -> None:
    assert breaker_summary([]) == "no transition seen"
    assert (
        breaker_summary([Transition(1.0, "closed", "open"), Transition(2.0, "open", "half_open")])
        == "opened at 1.0 s, 0 failed probes   (2 transitions)"
    )


def test_tiers_are_ordered_along_the_chain_then_by_name() -> None:
    counts = Counter({"zeta": 1, "cloud": 2, "edge": 3, "alpha": 4, "gateway": 0})
    assert tiers_in_order(counts) == ["edge", "cloud", "alpha", "zeta"]


def test_a_demo_cache_built_by_another_checkout_is_rebuilt_with_a_notice(
    demo: DemoArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from mesh.cli.options import DEFAULT_DEMO_CACHE
    from mesh.dev.models import demo as demo_models

    cache = tmp_path / "cache"
    shutil.copytree(demo.root, cache)
    marker = cache / demo_models.MARKER
    data = json.loads(marker.read_text())
    data["recipe"] = "another-checkout"
    marker.write_text(json.dumps(data))

    def copy_build(out: Path, seed: int) -> DemoArtifacts:  # the build itself, without training
        shutil.copytree(demo.root, out, dirs_exist_ok=True)
        (out / demo_models.MARKER).unlink()
        return DemoArtifacts.at(out)

    monkeypatch.setattr(demo_models, "_build_pinned", copy_build)
    notices: list[str] = []
    demo_models.ensure_demo(cache, notice=notices.append)
    assert len(notices) == 1 and "another checkout or version" in notices[0]
    assert json.loads(marker.read_text())["recipe"] != "another-checkout"
    notices.clear()
    demo_models.ensure_demo(cache, notice=notices.append)  # this checkout's own: kept, quiet
    assert notices == []
    # and by default every checkout has a cache of its own
    assert DEFAULT_DEMO_CACHE.name.startswith("demo-") and len(DEFAULT_DEMO_CACHE.name) == 17
