"""``compose/compose.yaml`` run as written, without a container engine: every mesh and NATS
service's command, environment, mounted config and secrets as local processes (the set-up
profile first, as the README says), the collector replaced by an OTLP receiver. Requests go
through the ingress down the cascade; every service is healthy by its own healthcheck, one
request's trace arrives whole, every ``/metrics`` passes ``promtool check metrics``, the console
refuses without its token and lists the nodes with it, the review desk lists and labels the
queue through it, and the compose file's Prometheus configuration scrapes every node, the
ingress and the review service."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mesh.dev.demo.receiver import OtlpReceiver, SpanRecord
from mesh.local.servers import server_binary
from tests.deploy.containers import Container, compose_containers
from tests.deploy.hubservices import serves_people
from tests.deploy.localrun import LocalStack, copy_project, is_root, readable_by
from tests.deploy.scrape import SYSTEM_DEPS, check_metrics, prometheus_targets_up, promtool
from tests.deploy.test_compose_files import TWO_IDENTITIES

PROMETHEUS = shutil.which("prometheus") or ""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PROMETHEUS or promtool() is None, reason=SYSTEM_DEPS),
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not is_root(), reason="the set-up step hands files to uid 10001 (root only)"
    ),
]

#: images the suite does not run (the collector's place is taken by an OTLP receiver).
NOT_RUN = {"otel-collector", "jaeger", "prometheus", "grafana", "nats-hub-exporter",
           "nats-site-exporter"}  # fmt: skip
IMAGE_UID = 10001
REMOTE = "factory-7"
TIERS = {"mesh-edge", "mesh-gateway", "mesh-cloud"}


def _variables() -> dict[str, str]:
    return {
        "MESH_INGRESS_TOKEN": secrets.token_urlsafe(16),
        "MESH_CONSOLE_TOKEN": secrets.token_urlsafe(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
    }


def _secrets_are_private(containers: dict[str, Container]) -> None:
    """Each mesh service mounts its own creds and nothing else of the fleet's secrets, readable
    by the image's user; only the set-up step sees fleet.json."""
    for name, container in containers.items():
        sources = [m.source for m in container.mounts if m.source is not None]
        creds = [s for s in sources if s.suffix == ".creds"]
        if name != "identities":
            assert not any(s.name == "fleet.json" or s.name == "secrets" for s in sources), name
        if not container.is_mesh or name == "identities":
            continue
        if name in TWO_IDENTITIES:
            assert {c.stem for c in creds} == TWO_IDENTITIES[name], (name, creds)
        else:
            assert len(creds) <= 1, (name, creds)
        for source in sources:
            if source.is_file() and source.parent.name in {"creds", "tls", "secrets"}:
                assert readable_by(source, IMAGE_UID, IMAGE_UID), (
                    name,
                    source,
                    oct(source.stat().st_mode),
                )


async def _infer(
    session: aiohttp.ClientSession, url: str, token: str, rows: np.ndarray, trace: str
) -> dict[str, object]:
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "traceparent": f"00-{trace}-{os.urandom(8).hex()}-01",
    }
    async with session.post(f"{url}/v2/models/digits/infer", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, object] = await resp.json()
        return answer


def _whole(spans: list[SpanRecord]) -> bool:
    """Spans of every tier and the ingress, each one's parent in the trace but the root's."""
    services = {s.service for s in spans}
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_id not in ids]
    return TIERS | {"mesh-ingress"} <= services and len(orphans) == 1


async def _add_a_remote_site(
    hub: LocalStack, project: Path, variables: dict[str, str], receiver: OtlpReceiver, work: Path
) -> None:
    """compose/README.md's "Add a site": its identities made at the hub, its files copied to
    its machine, its leaf server linked, its streams provisioned by the hub's administrator, its
    nodes and ingress started, and the cloud told of its domain; its requests reach the cloud."""
    await hub.run_argv("identities", ["sh", "/setup/add-site.sh", REMOTE])
    compose = project / "compose"
    await asyncio.to_thread(
        subprocess.run,
        ["cp", "-a", str(compose / "secrets" / "sites" / REMOTE), str(compose / "site-secrets")],
        check=True,
    )
    # the hub's public name, which the site's machine reaches (here: the hub's leafnode port)
    remote_vars = {
        **variables,
        "MESH_SITE": REMOTE,
        "MESH_HUB_LEAF_URL": "nats-leaf://hub.example.com:7422",
    }
    containers = compose_containers(compose / "remote-site.yaml", remote_vars)
    site = LocalStack(
        containers,
        work / "remote",
        hosts={**{n: n for n in containers}, "hub.example.com": "hub.example.com"},
        nats_binary=hub.nats_binary,
        ports={("hub.example.com", 7422): hub.port("nats-hub", 7422)},
    )
    # the same seeded models as the hub's `models` run built (the remote's is the same command)
    (work / "remote" / "volumes").mkdir(parents=True)
    (work / "remote" / "volumes" / "models").symlink_to(work / "run" / "volumes" / "models")
    try:
        await site.up(["nats-site"])
        await site.wait_healthy("nats-site", timeout=60)
        await hub.run_argv("admin", ["mesh", "fleet", "init", "--site", "site", "--site", REMOTE])
        nodes = ["gateway-0", "edge-0", "edge-1", "ingress"]
        await site.up(nodes, served=["nats-site"])
        for name in nodes:
            await site.wait_healthy(name, timeout=90)
        domains = {**variables, "MESH_SITE_DOMAINS": json.dumps(["site", REMOTE])}
        cloud = compose_containers(compose / "compose.yaml", domains)["cloud-0"]
        await hub.restart(cloud)
        await hub.wait_healthy("cloud-0", timeout=90)
        traces = [os.urandom(16).hex() for _ in range(20)]
        rng = np.random.default_rng(3)
        tiers: set[str] = set()
        async with aiohttp.ClientSession() as session:
            for trace in traces:
                rows = rng.uniform(0, 16, size=(1, 64)).astype(np.float32)
                answer = await _infer(
                    session, site.url("ingress", 8000), variables["MESH_INGRESS_TOKEN"], rows, trace
                )
                tiers.add(str(answer["parameters"]["tier"]))  # type: ignore[index]
        assert "cloud" in tiers, tiers
    finally:
        await site.stop()


