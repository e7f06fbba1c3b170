"""A local mesh restarts a node that dies, and says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.launcher import EmbeddedMesh, MeshLayout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_node_that_dies_is_reported_and_restarted(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    mesh = EmbeddedMesh(
        MeshLayout(
            edge_manifest=demo.edge, gateway_manifest=demo.gateway, cloud_manifest=demo.cloud
        ),
        work_dir=tmp_path / "mesh",
    )
    reports: list[str] = []
    restarted = asyncio.Event()

    def report(line: str) -> None:
        reports.append(line)
        if "restarted" in line:
            restarted.set()

    await mesh.start()
    supervisor = asyncio.create_task(mesh.supervise(report))
    try:
        edge = mesh.nodes["edge-0"]
        old_pid, old_http = edge.pid, edge.http_url
        await edge.kill()
        await asyncio.wait_for(restarted.wait(), 60)
        assert edge.pid != old_pid
        assert edge.http_url == old_http  # scrapers and mesh up's readers still find it
        x = np.load(demo.test)["x"][:1].astype(np.float32)
        async with await MeshClient.connect(mesh.site_url, **mesh.client_options()) as client:
            result = await client.infer("digits", x, budget_ms=2000)
        assert result.path[0].node == "edge-0"
    finally:
        await mesh.close()
        supervisor.cancel()
    assert reports[0] == "node edge-0 exited with status -9; restarting it"


async def test_a_nats_server_that_dies_comes_back_on_its_own_ports_and_the_mesh_with_it(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    mesh = EmbeddedMesh(
        MeshLayout(
            edge_manifest=demo.edge,
            gateway_manifest=demo.gateway,
            cloud_manifest=demo.cloud,
            edge_threshold=1.01,
            gateway_threshold=1.01,
        ),
        work_dir=tmp_path / "mesh",
    )
    reports: list[str] = []
    await mesh.start()
    supervisor = asyncio.create_task(mesh.supervise(reports.append))
    try:
        hub = mesh.site.hub
        ports, old_pid = (hub.client_port, hub.leaf_port, hub.http_port), hub.pid
        await hub.kill()
        x = np.load(demo.test)["x"][:1].astype(np.float32)
        async with await MeshClient.connect(mesh.site_url, **mesh.client_options()) as client:
            async with asyncio.timeout(60):
                while True:  # the cloud answers again once its hub and the leaf link are back
                    result = await client.infer("digits", x, budget_ms=2000)
                    if result.tier == "cloud":
                        break
                    await asyncio.sleep(0.5)
        assert hub.pid != old_pid
        assert (hub.client_port, hub.leaf_port, hub.http_port) == ports
    finally:
        await mesh.close()
        supervisor.cancel()
    assert reports[0] == "nats-server hub exited with status -9; restarting it"
    assert reports[1].startswith("nats-server hub restarted")
