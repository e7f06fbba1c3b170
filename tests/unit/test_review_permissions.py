"""The review queue's rows of the permission table, as a NATS server decides: who may write
each review stream, who may read or consume it (never the same identity), who may call which
operation of the review API (as itself only), and the applications' labels (their own only)."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.security.keystore import standard_identities
from mesh.security.permissions import JS_ADMIN, Permissions, Role, permissions_for
from mesh.topology import streams, subjects
from tests.unit.test_identities import may_publish

#: every client role (a site's leaf server carries its site identities' traffic, each held to
#: its own rights by the site server: it is not one of them).
ROLES = [
    ("app1", Role.APPLICATION, {}),
    ("edge-1", Role.NODE, {"tier": "edge", "upstream_tier": "gateway", "entry": True,
                           "domain": "site"}),
    ("cloud-1", Role.NODE, {"tier": "cloud", "downstream_tier": "gateway", "domain": "hub"}),
    ("controller", Role.CONTROLLER, {}),
    ("ingress", Role.INGRESS, {}),
    ("console", Role.CONSOLE, {}),
    ("alice", Role.REVIEWER, {}),
    ("review-intake", Role.REVIEW_INTAKE, {}),
    ("review-desk", Role.REVIEW_DESK, {}),
]  # fmt: skip

#: each review stream and a subject of it.
WRITTEN_ON = {
    streams.REVIEW_CANDIDATES_STREAM: subjects.review_candidate("digits"),
    streams.REVIEW_STREAM: subjects.review_queue("digits", "r1"),
    streams.REVIEW_LABELS_STREAM: subjects.kv(streams.REVIEW_LABELS_BUCKET, "r1"),
    streams.REVIEW_LABELLED_STREAM: subjects.review_labelled("digits", "app1"),
    streams.REVIEW_TRAFFIC_STREAM: subjects.review_traffic("digits", "edge-1"),
}


def perms(name: str, role: Role, where: dict[str, Any]) -> Permissions:
    return permissions_for(role, name=name, **where)


def reads(p: Permissions, stream: str) -> bool:
    """Whether ``p`` can have any of ``stream``'s messages delivered (a get, a consumer)."""
    for prefix in ("$JS.API", "$JS.hub.API"):
        for operation in (
            f"DIRECT.GET.{stream}",
            f"STREAM.MSG.GET.{stream}",
            f"CONSUMER.CREATE.{stream}",
            f"CONSUMER.CREATE.{stream}.any.>",
            f"CONSUMER.CREATE.{stream}.app1.{WRITTEN_ON[stream]}",
            f"CONSUMER.CREATE.{stream}.review-intake.mesh.review.candidate.>",
            f"CONSUMER.MSG.NEXT.{stream}.review-intake",
            f"CONSUMER.MSG.NEXT.{stream}.app1",
        ):
            if may_publish(p, f"{prefix}.{operation}"):
                return True
    return False


@pytest.mark.parametrize(("name", "role", "where"), ROLES, ids=[r[0] for r in ROLES])
def test_no_identity_reads_back_a_review_stream_it_writes(
    name: str, role: Role, where: dict[str, Any]
) -> None:
    p = perms(name, role, where)
    for stream, subject in WRITTEN_ON.items():
        assert not (may_publish(p, subject) and reads(p, stream)), (name, stream)


def test_who_writes_and_who_reads_each_review_stream() -> None:
    writers = {
        stream: sorted(n for n, r, w in ROLES if may_publish(perms(n, r, w), subject))
        for stream, subject in WRITTEN_ON.items()
    }
    readers = {
        stream: sorted(n for n, r, w in ROLES if reads(perms(n, r, w), stream))
        for stream in WRITTEN_ON
    }
    assert writers == {
        streams.REVIEW_CANDIDATES_STREAM: ["cloud-1", "edge-1"],
        streams.REVIEW_STREAM: ["review-intake"],
        streams.REVIEW_LABELS_STREAM: ["review-intake"],
        streams.REVIEW_LABELLED_STREAM: ["review-intake"],
        streams.REVIEW_TRAFFIC_STREAM: ["edge-1"],  # a node's own name only
    }
    assert readers == {
        streams.REVIEW_CANDIDATES_STREAM: ["review-intake"],
        streams.REVIEW_STREAM: ["review-desk"],
        streams.REVIEW_LABELS_STREAM: ["review-desk"],
        streams.REVIEW_LABELLED_STREAM: ["app1"],
        streams.REVIEW_TRAFFIC_STREAM: ["review-desk"],
    }


