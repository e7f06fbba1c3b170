"""The pure parts of ``mesh.security``: the permission table's shapes, JWT claims, ``.creds``
files and the server configuration fragments."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]
import pytest

from mesh.security.identities import (
    Fleet,
    IdentitySpec,
    auth_block,
    create_fleet,
    server_auth_config,
)
from mesh.security.permissions import JS_ADMIN, Permissions, Role, permissions_for
from mesh.security.server_config import leaf_remote_block, leafnodes_block
from mesh.security.tls import TLSFiles, tls_block
from mesh.transport.denials import matches

DESTRUCTIVE = re.compile(r"\.(STREAM\.(DELETE|PURGE|MSG\.DELETE)|CONSUMER\.DELETE)\.")


def node(**overrides: Any) -> Permissions:
    args: dict[str, Any] = {"name": "edge-1", "tier": "edge", "upstream_tier": "gateway"}
    args.update(overrides)
    return permissions_for(Role.NODE, **args)


def every_role() -> list[tuple[Role, Permissions]]:
    return [
        (role, permissions_for(role, name="x1", tier="edge", upstream_tier="gateway", entry=True))
        for role in Role
    ]


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return create_fleet(
        [
            IdentitySpec("app1", Role.APPLICATION),
            IdentitySpec("edge-1", Role.NODE, tier="edge", upstream_tier="gateway", entry=True),
            IdentitySpec("site-leaf", Role.LEAF),
        ],
        tmp_path_factory.mktemp("creds"),
    )


# ---- the table ----------------------------------------------------------------------------


def test_every_role_has_a_row() -> None:
    for role in Role:
        perms = permissions_for(role, name="x1", tier="edge")
        assert perms.publish_allow, role


@pytest.mark.parametrize(("role", "perms"), every_role(), ids=[r.value for r in Role])
def test_every_subject_is_one_the_server_accepts(role: Role, perms: Permissions) -> None:
    for entry in (*perms.publish_allow, *perms.publish_deny, *perms.subscribe_deny):
        assert " " not in entry, f"{role}: only subscriptions may name a queue: {entry}"
    for entry in (*perms.publish_allow, *perms.publish_deny, *perms.subscribe_allow):
        subject = entry.split(" ")[0]
        tokens = subject.split(".")
        assert all(tokens), f"{role}: empty token in {subject}"
        assert ">" not in tokens[:-1], f"{role}: '>' before the last token in {subject}"
        assert all(t in ("*", ">") or not ({"*", ">"} & set(t)) for t in tokens), subject


@pytest.mark.parametrize(("role", "perms"), every_role(), ids=[r.value for r in Role])
def test_only_the_administrator_may_destroy_streams(role: Role, perms: Permissions) -> None:
    allowed = [s for s in perms.publish_allow if DESTRUCTIVE.search(s)]
    assert allowed == []
    if role is Role.OPERATOR:
        assert perms.publish_allow == (">",) and perms.publish_deny == ()
    else:
        for prefix in ("$JS.API", "$JS.*.API"):
            for op in ("STREAM.DELETE", "STREAM.PURGE", "CONSUMER.DELETE"):
                assert f"{prefix}.{op}.>" in perms.publish_deny, (role, prefix, op)


@pytest.mark.parametrize("bucket", ["MESH_FLEET_DESIRED", "MESH_FLEET_REVOKED"])
@pytest.mark.parametrize(("role", "perms"), every_role(), ids=[r.value for r in Role])
def test_only_the_controller_writes_desired_state_and_revocations(
    role: Role, perms: Permissions, bucket: str
) -> None:
    writes = f"$KV.{bucket}.>" in perms.publish_allow
    denied = f"$KV.{bucket}.>" in perms.publish_deny
    if role is Role.CONTROLLER:
        assert writes and not denied
    elif role is Role.OPERATOR:
        assert perms.publish_allow == (">",)
    else:
        assert denied and not writes


@pytest.mark.parametrize(
    "role", [r for r in Role if r not in (Role.OPERATOR, Role.LEAF)], ids=lambda r: r.value
)
def test_a_client_subscribes_to_its_own_inbox_only(role: Role) -> None:
    perms = permissions_for(role, name="x1", tier="edge")
    inboxes = [s for s in perms.subscribe_allow if s.startswith("_INBOX")]
    assert inboxes == ["_INBOX_x1.>"]
    assert not any(s.startswith(("mesh.>", ">")) for s in perms.subscribe_allow)


def test_a_node_takes_its_tier_only_in_its_queue_group() -> None:
    perms = node(entry=False)
    assert "mesh.edge.infer.> mesh.edge" in perms.subscribe_allow
    assert not any(s.startswith("mesh.edge.infer.") and " " not in s for s in perms.subscribe_allow)
    assert not any(s.startswith("mesh.infer.") for s in perms.subscribe_allow)
    assert perms.allow_responses


def test_only_the_entry_tier_takes_the_entry_subjects() -> None:
    assert "mesh.infer.> mesh.entry" in node(entry=True).subscribe_allow
    assert "mesh.infer.> mesh.entry" not in node(entry=False).subscribe_allow


def test_a_node_escalates_and_forwards_only_to_its_upstream_tier() -> None:
    perms = node()
    assert "mesh.gateway.infer.>" in perms.publish_allow
    assert "mesh.gateway.forward.>" in perms.publish_allow
    assert not any(".cloud." in s for s in perms.publish_allow)
    top = node(name="cloud-1", tier="cloud", upstream_tier=None)
    # Its own tier's subjects only: a request for a model it does not serve, to a neighbour.
    infer = [s for s in top.publish_allow if re.match(r"mesh\.\w+\.(infer|forward)\.", s)]
    assert infer == ["mesh.cloud.infer.>"]


def test_hard_examples_are_taken_up_by_the_tier_above_never_sent_by_their_own_tier() -> None:
    edge = node()
    assert "mesh.hard.edge.>" in edge.publish_allow
    assert not any(s.startswith("mesh.learn.") for s in edge.publish_allow)
    assert not any("MESH_HARD_EDGE.collect" in s or "MSG.NEXT.MESH_HARD_EDGE" in s
                   for s in edge.publish_allow)  # fmt: skip
    gateway = node(name="gateway-1", tier="gateway", upstream_tier="cloud", downstream_tier="edge")
    assert "mesh.learn.gateway.>" in gateway.publish_allow
    for prefix in ("$JS.API", "$JS.*.API"):
        assert (
            f"{prefix}.CONSUMER.CREATE.MESH_HARD_EDGE.collect-gateway.mesh.hard.edge.>"
            in gateway.publish_allow
        )
        assert f"{prefix}.CONSUMER.MSG.NEXT.MESH_HARD_EDGE.collect-gateway" in gateway.publish_allow
    # its own hard examples are the cloud's to take up, not its own
    assert not any("MSG.NEXT.MESH_HARD_GATEWAY" in s for s in gateway.publish_allow)


def test_a_node_publishes_its_own_telemetry_and_hard_examples() -> None:
    perms = node()
    assert "mesh.telemetry.edge-1" in perms.publish_allow
    assert "mesh.hard.edge.>" in perms.publish_allow
    assert not any(
        s.startswith("mesh.telemetry.") and s != "mesh.telemetry.edge-1"
        for s in perms.publish_allow
    )


def test_no_runtime_identity_creates_or_updates_a_stream() -> None:
    perms = node(tier="edge-site", upstream_tier="gateway", entry=True, domain="site")
    for role, role_perms in [*every_role(), (Role.NODE, perms)]:
        if role is Role.OPERATOR:
            continue
        admin = [s for s in role_perms.publish_allow if re.search(r"\.STREAM\.(CREATE|UPDATE)", s)]
        assert admin == [], role
        for op in ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.RESTORE", "META"):
            assert f"$JS.*.API.{op}.>" in role_perms.publish_deny, (role, op)
    # a node reads its own stream's state and writes its own heartbeat key in its domain only
    assert "$JS.API.STREAM.INFO.MESH_HARD_EDGE_SITE" in perms.publish_allow
    assert "$KV.MESH_NODES_SITE.edge-1" in perms.publish_allow
    assert not any(s.startswith("$KV.*") for s in perms.publish_allow)
    assert "$JS.API.DIRECT.GET.KV_MESH_FLEET_DESIRED.>" in perms.publish_allow


def test_the_entry_tier_consumes_events_through_its_own_named_consumers() -> None:
    perms = node(models=["digits"], entry=True)
    assert (
        "$JS.API.CONSUMER.CREATE.MESH_EVENTS.mesh-edge-digits.mesh.events.digits.>"
        in perms.publish_allow
    )
    assert "$JS.ACK.MESH_EVENTS.mesh-edge-digits.>" in perms.publish_allow
    assert not any("CONSUMER.CREATE.MESH_EVENTS" in s for s in node(entry=False).publish_allow)


def test_models_limit_the_model_subjects() -> None:
    app = permissions_for(Role.APPLICATION, name="app1", models=["digits", "iris"])
    mesh_subjects = [s for s in app.publish_allow if s.startswith("mesh.")]
    assert mesh_subjects == [
        "mesh.infer.digits",
        "mesh.*.infer.digits",
        "mesh.infer.iris",
        "mesh.*.infer.iris",
        "mesh.events.digits.app1",
        "mesh.events.iris.app1",
    ]
    assert "mesh.edge.infer.digits mesh.edge" in node(models=["digits"]).subscribe_allow


def test_every_model_is_a_wildcard_token_where_the_model_sits_mid_subject() -> None:
    app = permissions_for(Role.APPLICATION, name="app1")
    assert "mesh.events.*.app1" in app.publish_allow
    assert "mesh.results.*.app1" in app.subscribe_allow


@pytest.mark.parametrize(
    "bad", [{"name": "a.b"}, {"name": "a>"}, {"name": "x", "tier": "edge.*"}, {"name": "x"}]
)
def test_names_that_are_not_one_token_or_a_node_without_tier_are_refused(
    bad: dict[str, Any],
) -> None:
    with pytest.raises(ValueError):
        permissions_for(Role.NODE, **bad)


# ---- JWTs and creds files -----------------------------------------------------------------


def test_the_creds_file_holds_the_jwt_and_seed_in_the_standard_format(fleet: Fleet) -> None:
    identity = fleet["edge-1"]
    text = fleet.creds_path("edge-1").read_text()
    match = re.fullmatch(
        r"-----BEGIN NATS USER JWT-----\n(?P<jwt>[\w.-]+)\n------END NATS USER JWT------\n"
        r"\n\*+ IMPORTANT \*+\n.*\n.*\n\n"
        r"-----BEGIN USER NKEY SEED-----\n(?P<seed>SU[A-Z2-7]+)\n------END USER NKEY SEED------\n"
        r"\n\*+\n",
        text,
    )
    assert match is not None, text
    assert match["jwt"] == identity.jwt
    seed_key = nkeys.from_seed(match["seed"].encode()).public_key.decode()
    assert seed_key == identity.public_key == claims(identity.jwt)["sub"]


def test_creds_files_are_readable_by_their_owner_only(fleet: Fleet) -> None:
    for name in fleet.identities:
        mode = stat.S_IMODE(fleet.creds_path(name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_seeds_stay_out_of_reprs(fleet: Fleet) -> None:
    assert fleet["app1"].seed not in repr(fleet)
    assert fleet.account.seed not in repr(fleet.account)


def test_the_user_jwt_carries_the_role_permissions(fleet: Fleet) -> None:
    identity = fleet["edge-1"]
    data = claims(identity.jwt)
    assert data["iss"] == fleet.account.public_key
    assert data["nats"]["pub"]["allow"] == list(identity.permissions.publish_allow)
    assert data["nats"]["sub"]["allow"] == list(identity.permissions.subscribe_allow)
    assert data["nats"]["pub"]["deny"] == list(identity.permissions.publish_deny)
    # Go's JWT names: "max", not nats-jwt's "max_msgs".
    assert data["nats"]["resp"] == {"max": 1, "ttl": 0}
    assert data["nats"]["allowed_connection_types"] == ["STANDARD"]
    assert "resp" not in claims(fleet["app1"].jwt)["nats"]
    assert claims(fleet["site-leaf"].jwt)["nats"]["allowed_connection_types"] == ["LEAFNODE"]


def test_the_mesh_account_has_jetstream_and_the_operator_names_the_system_account(
    fleet: Fleet,
) -> None:
    limits = claims(fleet.account.jwt)["nats"]["limits"]
    assert limits["mem_storage"] == limits["disk_storage"] == -1
    assert "jetstream" not in limits and "memory_storage" not in limits
    system_limits = claims(fleet.system_account.jwt)["nats"]["limits"]
    assert system_limits["mem_storage"] == system_limits["disk_storage"] == 0
    operator = claims(fleet.operator.jwt)
    assert operator["iss"] == operator["sub"] == fleet.operator.public_key
    assert operator["nats"]["system_account"] == fleet.system_account.public_key
    assert claims(fleet.account.jwt)["iss"] == fleet.operator.public_key


def test_two_identities_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="two identities"):
        create_fleet([IdentitySpec("a", Role.APPLICATION), IdentitySpec("a", Role.CONSOLE)])


# ---- server configuration -----------------------------------------------------------------


def test_the_auth_block_trusts_the_operator_and_preloads_both_accounts(fleet: Fleet) -> None:
    block = auth_block(fleet)
    assert f'operator: "{fleet.operator.jwt}"' in block
    assert f'system_account: "{fleet.system_account.public_key}"' in block
    assert "resolver: MEMORY" in block
    for account in (fleet.system_account, fleet.account):
        assert f'{account.public_key}: "{account.jwt}"' in block
    assert block == auth_block(server_auth_config(fleet))


def test_tls_and_leaf_remote_blocks() -> None:
    files = TLSFiles(Path("/p/cert.pem"), Path("/p/key.pem"), Path("/p/ca.pem"))
    assert tls_block(files, verify=True) == (
        'tls {\n  cert_file: "/p/cert.pem"\n  key_file: "/p/key.pem"\n  ca_file: "/p/ca.pem"\n'
        "  timeout: 2\n  verify: true\n}"
    )
    assert "verify" not in tls_block(files)
    leaf = leafnodes_block("127.0.0.1:7422", tls=files, verify=True)
    assert leaf.startswith('leafnodes {\n  listen: "127.0.0.1:7422"\n  no_advertise: true\n  tls {')
    remote = leaf_remote_block(
        ["nats-leaf://hub:7422"],
        credentials=Path("/c/site.creds"),
        account="AXYZ",
        ca_file=Path("/p/ca.pem"),
    )
    assert remote == (
        '{\n  urls: [ "nats-leaf://hub:7422" ]\n  compression: off\n  account: "AXYZ"\n'
        '  credentials: "/c/site.creds"\n  tls {\n    ca_file: "/p/ca.pem"\n  }\n}'
    )


# ---- the JetStream API, verb by verb, as a NATS server decides -----------------------------


def may_publish(perms: Permissions, subject: str) -> bool:
    allowed = any(matches(a, subject) for a in perms.publish_allow)
    return allowed and not any(matches(d, subject) for d in perms.publish_deny)


ROLES_AT = [
    ("app1", Role.APPLICATION, {}),
    ("edge-1", Role.NODE, {"tier": "edge", "upstream_tier": "gateway", "entry": True,
                           "domain": "site"}),
    ("gateway-1", Role.NODE, {"tier": "gateway", "upstream_tier": "cloud",
                              "downstream_tier": "edge", "domain": "site"}),
    ("cloud-1", Role.NODE, {"tier": "cloud", "downstream_tier": "gateway", "domain": "hub"}),
    ("controller", Role.CONTROLLER, {}),
    ("ingress", Role.INGRESS, {}),
    ("console", Role.CONSOLE, {}),
    ("site-leaf", Role.LEAF, {}),
]  # fmt: skip
STREAMS = ["MESH_EVENTS", "MESH_HARD_EDGE", "KV_MESH_FLEET_DESIRED", "OBJ_MESH_MODELS", "X"]


@pytest.mark.parametrize(("name", "role", "where"), ROLES_AT, ids=[r[0] for r in ROLES_AT])
@pytest.mark.parametrize("domain", [None, "hub", "site"])
def test_no_runtime_identity_administers_jetstream_in_any_domain(
    name: str, role: Role, where: dict[str, Any], domain: str | None
) -> None:
    perms = permissions_for(role, name=name, **where)
    prefix = "$JS.API" if domain is None else f"$JS.{domain}.API"
    for verb in JS_ADMIN:
        for stream in STREAMS:
            subject = f"{prefix}.{verb.removesuffix('.>')}.{stream}".removesuffix(".")
            if verb in ("META.>",):
                subject = f"{prefix}.META.LEADER.STEPDOWN"
            if verb == "SERVER.>":
                subject = f"{prefix}.SERVER.REMOVE"
            assert not may_publish(perms, subject), (name, subject)
            assert not may_publish(perms, f"{subject}.c1.mesh.>"), (name, subject)


@pytest.mark.parametrize("domain", [None, "hub", "site"])
def test_a_node_creates_only_its_own_consumers_by_name_and_filter(domain: str | None) -> None:
    prefix = "$JS.API" if domain is None else f"$JS.{domain}.API"
    edge = permissions_for(Role.NODE, name="edge-1", tier="edge", upstream_tier="gateway",
                           entry=True, models=["digits"])  # fmt: skip
    allowed = f"{prefix}.CONSUMER.CREATE.MESH_EVENTS.mesh-edge-digits.mesh.events.digits.>"
    assert may_publish(edge, allowed)
    for refused in (
        f"{prefix}.CONSUMER.CREATE.MESH_EVENTS.mesh-edge-digits.mesh.events.>",
        f"{prefix}.CONSUMER.CREATE.MESH_EVENTS.evil.mesh.events.digits.>",
        f"{prefix}.CONSUMER.CREATE.MESH_EVENTS",
        f"{prefix}.CONSUMER.CREATE.MESH_HARD_EDGE.collect-edge.mesh.hard.edge.>",
        f"{prefix}.CONSUMER.MSG.NEXT.MESH_HARD_EDGE.collect-gateway",
        f"{prefix}.CONSUMER.DURABLE.CREATE.MESH_EVENTS.mesh-edge-digits",
        f"{prefix}.CONSUMER.CREATE.MESH_RESULTS.app1.mesh.results.digits.app1",
    ):
        assert not may_publish(edge, refused), refused