async def test_the_compose_deployment_runs_as_written_as_local_processes(tmp_path: Path) -> None:
    project = await asyncio.to_thread(copy_project, ["compose", "deploy"], tmp_path / "project")
    variables = _variables()
    containers = compose_containers(project / "compose" / "compose.yaml", variables)
    not_mesh = {
        n for n, c in containers.items() if not c.is_mesh and not c.image.startswith("nats:")
    }
    assert not_mesh == NOT_RUN
    stack = LocalStack(
        containers, tmp_path / "run", nats_binary=await asyncio.to_thread(server_binary)
    )
    receiver = OtlpReceiver()
    await receiver.start()
    stack.ports[("otel-collector", 4318)] = receiver.port
    try:
        await stack.run_once("identities")
        await asyncio.to_thread(_secrets_are_private, containers)
        await stack.run_once("models", timeout=300)
        services = [n for n, c in containers.items() if not c.profiles and n not in NOT_RUN]
        await stack.up(services, served=NOT_RUN)
        assert stack.exited.get("provision") == 0
        checked = [n for n in services if containers[n].healthcheck is not None]
        assert {
            "nats-hub",
            "nats-site",
            "cloud-0",
            "gateway-0",
            "edge-0",
            "edge-1",
            "ingress",
            "review",
            "console",
        } <= set(checked)
        for name in checked:
            await stack.wait_healthy(name, timeout=90)
        assert stack.processes["controller"].running, stack.log_tail("controller")

        test = np.load(tmp_path / "run" / "volumes" / "models" / "digits-test.npz")["x"]
        rng = np.random.default_rng(7)
        url = stack.url("ingress", 8000)
        tiers: dict[str, int] = {}
        traces = [os.urandom(16).hex() for _ in range(40)]
        async with aiohttp.ClientSession() as session:
            for i, trace in enumerate(traces):
                rows = test[i : i + 1] if i % 2 else rng.uniform(0, 16, size=(1, 64))
                answer = await _infer(
                    session, url, variables["MESH_INGRESS_TOKEN"], rows.astype(np.float32), trace
                )
                tier = str(answer["parameters"]["tier"])  # type: ignore[index]
                tiers[tier] = tiers.get(tier, 0) + 1
            assert set(tiers) <= {"edge", "gateway", "cloud"} and "cloud" in tiers, tiers

            whole: list[str] = []
            async with asyncio.timeout(30):
                while not whole:
                    whole = [t for t in traces if _whole(receiver.spans.get(t, []))]
                    await asyncio.sleep(0.5)

            for name, port in (
                ("cloud-0", 8080),
                ("gateway-0", 8080),
                ("edge-0", 8080),
                ("edge-1", 8080),
                ("ingress", 8000),
                ("review", 8080),
            ):
                async with session.get(f"{stack.url(name, port)}/metrics") as resp:
                    exposition = await resp.text()
                await asyncio.to_thread(check_metrics, exposition, name)

            # the hub's services for people: the console (its token, the fleet from the
            # heartbeats) and the review desk behind it (the queue the requests above filled)
            await serves_people(
                session,
                stack.url("console", 8090),
                variables["MESH_CONSOLE_TOKEN"],
                ["cloud-0", "gateway-0", "edge-0", "edge-1"],
            )

        await asyncio.to_thread(stack.materialize, containers["prometheus"])
        config = (project / "compose" / "observability" / "prometheus.yml").read_text()
        rules = stack.local_path("prometheus", "/etc/prometheus/rules")
        config = stack.rewrite(config, "prometheus").replace("/etc/prometheus/rules", str(rules))
        jobs = ("mesh-node", "mesh-ingress", "mesh-review")
        up = await prometheus_targets_up(PROMETHEUS, config, tmp_path / "prom", jobs)
        for job in jobs:
            assert up.get(job) and all(up[job].values()), (job, up)

        await _add_a_remote_site(stack, project, variables, receiver, tmp_path)
    finally:
        await stack.stop()
        await receiver.stop()
