"""The compose files, checked offline: against the compose specification, their node settings
against ``NodeSettings``, their NATS configs with ``nats-server -t``, their Prometheus
configuration with ``promtool``, and who may read which secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.console.settings import ConsoleSettings
from mesh.local.servers import server_binary
from mesh.review.settings import ReviewServiceSettings
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import ControllerSettings, IngressSettings, NodeSettings
from tests.deploy.containers import InterpolationError, compose_containers, load_compose
from tests.deploy.localrun import ROOT
from tests.deploy.scrape import SYSTEM_DEPS, promtool

COMPOSE = ROOT / "compose"
FILES = ("compose.yaml", "remote-site.yaml")
VARIABLES = {
    "MESH_INGRESS_TOKEN": "t",
    "MESH_CONSOLE_TOKEN": "console-token-of-16+",
    "GRAFANA_ADMIN_PASSWORD": "p",
    "MESH_SITE": "factory-7",
    "MESH_HUB_LEAF_URL": "nats-leaf://hub.example.com:7422",
}


#: the services that act as two identities, each its own creds file.
TWO_IDENTITIES = {
    "review": {"review-desk", "review-intake"},
    "console": {"console", "console-reviewer"},
}


def _settings(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", FILES)
def test_each_compose_file_follows_the_compose_specification(name: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"),
         "--builtin-schema", "vendor.compose-spec", str(COMPOSE / name)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "services" in yaml.safe_load((COMPOSE / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_images_name_a_registry_and_a_version(name: str) -> None:
    for service, spec in load_compose(COMPOSE / name, VARIABLES)["services"].items():
        image = str(spec["image"])
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (service, image)
        if "edge-mesh" in image:
            assert image.count("/") >= 2, f"{service}: {image} names no registry"


@pytest.mark.parametrize("name", FILES)
def test_every_mesh_service_mounts_only_its_own_credentials(name: str) -> None:
    containers = compose_containers(COMPOSE / name, VARIABLES)
    owners: dict[Path, set[str]] = {}
    for service, container in containers.items():
        sources = [m.source for m in container.mounts if m.source is not None]
        assert not any(
            s.name in {"fleet.json", "secrets", "site-secrets"}
            for s in sources
            if service != "identities"
        ), service
        for source in sources:
            if source.suffix == ".creds":
                owners.setdefault(source, set()).add(service)
            if source.name == "signing.key":
                assert service == "admin", f"{service} mounts the signing key"
        if container.is_mesh and service not in {"identities", "models"}:
            creds = {s.stem for s in sources if s.suffix == ".creds"}
            if service in TWO_IDENTITIES:
                assert creds == TWO_IDENTITIES[service], (service, creds)
            else:
                assert len(creds) == 1, (service, creds)
    # the administrator's identity serves its two one-shot steps (provisioning, operator commands)
    shared = {str(s): o for s, o in owners.items() if len(o) > 1 and o != {"provision", "admin"}}
    assert not shared, f"creds mounted into more than one service: {shared}"


@pytest.mark.parametrize("config", ["cloud", "gateway", "edge"])
def test_the_node_settings_load_and_serve_on_the_port_compose_checks(config: str) -> None:
    settings = NodeSettings(**_settings(COMPOSE / "config" / f"{config}.yaml"))
    assert settings.tier == config and settings.http_port == 8080
    assert settings.fleet.enabled and settings.fleet.trusted_keys == ["/run/secrets/signing.pub"]
    assert str(settings.nats.credentials) == "/run/secrets/nats.creds"
    assert config != "edge" or settings.events.enabled


def test_the_ingress_and_controller_settings_load() -> None:
    ingress = IngressSettings(**_settings(COMPOSE / "config" / "ingress.yaml"))
    assert (ingress.http_port, ingress.grpc_port) == (8000, 8001)
    controller = ControllerSettings(**_settings(COMPOSE / "config" / "controller.yaml"))
    assert controller.domain == "hub"


def test_the_review_and_console_settings_load_and_serve_where_compose_checks() -> None:
    containers = compose_containers(COMPOSE / "compose.yaml", VARIABLES)
    review = ReviewServiceSettings(**_settings(COMPOSE / "config" / "review.yaml"))
    assert (review.http_host, review.http_port, review.domain) == ("0.0.0.0", 8080, "hub")
    assert containers["review"].ports == [8080]
    mounted = {m.target for m in containers["review"].mounts}
    assert {str(review.nats.credentials), str(review.intake_credentials)} <= mounted
    console = _settings(COMPOSE / "config" / "console.yaml")
    assert "token" not in console and "tokens" not in console, "a token in a file is a default"
    with pytest.raises(ValueError, match="token"):
        ConsoleSettings(**console)
    settings = ConsoleSettings(**console, token=VARIABLES["MESH_CONSOLE_TOKEN"])
    assert (settings.host, settings.port) == ("0.0.0.0", 8090)
    assert containers["console"].ports == [8090]
    mounted = {m.target for m in containers["console"].mounts}
    assert {str(settings.nats.credentials), str(settings.reviewer_credentials)} <= mounted


def test_the_console_does_not_start_without_a_token_set() -> None:
    variables = {k: v for k, v in VARIABLES.items() if k != "MESH_CONSOLE_TOKEN"}
    with pytest.raises(InterpolationError, match="MESH_CONSOLE_TOKEN"):
        compose_containers(COMPOSE / "compose.yaml", variables)


def test_the_nats_configs_pass_nats_server_t(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "fleet", hosts=["127.0.0.1", "nats-hub", "nats-site"])
    leaf_creds = store.add(IdentitySpec("site-leaf", Role.LEAF))
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("auth.conf", "account.conf"):
        (etc / name).write_text((store.directory / name).read_text())
    moved = {
        "/etc/nats/tls/": f"{store.directory}/tls/",
        "/etc/nats/site-leaf.creds": str(leaf_creds),
        "/data": str(tmp_path / "data"),
    }
    env = {"MESH_SITE_DOMAIN": "site", "NATS_HUB_LEAF_URL": "nats-leaf://127.0.0.1:7422"}
    for conf in ("hub.conf", "site.conf"):
        text = (COMPOSE / "config" / conf).read_text()
        for old, new in moved.items():
            text = text.replace(old, new)
        (etc / conf).write_text(text)
        done = subprocess.run(
            [server_binary(), "-c", str(etc / conf), "-t"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (conf, done.stdout + done.stderr)


@pytest.mark.skipif(promtool() is None, reason=SYSTEM_DEPS)
def test_the_prometheus_configuration_loads_with_the_mesh_rules(tmp_path: Path) -> None:
    text = (COMPOSE / "observability" / "prometheus.yml").read_text()
    rules = ROOT / "deploy" / "observability" / "prometheus"
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/rules/*.yaml", f"{rules}/mesh.rules.yaml")
    )
    tool = promtool()
    assert tool is not None
    done = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(text)["scrape_configs"]}
    assert {"mesh-node", "mesh-ingress", "nats"} <= jobs


def test_the_collector_sends_every_trace_it_receives_to_jaeger() -> None:
    config = yaml.safe_load((COMPOSE / "observability" / "otel-collector.yaml").read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"


def test_grafana_is_provisioned_with_the_dashboard_and_the_datasource_its_panels_name() -> None:
    import json

    sources = yaml.safe_load(
        (COMPOSE / "observability/grafana/provisioning/datasources/mesh.yaml").read_text()
    )
    uids = {d["uid"] for d in sources["datasources"]}
    dashboard = json.loads((ROOT / "deploy/observability/grafana/edge-mesh.json").read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used <= uids
    compose = load_compose(COMPOSE / "compose.yaml", VARIABLES)
    provider = yaml.safe_load(
        (COMPOSE / "observability/grafana/provisioning/dashboards/mesh.yaml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert any(str(v).endswith(f":{path}:ro") for v in compose["services"]["grafana"]["volumes"])
