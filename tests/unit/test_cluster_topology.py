"""The topology of a clustered hub and many sites (issue 31): every hub stream replicated, site
streams not, every subject a site's streams take kept in the site, and a collector's consumer
named for the domain of the stream it reads."""

from __future__ import annotations

import pytest

from mesh.topology.streams import (
    SITE_KEPT_SUBJECTS,
    BucketSpec,
    FleetLimits,
    ObjectStoreSpec,
    StreamLimits,
    StreamSpec,
    collector_consumer,
    site_local_subjects,
    standard_topology,
)
from mesh.transport.denials import matches

SITES = ("site-0", "site-1", "site-2")


def test_every_hub_stream_bucket_and_store_is_replicated_three_times_and_no_site_stream() -> None:
    topology = standard_topology(sites=SITES, hub_replicas=3)
    hub = topology.plan("hub")
    assert {type(spec) for spec in hub} == {StreamSpec, BucketSpec, ObjectStoreSpec}
    assert all(spec.replicas == 3 for spec in hub)
    for site in SITES:
        assert all(spec.replicas == 1 for spec in topology.plan(site))


def test_every_subject_a_sites_streams_take_stays_in_the_site() -> None:
    local = site_local_subjects()
    for site in SITES:
        for spec in standard_topology(sites=SITES).plan(site):
            if isinstance(spec, StreamSpec):
                for subject in spec.subjects:
                    assert any(matches(p, subject) for p in local), (spec.name, subject)
    assert SITE_KEPT_SUBJECTS == ("$JS.ACK.>",)
    # what must cross does not match: escalations, heartbeats' sourcing, the JetStream API
    for crossing in ("mesh.cloud.infer.digits", "$JS.site-0.API.CONSUMER.INFO.X.y", "$KV.X.k"):
        assert not any(matches(p, crossing) for p in local)


def test_a_collectors_consumer_in_another_domain_carries_its_name() -> None:
    assert collector_consumer("cloud") == "collect-cloud"
    assert collector_consumer("cloud", "site-0") == "collect-cloud-site-0"
    with pytest.raises(ValueError):
        collector_consumer("cloud", "site.0")


def test_the_hub_keeps_as_many_heartbeats_per_node_as_its_limits_say() -> None:
    limits = StreamLimits(fleet=FleetLimits(hub_heartbeat_history=4))
    topology = standard_topology(sites=SITES, limits=limits)
    buckets = {
        (domain, s.bucket): s.history
        for domain in ("hub", "site-0")
        for s in topology.plan(domain)
        if isinstance(s, BucketSpec)
    }
    assert buckets["hub", "MESH_FLEET_NODES"] == 4
    assert buckets["site-0", "MESH_NODES_SITE_0"] == 64
