"""The deployment files stay in step with the code: every node settings file they carry loads
as ``NodeSettings``, probes and metrics point at the port the settings serve, and the compose
site wires the tiers the way the README's topology draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mesh.settings import NodeSettings

ROOT = Path(__file__).resolve().parents[2]


def _settings(text: str) -> NodeSettings:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return NodeSettings(**data)


def test_every_compose_node_config_is_valid_and_serves_http_on_8080() -> None:
    for name in ("edge", "gateway", "cloud"):
        settings = _settings((ROOT / "compose" / "config" / f"{name}.yaml").read_text())
        assert settings.tier == name
        assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)
        assert all(
            m.manifest is not None and str(m.manifest).startswith("/models/")
            for m in settings.models
        )


def test_the_compose_site_chains_edge_to_gateway_to_cloud_across_the_leaf_link() -> None:
    edge = _settings((ROOT / "compose/config/edge.yaml").read_text())
    gateway = _settings((ROOT / "compose/config/gateway.yaml").read_text())
    cloud = _settings((ROOT / "compose/config/cloud.yaml").read_text())
    assert edge.entry and edge.upstream is not None and edge.upstream.tier == "gateway"
    assert gateway.upstream is not None and gateway.upstream.tier == "cloud"
    assert cloud.upstream is None
    assert edge.nats.servers == gateway.nats.servers == ["tls://nats-site:4222"]
    assert cloud.nats.servers == ["tls://nats-hub:4222"]
    compose = yaml.safe_load((ROOT / "compose/site.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"nats-hub", "nats-site", "edge-0", "edge-1", "gateway", "cloud"} <= set(services)
    assert "leafnodes" in (ROOT / "compose/config/site.conf").read_text()
    assert services["nats-site"]["environment"]["NATS_HUB_LEAF_URL"].endswith(":7422")


def test_the_kubernetes_cloud_tier_config_loads_and_its_probes_hit_the_served_endpoints() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s/mesh.yaml").read_text()) if d]
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by_kind_name[("ConfigMap", "mesh-cloud")]["data"]["node.yaml"]
    settings = _settings(config)
    deployment = by_kind_name[("StatefulSet", "mesh-cloud")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == settings.http_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.http_port)
    assert settings.nats.servers[0].startswith("tls://nats-hub.")
    assert ("Service", "nats-hub-leafnodes") in by_kind_name


def test_the_compose_ingress_runs_mesh_ingress_with_options_it_takes() -> None:
    from mesh.cli.serving import ingress

    compose = yaml.safe_load((ROOT / "compose/site.yaml").read_text())
    service = compose["services"]["ingress"]
    command = service["command"]
    assert command[0] == "ingress"
    ctx = ingress.make_context(
        "ingress",
        [
            c
            for c in command[1:]
            if not c.startswith("--tls-ca")
            and not c.startswith("--creds")
            and not c.startswith("--manifest")
        ],
    )
    assert ctx.params["http_port"] == 8000 and ctx.params["grpc_port"] == 8001
    assert ctx.params["host"] == "0.0.0.0"
    assert "/v2/health/ready" in " ".join(service["healthcheck"]["test"])
    assert "/etc/mesh/secrets/creds/ingress.creds" in " ".join(command)
