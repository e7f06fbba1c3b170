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
        old_pid = edge.pid
        await edge.kill()
        await asyncio.wait_for(restarted.wait(), 60)
        assert edge.pid != old_pid
        x = np.load(demo.test)["x"][:1].astype(np.float32)
        async with await MeshClient.connect(mesh.site_url, **mesh.client_options()) as client:
            result = await client.infer("digits", x, budget_ms=2000)
        assert result.path[0].node == "edge-0"
    finally:
        await mesh.close()
        supervisor.cancel()
    assert reports[0] == "node edge-0 exited with status -9; restarting it"
