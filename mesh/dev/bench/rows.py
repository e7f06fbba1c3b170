"""The rows, what the bench measures: the floors (ONNX Runtime in-process, a nats-py echo, a
nats-py + ONNX Runtime responder), the mesh at the site (request/reply and events, secured and
open), the mesh over the +40 ms link against cloud-only, and the protocols and peers (the OIP
ingress, sending on or hosting the edge, an aiohttp peer, MLServer). Each row's CPU counts the
processes a request crosses."""

from __future__ import annotations

import psutil

from mesh.dev.bench.calls import Clients, RowCalls
from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.measure import Row
from mesh.dev.bench.rig import Rig


def processes(*pids: int | None) -> list[psutil.Process]:
    return [psutil.Process(p) for p in pids if p is not None]


def bench_rows(
    config: BenchConfig, rig: Rig, calls: RowCalls, clients: Clients, calibrated: float
) -> dict[str, Row]:
    """Every row that sends requests, in the order the report lists them."""
    rows = {
        **_floor_rows(config, rig, calls),
        **_site_rows(config, rig, calls, clients),
        **_link_rows(config, rig, calls, clients, calibrated),
        **_protocol_rows(config, rig, calls),
    }
    rows["mesh_edge"].note = "novelty check stays on: ~1% out-of-distribution rows escalate"
    edge = rig.nodes["edge"]
    rows["mesh_edge"].node_pid = edge.pid
    rows["mesh_edge"].metrics_url = f"{edge.http_url}/metrics" if edge.http_url else None
    rows["events_edge"].node_pid = edge.pid
    rows["mesh_link_mix"].note = "most answered at the edge; see answered_by"
    mix = rig.nodes["edgemix"]
    rows["mesh_link_mix"].energy_url = f"{mix.http_url}/metrics" if mix.http_url else None
    rows["mesh_link_mix"].energy_tier = "edgemix"
    rows["peer_mlserver"].note = "parallel_workers=0 (model in the server process)"
    return rows


def ort_floor_row(config: BenchConfig) -> Row:
    """The floor of any serving: its trials run in this process, between the other rows'."""
    floor = Row(
        "ort_floor",
        "floor: ONNX Runtime in-process (edge int8)",
        None,
        [],
        max(config.latency_n, 1000),
        0,
    )
    floor.note = "req/s here is sequential session.run calls in one thread"
    return floor


def _floor_rows(config: BenchConfig, rig: Rig, calls: RowCalls) -> dict[str, Row]:
    lat, tp = config.latency_n, config.throughput_n
    site, responders = rig.servers.site, rig.responders
    return {
        "nats_echo": Row(
            "nats_echo",
            "floor: nats-py echo, separate process",
            calls.echo,
            processes(site.pid, responders.echo.pid),
            lat,
            tp,
        ),
        "nats_ort": Row(
            "nats_ort",
            "floor: nats-py + ONNX Runtime responder, raw float32 row in, bytes out",
            calls.ort,
            processes(site.pid, responders.ort.pid),
            lat,
            tp,
        ),
    }


