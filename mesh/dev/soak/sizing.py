"""What the control plane of a large fleet costs the hub, measured on this machine
(``python -m mesh.dev.soak.sizing --sites 50 --devices 200``): a hub of three servers, one leaf
server per site, the fleet's streams provisioned for every site, and each site's devices writing
heartbeats into their site's bucket at their interval, which the hub's ``MESH_FLEET_NODES``
sources. No tier node runs: the request plane's figures come from the soak; this is the part
that grows with the number of sites and devices (docs/scale.md).

It reports each server's CPU and memory, what the hub stores per heartbeat, how far behind the
hub's copy is at the end, and the bytes each site's link carries per device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from mesh.dev.faults import SiteLink
from mesh.dev.soak.rig import process_figures_of
from mesh.local.cluster import Hub
from mesh.local.phases import Phases
from mesh.local.servers import Site
from mesh.topology import subjects
from mesh.topology.streams import (
    HUB_DOMAIN,
    NODES_STREAM,
    MeshTopology,
    TierPlacement,
    nodes_bucket,
)
from mesh.transport.jetstream import provision

#: a heartbeat's size as the soak's nodes write them (KV_MESH_FLEET_NODES: 432,858 bytes for
#: 640 entries, headers included, is 676 a message).
HEARTBEAT_BYTES = 600


async def measure(
    sites: int, devices: int, heartbeat_s: float, seconds: float, work: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    phases = Phases("sizing")
    names = [f"site-{k}" for k in range(sites)]
    hub = Hub(work / "hub", work / "keys", 3)
    site_servers = [Site(work, name, work / "keys", hub=hub) for name in names]
    links: dict[str, SiteLink] = {}
    conns: list[NATS] = []
    try:
        async with phases.phase("servers", 300, f"3 hub servers and {sites} sites"):
            await hub.start()
            for site in site_servers:
                links[site.site_name] = await SiteLink.start(
                    site.site_name, "127.0.0.1", hub.leaf_ports
                )
            await asyncio.gather(*(s.start(links[s.site_name].urls) for s in site_servers))
            admin = await hub.connect()
            conns.append(admin)
            topology = MeshTopology(
                tiers=(TierPlacement("edge", True), TierPlacement("cloud", False)),
                sites=tuple(names), events=False, hub_replicas=3,
            )  # fmt: skip
            await provision(lambda d: admin.jetstream(domain=d), topology, timeout=120)
            for site in site_servers:
                assert site.leaf is not None
                conns.append(await site.leaf.connect())
        say(f"{sites} sites up; {sites * devices} devices beating every {heartbeat_s:g}s")
        pids = {f"nats-{m.config.name}": m.pid for m in hub.members if m.pid}
        pids |= {f"nats-{s.site_name}": s.leaf.pid for s in site_servers if s.leaf and s.leaf.pid}
        js = admin.jetstream(domain=HUB_DOMAIN)
        before = await asyncio.to_thread(process_figures_of, pids)
        hub_before = (await js.stream_info(NODES_STREAM)).state
        links_before = {s: link.bytes_carried() for s, link in links.items()}
        written = [0]
        started = time.monotonic()
        async with phases.phase("heartbeats", seconds + 120, "the writers' last heartbeats"):
            await asyncio.gather(
                *(
                    _beat(nc, name, devices, heartbeat_s, seconds, written)
                    for nc, name in zip(conns[1:], names, strict=True)
                )
            )
        elapsed = time.monotonic() - started
        after = await asyncio.to_thread(process_figures_of, pids)
        await asyncio.sleep(2.0)
        hub_after = (await js.stream_info(NODES_STREAM)).state
        links_after = {s: link.bytes_carried() for s, link in links.items()}
        return _figures(
            sites, devices, heartbeat_s, elapsed, written[0], before, after,
            hub_before.messages, hub_after, links_before, links_after,
        )  # fmt: skip
    finally:
        for nc in conns:
            await nc.close()
        for site in site_servers:
            await site.stop()
        for link in links.values():
            await link.stop()
        await hub.stop()


async def _beat(
    nc: NATS, site: str, devices: int, every_s: float, seconds: float, written: list[int]
) -> None:
    js = nc.jetstream()
    payload = os.urandom(HEARTBEAT_BYTES)
    bucket = nodes_bucket(site)
    end = time.monotonic() + seconds
    gap = every_s / devices
    i = 0
    next_at = time.monotonic()
    while time.monotonic() < end:
        await js.publish(subjects.kv(bucket, f"{site}-device-{i % devices:05d}"), payload)
        written[0] += 1
        i += 1
        next_at += gap
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _figures(
    sites: int, devices: int, heartbeat_s: float, elapsed: float, written: int,
    before: Any, after: Any, hub_messages_before: int, hub_after: Any,
    links_before: dict[str, tuple[int, int]], links_after: dict[str, tuple[int, int]],
) -> dict[str, Any]:  # fmt: skip
    cpu = {
        name: round((after.cpu_s[name] - before.cpu_s[name]) / elapsed * 1000.0, 1)
        for name in before.cpu_s
        if name in after.cpu_s
    }
    hub_cpu = [v for k, v in cpu.items() if k.startswith("nats-hub")]
    site_cpu = [v for k, v in cpu.items() if k.startswith("nats-site")]
    up = sum(links_after[s][0] - links_before[s][0] for s in links_before) / elapsed
    down = sum(links_after[s][1] - links_before[s][1] for s in links_before) / elapsed
    arrived = hub_after.messages - hub_messages_before
    return {
        "sites": sites,
        "devices_per_site": devices,
        "heartbeat_s": heartbeat_s,
        "heartbeat_bytes": HEARTBEAT_BYTES,
        "seconds": round(elapsed, 1),
        "heartbeats_written_per_s": round(written / elapsed, 1),
        "heartbeats_at_hub": arrived,
        "heartbeats_written": written,
        "hub_stream_bytes_per_message": round(hub_after.bytes / max(hub_after.messages, 1)),
        "hub_members_cpu_ms_per_s": hub_cpu,
        "hub_members_rss_mb": [v for k, v in after.rss_mb.items() if k.startswith("nats-hub")],
        "site_server_cpu_ms_per_s_mean": round(sum(site_cpu) / max(len(site_cpu), 1), 2),
        "site_server_rss_mb_mean": round(
            sum(v for k, v in after.rss_mb.items() if k.startswith("nats-site")) / max(sites, 1), 1
        ),
        "link_bytes_per_s_per_site": {"up": round(up / sites), "down": round(down / sites)},
        "link_bytes_per_heartbeat": round(up / max(written / elapsed, 1)),
        "cores": os.cpu_count(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--devices", type=int, default=200, help="devices per site")
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    def say(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="mesh-sizing-") as tmp:
        figures = asyncio.run(
            measure(args.sites, args.devices, args.heartbeat_s, args.seconds, Path(tmp), say)
        )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
