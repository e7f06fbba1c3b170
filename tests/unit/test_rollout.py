"""The rollout's plan, gates and steps, with a fake fleet and a fake clock (no I/O)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from mesh.errors import InvalidArgumentError
from mesh.fleet.desired import Selector
from mesh.fleet.rollout import (
    Figures,
    Gate,
    NodeView,
    Rollout,
    decode_rollout,
    decode_window,
    delta,
    desired_for,
    difference_upper,
    encode_rollout,
    encode_window,
    evidence_problem,
    judge,
    new_rollout,
    parse_duration,
    parse_stages,
    report,
    request,
    step,
    view_of,
    wilson_lower,
    wilson_upper,
)
from mesh.fleet.rollout.witness import Witness
from mesh.wire import NodeStatus, VersionEvidence

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "rollout.schema.json").read_text("utf-8")
)
OLD, NEW = "1", "2"
BUCKETS = 15


def ev(version: str = NEW, since: float = 0.0, **counts: int) -> VersionEvidence:
    latency = [0] * BUCKETS
    latency[2] = counts.pop("answered", counts.get("requests", 0) - counts.get("escalated", 0))
    return VersionEvidence(version=version, since=since, latency=tuple(latency), **counts)


# --- stages and gates -----------------------------------------------------------------------


def test_stages_parse_counts_and_shares_and_must_end_at_the_whole_fleet() -> None:
    stages = parse_stages("1,10%,50%,100%", Gate())
    assert [s.name for s in stages] == ["canary", "stage-2", "stage-3", "all"]
    assert [s.size(500) for s in stages] == [1, 50, 250, 500]
    assert [s.size(3) for s in stages] == [1, 1, 2, 3]
    for bad, message in [
        ("1,50%", "not 100%"),
        ("50%,10%,100%", "smaller"),
        ("0,100%", "at least one"),
        ("x,100%", "neither"),
        ("150%", "(0%, 100%]"),
        ("", "give the stages"),
    ]:
        with pytest.raises(
            InvalidArgumentError, match=message.replace("(", r"\(").replace("]", r"\]")
        ):
            parse_stages(bad, Gate())


def test_gates_refuse_unknown_metrics_and_bad_values() -> None:
    gate = Gate.parse(["max_error_rate=1%", "soak_s=2m", "min_samples=30,min_agreement=0.9"])
    assert (gate.max_error_rate, gate.soak_s, gate.min_samples, gate.min_agreement) == (
        0.01, 120.0, 30, 0.9,
    )  # fmt: skip
    for term, message in [
        ("max_latency=3", "unknown metric"),
        ("max_error_rate=2", "share"),
        ("min_samples=2.5", "whole number"),
        ("max_p99_ms=-1", "negative"),
        ("max_p99_ms=fast", "not a number"),
        ("max_p99_ms=nan", "finite"),
        ("noequals", "metric=value"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            Gate.parse([term])
    assert parse_duration("500ms") == 0.5 and parse_duration("30") == 30.0


# --- the judgement --------------------------------------------------------------------------


def figures(nodes: int = 1, **counts: int) -> Figures:
    latency = [0] * BUCKETS
    latency[counts.pop("bucket", 2)] = counts.get("requests", 0)
    return Figures(nodes=nodes, latency=tuple(latency), **counts)


def test_a_stage_waits_for_enough_evidence_before_it_is_judged() -> None:
    gate = Gate(min_requests=100, min_samples=40)
    assert judge(gate, Figures(), None).result == "wait"
    assert "requests" in judge(gate, figures(requests=50), None).reason
    early = judge(gate, figures(requests=500, escalated=20, compared=10, agreed=0), None)
    assert early.result == "wait" and "compared" in early.reason
    # a tier that never asks the tier above (the top) is not held up by agreement
    assert judge(gate, figures(requests=500), None).result == "pass"


def test_agreement_fails_against_the_baseline_only_when_its_upper_bound_is_below() -> None:
    gate = Gate(min_requests=100, min_samples=40)
    baseline = figures(nodes=10, requests=5000, escalated=300, audits=100, compared=400, agreed=380)
    bad = figures(requests=500, escalated=30, audits=10, compared=40, agreed=30)
    verdict = judge(gate, bad, baseline)
    assert verdict.result == "fail" and verdict.gate == "agreement"
    assert verdict.figures["canary"] == 0.75 and verdict.figures["baseline"] == 0.95
    assert verdict.figures["bound"] == 0.9 and verdict.figures["samples"] == 40
    assert verdict.figures["upper_90"] < 0.9
    # an unlucky but plausible canary passes: 36/40 has an upper bound over the bound
    unlucky = replace(bad, agreed=36)
    assert wilson_upper(36, 40) > 0.9
    assert judge(gate, unlucky, baseline).result == "pass"
    # a fixed bound applies without any baseline
    assert judge(gate, bad, None).result == "pass"
    assert judge(replace(gate, min_agreement=0.9), bad, None).gate == "agreement"


def test_error_rate_escalation_latency_and_drift_compare_with_the_baseline() -> None:
    gate = Gate(min_requests=100, min_samples=0)
    base = figures(nodes=5, requests=1000, errors=1, escalated=100)
    assert judge(gate, figures(requests=200, errors=10, escalated=20), base).gate == "error_rate"
    assert judge(gate, figures(requests=200, escalated=60), base).gate == "escalation_rate"
    slow = figures(requests=200, escalated=20, bucket=7)  # 50 ms against 1 ms
    verdict = judge(gate, slow, base)
    assert verdict.gate == "p99_ms" and verdict.figures["bound"] == 10.0
    # under the 10 ms floor a slower canary is noise, not a regression
    assert judge(gate, figures(requests=200, escalated=20, bucket=4), base).result == "pass"
    drifted = replace(figures(requests=2000, escalated=200), drift=0.5)
    assert judge(gate, drifted, replace(base, drift=0.1)).result == "pass"  # off by default
    gate = replace(gate, max_drift_increase=0.1)
    assert judge(gate, drifted, replace(base, drift=0.1)).gate == "drift"
    # a few hundred rows of a fresh version say little about its drift
    assert (
        judge(gate, replace(drifted, requests=200, escalated=20), replace(base, drift=0.1)).result
        == "pass"
    )
    # one slow or failed request among a few dozen is not evidence of a regression; several are
    quick = figures(requests=40, escalated=4)
    one_slow = replace(
        quick, latency=tuple(c - (i == 2) + (i == 7) for i, c in enumerate(quick.latency))
    )
    assert one_slow.quantile(0.99) == 50.0
    gate_40 = Gate(min_requests=30, min_samples=0)
    assert judge(gate_40, one_slow, base).result == "pass"
    five_slow = replace(
        quick, latency=tuple(c - 5 * (i == 2) + 5 * (i == 7) for i, c in enumerate(quick.latency))
    )
    verdict = judge(gate_40, five_slow, base)
    assert verdict.gate == "p99_ms" and verdict.figures["count"] == 5
    assert verdict.figures["lower_90"] > 0.01 and verdict.figures["baseline"] == 1.0
    assert judge(gate_40, replace(quick, errors=1), base).result == "pass"
    assert judge(gate_40, replace(quick, errors=4), base).gate == "error_rate"
    assert wilson_lower(0, 40) == 0.0 and 0.0 < wilson_lower(1, 40) < 0.01 < wilson_lower(4, 40)
    # a node's drift counts once its window is full: fewer rows read as drift
    fresh = ev(requests=300, escalated=30)
    assert delta(replace(fresh, drift=0.2), None).drift is None
    assert delta(replace(fresh, requests=600, drift=0.2), fresh).drift == 0.2
    # a baseline with too little evidence is waited for, as the canary is
    thin = figures(requests=10, errors=0)
    assert judge(gate, figures(requests=200, errors=10), thin).result == "wait"
    measured = Gate(min_requests=100, min_samples=50)
    few = figures(nodes=3, requests=500, escalated=20, compared=20, agreed=20)
    verdict = judge(measured, figures(requests=200, escalated=60, compared=60, agreed=40), few)
    assert verdict.result == "wait" and "baseline" in verdict.reason
    assert (
        judge(
            Gate(min_requests=100, max_error_rate=0.01), figures(requests=200, errors=10), None
        ).gate
        == "error_rate"
    )


# --- telemetry that cannot be true -----------------------------------------------------------


def test_impossible_counters_are_named() -> None:
    assert evidence_problem(ev(requests=10, compared=2, agreed=1, escalated=2)) is None
    for bad, word in [
        (ev(requests=10, compared=2, agreed=3, escalated=2), "agreed"),
        (ev(requests=-1, answered=0), "negative"),
        (ev(requests=10, errors=11), "errors"),
        (ev(requests=10, compared=5, agreed=1, escalated=1, audits=1), "compared"),
        (replace(ev(requests=10), latency=(1, 2)), "buckets"),
        (replace(ev(requests=1), latency=(5,) * BUCKETS), "latencies"),
        (replace(ev(requests=1), drift=-1.0), "drift"),
    ]:
        problem = evidence_problem(bad)
        assert problem is not None and word in problem, (bad, problem)


def test_windows_are_differences_and_a_restart_starts_over() -> None:
    then = ev(requests=100, escalated=10, compared=10, agreed=9, since=5.0)
    now = ev(requests=150, escalated=12, compared=12, agreed=10, since=5.0)
    d = delta(now, then)
    assert not isinstance(d, str) and (d.requests, d.compared, d.agreed) == (50, 2, 1)
    restarted = ev(requests=20, escalated=1, since=9.0)
    assert delta(restarted, then) == restarted
    assert isinstance(delta(replace(now, requests=50, since=5.0), then), str)


def test_a_heartbeat_becomes_a_view_flagged_when_it_lies() -> None:
    beat = NodeStatus(
        node="n", tier="edge", models={"digits": NEW}, ready=True, time=100.0,
        rejected={f"digits@{NEW}": "fails the device gate"},
        evidence={"digits": ev(requests=5)},
    )  # fmt: skip
    view = view_of("digits", NEW, "n", beat, now=101.0, offline_after_s=10)
    assert view.online and view.serving == NEW and view.rejected == "fails the device gate"
    assert view.evidence is not None and view.problem is None
    lying = replace(beat, evidence={"digits": ev(version=OLD, requests=5)})
    assert "serves" in (
        view_of("digits", NEW, "n", lying, now=101.0, offline_after_s=10).problem or ""
    )
    assert not view_of("digits", NEW, "n", beat, now=200.0, offline_after_s=10).online
    garbled = view_of("digits", NEW, "n", "not msgpack", now=101.0, offline_after_s=10)
    assert not garbled.online and "unreadable" in (garbled.problem or "")


# --- the steps --------------------------------------------------------------------------------


class FakeFleet:
    """Nodes that take what the desired state says and answer at a steady rate, and the node
    of the tier above (``up-0``) that answers their escalations and counts them per caller."""

    def __init__(self, names: list[str], agreement: dict[str, float]) -> None:
        self.names = names
        self.serving = {n: OLD for n in names}
        self.since = dict.fromkeys(names, 0.0)
        self.counts = {n: [0.0, 0.0, 0.0] for n in names}  # requests, compared, agreed
        self.agreement = agreement
        self.offline: set[str] = set()
        self.rejected: dict[str, str] = {}
        #: what the tier above answered for each node since it started (never reset)
        self.answered = dict.fromkeys(names, 0)

    def apply(self, r: Rollout, now: float) -> None:
        wanted = desired_for(r)
        for n in self.names:
            if n in self.offline:
                continue
            version = wanted.nodes.get(n, wanted.base)
            if version is not None and version != self.serving[n] and n not in self.rejected:
                self.serving[n] = version
                self.since[n] = now
                self.counts[n] = [0.0, 0.0, 0.0]

    def run(self, seconds: float) -> None:
        for n in self.names:
            if n in self.offline:
                continue
            c = self.counts[n]
            requests = int(20 * seconds)
            compared = requests // 4
            c[0] += requests
            c[1] += compared
            c[2] += compared * self.agreement[self.serving[n]]
            self.answered[n] += compared

    def views(self, now: float) -> dict[str, NodeView]:
        out: dict[str, NodeView] = {}
        for n in self.names:
            requests, compared, agreed = (int(c) for c in self.counts[n])
            e = ev(
                self.serving[n], self.since[n], requests=requests, escalated=compared,
                compared=compared, agreed=agreed,
            )  # fmt: skip
            out[n] = NodeView(
                n, n not in self.offline, self.serving[n], self.rejected.get(n), e, None
            )
        out["up-0"] = NodeView(
            "up-0", True, "cloud-1", witness=Witness(since=0.0, counts=dict(self.answered))
        )
        return out


def drive(r: Rollout, fleet: FakeFleet, until: float = 600.0) -> tuple[Rollout, list[float]]:
    """Step every second, as the controller does; returns the last rollout and when each
    stage changed."""
    now = r.created_at
    window = None
    changes: list[float] = []
    while now < until and r.state not in ("completed", "rolled_back", "aborted", "paused"):
        fleet.apply(r, now)
        result = step(r, fleet.views(now), window, now)
        if result.window is not None:
            window = result.window
        if result.rollout.current_stage != r.current_stage:
            changes.append(now)
        r = result.rollout
        fleet.apply(r, now)
        fleet.run(1.0)
        now += 1.0
    return r, changes


def rollout(stages: str = "1,25%,50%,100%", nodes: int = 8, **gate: float) -> Rollout:
    g = Gate(soak_s=5, min_requests=50, min_samples=40, **gate)  # type: ignore[arg-type]
    names = [f"n{i}" for i in range(nodes)]
    return new_rollout(
        "digits", NEW, OLD, Selector(tier="edge"), parse_stages(stages, g), names, now=0.0
    )


def test_nodes_whose_telemetry_cannot_be_true_are_never_the_canary() -> None:
    """A canary is there for its evidence: a node beating impossible counters goes last (CI saw
    the liar of the integration test drawn as the only canary, and the stage wait for it)."""
    names = [f"n{i}" for i in range(8)]
    stages = parse_stages("1,50%,100%", Gate())
    for _ in range(50):
        r = new_rollout(
            "digits", NEW, OLD, Selector(), stages, names, now=0.0, suspect={"n3", "n5"}
        )
        assert set(r.targets[-2:]) == {"n3", "n5"} and sorted(r.targets) == names


def test_a_good_version_goes_through_every_stage_and_completes() -> None:
    r = rollout()
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.96})
    assert desired_for(r).base == OLD and desired_for(r).nodes == {}
    seen_sizes = []
    now = 0.0
    window = None
    while r.state != "completed" and now < 300:
        fleet.apply(r, now)
        result = step(r, fleet.views(now), window, now)
        window = result.window or window
        r = result.rollout
        wanted = desired_for(r)
        if r.state == "in_progress":
            seen_sizes.append((r.current_stage, len(wanted.nodes), wanted.base))
        fleet.apply(r, now)
        fleet.run(1.0)
        now += 1.0
    assert r.state == "completed" and r.outcome == "completed"
    assert [s.result for s in r.log] == ["pass"] * 4
    assert set(seen_sizes) == {(0, 1, OLD), (1, 2, OLD), (2, 4, OLD), (3, 4, NEW)}
    assert desired_for(r).base == NEW and desired_for(r).nodes == {}
    assert set(fleet.serving.values()) == {NEW}
    assert r.max_nodes_serving == 8 and r.canary_nodes == 1
    assert report(r) == {
        "model": "digits", "version": NEW, "outcome": "completed", "failed_gate": None,
        "max_nodes_serving": 8, "canary_nodes": 1, "shadow": False,
        "answers_served_before_decision": r.answers_served_before_decision,
    }  # fmt: skip
    # every node answered with the version before the last stage was judged
    assert r.answers_served_before_decision == sum(r.answers_served.values()) > 0


def test_a_version_that_disagrees_is_rolled_back_from_the_canary() -> None:
    r = rollout()
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.70})
    r, changes = drive(r, fleet)
    assert r.state == "rolled_back" and r.failed_gate == "agreement"
    assert r.current_stage == 0 and changes == []
    assert r.max_nodes_serving == 1
    assert set(fleet.serving.values()) == {OLD}
    assert "agreement" in r.reason and r.figures["baseline"] == 0.95


def test_a_node_refusing_the_version_fails_the_stage_and_an_offline_one_is_not_waited_for() -> None:
    r = rollout("2,100%")
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    fleet.rejected[r.targets[0]] = "fails the device gate: p99 9 ms over 2 ms"
    done, _ = drive(r, fleet)
    assert done.state == "rolled_back" and done.failed_gate == "install"
    assert "device gate" in done.reason

    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    fleet.offline.add(r.targets[1])
    done, _ = drive(r, fleet)
    assert done.state == "completed"
    assert fleet.serving[r.targets[1]] == OLD  # it takes the version when it returns


def test_a_stage_whose_baseline_is_cut_off_waits_then_pauses_saying_it_is_offline() -> None:
    """Every node outside the canary goes offline (a site cut off): there is nothing to judge
    the canary against, so the stage waits, then pauses, and the reason says the baseline is
    offline, not only that no trusted node reports the previous version."""
    r = rollout("1,100%", nodes=3, max_wait_s=20)
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    fleet.offline.update(r.targets[1:])
    paused, _ = drive(r, fleet)
    assert paused.state == "paused" and paused.current_stage == 0
    assert "no trusted node outside the stage" in paused.reason
    assert "(2 of the 2 nodes outside it offline)" in paused.reason


def test_a_stage_draws_its_new_nodes_from_the_online_ones_first() -> None:
    """The three nodes drawn next after the canary go offline: stage 2 gives the version to the
    next online node in the drawn order instead (not reached with its canary alone), and the
    offline ones take it with the last stage once back."""
    r = rollout("1,25%,100%", nodes=8)
    first = r.targets
    fleet = FakeFleet(list(first), {OLD: 0.95, NEW: 0.95})
    fleet.offline.update(first[1:4])
    done, changes = drive(r, fleet)
    assert done.state == "completed", done.reason
    assert len(changes) == 2
    # drawn into stage 2 (its first two), then the others, the offline ones last
    assert done.targets[:2] == (first[0], first[4])
    assert done.targets[2:] == (*first[5:], *first[1:4])
    assert done.log[1].result == "pass" and done.max_nodes_serving >= 2
    fleet.offline.clear()
    fleet.apply(done, 600.0)
    assert set(fleet.serving.values()) == {NEW}


def test_a_stage_with_no_node_online_pauses_after_its_deploy_timeout_rather_than_failing() -> None:
    """Every node offline after the canary stage (a fleet cut off from the hub): nothing took
    the version and nothing refused it, so the rollout pauses saying why; a node that comes
    back gets the stage's assignment meanwhile, and a resume deploys the stage again."""
    r = rollout("1,100%", nodes=2, deploy_timeout_s=30)
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    fleet.offline.update(r.targets)
    paused, _ = drive(r, fleet)
    assert paused.state == "paused" and paused.current_stage == 0, paused.reason
    assert paused.reason == (
        "no node of stage 1/2 (canary) was online for 30s (1 offline or flagged): nothing to "
        "deploy to or judge"
    )
    assert desired_for(paused).nodes == {r.targets[0]: NEW}
    assert request(paused, "resume", 100.0).phase == "deploying"


