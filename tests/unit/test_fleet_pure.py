"""The fleet's pure parts: signatures, selectors and which assignment a node obeys, the agent's
plan, the heartbeat and node-event records, and the rows of ``mesh fleet status``."""

from __future__ import annotations

import hashlib
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

from mesh.cli.fleet import status_rows
from mesh.errors import InvalidArgumentError
from mesh.fleet.agent import plan
from mesh.fleet.desired import (
    DesiredState,
    Revisioned,
    Selector,
    decode_desired,
    encode_desired,
    resolve,
)
from mesh.fleet.signing import (
    ArtifactSignature,
    SignatureError,
    SigningKey,
    load_trusted_keys,
    parse_public_key,
    sign,
    verify,
)
from mesh.transport.jetstream import BucketEntry
from mesh.wire import (
    NodeEvent,
    NodeStatus,
    decode_node_event,
    decode_node_status,
    encode_node_event,
    encode_node_status,
)

DATA = b"\x08\x07onnx model bytes"


def manifest(**change: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "digits",
        "version": "2",
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "thresholds": {"edge": 0.9},
    }
    out.update(change)
    return out


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def trusted(*keys: SigningKey) -> dict[str, Any]:
    return load_trusted_keys([k.public for k in keys])


# --- signatures -----------------------------------------------------------------------------


def test_a_signature_verifies_for_the_exact_bytes_and_manifest(key: SigningKey) -> None:
    signature = sign(key, manifest(), hashlib.sha256(DATA).hexdigest())
    verify(signature, manifest(), DATA, trusted(key))
    again = ArtifactSignature.from_json(signature.to_json())
    assert again == signature


def test_one_changed_byte_or_manifest_field_breaks_it(key: SigningKey) -> None:
    signature = sign(key, manifest(), hashlib.sha256(DATA).hexdigest())
    flipped = bytes([DATA[0] ^ 1]) + DATA[1:]
    with pytest.raises(SignatureError, match="changed"):
        verify(signature, manifest(), flipped, trusted(key))
    with pytest.raises(SignatureError, match="does not verify"):
        verify(signature, manifest(thresholds={"edge": 0.1}), DATA, trusted(key))
    with pytest.raises(SignatureError, match="signature is for digits@2"):
        verify(signature, manifest(version="3"), DATA, trusted(key))


def test_only_trusted_keys_count(key: SigningKey) -> None:
    other = SigningKey.generate()
    signature = sign(other, manifest(), hashlib.sha256(DATA).hexdigest())
    with pytest.raises(SignatureError, match="does not trust"):
        verify(signature, manifest(), DATA, trusted(key))
    verify(signature, manifest(), DATA, trusted(key, other))  # rotation: both trusted


def test_a_manifest_for_other_bytes_is_not_signed(key: SigningKey) -> None:
    with pytest.raises(SignatureError, match="refusing to sign"):
        sign(key, manifest(sha256="0" * 64), hashlib.sha256(DATA).hexdigest())


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1]", b'{"kind": "other", "v": 1}', b'{"kind": "artifact_signature", "v": 9}'],
)
def test_garbage_signature_files_are_refused(data: bytes) -> None:
    with pytest.raises(SignatureError):
        ArtifactSignature.from_json(data)


