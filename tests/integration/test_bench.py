"""``mesh bench --quick`` runs end to end and writes well-formed JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RATIOS = (
    "edge_p50_over_echo_p50",
    "throughput_over_echo",
    "cloud_only_p50_over_mesh_p50",
    "peer_p50_over_mesh_p50",
    "mesh_throughput_over_peer",
    "peer_p50_over_nats_ort_p50",
    "edge_p50_over_nats_ort_p50",
    # issue 33: every way in as fast as the request path
    "peer_p50_over_local_p50",
    "events_throughput_over_request_reply",
    "events_cpu_over_request_reply",
    "oip_rest_p50_over_sdk_p50",
    "oip_grpc_cpu_over_rest",
    "oip_rest_local_p50_over_peer_p50",
)
ROWS = (
    "ort_floor",
    "nats_echo",
    "nats_ort",
    "mesh_edge",
    "mesh_local",
    "events_edge",
    "mesh_escalated",
    "mesh_link_escalated",
    "mesh_link_mix",
    "cloud_only_link",
    "peer_aiohttp",
    "peer_mlserver",
    "oip_rest",
    "oip_rest_local",
    "oip_grpc",
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_quick_writes_well_formed_json(tmp_path: Path, demo: DemoArtifacts) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "bench",
            "--quick",
            "--json",
            str(out),
            "--cache",
            str(demo.root),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert set(RATIOS) <= set(report["ratios"])
    for key in RATIOS:
        assert _number(report["ratios"][key]), (key, report["ratios"][key])
    assert set(ROWS) <= set(report["rows"])
    for key, row in report["rows"].items():
        assert isinstance(row["label"], str)
        if not row["available"]:
            assert row["note"].startswith("not available:"), key
            continue
        for field in ("p50_ms", "p99_ms"):
            assert _number(row[field]), (key, field)
        assert row["requests"] > 0
        assert isinstance(row["answered_by"], dict)
    assert _number(report["rows"]["mesh_local"]["throughput_rps"])
    assert report["rows"]["mesh_local"]["cpu_ms_per_1k"] is None  # no server process
    # the ingress hosting the edge answered from its own process, as the edge tier (the
    # novelty check sends the odd row up to the cloud)
    hosted = report["rows"]["oip_rest_local"]["answered_by"]
    assert "edgelocal" in hosted and set(hosted) <= {"edgelocal", "cloud"}, hosted
    for key in ("mesh_edge", "mesh_escalated", "cloud_only_link", "nats_echo", "nats_ort"):
        assert _number(report["rows"][key]["throughput_rps"]), key
        assert _number(report["rows"][key]["cpu_ms_per_1k"]), key
    assert _number(report["edge_rss_mb"])
    assert set(report["targets"]) == {
        "edge_p50_within_1_2x_echo",
        "throughput_at_least_80pct_echo",
        "edge_p50_within_1_4x_echo",
        "throughput_at_least_half_echo",
        "peer_p50_at_least_mesh_p50",
        "throughput_at_least_1_5x_peer",
        "node_cpu_at_most_100_us",
        "client_cpu_at_most_70_us",
        "link_mesh_p50_at_most_tenth_of_cloud_only",
        "edge_rss_at_most_150_mb",
        "events_throughput_at_least_half_request_reply",
        "events_cpu_at_most_2x_request_reply",
        "oip_rest_p50_within_1_5x_sdk",
        "oip_rest_p50_at_most_0_8x_mlserver",
        "oip_rest_throughput_at_least_3x_mlserver",
        "oip_grpc_cpu_at_most_rest",
        "oip_rest_local_p50_at_most_0_8x_mlserver",
        "oip_rest_local_throughput_at_least_3x_mlserver",
        "local_p50_at_most_0_1_ms",
        "peer_p50_at_least_4x_local",
        "edge_p50_within_1_15x_nats_ort",
    }
    for key in ("node_cpu_us_per_request", "client_cpu_us_per_request", "rows_per_model_call"):
        assert _number(report[key]), (key, report[key])
    assert report["mesh_throughput_over_peer"] == report["ratios"]["mesh_throughput_over_peer"]
    # the device's energy per 1,000 answers, mesh against cloud-only, with its constants
    energy = report["energy"]
    assert _number(report["ratios"]["device_energy_over_cloud_only"])
    assert (
        energy["device_energy_over_cloud_only"] == report["ratios"]["device_energy_over_cloud_only"]
    )
    assert _number(energy["mesh_device_joules_per_1k"])
    assert _number(energy["cloud_only_device_joules_per_1k"])
    constants = energy["constants"]
    assert constants["profile"] == "rpi4" and _number(constants["active_w_per_core"])
    assert _number(constants["send_j_per_message"]) and constants["link_source"]