def test_too_little_evidence_pauses_and_resume_deploys_the_stage_again() -> None:
    r = rollout("1,100%", max_wait_s=20)
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    fleet.run = lambda seconds: None  # type: ignore[method-assign]
    paused, _ = drive(r, fleet)
    assert paused.state == "paused" and "not enough evidence" in paused.reason
    resumed = request(paused, "resume", 100.0)
    assert resumed.state == "in_progress" and resumed.phase == "deploying"
    with pytest.raises(InvalidArgumentError):
        request(resumed, "resume", 101.0)
    aborted = request(resumed, "abort", 102.0, by="ops")
    assert aborted.state == "rolling_back" and aborted.outcome == "aborted"
    done = step(aborted, FakeFleet(list(r.targets), {OLD: 1, NEW: 1}).views(103.0), None, 103.0)
    assert done.rollout.state == "aborted"
    with pytest.raises(InvalidArgumentError, match="already ended"):
        request(done.rollout, "abort", 104.0)


def test_a_stage_is_judged_once_whoever_steps_it() -> None:
    """A new controller starts from the stored record and window: it neither repeats the
    stage's deployment nor opens a new soak."""
    r = rollout("1,100%")
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.95})
    now, window = 0.0, None
    while r.phase != "soaking":
        fleet.apply(r, now)
        result = step(r, fleet.views(now), window, now)
        window = result.window or window
        r = result.rollout
        fleet.apply(r, now)
        now += 1.0
    assert window is not None
    stored_r, stored_w = decode_rollout(encode_rollout(r)), decode_window(encode_window(window))
    assert stored_r == r and stored_w == window
    again = step(stored_r, fleet.views(now), stored_w, now)
    assert again.window is None and again.rollout.phase == "soaking"


