"""A real Prometheus scrapes a node process and reads its request counter back."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.launcher import NodeProcess
from mesh.local.servers import NatsServer
from mesh.settings import HardExampleSettings
from tests.deploy.scrape import running_prometheus
from tests.fixtures.chain import Chain, Tier

pytestmark = pytest.mark.timeout(120)

REQUESTS = 25
#: the OpenTelemetry counter ``mesh_requests`` as the Prometheus exporter names it.
REQUESTS_METRIC = "mesh_requests_total"


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Debian's ``prometheus``, which ``make system-deps`` installs (tests install nothing)."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed: run `make system-deps` (Debian's prometheus)")
    return found


@pytest.fixture
async def node_process(nats_server: NatsServer, chain: Chain, tmp_path: Path) -> NodeProcess:
    edge = Tier(
        "edge",
        threshold=0.0,
        node="edge-prom",
        hard_examples=HardExampleSettings(enabled=False),
        http_port=0,
    )
    return await chain.start_process(nats_server.url, edge, tmp_path)


def scrape_config(target: str) -> str:
    """Prometheus scraping one target every second."""
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: mesh\n"
        "    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> float | None:
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
            if resp.status != 200:
                return None
            body = await resp.json()
    except aiohttp.ClientError:
        return None
    result = body["data"]["result"]
    if not result:
        return None
    return float(result[0]["value"][1])


async def test_prometheus_reads_the_request_counter_of_a_running_node(
    prometheus_binary: str,
    node_process: NodeProcess,
    nats_server: NatsServer,
    demo: DemoArtifacts,
    tmp_path: Path,
) -> None:
    assert node_process.http_url is not None
    x = np.load(demo.test)["x"].astype(np.float32)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        for i in range(REQUESTS):
            await client.infer("digits", x[i : i + 1], budget_ms=3000)

    async with aiohttp.ClientSession() as session:
        for probe in ("/healthz", "/readyz"):
            async with session.get(node_process.http_url + probe) as resp:
                assert resp.status == 200, (probe, await resp.text())
        async with session.get(node_process.http_url + "/metrics") as resp:
            exposition = await resp.text()
        assert f"{REQUESTS_METRIC}{{" in exposition, exposition[:2000]

        target = urlsplit(node_process.http_url).netloc
        promql = f'sum({REQUESTS_METRIC}{{tier="edge",model="digits"}})'
        async with running_prometheus(prometheus_binary, scrape_config(target), tmp_path) as base:
            value: float | None = None
            deadline = asyncio.get_running_loop().time() + 45
            while asyncio.get_running_loop().time() < deadline:
                value = await query(session, base, promql)
                if value == REQUESTS:
                    break
                await asyncio.sleep(0.5)
            assert value == REQUESTS, (value, (tmp_path / "prometheus.log").read_text()[-2000:])
            up = await query(session, base, 'up{job="mesh"}')
            assert up == 1
