"""Dashboards and alerts as code: the rules pass ``promtool check rules`` and their own
``promtool test rules``, every dashboard panel's query parses as PromQL, and every mesh metric
they name is one the mesh exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.localrun import ROOT
from tests.deploy.scrape import SYSTEM_DEPS, promtool

OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus" / "mesh.rules.yaml"
DASHBOARD = OBSERVABILITY / "grafana" / "edge-mesh.json"
#: Grafana's variables, as a query is sent to Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$tier": ".*",
}
needs_promtool = pytest.mark.skipif(promtool() is None, reason=SYSTEM_DEPS)


def _promtool(*args: str, cwd: Path) -> None:
    tool = promtool()
    assert tool is not None
    done = subprocess.run([tool, *args], capture_output=True, text=True, cwd=cwd, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def _exported_metrics() -> set[str]:
    """Every metric family the mesh's code names (counters get ``_total``, histograms their
    series), from the source: the collector's families and the gauges registered at run time."""
    names: set[str] = set()
    for path in (ROOT / "mesh").rglob("*.py"):
        names.update(re.findall(r'"(mesh_[a-z_]+)"', path.read_text()))
    from mesh.observability.metrics import CounterFamily, MeshMetrics

    for family in MeshMetrics().families():
        if isinstance(family, CounterFamily):
            names.add(f"{family.name}_total")
        else:
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names


@needs_promtool
def test_the_rules_pass_promtool_check_and_their_tests() -> None:
    _promtool("check", "rules", RULES.name, cwd=RULES.parent)
    _promtool("test", "rules", "mesh.rules.test.yaml", cwd=RULES.parent)


def test_the_rules_page_for_what_the_issue_names() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    expected = {"MeshBreakerOpen", "MeshDegradedRateHigh", "MeshHardExampleBacklogGrowing",
                "MeshDrift", "MeshNodeOffline", "MeshRolloutRolledBack"}  # fmt: skip
    assert expected <= alerts
    tests = yaml.safe_load((RULES.parent / "mesh.rules.test.yaml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])}
    assert alerts <= tested, f"alerts with no promtool test: {alerts - tested}"


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    queries = _queries()
    assert len(queries) >= 15
    rules: dict[str, Any] = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    _promtool("check", "rules", "queries.yaml", cwd=tmp_path)


def test_the_dashboard_has_panels_for_what_the_issue_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "answers per tier",
        "escalation",
        "degraded",
        "breaker",
        "backlog",
        "latency",
        "drift",
        "versions per node",
    ):
        assert topic in titles, topic


def test_every_mesh_metric_named_is_one_the_mesh_exports() -> None:
    exported = _exported_metrics()
    text = RULES.read_text() + DASHBOARD.read_text()
    used = set(re.findall(r"\b(mesh_[a-z_]+)", text))
    unknown = used - exported
    assert not unknown, f"metrics the mesh does not export: {unknown}"


def test_the_kubernetes_scrape_jobs_are_named_as_the_rules_expect() -> None:
    # Debian's promtool is built without Kubernetes service discovery: checked as YAML here
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "kubernetes-scrape.yaml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"mesh-node", "mesh-ingress", "mesh-review", "nats"}
    assert all(job["kubernetes_sd_configs"][0]["role"] == "pod" for job in jobs.values())