def test_the_record_matches_its_schema() -> None:
    r = rollout()
    fleet = FakeFleet(list(r.targets), {OLD: 0.95, NEW: 0.7})
    done, _ = drive(r, fleet)
    for record in (r, done):
        jsonschema.validate(json.loads(encode_rollout(record)), SCHEMA)
    with pytest.raises(InvalidArgumentError):
        decode_rollout(b'{"kind": "rollout", "v": 1}')
    with pytest.raises(InvalidArgumentError):
        decode_rollout(b"\xff")
    assert decode_window(b"nonsense") is None


def test_the_default_sample_count_tells_a_confused_version_from_a_good_one() -> None:
    """With the default 150 answers compared, exactly (binomial on both sides): against a
    fleet's baseline of thousands of answers, a version agreeing 15 points under a 0.93
    baseline passes rarely and one as good almost never fails; against a baseline as thin as
    the canary the judgement is less sure both ways, never more eager to fail."""
    from math import comb

    gate = Gate()
    n = gate.min_samples

    def binomial(k: int, total: int, p: float) -> float:
        return comb(total, k) * p**k * (1 - p) ** (total - k)

    def chance(p: float, fails: bool, base_total: int, base_p: float = 0.93) -> float:
        bases = (
            [(round(base_p * base_total), 1.0)]  # thousands: its share is all but known
            if base_total > 1000
            else [(j, binomial(j, base_total, base_p)) for j in range(base_total + 1)]
        )
        return sum(
            binomial(k, n, p) * weight
            for k in range(n + 1)
            for j, weight in bases
            if (difference_upper(k, n, j, base_total) < -gate.max_agreement_drop) == fails
        )

    assert chance(0.75, fails=False, base_total=20_000) < 0.005
    assert chance(0.78, fails=False, base_total=20_000) < 0.03
    assert chance(0.93, fails=True, base_total=20_000) < 0.001
    assert chance(0.91, fails=True, base_total=20_000) < 0.005
    assert chance(0.75, fails=False, base_total=150) < 0.03
    assert chance(0.93, fails=True, base_total=150) < 0.002
    assert chance(0.93, fails=True, base_total=16) < 0.001


def test_a_gate_with_no_minimum_judges_an_empty_canary_without_dividing_by_zero() -> None:
    gate = Gate(min_requests=0, min_samples=0)
    baseline = figures(nodes=3, requests=100, errors=1, escalated=10, compared=10, agreed=9)
    assert judge(gate, figures(requests=0), baseline).result == "pass"
    assert judge(gate, figures(requests=40, escalated=4), baseline).result == "pass"


def test_a_thin_baseline_that_agreed_every_time_does_not_fail_a_good_canary() -> None:
    """CI saw it: stage 3 of a good version failed, canary 0.9125 of 80 against a baseline of 16
    compared answers that all agreed (bound 0.95 from the baseline's point estimate)."""
    gate = Gate(min_requests=20, min_samples=15)
    baseline = figures(nodes=3, requests=46, escalated=5, audits=11, compared=16, agreed=16)
    canary = figures(nodes=3, requests=200, escalated=30, audits=50, compared=80, agreed=73)
    assert judge(gate, canary, baseline).result == "pass"
    # a confused canary still fails against that baseline
    confused = replace(canary, agreed=56)
    verdict = judge(gate, confused, baseline)
    assert verdict.gate == "agreement" and verdict.figures["difference_upper_90"] < -0.05
