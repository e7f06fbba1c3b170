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
from mesh.security.permissions import ROLE_TABLE, Permissions, Role, permissions_for
from mesh.security.server_config import leaf_remote_block, leafnodes_block
from mesh.security.tls import TLSFiles, tls_block

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
    assert set(ROLE_TABLE) == set(Role)


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


@pytest.mark.parametrize(("role", "perms"), every_role(), ids=[r.value for r in Role])
def test_only_the_controller_writes_desired_state(role: Role, perms: Permissions) -> None:
    writes = "$KV.MESH_FLEET_DESIRED.>" in perms.publish_allow
    denied = "$KV.MESH_FLEET_DESIRED.>" in perms.publish_deny
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
    assert "mesh.learn.gateway.>" in perms.publish_allow
    assert not any(".cloud." in s for s in perms.publish_allow)
    top = node(name="cloud-1", tier="cloud", upstream_tier=None)
    # Its own tier's subjects only: a request for a model it does not serve, to a neighbour.
    infer = [s for s in top.publish_allow if re.match(r"mesh\.\w+\.(infer|forward)\.", s)]
    assert infer == ["mesh.cloud.infer.>"]
    assert "mesh.gateway.forward.>" in perms.publish_allow
    assert not any(s.startswith("mesh.learn.") for s in top.publish_allow)


def test_a_node_publishes_its_own_telemetry_and_hard_examples() -> None:
    perms = node()
    assert "mesh.telemetry.edge-1" in perms.publish_allow
    assert "mesh.hard.edge.>" in perms.publish_allow
    assert not any(
        s.startswith("mesh.telemetry.") and s != "mesh.telemetry.edge-1"
        for s in perms.publish_allow
    )


def test_a_node_manages_only_its_own_streams() -> None:
    perms = node(tier="edge-site", upstream_tier="gateway")
    creates = {s for s in perms.publish_allow if ".STREAM.CREATE." in s}
    assert creates == {
        f"{prefix}.STREAM.CREATE.{stream}"
        for prefix in ("$JS.API", "$JS.*.API")
        for stream in (
            "MESH_HARD_EDGE_SITE",
            "MESH_LEARN_EDGE_SITE",
            # the event streams of its domain (the entry tier creates them)
            "MESH_EVENTS",
            "MESH_RESULTS",
            "MESH_EVENTS_DEAD",
            "MESH_ACTIONS_DEAD",
        )
    }
    assert "$JS.ACK.MESH_HARD_EDGE_SITE.>" in perms.publish_allow
    assert "$JS.API.DIRECT.GET.KV_MESH_FLEET_DESIRED.>" in perms.publish_allow


def test_models_limit_the_model_subjects() -> None:
    app = permissions_for(Role.APPLICATION, name="app1", models=["digits", "iris"])
    assert app.publish_allow[:6] == (
        "mesh.infer.digits",
        "mesh.infer.iris",
        "mesh.*.infer.digits",
        "mesh.*.infer.iris",
        "mesh.events.digits.app1",
        "mesh.events.iris.app1",
    )
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
        '{\n  urls: [ "nats-leaf://hub:7422" ]\n  account: "AXYZ"\n'
        '  credentials: "/c/site.creds"\n  tls {\n    ca_file: "/p/ca.pem"\n  }\n}'
    )
