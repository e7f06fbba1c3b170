"""``mesh demo`` (what `make demo` runs) end to end: real NATS servers, node processes, a cut link,
the improve loop (a review queue, a simulated reviewer, a learn job, shadow stages), a report.

It is the end-to-end test of the loop on digits: the edge starts on a deliberately weak
version, at least 300 labels come from the queue, the loop produces a version at least as
accurate at the edge on held-out rows while answering at least as large a share there, and a
confused version fails in shadow with no answer served."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPORT_KEYS = {
    "requests",
    "answered",
    "lost",
    "by_tier",
    "accuracy",
    "cloud_only_accuracy",
    "degraded",
    "latency_ms",
    "upstream_bytes",
    "cloud_only_upstream_bytes",
    "breaker_transitions",
    "hard_examples",
    "trace",
    "fleet",
    "rollouts",
    "events",
    "energy",
    "review",
    "improvement",
}
IMPROVEMENT_KEYS = {
    "version_before",
    "version_after",
    "labels_used",
    "edge_share_before",
    "edge_share_after",
    "edge_accuracy_before",
    "edge_accuracy_after",
}


def test_demo_loses_nothing_through_the_outage_rolls_out_and_back_and_writes_a_report(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "demo",
            "--cache",
            str(demo.root),
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=230,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) < 200  # progress lines, not a flood
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"operator console was at http://127\.0\.0\.1:\d+/\?token=", last), last

    report = json.loads(report_path.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["lost"] == 0
    assert report["answered"] == report["requests"] > 0
    assert report["degraded"]["count"] > 0
    assert set(report["degraded"]["reasons"]) <= {
        "no_responders",
        "breaker_open",
        "timeout",
        "upstream_error",
        "budget",
        "power",  # the edge device on battery, if its governor reaches the ladder's last step
    }
    assert set(report["by_tier"]) <= {"edge", "gateway", "cloud"}
    assert sum(report["by_tier"].values()) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 < report["accuracy"] <= 1.0 and 0.0 < report["cloud_only_accuracy"] <= 1.0
    assert 0 < report["upstream_bytes"] < report["cloud_only_upstream_bytes"]
    assert all({"p50", "p99"} <= set(v) for v in report["latency_ms"].values())
    assert any(t["to"] == "open" for t in report["breaker_transitions"])
    hard = report["hard_examples"]
    assert hard["buffered"] > 0
    assert hard["delivered"] == hard["buffered"]
    trace = report["trace"]
    assert trace["trace_id"] and len(trace["trace_id"]) == 32
    tree = "\n".join(trace["tree"])
    for node in ("demo", "edge-", "gateway-0", "cloud-0"):
        assert f"[{node}" in tree
    # The tampered version was refused by both edge nodes. The review queue filled and a
    # simulated reviewer (said to be) labelled it; the learn job trained a better edge version
    # on the labels, which passed its shadow stage and reached both edge nodes; a version
    # confusing two classes failed the agreement gate in its shadow stage, serving nothing.
    fleet = report["fleet"]
    assert fleet["nodes"] == 4
    assert fleet["swaps"] == 2  # the learned version on both; the confused one on none
    assert fleet["rejected"] == 2
    assert "simulated reviewer" in proc.stdout and "swapped digits" in proc.stdout
    good, bad = report["rollouts"]
    said = "\n".join(line for line in proc.stdout.splitlines() if "rollout" in line)
    assert (good["version"], good["outcome"], good["failed_gate"], good["shadow"]) == (
        "2-edge-learned", "completed", None, True,
    ), said  # fmt: skip
    assert good["max_nodes_serving"] == 2 and good["canary_nodes"] == 1
    assert good["answers_served_before_decision"] > 0
    assert (bad["version"], bad["outcome"], bad["failed_gate"], bad["shadow"]) == (
        "4-confused", "rolled_back", "agreement", True,
    ), said  # fmt: skip
    assert bad["answers_served_before_decision"] == 0 and bad["max_nodes_serving"] == 0
    assert "failed gate agreement" in proc.stdout
    review = report["review"]
    assert review["labelled"] >= 300 and review["reviewer"]["simulated"] is True
    assert review["queued"] == review["labelled"] + review["pending"] + review["skipped"]
    assert sum(review["by_reason"].values()) == review["queued"]
    improvement = report["improvement"]
    assert set(improvement) >= IMPROVEMENT_KEYS
    print(json.dumps({"review": review, "improvement": improvement}))
    assert improvement["version_before"] == "1-edge-weak"
    assert improvement["version_after"] == "2-edge-learned"
    assert improvement["labels_used"] >= 300
    assert improvement["edge_accuracy_after"] >= improvement["edge_accuracy_before"]
    assert improvement["edge_share_after"] >= improvement["edge_share_before"]
    # A publisher's events each got a result, and the alert rule fired.
    events = report["events"]
    assert events["published"] == 200 and events["results"] == 200
    assert events["errors"] == 0 and events["alerts"] > 0
    assert "alert on mesh.actions.alerts.line4" in proc.stdout
    # One edge device is on battery: its energy per answer by its own ledger, what cloud-only
    # would have cost it, and the steps its governor took once its battery reported low.
    energy = report["energy"]
    assert energy["device_joules_per_answer"] > 0
    assert energy["cloud_only_device_joules_per_answer"] > 0
    steps = energy["governor_steps"]
    assert steps and steps[0]["step"] == "audits" and steps[0]["action"] == "applied"
    assert "mW ladder" in proc.stdout  # the live view's line for it
    assert "power: edge-1 takes step audits" in proc.stdout