def test_keys_are_saved_private_and_loaded_again(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "release.key"
    pub = key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pub.read_text().strip() == key.public
    assert SigningKey.load(path).public == key.public
    with pytest.raises(FileExistsError):
        key.save(path)
    assert list(load_trusted_keys([str(pub)])) == [key.public]
    with pytest.raises(InvalidArgumentError):
        load_trusted_keys(["no-such-key"])


@pytest.mark.parametrize("text", ["rsa:AAAA", "ed25519:AAAA", "ed25519:!!!"])
def test_malformed_public_keys_are_refused(text: str) -> None:
    with pytest.raises(SignatureError):
        parse_public_key(text)


# --- selectors and desired state ------------------------------------------------------------


def test_selectors_parse_match_and_key_the_same_whatever_the_order() -> None:
    a = Selector.parse(["tier=edge,site=a", "label.line=4"])
    b = Selector.parse(["line=4", "site=a", "tier=edge"])
    assert a == b and a.key == b.key == "site=a.label.line=4.tier=edge"
    assert a.matches("edge", "a", "edge-0", {"line": "4", "x": "y"})
    assert not a.matches("edge", "a", "edge-0", {"line": "5"})
    assert not a.matches("gateway", "a", "gw", {"line": "4"})
    assert Selector.parse(["all"]) == Selector.parse([]) == Selector.parse(()) == Selector()
    assert Selector().key == "all"


@pytest.mark.parametrize("term", ["tier", "=x", "tier=a,tier=b", "label.a b=1", "tier=a.b"])
def test_malformed_selectors_are_refused(term: str) -> None:
    with pytest.raises(InvalidArgumentError):
        Selector.parse([term])


def entry(version: str, selector: Selector, revision: int) -> Revisioned:
    return Revisioned(DesiredState("digits", version, selector, 0.0), revision)


def test_a_node_obeys_the_most_specific_assignment_then_the_latest() -> None:
    me = {"tier": "edge", "site": "a", "node": "edge-0", "labels": {"line": "4"}}
    entries = [
        entry("all", Selector(), 9),
        entry("tier", Selector(tier="edge"), 8),
        entry("site", Selector(tier="edge", site="a"), 7),
        entry("label", Selector(labels={"line": "4"}), 6),
        entry("node", Selector(node="edge-0"), 1),
        entry("other", Selector(node="edge-1"), 10),
    ]
    assert resolve(entries, **me)["digits"].version == "node"
    assert resolve(entries[:4], **me)["digits"].version == "label"
    assert resolve(entries[:3], **me)["digits"].version == "site"
    later = [entry("old", Selector(tier="edge"), 1), entry("new", Selector(tier="edge"), 2)]
    assert resolve(later, **me)["digits"].version == "new"
    assert resolve([entries[-1]], **me) == {}


def test_desired_state_round_trips_and_bad_values_are_refused() -> None:
    state = DesiredState("digits", "2-edge", Selector(tier="edge", labels={"a": "b"}), 5.0, "me")
    assert decode_desired(encode_desired(state)) == state
    assert state.key == "digits.label.a=b.tier=edge"
    good = msgpack.unpackb(encode_desired(state))
    for change in (
        {"kind": "other"},
        {"model": "a.b"},
        {"version": ""},
        {"version": "x" * 80},
        {"version": ".."},
        {"version": "1/../2"},
        {"selector": {"tier": 3}},
        {"time": "now"},
    ):
        with pytest.raises(InvalidArgumentError):
            decode_desired(msgpack.packb({**good, **change}))
    with pytest.raises(InvalidArgumentError):
        decode_desired(b"\x92garbage")


def test_the_plan_skips_what_is_served_and_what_was_refused() -> None:
    desired = {
        "b": DesiredState("b", "2", Selector(), 0.0),
        "a": DesiredState("a", "5", Selector(), 0.0),
        "c": DesiredState("c", "1", Selector(), 0.0),
    }
    served = {"a": "4", "c": "1"}
    assert plan(desired, served, {}) == [("a", "5"), ("b", "2")]
    assert plan(desired, served, {"a@5": "gate"}) == [("b", "2")]


# --- records --------------------------------------------------------------------------------


def test_a_heartbeat_round_trips_and_an_old_status_reads_with_defaults() -> None:
    beat = NodeStatus(
        node="edge-0",
        tier="edge",
        models={"digits": "2"},
        breakers={"gateway": "open"},
        backlog=2,
        ready=True,
        time=10.0,
        site="a",
        zone="device",
        labels={"line": "4"},
        pending={"digits": "3"},
        rejected={"digits@4": "why"},
        problems=[],
        escalation_rate=0.1,
        drift=0.2,
        p99_ms=5.0,
        swaps=2,
        mesh_version="0.1.0",
    )
    assert decode_node_status(encode_node_status(beat)) == beat
    old = msgpack.packb(
        {"v": 1, "kind": "node_status", "node": "n", "tier": "t", "models": {},
         "breakers": {}, "backlog": 0, "ready": True, "time": 1.0}
    )  # fmt: skip
    read = decode_node_status(old)
    assert read.site == "" and read.swaps == 0 and read.p99_ms is None and read.labels == {}
    bad = msgpack.unpackb(old)
    for change in ({"swaps": "x"}, {"labels": [1]}, {"p99_ms": "slow"}, {"swaps": True}):
        with pytest.raises(InvalidArgumentError):
            decode_node_status(msgpack.packb({**bad, **change}))


def test_node_events_round_trip_and_unknown_events_are_refused() -> None:
    event = NodeEvent("edge-0", "edge", "rejected", "digits", "4", None, "untrusted key", 3.0)
    assert decode_node_event(encode_node_event(event)) == event
    with pytest.raises(InvalidArgumentError):
        encode_node_event(NodeEvent("e", "edge", "exploded", "d", "1", None, "", 0.0))
    raw = msgpack.unpackb(encode_node_event(event))
    with pytest.raises(InvalidArgumentError):
        decode_node_event(msgpack.packb({**raw, "event": "exploded"}))


# --- fleet status ---------------------------------------------------------------------------


def test_status_rows_say_who_is_online_and_how_long_ago_the_others_were_seen() -> None:
    def beat(name: str, at: float, problems: list[str] | None = None) -> NodeStatus:
        return NodeStatus(
            name, "edge", {"digits": "2"}, {}, 0, True, at, site="a", problems=problems or []
        )

    beats: dict[str, Any] = {
        "fresh": beat("fresh", 99.0),
        "old": beat("old", 70.0),
        "stopped": beat("stopped", 99.5, ["stopped"]),
        "broken": "node status is not valid msgpack",
    }
    rows = {r["node"]: r for r in status_rows(beats, now=100.0, offline_after_s=10.0)}
    assert rows["fresh"]["online"] is True and rows["fresh"]["last_seen_s"] == 1.0
    assert rows["old"]["online"] is False and rows["old"]["last_seen_s"] == 30.0
    assert rows["stopped"]["online"] is False and rows["stopped"]["ready"] is False
    assert rows["broken"] == {
        "node": "broken",
        "online": False,
        "error": "node status is not valid msgpack",
    }
    assert rows["fresh"]["models"] == {"digits": "2"} and rows["fresh"]["site"] == "a"


def _agent(tmp_path: Path, key: SigningKey) -> Any:
    from nats.aio.client import Client

    from mesh.fleet.agent import FleetAgent
    from mesh.observability.metrics import MeshMetrics
    from mesh.settings import FleetSettings

    settings = FleetSettings(
        enabled=True, domain="line4", cache_dir=tmp_path, trusted_keys=[key.public]
    )
    return FleetAgent(
        Client(),
        None,  # type: ignore[arg-type]
        settings,
        name="edge-1",
        tier="edge",
        metrics=MeshMetrics(),
    )


def _entry(key: str, state: DesiredState | None, revision: int) -> BucketEntry:
    """An entry as the watch delivers it: a put, or a delete marker with a withdrawal body."""
    if state is None:
        return BucketEntry(key, b"", revision, deleted=True)
    return BucketEntry(key, encode_desired(state), revision, deleted=state.withdrawn)


def test_an_agent_keeps_and_wakes_on_only_the_assignments_that_match_it(
    tmp_path: Path, key: SigningKey
) -> None:
    """A stage of a rollout writes a key per node and every agent of the site sees them all:
    another node's key is neither kept nor a reason to reconcile, nor is its withdrawal."""
    agent = _agent(tmp_path, key)

    def put(selector: Selector, time: float = 1.0) -> DesiredState:
        state = DesiredState("digits", "2", selector, time=time)
        agent._on_desired(_entry(state.key, state, 7))
        return state

    for other in ("edge-2", "edge-3"):
        put(Selector(node=other))
    put(Selector(tier="gateway"))
    put(Selector(site="line5"))
    assert not agent._wake.is_set() and agent.assignments.entries == {}
    edge_2 = DesiredState("digits", "2", Selector(node="edge-2"), time=1.0)
    agent._on_desired(_entry(edge_2.key, edge_2.withdrawal(2.0), 8))
    assert not agent._wake.is_set()
    mine = put(Selector(node="edge-1"))
    put(Selector(site="line4", tier="edge"))
    assert agent._wake.is_set() and set(agent.desired()) == {"digits"}
    assert agent.desired()["digits"].selector == Selector(node="edge-1")
    agent._wake.clear()
    agent._on_desired(_entry(mine.key, mine.withdrawal(3.0), 9))
    assert agent._wake.is_set() and agent.desired()["digits"].selector.site == "line4"


def test_an_agent_obeys_no_entry_re_delivered_under_another_key_or_older_than_its_newest(
    tmp_path: Path, key: SigningKey
) -> None:
    """A node identity may re-deliver the desired-state bucket's entries into the bucket
    (nats-server #8274): an old assignment under this node's key, another key's under it, or a
    bare delete. None of them is obeyed; the last good entry stays."""
    agent = _agent(tmp_path, key)
    mine = Selector(node="edge-1")
    old = DesiredState("digits", "3-confused", mine, time=10.0)
    new = DesiredState("digits", "2-edge", mine, time=20.0)
    agent._on_desired(_entry(old.key, old, 1))
    agent._on_desired(_entry(new.key, new, 2))
    assert agent.desired()["digits"].version == "2-edge"
    # the old assignment again, under its own key, with a later revision
    agent._on_desired(_entry(old.key, old, 3))
    # the tier's assignment under this node's key
    tier = DesiredState("digits", "3-confused", Selector(tier="edge"), time=30.0)
    mine_key = new.key
    agent._on_desired(BucketEntry(mine_key, encode_desired(tier), 4, deleted=False))
    # a bare delete (a withdrawal needs a body naming its key and a later time)
    agent._on_desired(BucketEntry(mine_key, b"", 5, deleted=True))
    # an old withdrawal of this key
    agent._on_desired(_entry(mine_key, old.withdrawal(15.0), 6))
    assert agent.desired()["digits"].version == "2-edge"
    assert agent.assignments.entries[mine_key].revision == 2
    # garbage is ignored too
    agent._on_desired(BucketEntry(mine_key, b"\xc1", 7, deleted=False))
    assert agent.desired()["digits"].version == "2-edge"
    # a later genuine withdrawal is obeyed
    agent._on_desired(_entry(mine_key, new.withdrawal(25.0), 8))
    assert agent.desired() == {}


def test_a_node_serving_a_revoked_version_falls_back_to_its_assigned_or_previous_one() -> None:
    from mesh.fleet.agent import fallback, plan

    revoked = {"digits@3"}
    assert fallback("digits", "3", "2", ["1", "3"], revoked) == "2"
    # assigned the revoked version itself: the last one served before it
    assert fallback("digits", "3", "3", ["1", "2", "3"], revoked) == "2"
    assert fallback("digits", "3", None, ["3"], revoked) is None
    assert fallback("digits", "3", "3", ["1", "2", "3"], {*revoked, "digits@2"}) == "1"
    desired = {"digits": DesiredState("digits", "3", Selector(), 1.0)}
    assert plan(desired, {"digits": "2"}, {}, revoked) == []
    assert plan(desired, {"digits": "2"}, {}, ()) == [("digits", "3")]


def test_versions_sort_with_numbers_as_numbers_so_a_downgrade_is_seen() -> None:
    from mesh.fleet.desired import version_order

    ordered = ["1-edge", "1-edge-int8", "2-edge", "3-confused", "10-edge"]
    assert sorted(ordered, key=version_order) == ordered
    assert version_order("2.1") < version_order("2.10")


def test_a_revocation_verifies_only_as_signed_and_by_a_trusted_key(key: SigningKey) -> None:
    from mesh.fleet.revocation import (
        decode_revocation,
        encode_revocation,
        revocation_key,
        sign_revocation,
        verify_revocation,
    )

    r = sign_revocation(key, "digits", "3-confused", "swaps 3 and 8", time=5.0, by="ops")
    assert r.bucket_key == revocation_key("digits", "3-confused") == "digits.3-confused"
    again = decode_revocation(encode_revocation(r))
    assert again == r
    verify_revocation(again, {key.public: parse_public_key(key.public)})
    other = SigningKey.generate()
    with pytest.raises(SignatureError, match="not trusted"):
        verify_revocation(again, {other.public: parse_public_key(other.public)})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_revocation(replace(again, version="2-edge"), None)
    for bad in (b"", b"[]", b'{"kind": "revocation", "v": 1}', b'{"kind": "x"}'):
        with pytest.raises(InvalidArgumentError):
            decode_revocation(bad)
    with pytest.raises(InvalidArgumentError):
        sign_revocation(key, "digits", "../etc", "x", time=1.0)
