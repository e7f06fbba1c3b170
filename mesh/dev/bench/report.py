"""The bench's report: typed dataclasses built from the finished trials, written as the JSON
``mesh bench --json`` has always written (``rows``, ``ratios``, ``targets``...) plus the hot
path's figures, and drawn as a table."""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.measure import Row, median
from mesh.dev.bench.ratios import paired_ratios, targets
from mesh.energy.profiles import default_profile


@dataclass
class TrialSummary:
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float | None
    cpu_ms_per_1k: float | None
    errors: int
    #: the row's own node's CPU per request in the throughput phase, where the row names one.
    node_cpu_us: float | None = None


@dataclass
class RowSummary:
    label: str
    available: bool
    note: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput_rps: float | None = None
    cpu_ms_per_1k: float | None = None
    requests: int = 0
    errors: int = 0
    answered_by: dict[str, int] = field(default_factory=dict)
    trials: list[TrialSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"label": self.label, "available": False, "note": self.note}
        return asdict(self)


@dataclass
class MemoryFigures:
    rss_mb: float | None
    peak_rss_mb: float | None


@dataclass
class BenchReport:
    machine: dict[str, Any]
    config: dict[str, Any]
    rows: dict[str, RowSummary]
    memory: dict[str, MemoryFigures]
    edge_rss_mb: float | None
    ratios: dict[str, float | None]
    targets: dict[str, bool | None]
    #: the edge node's CPU per request at ``concurrency`` in flight, microseconds (median).
    node_cpu_us_per_request: float | None = None
    #: the SDK client's CPU per request at ``concurrency`` in flight, microseconds (median).
    client_cpu_us_per_request: float | None = None
    #: mean rows per model call at the edge node at ``concurrency`` in flight (median).
    rows_per_model_call: float | None = None
    #: mesh edge throughput over the aiohttp peer's, paired by trial (median).
    mesh_throughput_over_peer: float | None = None
    #: the device's energy per 1,000 answers, mesh against cloud-only, and the constants used.
    energy: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "machine": self.machine,
            "config": self.config,
            "rows": {key: row.to_json() for key, row in self.rows.items()},
            "memory": {key: asdict(m) for key, m in self.memory.items()},
            "edge_rss_mb": self.edge_rss_mb,
            "ratios": self.ratios,
            "targets": self.targets,
            "node_cpu_us_per_request": self.node_cpu_us_per_request,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
            "rows_per_model_call": self.rows_per_model_call,
            "mesh_throughput_over_peer": self.mesh_throughput_over_peer,
            "energy": self.energy,
        }


def summarize(row: Row) -> RowSummary:
    if row.unavailable is not None:
        return RowSummary(row.label, False, f"not available: {row.unavailable}")
    answered: Counter[str] = Counter()
    for t in row.trials:
        answered.update(t.answered_by)
    return RowSummary(
        label=row.label,
        available=True,
        note=row.note,
        p50_ms=median([t.p50_ms for t in row.trials]),
        p99_ms=median([t.p99_ms for t in row.trials]),
        throughput_rps=median([t.throughput_rps for t in row.trials]),
        cpu_ms_per_1k=median([t.cpu_ms_per_1k for t in row.trials]),
        requests=sum(t.requests for t in row.trials),
        errors=sum(t.errors for t in row.trials),
        answered_by=dict(answered),
        trials=[
            TrialSummary(
                t.p50_ms, t.p99_ms, t.throughput_rps, t.cpu_ms_per_1k, t.errors, t.node_cpu_us
            )
            for t in row.trials
        ],
    )


