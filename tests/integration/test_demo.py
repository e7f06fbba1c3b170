"""``mesh demo`` (what `make demo` runs) end to end: real NATS servers, node processes, a cut link,
rollouts, a report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

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
        timeout=170,
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
    # The signed new edge version reached both edge nodes mid-run; the tampered one did not.
    # A controller rolled a good version out (canary, then both edge nodes) and rolled a version
    # confusing two classes back from its canary on the agreement gate.
    fleet = report["fleet"]
    assert fleet["nodes"] == 4
    assert fleet["swaps"] == 4  # 2-edge on both, 3-confused on the canary and back
    assert fleet["rejected"] == 2
    assert "fleet: digits@2-edge" in proc.stdout and "swapped digits" in proc.stdout
    good, bad = report["rollouts"]
    said = "\n".join(line for line in proc.stdout.splitlines() if "rollout" in line)
    assert (good["version"], good["outcome"], good["failed_gate"]) == (
        "2-edge", "completed", None,
    ), said  # fmt: skip
    assert good["max_nodes_serving"] == 2 and good["canary_nodes"] == 1
    assert (bad["version"], bad["outcome"], bad["failed_gate"]) == (
        "3-confused", "rolled_back", "agreement",
    )  # fmt: skip
    assert bad["canary_nodes"] == 1 and bad["max_nodes_serving"] <= 1
    assert "failed gate agreement" in proc.stdout
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