def _site_rows(config: BenchConfig, rig: Rig, calls: RowCalls, clients: Clients) -> dict[str, Row]:
    lat, tp = config.latency_n, config.throughput_n
    servers = rig.servers
    site, hub = servers.site, servers.hub
    pid = {name: node.pid for name, node in rig.nodes.items()}
    return {
        "mesh_edge": Row(
            "mesh_edge",
            "mesh: edge-answered (threshold 0)",
            calls.mesh(clients.site, None),
            processes(site.pid, pid["edge"]),
            lat,
            tp,
        ),
        "mesh_local": Row(
            "mesh_local",
            "mesh: edge in the application's process (threshold 0)",
            calls.mesh(clients.local, None),
            [],
            lat,
            tp,
            note="no server process: its CPU is the load generator's own",
        ),
        "events_edge": Row(
            "events_edge",
            "mesh: event stream, publish to stored result (edge)",
            calls.event,
            processes(site.pid, pid["edge"]),
            lat,
            tp,
        ),
        "mesh_escalated": Row(
            "mesh_escalated",
            "mesh: escalated edge->cloud, direct link",
            calls.mesh(clients.site, "edgeesc"),
            processes(site.pid, hub.pid, pid["edgeesc"], pid["cloud"]),
            lat,
            tp,
        ),
        "mesh_edge_open": Row(
            "mesh_edge_open",
            "mesh: edge-answered, no auth and no TLS (baseline)",
            calls.mesh(clients.open, None),
            processes(servers.site_open.pid, pid["edgeopen"]),
            lat,
            tp,
        ),
        "mesh_escalated_open": Row(
            "mesh_escalated_open",
            "mesh: escalated edge->cloud, no auth and no TLS (baseline)",
            calls.mesh(clients.open, "edgeesc"),
            processes(
                servers.site_open.pid, servers.hub_open.pid, pid["edgeescopen"], pid["cloudopen"]
            ),
            lat,
            tp,
        ),
    }


def _link_rows(
    config: BenchConfig, rig: Rig, calls: RowCalls, clients: Clients, calibrated: float
) -> dict[str, Row]:
    lat, llat, ltp = config.latency_n, config.link_latency_n, config.link_throughput_n
    site2, hub = rig.servers.site2, rig.servers.hub
    pid = {name: node.pid for name, node in rig.nodes.items()}
    return {
        "mesh_link_escalated": Row(
            "mesh_link_escalated",
            "mesh: escalated, link +40 ms RTT",
            calls.mesh(clients.site2, "edgelink"),
            processes(site2.pid, hub.pid, pid["edgelink"], pid["cloud"]),
            llat,
            ltp,
        ),
        "mesh_link_mix": Row(
            "mesh_link_mix",
            f"mesh: digits mix, link +40 ms RTT (t={calibrated:.3f})",
            calls.mesh(clients.site2, "edgemix"),
            processes(site2.pid, hub.pid, pid["edgemix"], pid["cloud"]),
            lat,
            ltp,
        ),
        "cloud_only_link": Row(
            "cloud_only_link",
            "cloud-only: tier=cloud, link +40 ms RTT",
            calls.mesh(clients.site2, "cloud"),
            processes(site2.pid, hub.pid, pid["cloud"]),
            llat,
            ltp,
        ),
    }


def _protocol_rows(config: BenchConfig, rig: Rig, calls: RowCalls) -> dict[str, Row]:
    lat, tp = config.latency_n, config.throughput_n
    site, responders, ml = rig.servers.site, rig.responders, rig.mlserver
    edge = rig.nodes["edge"].pid
    return {
        "oip_rest": Row(
            "oip_rest",
            "mesh via the OIP ingress: REST, V2 JSON",
            calls.oip_rest,
            processes(site.pid, edge, responders.ingress.pid),
            lat,
            tp,
        ),
        "oip_rest_local": Row(
            "oip_rest_local",
            "mesh via the OIP ingress hosting the edge (--local): REST, V2 JSON",
            calls.oip_rest_local,
            processes(site.pid, responders.ingress_local.pid),
            lat,
            tp,
        ),
        "oip_grpc": Row(
            "oip_grpc",
            "mesh via the OIP ingress: gRPC, raw contents",
            calls.oip_grpc,
            processes(site.pid, edge, responders.ingress.pid),
            lat,
            tp,
        ),
        "peer_aiohttp": Row(
            "peer_aiohttp",
            "peer: aiohttp + ONNX Runtime, JSON",
            calls.peer,
            processes(responders.peer.pid),
            lat,
            tp,
        ),
        "peer_mlserver": Row(
            "peer_mlserver",
            "peer: MLServer (ONNX MLModel), V2 JSON",
            calls.mlserver if ml.url else None,
            ml.processes(),
            lat,
            tp,
            unavailable=ml.unavailable,
        ),
    }
