"""Several sites on one hub keep their streams to themselves (issue 31): every site has streams
and consumers of the same names, and NATS routes a subject wherever someone listens on it, an
acknowledgement included (its subject names stream and consumer, never the domain). What one site
records is stored there only, and one site's acknowledgement never settles another's delivery;
the deployments' site configurations deny the same subjects."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

from mesh.local.cluster import Hub
from mesh.local.servers import Site
from mesh.security.keystore import KeyStore
from mesh.security.server_config import SITE_KEPT_SUBJECTS, SITE_LOCAL_SUBJECTS
from mesh.topology import subjects
from mesh.topology.streams import (
    EVENTS_STREAM,
    collector_consumer,
    hard_example_stream,
    standard_topology,
)
from mesh.transport.jetstream import provision

ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-0", "site-1")


@pytest.fixture
async def two_sites(tmp_path: Path, keystore: KeyStore) -> AsyncIterator[tuple[NATS, NATS, NATS]]:
    """A hub and two sites, provisioned; the administrator's connection to each."""
    hub = Hub(tmp_path / "hub", keystore)
    sites = [Site(tmp_path, name, keystore, hub=hub) for name in SITES]
    connections: list[NATS] = []
    await hub.start()
    try:
        for site in sites:
            await site.start()
        connections.append(await hub.connect())
        connections += [await site.leaf.connect() for site in sites if site.leaf is not None]
        hub_nc = connections[0]
        await provision(
            lambda d: hub_nc.jetstream(domain=d), standard_topology(sites=SITES, fleet=False)
        )
        yield connections[0], connections[1], connections[2]
    finally:
        for nc in connections:
            await nc.close()
        for site in sites:
            await site.stop()
        await hub.stop()


async def messages(nc: NATS, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages)


async def test_a_hard_example_recorded_at_one_site_is_stored_there_only(
    two_sites: tuple[NATS, NATS, NATS],
) -> None:
    _, site0, site1 = two_sites
    stream = hard_example_stream("gateway")
    ack = await site0.jetstream().publish(subjects.hard_examples("gateway", "digits"), b"case")
    assert ack.domain == "site-0"
    assert (await messages(site0, stream), await messages(site1, stream)) == (1, 0)


async def test_one_sites_acknowledgement_leaves_another_sites_delivery_pending(
    two_sites: tuple[NATS, NATS, NATS],
) -> None:
    _, site0, site1 = two_sites
    config = ConsumerConfig(
        durable_name="mesh-edge-digits",
        filter_subject=subjects.event("digits", ">"),
        ack_policy=AckPolicy.EXPLICIT,
    )
    delivered = []
    for nc in (site0, site1):
        js = nc.jetstream()
        await js.publish(subjects.event("digits", "app"), b"event", headers={"Nats-Msg-Id": "1"})
        await js.add_consumer(EVENTS_STREAM, config)
        sub = await js.pull_subscribe_bind(durable="mesh-edge-digits", stream=EVENTS_STREAM)
        delivered += await sub.fetch(1, timeout=5)
    await delivered[0].ack_sync()
    info = await site1.jetstream().consumer_info(EVENTS_STREAM, "mesh-edge-digits")
    assert info.num_ack_pending == 1
    assert await messages(site1, EVENTS_STREAM) == 1


async def test_the_hubs_acknowledgement_settles_only_the_site_it_took_from(
    two_sites: tuple[NATS, NATS, NATS],
) -> None:
    hub, site0, site1 = two_sites
    stream = hard_example_stream("gateway")
    taken = []
    for site, nc in zip(SITES, (site0, site1), strict=True):
        await nc.jetstream().publish(subjects.hard_examples("gateway", "digits"), site.encode())
        js = hub.jetstream(domain=site)
        name = collector_consumer("cloud", site)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=name,
                filter_subject=subjects.hard_examples_wildcard("gateway"),
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        sub = await js.pull_subscribe_bind(durable=name, stream=stream)
        taken += await sub.fetch(1, timeout=5)
    await taken[0].ack_sync()
    assert (await messages(site0, stream), await messages(site1, stream)) == (0, 1)


@pytest.mark.parametrize("path", ["compose/config/site.conf", "k8s/nats/site-values.yaml"])
def test_the_deployed_site_configurations_keep_the_same_subjects_in(path: str) -> None:
    text = (ROOT / path).read_text()
    imports = re.search(r"deny_imports:\s*\[([^\]]*)\]", text)
    exports = re.search(r"deny_exports:\s*\[([^\]]*)\]", text)
    assert imports and exports
    quoted = re.compile(r'"([^"]+)"')
    assert set(quoted.findall(imports.group(1))) == set(SITE_LOCAL_SUBJECTS)
    assert set(quoted.findall(exports.group(1))) == {*SITE_LOCAL_SUBJECTS, *SITE_KEPT_SUBJECTS}
