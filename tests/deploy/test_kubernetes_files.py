"""The Kubernetes files, checked offline: every manifest file and every rendered overlay against
the Kubernetes schemas (``kubernetes-validate``, schemas packaged with it), the NATS chart values
rendered and checked with ``nats-server -t``, and what each workload promises: probes on the
served endpoints, measured resources, a non-root user that can read its secrets, budgets and
policies that select real pods."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh.console.settings import ConsoleSettings
from mesh.local.servers import server_binary
from mesh.review.settings import ReviewServiceSettings
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import ControllerSettings, IngressSettings, NodeSettings
from tests.deploy.kube import by_kind, kubectl, render
from tests.deploy.localrun import ROOT
from tests.deploy.natschart import format_config, load_values, server_config

K8S = ROOT / "k8s"
OVERLAYS = ("cloud", "site")
#: the oldest Kubernetes release the manifests are for (autoscaling/v2, policy/v1, subPathExpr).
KUBERNETES = "1.29.0"
IMAGE_UID = 10001

needs_kubectl = pytest.mark.skipif(
    kubectl() is None, reason="kubectl (kubectl kustomize) is not installed"
)


def _manifest_files() -> list[Path]:
    """Every file a kustomization lists as a resource (kustomization files themselves excluded)."""
    files = []
    for kustomization in [
        *K8S.rglob("kustomization.yaml"),
        ROOT / "deploy/observability/kustomization.yaml",
    ]:
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_file_validates_on_its_own(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if kubectl() is None:
        pytest.skip("kubectl (kubectl kustomize) is not installed")
    return render(K8S / "overlays" / request.param)


def _pod_specs(resources: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for r in resources:
        if r["kind"] in {"StatefulSet", "Deployment", "DaemonSet", "Job"}:
            template = r["spec"]["template"]
            out.append((r["metadata"]["name"], template["metadata"], template["spec"]))
    return out


@needs_kubectl
def test_every_rendered_resource_validates(rendered: list[dict[str, Any]]) -> None:
    for resource in rendered:
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)


@needs_kubectl
def test_every_container_runs_as_the_image_user_and_can_read_its_secrets(
    rendered: list[dict[str, Any]],
) -> None:
    for name, _, spec in _pod_specs(rendered):
        security = spec["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == IMAGE_UID, name
        assert security["fsGroup"] == IMAGE_UID, (
            f"{name}: secrets are group {IMAGE_UID}'s only with fsGroup"
        )
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                assert mode & 0o040, f"{name}: {volume['name']} unreadable by the group"
                if volume["secret"]["secretName"].endswith("-creds"):
                    assert not mode & 0o007, f"{name}: creds readable by all ({oct(mode)})"
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            limits = container["resources"]["limits"]
            assert "memory" in limits and "memory" in container["resources"]["requests"], name
            for quantity in (limits["memory"], container["resources"]["requests"]["memory"]):
                assert re.fullmatch(r"[1-9][0-9]*(Mi|Gi)", quantity), (name, quantity)


@needs_kubectl
def test_each_pod_mounts_only_its_own_creds(rendered: list[dict[str, Any]]) -> None:
    for name, _, spec in _pod_specs(rendered):
        secrets = {
            v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v
        }
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if secrets.get(mount["name"], "").endswith("-creds"):
                    assert mount.get("subPath", mount.get("subPathExpr", "")).endswith(".creds"), (
                        name,
                        mount,
                    )


@needs_kubectl
def test_probes_hit_the_endpoints_the_processes_serve(rendered: list[dict[str, Any]]) -> None:
    configs = by_kind(rendered, "ConfigMap")
    for name, metadata, spec in _pod_specs(rendered):
        container = spec["containers"][0]
        args = container.get("args", [])
        if args[:1] == ["node"]:
            config = next(
                c
                for c in configs.values()
                if "node.yaml" in c.get("data", {})
                and c["metadata"]["name"] in str(spec["volumes"])
            )
            settings = NodeSettings(**yaml.safe_load(config["data"]["node.yaml"]))
            port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
            assert port == settings.http_port and settings.http_host == "0.0.0.0", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert metadata["annotations"]["prometheus.io/port"] == str(port)
        elif args[:1] == ["ingress"]:
            config = next(c for c in configs.values() if "ingress.yaml" in c.get("data", {}))
            settings_i = IngressSettings(**yaml.safe_load(config["data"]["ingress.yaml"]))
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert (ports["http"], ports["grpc"]) == (settings_i.http_port, settings_i.grpc_port)
            assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        elif args[:1] == ["controller"]:
            config = next(c for c in configs.values() if "controller.yaml" in c.get("data", {}))
            ControllerSettings(**yaml.safe_load(config["data"]["controller.yaml"]))
        elif args[:2] == ["review", "serve"]:
            config = next(c for c in configs.values() if "review.yaml" in c.get("data", {}))
            review = ReviewServiceSettings(**yaml.safe_load(config["data"]["review.yaml"]))
            port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
            assert (port, review.http_host) == (review.http_port, "0.0.0.0"), name
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert metadata["annotations"]["prometheus.io/port"] == str(port)
        elif args[:1] == ["console"]:
            config = next(c for c in configs.values() if "console.yaml" in c.get("data", {}))
            data = yaml.safe_load(config["data"]["console.yaml"])
            assert "token" not in data and "tokens" not in data, "a token in a ConfigMap"
            token = next(e for e in container["env"] if e["name"] == "MESH_CONSOLE_TOKEN")
            assert token["valueFrom"]["secretKeyRef"]["name"] == "mesh-console-token"
            console = ConsoleSettings(**data, token="a-token-of-16-chars")
            port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
            assert (port, console.host) == (console.port, "0.0.0.0"), name
            # the one path served without the token (a probe cannot send it)
            assert container["readinessProbe"]["httpGet"]["path"] == "/static/console.css"


@needs_kubectl
def test_budgets_autoscalers_and_policies_select_real_pods(rendered: list[dict[str, Any]]) -> None:
    pods = [(m.get("labels", {}), n) for n, m, _ in _pod_specs(rendered)]

    def selects(selector: dict[str, str]) -> bool:
        return any(all(labels.get(k) == v for k, v in selector.items()) for labels, _ in pods)

    for pdb in by_kind(rendered, "PodDisruptionBudget").values():
        assert selects(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    workloads = {(r["kind"], r["metadata"]["name"]) for r in rendered}
    for hpa in by_kind(rendered, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads
        assert hpa["spec"]["metrics"], "an autoscaler with no signal"
    for policy in by_kind(rendered, "NetworkPolicy").values():
        labels = policy["spec"]["podSelector"].get("matchLabels", {})
        nats = labels.get("app.kubernetes.io/name") == "nats"
        assert not labels or nats or selects(labels), policy["metadata"]["name"]


@needs_kubectl
def test_the_edge_daemonset_runs_only_on_edge_machines() -> None:
    edge = by_kind(render(K8S / "overlays" / "site"), "DaemonSet")["mesh-edge"]["spec"]["template"][
        "spec"
    ]
    assert edge["nodeSelector"] == {"edge-mesh.io/edge": "true"}
    assert any(t["key"] == "edge-mesh.io/edge" for t in edge["tolerations"])


@pytest.mark.parametrize("values", ["hub-values.yaml", "site-values.yaml"])
def test_the_chart_values_make_a_config_nats_server_accepts(values: str, tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "fleet", hosts=["127.0.0.1"])
    leaf = store.add(IdentitySpec("site-leaf", Role.LEAF))
    conf = format_config(server_config(load_values(K8S / "nats" / values), values.split("-")[0]))
    tls = store.directory / "tls"
    moved = {
        "/etc/nats-certs/nats/tls.crt": tls / "server-cert.pem",
        "/etc/nats-certs/nats/tls.key": tls / "server-key.pem",
        "/etc/nats-certs/leafnodes/tls.crt": tls / "server-cert.pem",
        "/etc/nats-certs/leafnodes/tls.key": tls / "server-key.pem",
        "/etc/nats-ca-cert/ca.crt": tls / "ca.pem",
        "/etc/mesh-leaf/site-leaf.creds": leaf,
        "/etc/mesh-leaf/tls.crt": tls / "client-cert.pem",
        "/etc/mesh-leaf/tls.key": tls / "client-key.pem",
        "/var/run/nats/": f"{tmp_path}/",
        "/data": tmp_path / "data",
    }
    for old, new in moved.items():
        conf = conf.replace(old, str(new))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "nats.conf").write_text(conf)
    (tmp_path / "mesh-auth").mkdir()
    for name in ("auth.conf", "account.conf"):
        (tmp_path / "mesh-auth" / name).write_text((store.directory / name).read_text())
    env = {
        "SERVER_NAME": "s-0",
        "MESH_SITE_DOMAIN": "site",
        "NATS_HUB_LEAF_URL": "nats-leaf://127.0.0.1:7422",
    }
    done = subprocess.run(
        [server_binary(), "-c", str(tmp_path / "config" / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, conf + done.stdout + done.stderr


def test_the_hub_is_a_three_server_jetstream_cluster_with_requests_equal_to_limits() -> None:
    values = load_values(K8S / "nats" / "hub-values.yaml")
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["merge"]["domain"] == "hub"
    resources = values["container"]["resources"]
    assert resources["requests"] == resources["limits"]
    limit_mib = int(resources["limits"]["memory"].removesuffix("Gi")) * 1024
    gomemlimit = int(values["container"]["env"]["GOMEMLIMIT"].removesuffix("MiB"))
    assert 0.75 <= gomemlimit / limit_mib <= 0.85
    assert values["promExporter"]["enabled"]
