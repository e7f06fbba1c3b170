"""The rights of an edge hosted in an application's process (``Role.LOCAL_EDGE``): an edge
node's, but for taking requests and events over NATS."""

from __future__ import annotations

from mesh.security.permissions import Role, permissions_for
from mesh.topology import subjects


def test_a_local_edge_escalates_and_keeps_hard_examples_but_takes_no_requests_or_events() -> None:
    local = permissions_for(
        Role.LOCAL_EDGE, name="app-edge", tier="edge", upstream_tier="cloud", entry=True
    )
    node = permissions_for(Role.NODE, name="edge-0", tier="edge", upstream_tier="cloud", entry=True)
    # what the node takes over NATS, the local edge may not subscribe to at all
    assert any(s.startswith(subjects.tier_infer("edge", ">")) for s in node.subscribe_allow)
    assert not any("infer" in s or "forward" in s for s in local.subscribe_allow)
    assert not any(s.startswith("mesh.events") for s in local.subscribe_allow)
    for wanted in (
        subjects.tier_infer("cloud", ">"),
        subjects.tier_forward("cloud", ">"),
        subjects.hard_examples("edge", ">"),
        subjects.telemetry("app-edge"),
    ):
        assert wanted in local.publish_allow
    # no entry tier's results or dead letters, no events consumer
    assert not any(s.startswith("mesh.results") for s in local.publish_allow)
    assert not any("MESH_EVENTS" in s for s in local.publish_allow)
    assert local.allow_responses  # discovery and status replies
