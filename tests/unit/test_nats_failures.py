"""What a NATS failure tells its caller: a violation names the identity, the subject and what it
may do; a connection failure says which it was; an address that is no NATS URL is refused."""

from __future__ import annotations

import socket
import ssl

import nats.errors
import pytest

from mesh.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from mesh.transport.denials import Operation, Rights, Violation, denied, matches, parse_violation
from mesh.transport.failures import check_url, is_rejection, rejected, unreachable

APP = Rights(
    identity="app",
    publish_allow=(
        "_INBOX_app.>",
        "mesh.infer.>",
        "mesh.*.infer.>",
        "mesh.events.*.app",
        "$JS.API.CONSUMER.INFO.MESH_RESULTS.app",
    ),
    publish_deny=("$JS.API.STREAM.CREATE.>",),
    subscribe_allow=("_INBOX_app.>", "mesh.results.*.app"),
)


def test_the_violations_nats_py_hands_over_lowercased_are_read() -> None:
    # nats-py's parser lowercases the whole -ERR line, subject included
    assert parse_violation("'permissions violation for publish to \"mesh.events.digits.cam-7\"'") \
        == Violation(Operation.PUBLISH, "mesh.events.digits.cam-7")  # fmt: skip
    queue = parse_violation(
        'Permissions Violation for Subscription to "mesh.edge.infer.>" using queue "mesh.edge"'
    )
    assert queue == Violation(Operation.SUBSCRIBE, "mesh.edge.infer.>", "mesh.edge")
    reply = parse_violation('permissions violation for publish with reply of "_r_.x"')
    assert reply is not None and reply.operation is Operation.REPLY
    assert parse_violation("'authorization violation'") is None
    assert parse_violation("'maximum payload violation'") is None


def test_a_violation_blocks_requests_on_its_subject_or_on_the_refused_inbox() -> None:
    publish = Violation(Operation.PUBLISH, "$js.api.stream.info.kv_mesh_fleet_nodes")
    assert publish.blocks("$JS.API.STREAM.INFO.KV_MESH_FLEET_NODES", "_INBOX_app.x.")
    assert not publish.blocks("$JS.API.STREAM.INFO.KV_MESH_FLEET_DESIRED", "_INBOX_app.x.")
    inbox = Violation(Operation.SUBSCRIBE, "_INBOX.abc.*")
    assert inbox.blocks("mesh.infer.digits", "_INBOX.abc.")
    assert not inbox.blocks("mesh.infer.digits", "_INBOX_app.abc.")


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("mesh.events.*.app", "mesh.events.digits.app", True),
        ("mesh.events.*.app", "mesh.events.digits.cam-7", False),
        ("mesh.infer.>", "mesh.infer.digits", True),
        ("mesh.infer.>", "mesh.infer", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a", False),
    ],
)
def test_subjects_match_as_nats_matches_them(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


def test_a_refusal_names_the_identity_the_subject_as_spelled_and_what_it_may_do() -> None:
    violation = Violation(Operation.PUBLISH, "mesh.events.digits.cam-7")
    error = denied(violation, APP)
    assert error.code.value == "PERMISSION_DENIED"
    assert "identity app may not publish to mesh.events.digits.cam-7" in error.message
    assert "mesh.events.*.app" in error.message and "mesh.infer.>" in error.message
    assert "1 JetStream API subjects" in error.message
    lowered = Violation(Operation.PUBLISH, "$js.api.stream.info.kv_mesh_fleet_nodes")
    spelled = denied(lowered, APP, "$JS.API.STREAM.INFO.KV_MESH_FLEET_NODES")
    assert "may not publish to $JS.API.STREAM.INFO.KV_MESH_FLEET_NODES" in spelled.message
    assert "app may publish to $JS.API.CONSUMER.INFO.MESH_RESULTS.app" in spelled.message


def test_a_subject_an_identity_is_denied_outright_says_which_rule_denies_it() -> None:
    rights = Rights(identity="node", publish_allow=("$JS.API.>",), publish_deny=APP.publish_deny)
    error = denied(Violation(Operation.PUBLISH, "$JS.API.STREAM.CREATE.X"), rights)
    assert "its permissions deny $JS.API.STREAM.CREATE.>" in error.message


def test_an_unknown_identity_is_told_to_use_credentials_that_may() -> None:
    error = denied(Violation(Operation.SUBSCRIBE, "x.y"), Rights())
    assert error.message.startswith("this connection's identity may not subscribe to x.y")
    assert error.message.endswith("use credentials whose identity may")


def test_rights_come_from_the_user_jwt_claims() -> None:
    claims = {
        "name": "cam-7",
        "nats": {"pub": {"allow": ["a.>", 3], "deny": ["b"]}, "sub": {"allow": ["c"]}},
    }
    rights = Rights.of_claims(claims)
    assert rights == Rights("cam-7", ("a.>",), ("b",), ("c",), ())
    assert Rights.of_claims({}).who == "this connection's identity"


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:4222", "tls://hub.example:4222", "127.0.0.1:4222", "localhost",
     "ws://127.0.0.1:8080", " nats://h:1 "],
)  # fmt: skip
def test_nats_urls_and_nats_py_shorthand_pass(url: str) -> None:
    assert check_url(url) == url.strip()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:4222", "scheme http:// is not one of"),
        ("https://hub:443", "scheme https://"),
        ("nats//127.0.0.1:4222", "is not a NATS URL"),
        ("nats:/127.0.0.1", "is not a NATS URL"),
        ("", "is not a NATS URL"),
        ("nats://:4222", "no host"),
        ("nats://h:99999", "not a NATS URL"),
    ],
)
def test_addresses_that_are_no_nats_url_are_refused_before_dialling(url: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says) as raised:
        check_url(url)
    assert "nats://HOST:PORT" in raised.value.message


