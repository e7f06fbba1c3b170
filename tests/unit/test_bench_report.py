"""The bench's pure parts: paired ratios, row summaries, the JSON shape and the table."""

from __future__ import annotations

from collections import Counter

import pytest

from mesh.dev.bench.measure import Row, Trial, paired_ratio
from mesh.dev.bench.report import BenchReport, MemoryFigures, render, summarize


def _trial(p50: float, rps: float) -> Trial:
    return Trial(p50, p50 * 2, rps, 100.0, 10, 0, Counter({"edge": 10}), 90.0, 60.0, 20.0)


def _row(key: str, trials: list[Trial]) -> Row:
    return Row(key, key, None, [], 1, 1, trials=trials)


def test_paired_ratio_is_the_median_of_ratios_within_each_trial() -> None:
    rows = {
        "a": _row("a", [_trial(2.0, 10), _trial(4.0, 10), _trial(9.0, 10)]),
        "b": _row("b", [_trial(1.0, 5), _trial(1.0, 5), _trial(3.0, 5)]),
    }
    assert paired_ratio(rows, "a", "b", "p50_ms") == pytest.approx(3.0)
    assert paired_ratio(rows, "a", "b", "throughput_rps") == pytest.approx(2.0)
    assert paired_ratio(rows, "a", "missing", "p50_ms") is None


def test_a_summary_takes_medians_and_an_unavailable_row_says_why() -> None:
    summary = summarize(_row("a", [_trial(1.0, 10), _trial(3.0, 30), _trial(2.0, 20)]))
    assert (summary.p50_ms, summary.throughput_rps, summary.requests) == (2.0, 20.0, 30)
    assert summary.answered_by == {"edge": 30}
    gone = _row("b", [])
    gone.unavailable = "no binary"
    assert summarize(gone).to_json() == {
        "label": "b",
        "available": False,
        "note": "not available: no binary",
    }


def _report() -> BenchReport:
    row = summarize(_row("mesh_edge", [_trial(0.7, 7000)]))
    return BenchReport(
        machine={"cpus": 2},
        config={"trials": 1, "concurrency": 64},
        rows={"mesh_edge": row},
        memory={"edge": MemoryFigures(100.0, 110.0)},
        edge_rss_mb=100.0,
        ratios={"edge_p50_over_echo_p50": 1.3, "mesh_throughput_over_peer": 1.6},
        targets={"edge_p50_within_1_4x_echo": True},
        node_cpu_us_per_request=90.0,
        client_cpu_us_per_request=60.0,
        rows_per_model_call=20.0,
        mesh_throughput_over_peer=1.6,
    )


def test_the_json_keeps_the_keys_readers_rely_on() -> None:
    data = _report().to_json()
    assert list(data) == [
        "version",
        "machine",
        "config",
        "rows",
        "memory",
        "edge_rss_mb",
        "ratios",
        "targets",
        "node_cpu_us_per_request",
        "client_cpu_us_per_request",
        "rows_per_model_call",
        "mesh_throughput_over_peer",
        "energy",
    ]
    row = data["rows"]["mesh_edge"]
    assert list(row) == [
        "label",
        "available",
        "note",
        "p50_ms",
        "p99_ms",
        "throughput_rps",
        "cpu_ms_per_1k",
        "requests",
        "errors",
        "answered_by",
        "trials",
    ]
    assert data["memory"] == {"edge": {"rss_mb": 100.0, "peak_rss_mb": 110.0}}


def test_the_table_shows_rows_figures_ratios_and_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render(_report())
    out = capsys.readouterr().out
    assert "mesh_edge" in out and "7,000" in out
    assert "rows per model call: 20.0" in out
    assert "edge_p50_over_echo_p50: 1.300" in out
    assert "target edge_p50_within_1_4x_echo: met" in out


def test_the_device_energy_ratio_pairs_the_mesh_and_cloud_only_figures_of_each_trial() -> None:
    from mesh.dev.bench.measure import within_ratio
    from mesh.dev.bench.report import energy_figures

    trials = [_trial(1.0, 10), _trial(1.0, 10), _trial(1.0, 10)]
    for trial, (mesh, cloud) in zip(trials, [(0.2, 1.0), (0.3, 1.0), (0.9, 1.5)], strict=True):
        trial.device_j_per_answer, trial.cloud_only_j_per_answer = mesh, cloud
    rows = {"mesh_link_mix": _row("mesh_link_mix", trials)}
    ratio = within_ratio(rows, "mesh_link_mix", "device_j_per_answer", "cloud_only_j_per_answer")
    assert ratio == pytest.approx(0.3)
    figures = energy_figures(rows, {"device_energy_over_cloud_only": ratio})
    assert figures["mesh_device_joules_per_1k"] == pytest.approx(300.0)
    assert figures["cloud_only_device_joules_per_1k"] == pytest.approx(1000.0)
    assert figures["constants"]["profile"] == "rpi4"
    assert figures["constants"]["active_w_per_core"] == pytest.approx(0.85)
