"""The operator's fleet path, pure parts (issue 26, findings 1 and 5): a rollout stays in the
tier its version is made for and rolls each node back to its own version; small fleets are not
soaked twice on one node; status text says what was judged; an artifact still arriving is
waited for and a refusal can be cleared; the next version's name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh.cli.rollout_text import NO_ROLLOUTS, describe
from mesh.errors import InvalidArgumentError, NotFoundError, UnavailableError
from mesh.fleet.admin import _check_not_refused, _check_not_shadowed, _targets, within_tier
from mesh.fleet.agent import plan
from mesh.fleet.desired import DesiredState, Revisioned, Selector
from mesh.fleet.refusals import (
    RETRY_MAX_S,
    RetryRequest,
    decode_retry,
    encode_retry,
    is_retry_key,
    transient,
    waiting,
)
from mesh.fleet.registry import IncompleteObjectError
from mesh.fleet.rollout import (
    Figures,
    Gate,
    Rollout,
    RolloutPhase,
    StageLog,
    StagePhase,
    decode_rollout,
    desired_for,
    encode_rollout,
    new_rollout,
    parse_stages,
)
from mesh.fleet.rollout.plan import distinct_stages
from mesh.fleet.signing import SignatureError
from mesh.models.bump import next_version
from mesh.wire import NodeStatus

NOW = 1_000.0


def beat(name: str, tier: str, version: str, **more: object) -> NodeStatus:
    return NodeStatus(
        node=name, tier=tier, models={"digits": version}, ready=True, time=NOW,
        site="hub" if tier == "cloud" else "site", **more,  # type: ignore[arg-type]
    )  # fmt: skip


def mesh_up_fleet() -> dict[str, NodeStatus | str]:
    """What ``mesh up`` runs: one node per tier above two edge nodes, each its own version."""
    return {
        "cloud-0": beat("cloud-0", "cloud", "1-cloud"),
        "gateway-0": beat("gateway-0", "gateway", "1-gateway"),
        "edge-0": beat("edge-0", "edge", "1-edge-int8"),
        "edge-1": beat("edge-1", "edge", "1-edge-int8"),
    }


# --- finding 1: a rollout stays in its tier -----------------------------------------------------


def test_a_rollout_of_an_edge_version_targets_only_the_edge_whatever_the_selector() -> None:
    """The issue's ``mesh rollout start digits 3-edge --stages 100%`` went to all three tiers
    and rolled back to ``1-cloud``; now it is the edge's, and rolls back to the edge's."""
    fleet = mesh_up_fleet()
    selector = within_tier(Selector(), "edge", "digits", "3-edge", fleet)
    assert selector == Selector(tier="edge")
    targets, suspect, previous = _targets(
        "digits", "3-edge", selector, fleet, now=NOW, offline_after_s=10
    )
    assert sorted(targets) == ["edge-0", "edge-1"] and suspect == set()
    assert previous == {"edge-0": "1-edge-int8", "edge-1": "1-edge-int8"}
    # a site selector is narrowed the same way: the gateway at the site is not the edge's
    at_site = within_tier(Selector(site="site"), "edge", "digits", "3-edge", fleet)
    assert at_site == Selector(tier="edge", site="site")


@pytest.mark.parametrize(
    ("selector", "names"),
    [(Selector(tier="cloud"), "tier cloud"), (Selector(node="gateway-0"), "is of tier gateway")],
)
def test_a_selector_naming_another_tier_is_refused_with_the_reason(
    selector: Selector, names: str
) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        within_tier(selector, "edge", "digits", "3-edge", mesh_up_fleet())
    assert "made for tier edge (its manifest's tier_hint)" in error.value.message
    assert names in error.value.message


def test_a_manifest_naming_no_tier_may_not_cross_tiers() -> None:
    fleet = mesh_up_fleet()
    with pytest.raises(InvalidArgumentError, match="names no tier"):
        within_tier(Selector(), "", "digits", "3", fleet)
    assert within_tier(Selector(tier="edge"), "", "digits", "3", fleet) == Selector(tier="edge")


def test_a_rollback_returns_each_node_to_its_own_version() -> None:
    previous = {"e0": "1-edge", "e1": "1-edge", "e2": "1-edge-int8"}
    stages = parse_stages("1,100%", Gate())
    r = new_rollout(
        "digits", "2-edge", "1-edge", Selector(tier="edge"), stages, list(previous), now=NOW,
        previous_versions=previous,
    )  # fmt: skip
    # before and during the canary, e2 is held to its own version by a node key
    assert desired_for(r).base == "1-edge" and desired_for(r).nodes == {"e2": "1-edge-int8"}
    running = replace(r, state=RolloutPhase.IN_PROGRESS)
    canary = r.targets[0]
    wanted = desired_for(running)
    assert wanted.nodes[canary] == "2-edge"
    assert all(wanted.nodes.get(n, wanted.base) == v for n, v in previous.items() if n != canary)
    for ended in (RolloutPhase.ROLLING_BACK, RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED):
        back = desired_for(replace(running, state=ended))
        assert {n: back.nodes.get(n, back.base) for n in previous} == previous
    done = desired_for(replace(running, state=RolloutPhase.COMPLETED))
    assert done.base == "2-edge" and done.nodes == {}
    assert decode_rollout(encode_rollout(r)).previous_versions == previous


def test_node_keys_a_rollback_left_do_not_block_the_next_rollout() -> None:
    fleet = {n: beat(n, "edge", v) for n, v in (("e0", "1"), ("e1", "1"), ("e2", "0"))}
    held = Revisioned(
        DesiredState("digits", "0", Selector(node="e2"), NOW, by="rollout abc"), revision=7
    )
    _check_not_shadowed("digits", "2", Selector(tier="edge"), fleet, ["e0", "e1", "e2"], [held])
    by_hand = Revisioned(replace(held.state, by="alice"), revision=7)
    with pytest.raises(InvalidArgumentError, match="more specific"):
        _check_not_shadowed(
            "digits", "2", Selector(tier="edge"), fleet, ["e0", "e1", "e2"], [by_hand]
        )


def test_a_rollout_to_nodes_that_refused_the_version_says_how_to_clear_it() -> None:
    fleet: dict[str, NodeStatus | str] = {
        "e0": beat("e0", "edge", "1", rejected={"digits@2": "signed by a key it does not trust"})
    }
    with pytest.raises(InvalidArgumentError, match="mesh fleet retry --all digits 2"):
        _check_not_refused("digits", "2", fleet, ["e0"])


# --- finding 5: stages, status text -------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "sizes"),
    [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (8, [1, 4, 8]), (100, [1, 10, 50, 100])],
)
def test_the_default_stages_never_soak_a_node_twice(nodes: int, sizes: list[int]) -> None:
    stages = parse_stages("1,10%,50%,100%", Gate())
    kept, dropped = distinct_stages(stages, nodes)
    assert [s.size(nodes) for s in kept] == sizes
    assert kept[-1].is_whole and len(kept) + len(dropped) == 4


def judged_rollout() -> Rollout:
    gate = Gate(soak_s=5, min_requests=20, min_samples=10)
    stages = parse_stages("1,100%", gate)
    r = new_rollout(
        "digits", "2", "1", Selector(tier="edge"), stages, ["e0", "e1"], now=NOW,
        previous_versions={"e0": "1", "e1": "1"},
    )  # fmt: skip
    canary = Figures(nodes=1, requests=60, escalated=39, compared=39, agreed=37, errors=0,
                     latency=(0, 55, 5) + (0,) * 12)  # fmt: skip
    baseline = Figures(nodes=1, requests=44, escalated=33, compared=33, agreed=32,
                       latency=(0, 40, 4) + (0,) * 12)  # fmt: skip
    log = (
        StageLog(NOW, NOW + 1, NOW + 7, "pass", canary.as_dict(), baseline.as_dict()),
        StageLog(NOW + 7, NOW + 8, NOW + 14, "pass", canary.as_dict(), baseline.as_dict()),
    )
    return replace(
        r, state=RolloutPhase.COMPLETED, outcome=RolloutPhase.COMPLETED, current_stage=1,
        log=log, updated_at=NOW + 14, max_nodes_serving=2,
    )  # fmt: skip


def test_a_completed_rollout_reads_as_completed_with_each_gate_against_its_bound() -> None:
    r = judged_rollout()
    lines = describe(r, now=NOW + 20)
    text = "\n".join(lines)
    assert lines[0].startswith("digits@2 (") and "completed on 2 nodes of tier=edge" in lines[0]
    assert "soaking" not in text and "deploying" not in text
    assert "1. canary (1 node): pass after 7.0s" in text
    assert "requests 60 (needs 20), compared upstream 39 (needs 10)" in text
    assert "error rate 0.000 against baseline 0.000 + 0.010" in text
    assert "escalation rate 0.650 against baseline 0.750 + 0.100" in text
    assert "agreement 0.949 on 39 compared against baseline 0.970 - 0.050" in text
    assert "p99 " in text and "ms against 10 ms" in text


def test_a_running_and_a_rolled_back_rollout_say_where_they_are() -> None:
    r = judged_rollout()
    running = replace(
        r, state=RolloutPhase.IN_PROGRESS, outcome=None, phase=StagePhase.SOAKING,
        log=(r.log[0], StageLog(NOW + 7, NOW + 8)),
    )  # fmt: skip
    lines = describe(running, now=NOW + 10)
    assert "in_progress, stage 2/2 all (soaking)" in lines[0]
    assert "  2. all (2 nodes): soaking for 2.0s (soak 5.0s)" in lines
    failed = replace(
        running, state=RolloutPhase.ROLLED_BACK, outcome=RolloutPhase.ROLLED_BACK,
        failed_gate="agreement", reason="agreement: canary 0.8 against bound 0.92",
        figures={"canary": 0.8, "bound": 0.92},
    )  # fmt: skip
    text = "\n".join(describe(failed, now=NOW + 10))
    assert "rolled_back at stage 2/2 all (failed gate agreement)" in text
    assert "its nodes go back to 1" in text and "its figures: canary 0.8, bound 0.92" in text
    assert NO_ROLLOUTS.startswith("no rollouts yet")


# --- the agent: waiting, refusing, clearing -------------------------------------------------------


def test_only_what_is_wrong_with_a_version_is_final() -> None:
    assert transient(IncompleteObjectError("object digits/1-cloud/onnx: 67456 of 198528 bytes"))
    assert transient(NotFoundError("object digits/1-cloud/onnx is not in MESH_MODELS"))
    assert transient(UnavailableError("JetStream did not answer"))
    assert not transient(SignatureError("the bytes were changed or truncated"))
    assert not transient(InvalidArgumentError("the manifest is invalid"))


def test_a_version_not_complete_yet_is_tried_again_with_a_growing_pause() -> None:
    first = waiting(10.0, "67456 of 198528 bytes")
    pauses = [first.due - first.at]
    held = first
    for k in range(12):
        held = held.after(11.0 + k, "still short")
        pauses.append(held.due - held.at)
    assert pauses[:3] == [0.25, 0.5, 1.0] and max(pauses) == RETRY_MAX_S
    assert held.since == 10.0 and held.attempts == 13
    state = DesiredState("digits", "2", Selector(tier="edge"), NOW)
    key = {"digits@2": first}
    assert plan({"digits": state}, {"digits": "1"}, {}, waiting=key, now=10.1) == []
    assert plan({"digits": state}, {"digits": "1"}, {}, waiting=key, now=10.3) == [("digits", "2")]
    assert plan({"digits": state}, {"digits": "1"}, {"digits@2": "bad"}, waiting={}, now=99) == []


def test_a_retry_request_round_trips_and_never_looks_like_an_assignment() -> None:
    request = RetryRequest("digits", "2-edge", None, NOW, by="controller")
    assert request.key == "retry=all.digits" and is_retry_key(request.key)
    assert decode_retry(encode_retry(request)) == request
    one = replace(request, node="edge-0")
    assert one.key == "retry=edge-0.digits"
    assert one.applies_to("edge-0") and not one.applies_to("edge-1")
    assert request.applies_to("edge-1")
    assert not is_retry_key(DesiredState("retry", "1", Selector(), NOW).key)
    with pytest.raises(InvalidArgumentError):
        decode_retry(encode_retry(replace(request, node="a.b")))


# --- mesh models bump ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "existing", "expected"),
    [
        ("1-edge-int8", ["1-cloud", "1-gateway", "1-edge-int8"], "2-edge-int8"),
        ("2-edge-int8", ["1-cloud", "2-edge-int8", "3-cloud"], "4-edge-int8"),
        ("2", ["1", "2"], "3"),
        ("v7", ["v7", "v8"], "v9"),
        ("stable", ["stable"], "stable-2"),
    ],
)
def test_the_next_version_counts_past_every_version_of_the_model(
    source: str, existing: list[str], expected: str
) -> None:
    assert next_version(source, existing) == expected
