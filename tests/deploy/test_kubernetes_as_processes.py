"""The Kubernetes deployment run as the README applies it, without a cluster: the fleet's
identities and Secrets from ``k8s/identities.sh`` and ``k8s/secrets.sh``, the hub's 3-server
NATS cluster and the site's leaf server as the official chart renders our values, and every pod
of the cloud and site overlays (``kubectl kustomize``) with its args, environment, ConfigMaps,
Secrets and ``subPathExpr`` mounts as local processes. The provisioning Job runs first, then the
models Job; every pod's readiness probe passes, requests cross the ingress, edge, gateway and
cloud, one request's trace arrives whole, every ``/metrics`` passes ``promtool check
metrics``, and the console (its token from ``secrets.sh``) lists every node and labels an item
of the queue the review desk holds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml

from mesh.dev.demo.receiver import OtlpReceiver
from mesh.local.servers import free_port, server_binary
from tests.deploy.containers import Container
from tests.deploy.hubservices import serves_people
from tests.deploy.kube import Cluster, by_kind, kubectl, pods, render
from tests.deploy.localrun import ROOT, LocalStack, copy_project
from tests.deploy.natschart import listen_ports, load_values, pod_config, pod_names, server_pods
from tests.deploy.scrape import SYSTEM_DEPS, check_metrics, promtool
from tests.deploy.test_compose_as_processes import _infer, _whole

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        kubectl() is None, reason="kubectl (for kubectl kustomize) is not installed"
    ),
    pytest.mark.skipif(promtool() is None, reason=SYSTEM_DEPS),
]

MACHINES = ("m1", "m2")
SITE = "site"
HUB_ADDRESS = "hub.example.com"
#: the people's token the administrator gives secrets.sh for the console.
CONSOLE_TOKEN = "console-token-" + os.urandom(12).hex()
#: the cluster DNS names the configs use, to the pods behind them.
HOSTS = {
    "nats-hub.edge-mesh.svc": "nats-hub-0",
    "nats-site.edge-mesh.svc": "nats-site-0",
    HUB_ADDRESS: "nats-hub-0",
    "otel-collector.observability.svc": "otel-collector",
    **{f"nats-hub-{i}.nats-hub-headless": f"nats-hub-{i}" for i in range(3)},
}


def _sh(argv: list[str], env: dict[str, str], *, fails: str | None = None) -> str:
    """The script's output; with ``fails``, it must exit non-zero saying so."""
    bin_dir = str(Path(sys.executable).parent)
    full = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "HOME": os.environ.get("HOME", "/tmp"),
        **env,
    }
    done = subprocess.run(argv, capture_output=True, text=True, env=full, check=False)
    if fails is not None:
        assert done.returncode != 0 and fails in done.stderr, (done.returncode, done.stderr)
        return done.stderr
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fleet(project: Path, fleet: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """k8s/README.md's steps: the fleet, its Kubernetes identities, each side's Secrets."""
    hosts = ["nats-hub.edge-mesh.svc", "nats-site.edge-mesh.svc", HUB_ADDRESS]
    _sh(
        [
            sys.executable,
            "-m",
            "mesh.cli",
            "identities",
            "init",
            str(fleet),
            *[a for h in hosts for a in ("--host", h)],
        ],
        {},
    )
    k8s = project / "k8s"
    _sh(["sh", str(k8s / "identities.sh"), str(fleet), "cloud"], {})
    _sh(
        ["sh", str(k8s / "identities.sh"), str(fleet), "site"],
        {"SITE": SITE, "EDGE_MACHINES": " ".join(MACHINES)},
    )
    # the console's token is the administrator's to choose: no Secrets without one, nor a short one
    for token in ({}, {"MESH_CONSOLE_TOKEN": "short"}):
        _sh(["sh", str(k8s / "secrets.sh"), str(fleet), "cloud"], token, fails="MESH_CONSOLE_TOKEN")
    cloud = _sh(
        ["sh", str(k8s / "secrets.sh"), str(fleet), "cloud"], {"MESH_CONSOLE_TOKEN": CONSOLE_TOKEN}
    )
    site = _sh(["sh", str(k8s / "secrets.sh"), str(fleet), "site"], {"SITE": SITE})
    return [d for d in yaml.safe_load_all(cloud) if d], [d for d in yaml.safe_load_all(site) if d]


def _nats(
    values_file: Path,
    release: str,
    stack_ports: dict[tuple[str, int], int],
    cluster: Cluster,
    work: Path,
    env: dict[str, str],
) -> list[Container]:
    values = load_values(values_file)
    values.setdefault("container", {}).setdefault("env", {}).update(env)
    confs = {}
    for pod in pod_names(values, release):
        for port in listen_ports(values).values():
            stack_ports[(pod, port)] = free_port()
        path = work / f"{pod}.conf"
        mapped = {p: stack_ports[(pod, p)] for p in listen_ports(values).values()}
        path.write_text(pod_config(values, release, mapped.__getitem__))
        confs[pod] = path
    secrets = {
        name: cluster.folder("Secret", name, 0o400)
        for (kind, name) in cluster.objects
        if kind == "Secret"
    }
    return server_pods(values, release, confs, secrets)


def _leaf_connected(monitor: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/leafz", timeout=2) as resp:
            return bool(json.load(resp).get("leafnodes"))
    except OSError:
        return False


async def test_the_kubernetes_overlays_run_as_written_as_local_processes(tmp_path: Path) -> None:
    project = await asyncio.to_thread(copy_project, ["k8s", "deploy"], tmp_path / "project")
    cloud_secrets, site_secrets = await asyncio.to_thread(_fleet, project, tmp_path / "fleet")
    cloud_res = await asyncio.to_thread(render, project / "k8s" / "overlays" / "cloud")
    site_res = await asyncio.to_thread(render, project / "k8s" / "overlays" / "site")
    cloud = Cluster([*cloud_res, *cloud_secrets], tmp_path / "cloud")
    site = Cluster([*site_res, *site_secrets], tmp_path / "site")

    ports: dict[tuple[str, int], int] = {}
    nats_dir = tmp_path / "nats"
    nats_dir.mkdir()
    hub = _nats(
        project / "k8s" / "nats" / "hub-values.yaml", "nats-hub", ports, cloud, nats_dir, {}
    )
    leaf_env = {"MESH_SITE_DOMAIN": SITE, "NATS_HUB_LEAF_URL": f"nats-leaf://{HUB_ADDRESS}:7422"}
    leaf = _nats(
        project / "k8s/nats/site-values.yaml", "nats-site", ports, site, nats_dir, leaf_env
    )
    jobs = {n: pods(w, cloud) for n, w in by_kind(cloud_res, "Job").items()}
    workloads: list[Container] = []
    for kind in ("StatefulSet", "Deployment"):
        for workload in by_kind(cloud_res, kind).values():
            workloads += pods(workload, cloud)
    for kind in ("StatefulSet", "Deployment", "DaemonSet"):
        for workload in by_kind(site_res, kind).values():
            workloads += pods(workload, site, MACHINES)
    containers = {
        c.name: c
        for c in [*hub, *leaf, *jobs["mesh-provision"], *jobs["mesh-models-demo"], *workloads]
    }
    stack = LocalStack(
        containers,
        tmp_path / "run",
        hosts={**HOSTS, **{n: n for n in containers}},
        nats_binary=await asyncio.to_thread(server_binary),
        ports=ports,
    )
    receiver = OtlpReceiver()
    await receiver.start()
    stack.ports[("otel-collector", 4318)] = receiver.port
    try:
        for server in [*hub, *leaf]:
            await stack.start(server.name)
        for server in [*hub, *leaf]:
            await stack.wait_healthy(server.name, timeout=60)
        async with asyncio.timeout(30):
            while not await asyncio.to_thread(_leaf_connected, stack.port("nats-site-0", 8222)):  # noqa: ASYNC110 (polls another process)
                await asyncio.sleep(0.2)
        await stack.run_once("mesh-provision-0")
        await stack.run_once("mesh-models-demo-0", timeout=300)
        for pod in workloads:
            await stack.start(pod.name)
        for pod in workloads:
            if pod.healthcheck is not None:
                await stack.wait_healthy(pod.name, timeout=120)
        expected = {
            "mesh-cloud-0",
            "mesh-cloud-1",
            "mesh-gateway-0",
            "mesh-gateway-1",
            "mesh-edge-m1",
            "mesh-edge-m2",
            "mesh-ingress-0",
            "mesh-ingress-1",
            "mesh-review-0",
            "mesh-console-0",
        }
        assert expected <= {p.name for p in workloads if p.healthcheck is not None}
        for name in ("mesh-controller-0", "mesh-controller-1"):
            assert stack.processes[name].running, stack.log_tail(name)

        token = site.value("Secret", "mesh-ingress-token", "token")
        test = np.load(tmp_path / "run" / "volumes" / "mesh-models" / "digits-test.npz")["x"]
        rng = np.random.default_rng(11)
        traces = [os.urandom(16).hex() for _ in range(40)]
        tiers: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            for i, trace in enumerate(traces):
                rows = test[i : i + 1] if i % 2 else rng.uniform(0, 16, size=(1, 64))
                url = stack.url(f"mesh-ingress-{i % 2}", 8000)
                answer = await _infer(session, url, token, rows.astype(np.float32), trace)
                tier = str(answer["parameters"]["tier"])  # type: ignore[index]
                tiers[tier] = tiers.get(tier, 0) + 1
            assert "cloud" in tiers and set(tiers) <= {"edge", "gateway", "cloud"}, tiers
            whole: list[str] = []
            async with asyncio.timeout(30):
                while not whole:
                    whole = [t for t in traces if _whole(receiver.spans.get(t, []))]
                    await asyncio.sleep(0.5)
            for name in sorted(expected - {"mesh-console-0"}):  # people's, no /metrics
                port = 8000 if name.startswith("mesh-ingress") else 8080
                async with session.get(f"{stack.url(name, port)}/metrics") as resp:
                    exposition = await resp.text()
                await asyncio.to_thread(check_metrics, exposition, name)

            token = cloud.value("Secret", "mesh-console-token", "token")
            assert token == CONSOLE_TOKEN
            nodes = ["mesh-cloud-0", "mesh-cloud-1", f"{SITE}-mesh-gateway-0"]
            nodes += [f"{SITE}-edge-{m}" for m in MACHINES]
            await serves_people(session, stack.url("mesh-console-0", 8090), token, nodes)
    finally:
        await stack.stop()
        await receiver.stop()
