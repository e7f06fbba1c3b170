"""How a node's energy shows in ``mesh fleet status``, and the node's own figures settled at
scrape time."""

from __future__ import annotations

from typing import Any

from mesh.cli.fleet import power_text, status_rows
from mesh.energy.settings import EnergySettings
from mesh.node.outcomes import TierIdentity
from mesh.node.power import NodePower
from mesh.observability.metrics import MeshCollector, MeshMetrics
from mesh.wire import NodeStatus, PowerStatus


def test_status_rows_carry_the_power_and_the_table_says_it_in_a_few_characters() -> None:
    power = PowerStatus(
        profile="rpi4", watts=0.0312, budget_w=0.030, steps=["audits", "drift", "coalesce"],
        degrade_share=0.0, answers=10, joules_per_answer=0.004, battery_percent=57.0,
    )  # fmt: skip
    beats: dict[str, Any] = {
        "edge-0": NodeStatus("edge-0", "edge", {}, {}, 0, True, 99.0, power=power),
        "cloud-0": NodeStatus("cloud-0", "cloud", {}, {}, 0, True, 99.0),
    }
    rows = {r["node"]: r for r in status_rows(beats, now=100.0, offline_after_s=10.0)}
    assert rows["edge-0"]["power"]["steps"] == ["audits", "drift", "coalesce"]
    assert rows["edge-0"]["power"]["joules_per_answer"] == 0.004
    assert rows["cloud-0"]["power"] is None
    assert power_text(rows["edge-0"]["power"]) == "31/30mW 3st 57%"
    assert power_text(None) == "-"


def test_a_scrape_settles_the_ledger_so_its_joules_are_up_to_date() -> None:
    metrics = MeshMetrics()
    power = NodePower(EnergySettings(), TierIdentity("edge", "edge-0", "device"), metrics)
    metrics.refreshers.append(power._refresh)
    sum(i * i for i in range(200_000))  # some CPU of this process
    families = {f.name: f for f in MeshCollector(metrics).collect()}
    joules = families["mesh_energy_joules"].samples
    assert joules and all(s.labels["tier"] == "edge" for s in joules)
    assert sum(s.value for s in joules) > 0
    status = power.status()
    assert status.profile == "rpi4" and status.compute_j > 0 and status.budget_w is None
