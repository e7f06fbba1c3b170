"""What the rows are compared on: ratios paired by trial (medians of the per-trial ratios) and
the targets the JSON reports as met, not met, or unknown (a figure missing)."""

from __future__ import annotations

from mesh.dev.bench.measure import Row, paired_ratio, within_ratio


def paired_ratios(rows: dict[str, Row]) -> dict[str, float | None]:
    return {
        "edge_p50_over_echo_p50": paired_ratio(rows, "mesh_edge", "nats_echo", "p50_ms"),
        "throughput_over_echo": paired_ratio(rows, "mesh_edge", "nats_echo", "throughput_rps"),
        "cloud_only_p50_over_mesh_p50": paired_ratio(
            rows, "cloud_only_link", "mesh_link_mix", "p50_ms"
        ),
        "peer_p50_over_mesh_p50": paired_ratio(rows, "peer_aiohttp", "mesh_edge", "p50_ms"),
        # The edge hosted in the application's process against the peer one HTTP hop away.
        "peer_p50_over_local_p50": paired_ratio(rows, "peer_aiohttp", "mesh_local", "p50_ms"),
        "mesh_throughput_over_peer": paired_ratio(
            rows, "mesh_edge", "peer_aiohttp", "throughput_rps"
        ),
        # The floor under any model server behind NATS (one hop through the server each way,
        # one ONNX Runtime call, nothing else) against the peer's one HTTP hop, and what the
        # mesh adds over that floor.
        "peer_p50_over_nats_ort_p50": paired_ratio(rows, "peer_aiohttp", "nats_ort", "p50_ms"),
        "edge_p50_over_nats_ort_p50": paired_ratio(rows, "mesh_edge", "nats_ort", "p50_ms"),
        # The Open Inference Protocol through the ingress, against the SDK and MLServer's REST.
        "oip_rest_p50_over_sdk_p50": paired_ratio(rows, "oip_rest", "mesh_edge", "p50_ms"),
        "oip_grpc_p50_over_sdk_p50": paired_ratio(rows, "oip_grpc", "mesh_edge", "p50_ms"),
        "oip_rest_throughput_over_mlserver": paired_ratio(
            rows, "oip_rest", "peer_mlserver", "throughput_rps"
        ),
        "oip_rest_p50_over_mlserver_p50": paired_ratio(rows, "oip_rest", "peer_mlserver", "p50_ms"),
        "oip_grpc_cpu_over_rest": paired_ratio(rows, "oip_grpc", "oip_rest", "cpu_ms_per_1k"),
        # The ingress hosting the edge in its process (``mesh ingress --local``), as MLServer
        # hosts its model: against MLServer, and against the aiohttp peer (the same HTTP
        # server with the model in process and nothing else).
        "oip_rest_local_p50_over_mlserver_p50": paired_ratio(
            rows, "oip_rest_local", "peer_mlserver", "p50_ms"
        ),
        "oip_rest_local_throughput_over_mlserver": paired_ratio(
            rows, "oip_rest_local", "peer_mlserver", "throughput_rps"
        ),
        "oip_rest_local_p50_over_peer_p50": paired_ratio(
            rows, "oip_rest_local", "peer_aiohttp", "p50_ms"
        ),
        # Event streams against request/reply through the same edge node, same trials.
        "events_throughput_over_request_reply": paired_ratio(
            rows, "events_edge", "mesh_edge", "throughput_rps"
        ),
        "events_cpu_over_request_reply": paired_ratio(
            rows, "events_edge", "mesh_edge", "cpu_ms_per_1k"
        ),
        # What authentication and leaf TLS cost: secured over open servers, same trial.
        "security_edge_p50_cost": paired_ratio(rows, "mesh_edge", "mesh_edge_open", "p50_ms"),
        "security_escalated_p50_cost": paired_ratio(
            rows, "mesh_escalated", "mesh_escalated_open", "p50_ms"
        ),
        # The device's energy per answer with the mesh (the edge node's ledger: its CPU and
        # its radio) against sending every request up (a request and its reply over the same
        # link, at the sizes the node saw), on the same device profile, same trials.
        "device_energy_over_cloud_only": within_ratio(
            rows, "mesh_link_mix", "device_j_per_answer", "cloud_only_j_per_answer"
        ),
    }


def targets(
    ratios: dict[str, float | None],
    *,
    node_cpu: float | None,
    client_cpu: float | None,
    edge_rss: float | None,
    local_p50_ms: float | None = None,
) -> dict[str, bool | None]:
    return {
        # The first two are the earlier targets, kept so that older readers of the JSON work.
        "edge_p50_within_1_2x_echo": at_most(ratios["edge_p50_over_echo_p50"], 1.2),
        "throughput_at_least_80pct_echo": at_least(ratios["throughput_over_echo"], 0.8),
        "edge_p50_within_1_4x_echo": at_most(ratios["edge_p50_over_echo_p50"], 1.4),
        "throughput_at_least_half_echo": at_least(ratios["throughput_over_echo"], 0.5),
        "peer_p50_at_least_mesh_p50": at_least(ratios["peer_p50_over_mesh_p50"], 1.0),
        "throughput_at_least_1_5x_peer": at_least(ratios["mesh_throughput_over_peer"], 1.5),
        "node_cpu_at_most_100_us": at_most(node_cpu, 100.0),
        "client_cpu_at_most_70_us": at_most(client_cpu, 70.0),
        "link_mesh_p50_at_most_tenth_of_cloud_only": at_least(
            ratios["cloud_only_p50_over_mesh_p50"], 10.0
        ),
        "edge_rss_at_most_150_mb": at_most(edge_rss, 150.0),
        # every way in as fast as the request path (issue 33)
        "events_throughput_at_least_half_request_reply": at_least(
            ratios["events_throughput_over_request_reply"], 0.5
        ),
        "events_cpu_at_most_2x_request_reply": at_most(
            ratios["events_cpu_over_request_reply"], 2.0
        ),
        "oip_rest_p50_within_1_5x_sdk": at_most(ratios["oip_rest_p50_over_sdk_p50"], 1.5),
        "oip_rest_p50_at_most_0_8x_mlserver": at_most(
            ratios["oip_rest_p50_over_mlserver_p50"], 0.8
        ),
        "oip_rest_throughput_at_least_3x_mlserver": at_least(
            ratios["oip_rest_throughput_over_mlserver"], 3.0
        ),
        "oip_grpc_cpu_at_most_rest": at_most(ratios["oip_grpc_cpu_over_rest"], 1.0),
        # the same two bounds for the ingress hosting the edge (not the issue's: its targets
        # are the ingress that sends on, above)
        "oip_rest_local_p50_at_most_0_8x_mlserver": at_most(
            ratios["oip_rest_local_p50_over_mlserver_p50"], 0.8
        ),
        "oip_rest_local_throughput_at_least_3x_mlserver": at_least(
            ratios["oip_rest_local_throughput_over_mlserver"], 3.0
        ),
        "local_p50_at_most_0_1_ms": at_most(local_p50_ms, 0.1),
        "peer_p50_at_least_4x_local": at_least(ratios["peer_p50_over_local_p50"], 4.0),
        "edge_p50_within_1_15x_nats_ort": at_most(ratios["edge_p50_over_nats_ort_p50"], 1.15),
    }


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit
