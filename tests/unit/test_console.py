"""The console's pure parts: tokens, sessions and CSRF; the fleet board; gate rows; an item's
input drawn; escaping; and the console role's rights on the rollouts bucket."""

from __future__ import annotations

import pytest

from mesh.console.access import Access, bearer_token, same_origin
from mesh.console.figure import draw_input, image_shape
from mesh.console.fleetboard import FleetBoard, NodeState, SiteState, site_rows
from mesh.console.markup import escape
from mesh.console.rolloutboard import gate_rows
from mesh.errors import InvalidArgumentError
from mesh.fleet.rollout import Figures, Gate
from mesh.security.permissions import Role, permissions_for
from mesh.wire import NodeStatus, VersionEvidence
from tests.unit.test_identities import may_publish

TOKEN = "a-token-long-enough-1234"


def test_a_token_opens_a_session_whose_cookie_and_csrf_token_check_and_expire() -> None:
    now = [1000.0]
    access = Access({"ada": TOKEN}, clock=lambda: now[0])
    assert access.person_for_token(TOKEN) == "ada"
    assert access.person_for_token(TOKEN + "x") is None and access.person_for_token("") is None
    session, cookie = access.open_session("ada")
    assert access.session_for_cookie(cookie) == session
    forged = cookie.rsplit(".", 1)[0] + ".0000"
    assert access.session_for_cookie(forged) is None
    assert access.session_for_cookie(cookie.replace("ada", "bob", 1)) is None
    assert access.csrf_ok(session, access.csrf_token(session))
    assert not access.csrf_ok(session, "guess") and not access.csrf_ok(session, None)
    now[0] += 13 * 3600
    assert access.session_for_cookie(cookie) is None
    # another set of tokens ends every session
    assert Access({"ada": TOKEN + "z"}).session_for_cookie(cookie) is None


def test_short_tokens_and_bad_names_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        Access({"ada": "short"})
    with pytest.raises(InvalidArgumentError):
        Access({"a b": TOKEN})
    with pytest.raises(InvalidArgumentError):
        Access({})


def test_bearer_headers_and_origins() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None
    assert same_origin(None, "h:1", "http") and same_origin("http://h:1", "h:1", "http")
    assert not same_origin("http://evil", "h:1", "http") and not same_origin("null", "h:1", "http")


def beat(node: str, t: float, site: str = "s", **more: object) -> NodeStatus:
    return NodeStatus(node=node, tier="edge", time=t, site=site, **more)  # type: ignore[arg-type]


def evidence(requests: int, escalated: int, degraded: int, version: str = "1") -> dict[str, object]:
    e = VersionEvidence(version=version, since=1.0, requests=requests, escalated=escalated,
                        degraded=degraded, latency=(0,) * 15)  # fmt: skip
    return {"evidence": {"digits": e}, "models": {"digits": version}}


def test_the_board_says_online_offline_and_unreachable_and_journals_the_changes() -> None:
    board = FleetBoard(offline_after_s=10)
    board.beat(beat("a", 100, **evidence(0, 0, 0)))
    board.beat(beat("b", 100))
    board.beat(beat("a", 110, **evidence(100, 20, 5), breakers={"gw": "closed"}))
    board.beat(beat("a", 111, **evidence(30, 3, 0, version="2"), breakers={"gw": "open"}))
    row = board.row("a", 111.5)
    assert row is not None and row.state is NodeState.ONLINE
    assert row.answers_per_s == pytest.approx(130 / 11)
    assert row.escalation_rate == pytest.approx(23 / 130)
    assert row.degraded_rate == pytest.approx(5 / 130)
    texts = [e.text for e in board.journal("a")]
    assert "swapped digits 1 → 2" in texts and "breaker to gw: closed → open" in texts
    board.tick(112)
    board.tick(125)  # b silent for 25 s, a for 14 s: the whole site is unreachable
    rows = board.rows(125)
    assert {r.name: r.state for r in rows} == {"a": NodeState.UNREACHABLE,
                                              "b": NodeState.UNREACHABLE}  # fmt: skip
    assert site_rows(board.rows(125), 125)[0].state is SiteState.UNREACHABLE
    board.beat(beat("b", 126))
    assert board.row("a", 126) is not None and board.row("a", 126).state is NodeState.OFFLINE  # type: ignore[union-attr]
    assert site_rows(board.rows(126), 126)[0].state is SiteState.PARTIAL
    assert any("offline" in e.text for e in board.journal("a"))
    # a heartbeat older than the one held changes nothing
    assert not board.beat(beat("b", 120))


def test_a_node_silent_longer_than_the_threshold_between_ticks_is_journalled() -> None:
    board = FleetBoard(offline_after_s=10)
    board.beat(beat("a", 100))
    board.tick(101)
    board.beat(beat("a", 115))
    assert [e.text for e in board.journal("a")] == [
        "online again",
        "offline: no heartbeat for 15 s",
    ]


def test_gate_rows_hold_their_bounds() -> None:
    gate = Gate(min_requests=50, min_samples=10, max_p99_ms=5.0)
    canary = Figures(
        nodes=1, requests=60, escalated=12, compared=12, agreed=9, latency=(60,) + (0,) * 14
    )
    base = Figures(
        nodes=1, requests=60, escalated=6, compared=12, agreed=12, latency=(60,) + (0,) * 14
    )
    rows = {r.name: r for r in gate_rows(gate, canary, base)}
    assert rows["answers"].holds is True
    assert rows["escalation rate"].bound == "≤ 20.0%" and rows["escalation rate"].holds is True
    assert rows["agreement with the tier above"].holds is False  # 75% against 100% - 5 points
    assert rows["drift"].holds is None


def test_an_image_shaped_input_is_drawn_as_an_image_and_a_row_as_a_table() -> None:
    assert image_shape([1, 64]) == (8, 8) and image_shape([28, 28]) == (28, 28)
    assert image_shape([1, 10]) is None and image_shape([3]) is None
    digit = draw_input({"x": {"dtype": "float32", "shape": [1, 64], "data": [0.5] * 64}}, None)
    assert "<svg" in digit and "8\u00d78 image" in digit and digit.count("<rect") == 64
    row = draw_input({"x": {"dtype": "float32", "shape": [1, 5], "data": [1, 2, "x", 4, 5]}}, None)
    assert "<table" in row and "not a number" in row
    lying = draw_input({"x": {"shape": [1, 64], "data": [1.0]}}, None)
    assert "does not match" in lying
    assert "residency device" in draw_input(None, "residency device")
    assert "&lt;script&gt;" in draw_input({"<script>": {"shape": [2], "data": [1, 2]}}, None)


def test_markup_escapes_what_it_is_given() -> None:
    assert escape('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert escape(escape("<b>")) == "&lt;b&gt;"


def test_the_console_writes_rollout_records_and_nothing_else_of_the_fleet() -> None:
    perms = permissions_for(Role.CONSOLE, name="console")
    assert may_publish(perms, "$KV.MESH_FLEET_ROLLOUTS.rollout.digits")
    for refused in (
        "$KV.MESH_FLEET_ROLLOUTS.lease.controller",
        "$KV.MESH_FLEET_ROLLOUTS.window.digits",
        "$KV.MESH_FLEET_DESIRED.digits.all",
        "$O.MESH_MODELS.C.x",
        "$KV.MESH_NODES_HUB.edge-0",
        "mesh.review.api.label.console",
    ):
        assert not may_publish(perms, refused), refused