def test_each_way_a_connection_fails_is_told_apart() -> None:
    urls = ["nats://nowhere.invalid:4222"]
    cases: list[tuple[BaseException | None, str]] = [
        (ConnectionRefusedError(111, "refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "unknown host nowhere.invalid"),
        (ssl.SSLError(1, "wrong version number"), "TLS failed"),
        (TimeoutError(), "did not greet as a NATS server"),
        (None, "no server answered"),
    ]
    for cause, says in cases:
        error = unreachable(urls, cause, 5.0)
        assert isinstance(error, UnavailableError)
        assert error.message.startswith("cannot connect to NATS at nats://nowhere.invalid:4222")
        assert says in error.message, error.message


def test_credentials_the_server_rejects_are_final_and_say_what_to_use() -> None:
    assert is_rejection(nats.errors.Error("nats: 'authorization violation'"))
    assert is_rejection(nats.errors.AuthorizationError())
    assert is_rejection(nats.errors.Error("nats: 'User Authentication Expired'"))
    assert not is_rejection(ConnectionRefusedError())
    error = rejected(["nats://h:4222"], APP, "/x/app.creds")
    assert isinstance(error, UnauthenticatedError)
    assert "rejected credentials /x/app.creds (identity app)" in error.message
    assert "mesh up prints MESH_CREDS" in error.message
    missing = rejected(["nats://h:4222"], Rights(), None)
    assert "takes no connection without credentials" in missing.message


def test_every_error_code_has_its_http_status_and_grpc_status() -> None:
    import grpc

    from mesh.errors import HTTP_STATUS, ErrorCode, error_for
    from mesh.ingress.grpc_server import GRPC_STATUS

    assert set(HTTP_STATUS) == set(ErrorCode) == set(GRPC_STATUS)
    assert HTTP_STATUS[ErrorCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[ErrorCode.UNAUTHENTICATED] == 401
    assert GRPC_STATUS[ErrorCode.PERMISSION_DENIED] is grpc.StatusCode.PERMISSION_DENIED
    assert GRPC_STATUS[ErrorCode.UNAUTHENTICATED] is grpc.StatusCode.UNAUTHENTICATED
    # an error reply carrying the new codes comes back as its own type
    assert isinstance(error_for("PERMISSION_DENIED", "x"), PermissionDeniedError)
    assert isinstance(error_for("UNAUTHENTICATED", "x"), UnauthenticatedError)
