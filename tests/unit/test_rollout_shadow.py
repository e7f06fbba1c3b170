"""A rollout's shadow stage and its labelled-accuracy gate, with a fake fleet and a fake clock:
the version runs beside the one its nodes serve and is judged before it serves anything."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema

from mesh.fleet.desired import Selector
from mesh.fleet.rollout import (
    Figures,
    Gate,
    NodeView,
    Rollout,
    decode_rollout,
    decode_window,
    desired_for,
    encode_rollout,
    encode_window,
    judge,
    new_rollout,
    parse_stages,
    report,
    step,
    view_of,
)
from mesh.fleet.rollout.evidence import ShadowFigures
from mesh.fleet.rollout.judge import LabelFigures, judge_shadow
from mesh.fleet.rollout.plan import Stage, with_shadow
from mesh.fleet.rollout.witness import Witness
from mesh.wire import NodeStatus, ShadowEvidence, VersionEvidence
from tests.unit.test_rollout import BUCKETS, NEW, OLD, SCHEMA


class ShadowFleet:
    """Nodes that take what the desired state says, shadows included, answer 20 requests a
    second (a quarter compared with the tier above), and the tier above's node counting them.
    ``agreement`` is each version's agreement with the tier above; ``alike`` how often the new
    version answers as the old one does."""

    def __init__(self, names: list[str], agreement: dict[str, float], alike: float) -> None:
        self.names = names
        self.serving = dict.fromkeys(names, OLD)
        self.shadowing: dict[str, str] = {}
        self.since = dict.fromkeys(names, 0.0)
        self.counts = {n: [0.0] * 3 for n in names}  # requests, compared, agreed
        self.shadow_counts = {n: [0.0] * 5 for n in names}  # requests, matched, cmp, agr, s_agr
        self.agreement = agreement
        self.alike = alike
        self.answered = dict.fromkeys(names, 0)
        #: every node that ever served the new version, and how many answers it gave
        self.served_new: dict[str, int] = {}

    def apply(self, r: Rollout, now: float) -> None:
        wanted = desired_for(r)
        for n in self.names:
            version = wanted.nodes.get(n, wanted.base)
            if version is not None and version != self.serving[n]:
                self.serving[n] = version
                self.since[n] = now
                self.counts[n] = [0.0] * 3
            shadow = wanted.shadows.get(n)
            if shadow != self.shadowing.get(n):
                self.shadow_counts[n] = [0.0] * 5
                if shadow is None:
                    self.shadowing.pop(n, None)
                else:
                    self.shadowing[n] = shadow

    def run(self, seconds: float) -> None:
        for n in self.names:
            requests = int(20 * seconds)
            compared = requests // 4
            c = self.counts[n]
            c[0] += requests
            c[1] += compared
            c[2] += compared * self.agreement[self.serving[n]]
            self.answered[n] += compared
            if self.serving[n] == NEW:
                self.served_new[n] = self.served_new.get(n, 0) + requests - compared
            if n in self.shadowing:
                s = self.shadow_counts[n]
                s[0] += requests
                s[1] += requests * self.alike
                s[2] += compared
                s[3] += compared * self.agreement[self.shadowing[n]]
                s[4] += compared * self.agreement[self.serving[n]]

    def views(self, now: float) -> dict[str, NodeView]:
        out: dict[str, NodeView] = {}
        for n in self.names:
            requests, compared, agreed = (int(c) for c in self.counts[n])
            latency = [0] * BUCKETS
            latency[2] = requests - compared
            e = VersionEvidence(
                version=self.serving[n], since=self.since[n], requests=requests,
                escalated=compared, compared=compared, agreed=agreed, latency=tuple(latency),
            )  # fmt: skip
            shadow = None
            if n in self.shadowing:
                sr, sm, sc, sa, ss = (int(c) for c in self.shadow_counts[n])
                shadow = ShadowEvidence(
                    version=self.shadowing[n], serving=self.serving[n], since=1.0, requests=sr,
                    matched=sm, compared=sc, agreed=sa, serving_agreed=ss,
                )  # fmt: skip
            out[n] = NodeView(n, True, self.serving[n], None, e, None, shadow=shadow)
        out["up-0"] = NodeView(
            "up-0", True, "cloud-1", witness=Witness(since=0.0, counts=dict(self.answered))
        )
        return out


def shadow_rollout(nodes: int = 4) -> Rollout:
    gate = Gate(soak_s=5, min_requests=50, min_samples=60)
    names = [f"n{i}" for i in range(nodes)]
    stages = with_shadow(parse_stages("1,50%,100%", gate), nodes)
    return new_rollout("digits", NEW, OLD, Selector(tier="edge"), stages, names, now=0.0)


def drive(r: Rollout, fleet: ShadowFleet) -> tuple[Rollout, list[tuple[int, dict[str, str]]]]:
    now, window = r.created_at, None
    shadows_seen: list[tuple[int, dict[str, str]]] = []
    while now < 600 and r.state not in ("completed", "rolled_back"):
        fleet.apply(r, now)
        result = step(r, fleet.views(now), window, now)
        window = result.window or window
        r = result.rollout
        fleet.apply(r, now)
        shadows_seen.append((r.current_stage, dict(fleet.shadowing)))
        fleet.run(1.0)
        now += 1.0
    return r, shadows_seen


def test_a_shadow_stage_runs_on_the_canarys_nodes_and_assigns_them_nothing_new() -> None:
    r = shadow_rollout()
    assert [s.name for s in r.stages] == ["shadow", "canary", "stage-2", "all"]
    assert r.shadow and r.stages[0].shadow and r.stage_size(0) == r.stage_size(1) == 1
    assert r.canary_nodes == 1
    stage = Stage.from_dict(r.stages[0].as_dict())
    assert stage.shadow and not stage.is_whole
    started = step(r, {}, None, 0.0).rollout
    wanted = desired_for(started)
    canary = started.targets[0]
    assert wanted.base == OLD
    assert wanted.nodes == {canary: OLD} and wanted.shadows == {canary: NEW}


def test_a_good_version_passes_its_shadow_then_serves_and_completes() -> None:
    r = shadow_rollout()
    fleet = ShadowFleet(list(r.targets), {OLD: 0.93, NEW: 0.95}, alike=0.9)
    done, seen = drive(r, fleet)
    assert done.state == "completed", done.reason
    assert [s.result for s in done.log] == ["pass"] * 4
    # during the shadow stage one node ran it beside the old version, serving nothing new
    in_shadow = [shadows for stage, shadows in seen if stage == 0]
    assert in_shadow and all(len(s) <= 1 for s in in_shadow) and any(in_shadow)
    shadow_log = done.log[0]
    assert shadow_log.canary is not None and shadow_log.canary["matched"] > 0
    assert shadow_log.baseline is not None and shadow_log.baseline["compared"] > 0
    assert not fleet.shadowing  # nobody runs it in shadow once it serves
    assert done.answers_served_before_decision == sum(done.answers_served.values()) > 0
    entry = report(done)
    assert entry["shadow"] is True and entry["outcome"] == "completed"
    jsonschema.validate(json.loads(encode_rollout(done)), SCHEMA)


def test_a_confused_version_fails_in_shadow_and_never_serves_an_answer() -> None:
    r = shadow_rollout()
    fleet = ShadowFleet(list(r.targets), {OLD: 0.95, NEW: 0.78}, alike=0.8)
    done, _ = drive(r, fleet)
    assert done.state == "rolled_back" and done.failed_gate == "agreement"
    assert done.current_stage == 0 and done.max_nodes_serving == 0
    assert fleet.served_new == {} and not fleet.shadowing
    assert done.answers_served_before_decision == 0
    assert report(done)["answers_served_before_decision"] == 0
    assert "agreement" in done.reason and done.figures["baseline"] == 0.95
    stored = decode_rollout(encode_rollout(done))
    assert stored == done and stored.shadow
    jsonschema.validate(json.loads(encode_rollout(done)), SCHEMA)


def test_a_version_answering_unlike_the_serving_one_fails_its_floor() -> None:
    r = shadow_rollout()
    fleet = ShadowFleet(list(r.targets), {OLD: 0.95, NEW: 0.95}, alike=0.3)
    done, _ = drive(r, fleet)
    assert done.failed_gate == "serving_agreement" and done.answers_served_before_decision == 0


def test_shadow_evidence_that_cannot_be_true_flags_the_node() -> None:
    beat = NodeStatus(
        node="n0", tier="edge", models={"digits": OLD}, ready=True, time=100.0,
        shadows={"digits": ShadowEvidence(
            version=NEW, serving=OLD, since=1.0, requests=10, compared=5, agreed=9,
        )},
    )  # fmt: skip
    view = view_of("digits", NEW, "n0", beat, now=100.0, offline_after_s=10)
    assert view.problem is not None and "agreed" in view.problem and view.shadow is None
    beside_other = replace(
        beat, shadows={"digits": ShadowEvidence(version=NEW, serving="0", since=1.0)}
    )
    problem = view_of("digits", NEW, "n0", beside_other, now=100.0, offline_after_s=10).problem
    assert problem is not None and "beside" in problem
    honest = replace(beat, shadows={"digits": ShadowEvidence(version=NEW, serving=OLD, since=1.0)})
    view = view_of("digits", NEW, "n0", honest, now=100.0, offline_after_s=10)
    assert view.problem is None and view.shadowing == NEW


def test_a_shadow_window_survives_being_stored() -> None:
    r = shadow_rollout()
    fleet = ShadowFleet(list(r.targets), {OLD: 0.95, NEW: 0.95}, alike=0.9)
    now, window = 0.0, None
    while window is None:
        fleet.apply(r, now)
        result = step(r, fleet.views(now), window, now)
        window, r = result.window, result.rollout
        fleet.apply(r, now)
        fleet.run(1.0)
        now += 1.0
    assert window.shadows and decode_window(encode_window(window)) == window


def shadow_figures(
    requests: int, matched: int, compared: int, agreed: int, serving_agreed: int, errors: int = 0
) -> ShadowFigures:
    return ShadowFigures(
        shadow=Figures(nodes=1, requests=requests, errors=errors, compared=compared, agreed=agreed),
        serving=Figures(nodes=1, requests=requests, compared=compared, agreed=serving_agreed),
        matched=matched,
        skipped=0,
        asks_above=True,
        flagged={},
    )


def test_the_shadow_judgement_waits_then_compares_on_the_same_requests() -> None:
    gate = Gate(min_requests=100, min_samples=100)
    assert judge_shadow(gate, shadow_figures(50, 45, 10, 9, 9)).result == "wait"
    waiting = judge_shadow(gate, shadow_figures(400, 380, 60, 55, 55))
    assert waiting.result == "wait" and "compared" in waiting.reason
    good = judge_shadow(gate, shadow_figures(400, 380, 200, 190, 180))
    assert good.result == "pass"
    # a better version may disagree with the serving one where that one was wrong
    assert judge_shadow(gate, shadow_figures(400, 300, 200, 190, 150)).result == "pass"
    worse = judge_shadow(gate, shadow_figures(400, 330, 200, 160, 190))
    assert worse.gate == "agreement" and worse.figures["baseline"] == 0.95
    failing = judge_shadow(gate, shadow_figures(400, 380, 200, 190, 190, errors=40))
    assert failing.gate == "error_rate"


def test_labels_judge_once_both_sides_have_enough() -> None:
    gate = Gate(min_requests=10, min_samples=0, min_labels=40)
    canary = Figures(nodes=1, requests=100)
    few = LabelFigures(labelled=20, correct=10, baseline_labelled=400, baseline_correct=380)
    assert judge(gate, canary, None, few).result == "pass"  # 20 labels judge nothing yet
    worse = LabelFigures(labelled=80, correct=60, baseline_labelled=400, baseline_correct=380)
    verdict = judge(gate, canary, None, worse)
    assert verdict.gate == "labelled_accuracy" and verdict.figures["baseline"] == 0.95
    unlucky = LabelFigures(labelled=80, correct=73, baseline_labelled=400, baseline_correct=380)
    assert judge(gate, canary, None, unlucky).result == "pass"
    assert judge_shadow(gate, shadow_figures(400, 380, 200, 190, 190), worse).gate == (
        "labelled_accuracy"
    )
    assert worse.as_dict()["accuracy"] == 0.75


def test_status_text_and_the_console_show_a_version_stopped_in_shadow() -> None:
    from mesh.cli.rollout_text import describe
    from mesh.console.page_rollouts import rollouts_fragment
    from mesh.console.rolloutboard import card

    r = shadow_rollout()
    fleet = ShadowFleet(list(r.targets), {OLD: 0.95, NEW: 0.78}, alike=0.8)
    done, _ = drive(r, fleet)
    labelled = replace(
        done,
        log=(replace(done.log[0], labels=LabelFigures(10, 6, 300, 280).as_dict()), *done.log[1:]),
    )
    text = "\n".join(describe(labelled, now=1000.0))
    assert "stage 1/4 shadow (failed gate agreement)" in text
    assert "it answered 0 requests first" in text
    assert "in shadow on 1 node" in text and "answered as the serving version" in text
    assert "labelled accuracy 0.600 on 10 labelled" in text and "not judged" in text
    shown = card(labelled, None, {}, now=1000.0, offline_after_s=10)
    assert shown.stages[0].shadow and not shown.stages[1].shadow
    names = [g.name for g in shown.gates]
    assert "answered as the serving version" in names and "labelled accuracy" in names
    agreement = next(g for g in shown.gates if g.name.startswith("agreement"))
    assert agreement.holds is False and agreement.baseline == "95.0%"
    page = str(rollouts_fragment([shown], [], now=1000.0))
    assert 'data-shadow="true"' in page and "answers nobody" in page
    assert "answers it served before the decision: 0" in page and "In shadow" in page
