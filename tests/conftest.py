"""Shared fixtures: real nats-server processes on loopback, the demo models, the key store; the
chain of tier nodes and the linked site come from ``tests.fixtures``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.dev.models.demo import DemoArtifacts, ensure_demo
from mesh.local.servers import ADMIN, APPLICATION, NatsServer, ServerConfig
from mesh.observability import tracing
from mesh.observability.telemetry import install_tracing
from mesh.security.keystore import KeyStore

pytest_plugins = ["tests.fixtures.chain", "tests.fixtures.site", "tests.fixtures.browser"]

for _name in [n for n in os.environ if n.startswith("MESH_")]:
    del os.environ[_name]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fails a test when the mesh's own code makes a blocking call on the event loop."""
    with blockbuster_ctx(scanned_modules=["mesh"]) as bb:
        yield bb


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifacts:
    """The demo models, built once a test session."""
    return ensure_demo(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    """The test session's fleet: every server trusts it, every client and node connects with
    credentials it issued (no anonymous access, tests included)."""
    return KeyStore.create(tmp_path_factory.mktemp("fleet"))


@pytest.fixture
async def nats_server(tmp_path: Path, keystore: KeyStore) -> AsyncIterator[NatsServer]:
    """One real nats-server with JetStream on free loopback ports, authentication on."""
    async with NatsServer(
        ServerConfig(name="test", jetstream_domain="test"), tmp_path / "nats", keystore
    ) as server:
        yield server


@pytest.fixture
def client_options(keystore: KeyStore) -> dict[str, Any]:
    """``MeshClient.connect`` options of the application identity."""
    return {"user_credentials": str(keystore.ensure(APPLICATION))}


@pytest.fixture
def admin_options(keystore: KeyStore) -> dict[str, Any]:
    """``nats.connect`` options of the administrator (tests that watch or set up streams)."""
    return {"user_credentials": str(keystore.ensure(ADMIN)), "inbox_prefix": "_INBOX_admin"}


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Records every span of the session; the global provider can be set only once a process."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        current.add_span_processor(processor)
        tracing.set_recording(True)
    else:
        install_tracing("mesh-tests", "pytest", processors=[processor])
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()


def _dump_tasks(signum: int, frame: object) -> None:
    """``kill -USR1 <pytest pid>`` prints every asyncio task's stack: for a hung test."""
    import asyncio
    import sys

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("no running event loop", file=sys.stderr)
        return
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=sys.stderr)


#: Test files that take most of the machine, or judge what a process does with the CPU it gets
#: (the demo's full mesh under load, the bench, the energy ledger's budget, hedging against a
#: frozen node, 450 concurrent requests down a chain, ten thousand fuzzed inputs, 1,024 requests
#: in flight sharing model calls): ``make test``
#: runs them after the parallel part, one at a time (``-m serial``), so that tests running beside
#: them do not starve them of the CPU they are judged on.
SERIAL_FILES = frozenset(
    {
        "test_demo.py",
        "test_bench.py",
        "test_power_budget.py",
        "test_frozen_node.py",
        "test_chain_accuracy.py",
        "test_fuzz_live_node.py",
        "test_batching_over_nats.py",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    import signal

    signal.signal(signal.SIGUSR1, _dump_tasks)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