def build_report(
    config: BenchConfig,
    rows: dict[str, Row],
    memory: dict[str, MemoryFigures],
    *,
    calibrated: float,
) -> BenchReport:
    """The report of the finished trials; the edge node's figures come from ``mesh_edge``."""
    edge_trials = rows["mesh_edge"].trials
    edge_rss = memory["edge"].rss_mb
    ratios = paired_ratios(rows)
    node_cpu = median([t.node_cpu_us for t in edge_trials])
    client_cpu = median([t.client_cpu_us for t in edge_trials])
    return BenchReport(
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        config={
            "trials": config.trials,
            "latency_n": config.latency_n,
            "throughput_n": config.throughput_n,
            "link_latency_n": config.link_latency_n,
            "link_throughput_n": config.link_throughput_n,
            "concurrency": config.concurrency,
            "link_added_rtt_ms": 2 * config.link_ms_one_way,
            "payload": "one digits row, float32 (1, 64)",
            "calibrated_edge_threshold": calibrated,
        },
        rows={key: summarize(row) for key, row in rows.items()},
        memory=memory,
        edge_rss_mb=edge_rss,
        ratios=ratios,
        targets=targets(
            ratios,
            node_cpu=node_cpu,
            client_cpu=client_cpu,
            edge_rss=edge_rss,
            local_p50_ms=median([t.p50_ms for t in rows["mesh_local"].trials])
            if "mesh_local" in rows
            else None,
        ),
        node_cpu_us_per_request=node_cpu,
        client_cpu_us_per_request=client_cpu,
        rows_per_model_call=median([t.rows_per_call for t in edge_trials]),
        mesh_throughput_over_peer=ratios["mesh_throughput_over_peer"],
        energy=energy_figures(rows, ratios),
    )


def energy_figures(rows: dict[str, Row], ratios: dict[str, float | None]) -> dict[str, Any]:
    """The mesh row over the +40 ms link (the edge node with the calibrated threshold) against
    cloud-only: joules per 1,000 answers on the device, medians over trials."""
    mix = rows.get("mesh_link_mix")
    trials = mix.trials if mix is not None else []
    mesh = median([t.device_j_per_answer for t in trials])
    cloud = median([t.cloud_only_j_per_answer for t in trials])
    return {
        "row": "mesh_link_mix",
        "mesh_device_joules_per_1k": mesh * 1000 if mesh is not None else None,
        "cloud_only_device_joules_per_1k": cloud * 1000 if cloud is not None else None,
        "device_energy_over_cloud_only": ratios.get("device_energy_over_cloud_only"),
        "what": "mesh: the edge node's ledger over the throughput phase (its process's CPU "
        "time at the profile's power per busy core, plus its escalations' messages and bytes "
        "over the link); cloud-only: one request and its reply over the same link per answer, "
        "at the sizes the node sent and received (the device's CPU to send is not counted). "
        "CPU time is this machine's, priced at the device profile's power",
        "constants": default_profile("device").constants(),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render(report: BenchReport) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = report.config
    table = Table(
        title=(
            f"mesh bench: medians of {cfg['trials']} interleaved trials; "
            f"c=1 latency, c={cfg['concurrency']} throughput"
        )
    )
    for name, justify in [
        ("row", "left"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("req/s", "right"),
        ("CPU ms/1k req", "right"),
        ("answered by", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report.rows.values():
        if not row.available:
            table.add_row(row.label, "-", "-", "-", "-", row.note)
            continue
        answered = ", ".join(f"{k} {v}" for k, v in sorted(row.answered_by.items()))
        if row.errors:
            answered += f"; errors {row.errors}"
        table.add_row(
            row.label,
            _fmt(row.p50_ms),
            _fmt(row.p99_ms),
            _fmt(row.throughput_rps),
            _fmt(row.cpu_ms_per_1k, 1),
            answered,
        )
    console = Console()
    console.print(table)
    mem = ", ".join(f"{k} {_fmt(v.rss_mb, 1)} MB" for k, v in report.memory.items())
    console.print(f"node RSS: {mem}")
    console.print(
        f"edge node CPU per request at c={cfg['concurrency']}: "
        f"{_fmt(report.node_cpu_us_per_request, 1)} us; SDK client CPU per request: "
        f"{_fmt(report.client_cpu_us_per_request, 1)} us; rows per model call: "
        f"{_fmt(report.rows_per_model_call, 1)}"
    )
    for key, value in report.ratios.items():
        console.print(f"{key}: {_fmt(value)}")
    energy = report.energy
    if energy:
        console.print(
            f"device energy per 1,000 answers on {energy['constants']['profile']}: mesh "
            f"{_fmt(energy['mesh_device_joules_per_1k'])} J, cloud-only "
            f"{_fmt(energy['cloud_only_device_joules_per_1k'])} J"
        )
    for key, met in report.targets.items():
        mark = "n/a" if met is None else ("met" if met else "NOT met")
        console.print(f"target {key}: {mark}")