def test_a_reviewer_calls_the_api_as_itself_and_the_console_and_controller_only_read() -> None:
    alice = perms("alice", Role.REVIEWER, {})
    console = perms("console", Role.CONSOLE, {})
    controller = perms("controller", Role.CONTROLLER, {})
    app = perms("app1", Role.APPLICATION, {})
    for operation in (*subjects.REVIEW_READS, *subjects.REVIEW_WRITES):
        assert may_publish(alice, subjects.review_api(operation, "alice"))
        assert not may_publish(alice, subjects.review_api(operation, "bob"))
        assert not may_publish(app, subjects.review_api(operation, "app1"))
        allowed = operation in subjects.REVIEW_READS
        assert may_publish(console, subjects.review_api(operation, "console")) is allowed
        # labels judge rollouts and feed the learn job; labelling is a person's
        assert may_publish(controller, subjects.review_api(operation, "controller")) is allowed
        assert not may_publish(controller, subjects.review_api(operation, "alice"))
    assert not may_publish(alice, subjects.review_store("label"))
    assert not may_publish(alice, subjects.kv(streams.REVIEW_LABELS_BUCKET, "r1"))


def test_only_the_desk_asks_the_intake_to_store_labels() -> None:
    store = subjects.review_store("label")
    askers = sorted(n for n, r, w in ROLES if may_publish(perms(n, r, w), store))
    assert askers == ["review-desk"]
    intake = perms("review-intake", Role.REVIEW_INTAKE, {})
    assert f"{subjects.REVIEW_STORE} {subjects.REVIEW_STORE_GROUP}" in intake.subscribe_allow
    desk = perms("review-desk", Role.REVIEW_DESK, {})
    assert f"{subjects.REVIEW_API} {subjects.REVIEW_QUEUE_GROUP}" in desk.subscribe_allow


def test_an_application_reads_its_own_labels_through_its_own_consumer() -> None:
    app = perms("app1", Role.APPLICATION, {})
    own = subjects.review_labelled("digits", "app1")
    stream = streams.REVIEW_LABELLED_STREAM
    assert may_publish(app, f"$JS.hub.API.CONSUMER.CREATE.{stream}.app1.{own}")
    for refused in (
        f"$JS.hub.API.CONSUMER.CREATE.{stream}.app1.{subjects.review_labelled('digits', 'b')}",
        f"$JS.hub.API.CONSUMER.CREATE.{stream}.other.{own}",
        f"$JS.hub.API.CONSUMER.CREATE.{stream}",
        f"$JS.hub.API.DIRECT.GET.{stream}",
    ):
        assert not may_publish(app, refused), refused


def test_a_taken_over_leaf_cannot_write_the_queue_or_its_labels() -> None:
    leaf = permissions_for(Role.LEAF, name="site-leaf")
    for stream in (streams.REVIEW_STREAM, streams.REVIEW_LABELS_STREAM):
        assert not may_publish(leaf, WRITTEN_ON[stream])
    assert not may_publish(leaf, subjects.review_store("label"))


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.REVIEW_INTAKE, Role.REVIEW_DESK])
def test_no_review_role_administers_jetstream(role: Role) -> None:
    p = permissions_for(role, name="x1")
    for verb in JS_ADMIN:
        for prefix in ("$JS.API", "$JS.hub.API"):
            subject = f"{prefix}.{verb.removesuffix('.>')}.MESH_REVIEW".removesuffix(".")
            assert not may_publish(p, subject), subject


def test_the_standard_identities_include_a_reviewer_and_the_review_service() -> None:
    roles = {spec.name: spec.role for spec in standard_identities()}
    assert roles["reviewer"] is Role.REVIEWER
    assert roles["review-intake"] is Role.REVIEW_INTAKE
    assert roles["review-desk"] is Role.REVIEW_DESK
