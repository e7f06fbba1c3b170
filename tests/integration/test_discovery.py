"""Nodes in the NATS micro services API: $SRV.PING/INFO/STATS list the fleet, status answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mesh.local.servers import NatsServer
from mesh.topology import subjects
from mesh.transport.discovery import SERVICE_NAME
from mesh.wire import decode_node_status
from tests.fixtures.chain import Chain, Tier


async def collect_replies(
    server: NatsServer, subject: str, wait: float = 0.3
) -> list[dict[str, Any]]:
    nc = await server.connect()
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(wait)
        replies: list[dict[str, Any]] = []
        while sub.pending_msgs:
            msg = await sub.next_msg(timeout=0.1)
            replies.append(json.loads(msg.data))
        await sub.unsubscribe()
        return replies
    finally:
        await nc.close()


async def test_ping_info_and_stats_list_every_node_with_its_tier_and_models(
    nats_server: NatsServer, chain: Chain
) -> None:
    await chain.start(nats_server.url, Tier("edge", node="edge-a"), Tier("cloud", node="cloud-a"))

    for verb in ("PING", "INFO", "STATS"):
        replies = await collect_replies(nats_server, f"$SRV.{verb}.{SERVICE_NAME}")
        by_node = {r["metadata"]["node"]: r for r in replies}
        assert set(by_node) == {"cloud-a", "edge-a"}, verb
        for node, tier in (("cloud-a", "cloud"), ("edge-a", "edge")):
            reply = by_node[node]
            assert reply["name"] == SERVICE_NAME
            assert reply["metadata"]["tier"] == tier
            assert reply["metadata"]["models"].startswith("digits@")
            assert reply["version"]
        if verb == "INFO":
            assert [e["subject"] for e in by_node["edge-a"]["endpoints"]] == [
                subjects.status("edge-a")
            ]
        if verb == "STATS":
            assert by_node["cloud-a"]["endpoints"][0]["name"] == "status"


async def test_status_endpoint_reports_models_breakers_and_readiness(
    nats_server: NatsServer, chain: Chain
) -> None:
    await chain.start(nats_server.url, Tier("edge", node="edge-a"), Tier("cloud", node="cloud-a"))
    nc = await nats_server.connect()
    try:
        reply = await nc.request(subjects.status("edge-a"), b"", timeout=2)
    finally:
        await nc.close()
    status = decode_node_status(reply.data)
    assert (status.node, status.tier) == ("edge-a", "edge")
    assert set(status.models) == {"digits"}
    assert status.breakers == {"cloud": "closed"}
    assert status.backlog == 0
    assert status.ready


async def test_a_stopped_node_leaves_the_listing(nats_server: NatsServer, chain: Chain) -> None:
    await chain.start(nats_server.url, Tier("cloud", node="cloud-a"))
    [edge] = await chain.start(nats_server.url, Tier("edge", node="edge-a", entry=False))
    await edge.stop()
    await edge.stop()
    replies = await collect_replies(nats_server, f"$SRV.PING.{SERVICE_NAME}")
    assert [r["metadata"]["node"] for r in replies] == ["cloud-a"]
