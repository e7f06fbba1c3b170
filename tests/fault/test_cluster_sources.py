"""What crosses a leaf link through JetStream on a clustered hub (issue 31): each site mirrors
the hub's desired state, the hub sources each site's heartbeats. Those are where NATS has lost or
stalled messages before: written on a leaf while it was offline and never synced (nats-server
#6468, #7530), a mirror stopping (#3553), a source stalling after its origin was made again
(#6206). Each test writes on one side and waits for it on the other, through an outage, a hub
member's death (the stream's leader), or the origin's recreation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from mesh.dev.faults import SiteLink
from mesh.local.cluster import Hub
from mesh.local.servers import Site
from mesh.security.keystore import KeyStore
from mesh.topology import subjects
from mesh.topology.streams import (
    DESIRED_BUCKET,
    DESIRED_STREAM,
    HUB_DOMAIN,
    NODES_BUCKET,
    NODES_STREAM,
    MeshTopology,
    nodes_bucket,
    standard_topology,
)
from mesh.transport.jetstream import provision

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(240)]

SITES = ("site-0", "site-1")


@dataclass
class Cluster:
    hub: Hub
    links: dict[str, SiteLink]
    admin: NATS
    sites: dict[str, NATS]
    topology: MeshTopology

    def js(self, domain: str = HUB_DOMAIN) -> nats.js.JetStreamContext:
        return self.admin.jetstream(domain=domain)


@pytest.fixture
async def cluster(tmp_path: Path, keystore: KeyStore) -> AsyncIterator[Cluster]:
    """Three hub servers, two sites whose every link to the hub runs through fault proxies,
    the fleet's streams provisioned (R3 at the hub)."""
    hub = Hub(tmp_path / "hub", keystore, size=3)
    await hub.start()
    links: dict[str, SiteLink] = {}
    sites = [Site(tmp_path, name, keystore, hub=hub) for name in SITES]
    connections: list[NATS] = []
    try:
        for site in sites:
            link = links[site.site_name] = await SiteLink.start(
                site.site_name, "127.0.0.1", hub.leaf_ports
            )
            await site.start(link.urls)
        admin = await hub.connect()
        connections.append(admin)
        site_ncs = {}
        for site in sites:
            assert site.leaf is not None
            site_ncs[site.site_name] = await site.leaf.connect(max_reconnect_attempts=-1)
            connections.append(site_ncs[site.site_name])
        topology = standard_topology(sites=SITES, events=False, hub_replicas=3)
        await provision(lambda d: admin.jetstream(domain=d), topology)
        yield Cluster(hub, links, admin, site_ncs, topology)
    finally:
        for nc in connections:
            await nc.close()
        for link in links.values():
            await link.stop()
        for site in sites:
            await site.stop()
        await hub.stop()


async def last_data(js: nats.js.JetStreamContext, stream: str, subject: str) -> bytes | None:
    try:
        return (await js.get_last_msg(stream, subject)).data
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, nats.js.errors.APIError):
        return None
    except nats.errors.NoRespondersError:
        return None


async def arrives(
    js: nats.js.JetStreamContext, stream: str, subject: str, data: bytes, timeout: float = 45.0
) -> None:
    async with asyncio.timeout(timeout):
        while await last_data(js, stream, subject) != data:  # noqa: ASYNC110 (another server)
            await asyncio.sleep(0.25)


async def heartbeat(c: Cluster, site: str, node: str, data: bytes) -> None:
    """A node's heartbeat in its site's bucket (as its agent writes it)."""
    js = c.sites[site].jetstream()
    await js.publish(subjects.kv(nodes_bucket(site), node), data, timeout=5)


async def hub_heartbeat_arrives(c: Cluster, node: str, data: bytes) -> None:
    await arrives(c.js(), NODES_STREAM, subjects.kv(NODES_BUCKET, node), data)


async def desired(c: Cluster, key: str, data: bytes) -> None:
    """Desired state written at the hub, as the controller writes it: asked again while the
    bucket's stream has no leader (a member just killed led it: no responders until the others
    elect one, which a loaded CI machine once took past the first try)."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(
            (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
        ),
        stop=stop_after_delay(30),
        wait=wait_fixed(0.25),
        reraise=True,
    ):
        with attempt:
            await c.js().publish(subjects.kv(DESIRED_BUCKET, key), data, timeout=10)


async def mirror_arrives(c: Cluster, site: str, key: str, data: bytes) -> None:
    await arrives(c.sites[site].jetstream(), DESIRED_STREAM, subjects.kv(DESIRED_BUCKET, key), data)


def cut(link: SiteLink) -> None:
    """The site's link down: live connections reset, new ones refused."""
    link.refuse(True)
    link.reset_all()


async def test_what_a_site_wrote_while_cut_off_reaches_the_hub_and_what_the_hub_wrote_the_site(
    cluster: Cluster,
) -> None:
    await heartbeat(cluster, "site-0", "edge-a", b"before")
    await hub_heartbeat_arrives(cluster, "edge-a", b"before")
    cut(cluster.links["site-0"])
    for i in range(20):
        await heartbeat(cluster, "site-0", "edge-a", f"offline {i}".encode())
    await desired(cluster, "digits.all", b"while site-0 was away")
    await mirror_arrives(cluster, "site-1", "digits.all", b"while site-0 was away")
    assert await last_data(cluster.js(), NODES_STREAM, subjects.kv(NODES_BUCKET, "edge-a")) == (
        b"before"
    )
    cluster.links["site-0"].heal()
    await hub_heartbeat_arrives(cluster, "edge-a", b"offline 19")
    await mirror_arrives(cluster, "site-0", "digits.all", b"while site-0 was away")


async def test_sources_and_mirrors_go_on_when_the_hub_member_leading_them_dies(
    cluster: Cluster,
) -> None:
    info = await cluster.js().stream_info(NODES_STREAM)
    assert info.cluster is not None and info.cluster.leader
    leader = cluster.hub.member(info.cluster.leader)
    await leader.kill()
    await heartbeat(cluster, "site-1", "edge-b", b"leader gone")
    await hub_heartbeat_arrives(cluster, "edge-b", b"leader gone")
    await desired(cluster, "digits.edge", b"leader gone")
    for site in SITES:
        await mirror_arrives(cluster, site, "digits.edge", b"leader gone")

    await leader.start()
    await cluster.hub.wait_jetstream()
    await heartbeat(cluster, "site-1", "edge-b", b"leader back")
    await desired(cluster, "digits.edge", b"leader back")
    await hub_heartbeat_arrives(cluster, "edge-b", b"leader back")
    for site in SITES:
        await mirror_arrives(cluster, site, "digits.edge", b"leader back")
    hub_streams = [spec_stream for spec_stream in (NODES_STREAM, DESIRED_STREAM)]
    await cluster.hub.wait_replicas(cluster.admin, hub_streams, 3, timeout=60)


async def test_a_sites_heartbeats_reach_the_hub_after_its_bucket_is_made_again(
    cluster: Cluster,
) -> None:
    await heartbeat(cluster, "site-0", "edge-c", b"first bucket")
    await hub_heartbeat_arrives(cluster, "edge-c", b"first bucket")
    site_js = cluster.js("site-0")
    await site_js.delete_stream(subjects.kv_stream(nodes_bucket("site-0")))
    await provision(lambda d: cluster.admin.jetstream(domain=d), cluster.topology)
    await heartbeat(cluster, "site-0", "edge-c", b"second bucket")
    await hub_heartbeat_arrives(cluster, "edge-c", b"second bucket")
