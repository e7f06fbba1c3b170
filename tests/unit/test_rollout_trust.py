"""Evidence no single node can forge (issue 25): what the tier above saw bounds what each node
claims, a node that lies is flagged and ignored for the rest of the rollout, heartbeats count
once an interval, readers drop entries re-delivered into their bucket. Fakes and a fake clock."""

from __future__ import annotations

from dataclasses import replace

from mesh.fleet.desired import Selector
from mesh.fleet.replay import STAMP_STEP, ReplayGuard, next_stamp
from mesh.fleet.rollout import (
    SHARE_SLACK,
    BeatFilter,
    Gate,
    NodeView,
    Rollout,
    Window,
    Witness,
    answered_since,
    bound,
    decode_window,
    desired_for,
    encode_window,
    evidence_problem,
    new_rollout,
    parse_stages,
    request,
    revoke,
    stage_figures,
    step,
    view_of,
)
from mesh.node.answered import AnswerLedger
from mesh.wire import AnsweredFor, NodeStatus, VersionEvidence, encode_node_status

OLD, NEW = "1", "2"
BUCKETS = 15


def ev(version: str = OLD, since: float = 0.0, **counts: int) -> VersionEvidence:
    latency = [0] * BUCKETS
    latency[2] = counts.get("requests", 0) - counts.get("escalated", 0)
    return VersionEvidence(version=version, since=since, latency=tuple(latency), **counts)


# --- what the tier above saw --------------------------------------------------------------


def test_a_nodes_comparisons_are_capped_by_what_the_tier_above_answered_for_it() -> None:
    liar = ev(requests=1000, escalated=100, compared=100, agreed=100)
    (kept,), cut = bound([("liar", liar)], {"liar": 20}, witnessed=True)
    assert (kept.compared, kept.agreed) == (20, 20)
    assert "capped at the 20 answered" in cut["liar"]
    # its own agreement rate is kept, not improved
    half = ev(requests=1000, escalated=100, compared=100, agreed=50)
    (kept,), _ = bound([("n", half)], {"n": 40}, witnessed=True)
    assert (kept.compared, kept.agreed) == (40, 20)
    # nothing answered for it: nothing compared
    (kept,), _ = bound([("n", half)], {}, witnessed=True)
    assert (kept.compared, kept.agreed) == (0, 0)


def test_no_node_counts_for_more_than_its_share_of_the_answers_from_above() -> None:
    """Three honest nodes, one a tenth of whose requests went up (escalations and audits), and
    a liar claiming 40,000 requests for the 10 answers the tier above gave it."""
    honest = [
        (f"n{i}", ev(requests=r, escalated=r // 10, compared=r // 10, agreed=r // 11))
        for i, r in enumerate((500, 600, 400))
    ]
    answered = {f"n{i}": r // 10 for i, r in enumerate((500, 600, 400))}
    liar = ev(requests=40_000, escalated=10, compared=10, agreed=10, errors=0)
    kept, cut = bound([*honest, ("liar", liar)], {**answered, "liar": 10}, witnessed=True)
    assert [e.requests for e in kept[:3]] == [500, 600, 400]  # honest nodes are not cut
    assert set(cut) == {"liar"}
    assert kept[3].requests <= SHARE_SLACK * 10 * 10  # ten requests per answer, at most twice
    assert kept[3].escalated == 10 * kept[3].requests // 40_000 or kept[3].escalated <= 1
    assert sum(kept[3].latency) <= kept[3].requests


def test_a_group_the_tier_above_never_answered_weighs_nothing_when_others_were_answered() -> None:
    """A lone liar as the baseline, claiming a perfect record it never sent upstream."""
    liar = ev(requests=40_000, compared=0)
    (kept,), cut = bound([("liar", liar)], {}, witnessed=True)
    assert kept.requests == 0 and "liar" in cut
    # a top tier (nothing answered from above for any node): bounded by the median node
    kept_top, cut_top = bound(
        [("a", ev(requests=100)), ("b", ev(requests=120)), ("c", ev(requests=40_000))],
        {},
        witnessed=False,
    )
    assert [e.requests for e in kept_top] == [100, 120, int(SHARE_SLACK * 120)]
    assert set(cut_top) == {"c"}


def test_answers_from_above_are_differences_over_the_window_and_never_go_back() -> None:
    then = {"up-0": Witness(5.0, {"a": 10, "b": 4}), "up-1": Witness(5.0, {"a": 1})}
    now = {
        "up-0": Witness(5.0, {"a": 25, "b": 4, "x": 99}),
        "up-1": Witness(9.0, {"a": 3}),  # restarted: counts whole
        "up-2": Witness(5.0, {"b": 7}),  # not in the snapshot: counts whole
    }
    totals, problems = answered_since(then, now, ["a", "b"])
    assert totals == {"a": 15 + 3, "b": 0 + 7} and problems == {}
    # a node vouching for itself is not the tier above
    assert answered_since({}, {"a": Witness(1.0, {"a": 10**6})}, ["a"])[0] == {"a": 0}
    back = {"up-0": Witness(5.0, {"a": 2})}
    totals, problems = answered_since(then, back, ["a", "b"])
    assert totals == {"a": 0, "b": 0} and "backwards" in problems["up-0"]


def test_counters_that_do_not_add_up_are_named() -> None:
    assert "compared" in (evidence_problem(ev(requests=5, audits=9, compared=9)) or "")
    assert "audits" in (evidence_problem(ev(requests=10, escalated=6, audits=6)) or "")
    assert evidence_problem(ev(requests=10, escalated=4, audits=6, compared=9, agreed=9)) is None


def test_the_ledger_counts_answers_per_caller_and_model_and_stays_bounded() -> None:
    ledger = AnswerLedger(since=3.0, max_pairs=3)
    for reply in ("_INBOX_edge-0.a.1", "_INBOX_edge-0.b.2", "_INBOX_edge-1.x"):
        ledger.count(reply, "digits")
    ledger.count("_INBOX_edge-0.c", "other")
    ledger.count("_INBOX_edge-9.c", "digits")  # past the bound: counted, under nobody
    ledger.count("not-an-inbox", "digits")
    snap = ledger.snapshot()
    assert snap.since == 3.0
    assert snap.counts == {
        "edge-0": {"digits": 2, "other": 1},
        "edge-1": {"digits": 1},
        "_other": {"digits": 2},
    }


# --- a rollout on a fake fleet with a liar ------------------------------------------------


class Fleet:
    """Honest nodes that take what the desired state says, the tier above that answers their
    escalations (``up-0``), and at most one liar writing consistent, inflated counters."""

    def __init__(self, names: list[str], agreement: dict[str, float]) -> None:
        self.names = names
        self.serving = dict.fromkeys(names, OLD)
        self.since = dict.fromkeys(names, 0.0)
        self.counts = {n: [0, 0, 0] for n in names}  # requests, compared, agreed
        self.agreement = agreement
        self.answered = dict.fromkeys(names, 0)
        #: the liar's name and what it claims: serving (what it is assigned, unless set),
        #: agreement, comparisons per second
        self.liar: str | None = None
        self.liar_serves: str | None = None
        self.liar_assigned = OLD
        self.liar_agreement = 1.0
        self.liar_rate = 2000
        self.liar_counts = [0, 0, 0]

    def apply(self, r: Rollout) -> None:
        wanted = desired_for(r)
        if self.liar is not None:
            self.liar_assigned = wanted.nodes.get(self.liar, wanted.base) or OLD
        for n in self.names:
            version = wanted.nodes.get(n, wanted.base)
            if version is not None and version != self.serving[n]:
                self.serving[n] = version
                self.counts[n] = [0, 0, 0]

    def run(self) -> None:
        for n in self.names:
            c = self.counts[n]
            c[0] += 20
            c[1] += 5
            c[2] += round(5 * self.agreement[self.serving[n]])
            self.answered[n] += 5
        rate = self.liar_rate
        self.liar_counts[0] += rate * 4
        self.liar_counts[1] += rate
        self.liar_counts[2] += round(rate * self.liar_agreement)

    def views(self) -> dict[str, NodeView]:
        out: dict[str, NodeView] = {}
        for n in self.names:
            requests, compared, agreed = self.counts[n]
            e = ev(self.serving[n], requests=requests, escalated=compared, compared=compared,
                   agreed=agreed)  # fmt: skip
            out[n] = NodeView(n, True, self.serving[n], evidence=e)
        if self.liar is not None:
            requests, compared, agreed = self.liar_counts
            serves = self.liar_serves or self.liar_assigned
            e = ev(serves, requests=requests, escalated=compared, compared=compared,
                   agreed=agreed)  # fmt: skip
            out[self.liar] = NodeView(self.liar, True, serves, evidence=e)
        out["up-0"] = NodeView("up-0", True, "c", witness=Witness(0.0, dict(self.answered)))
        return out


def drive(r: Rollout, fleet: Fleet, until: float = 600.0) -> Rollout:
    now, window = r.created_at, None
    while now < until and r.state in ("pending", "in_progress", "rolling_back"):
        fleet.apply(r)
        result = step(r, fleet.views(), window, now)
        window = result.window or window
        r = result.rollout
        fleet.apply(r)
        fleet.run()
        now += 1.0
    return r


def start(names: list[str], stages: str, **gate: float) -> Rollout:
    g = Gate(soak_s=5, min_requests=50, min_samples=40, max_wait_s=60, **gate)  # type: ignore[arg-type]
    return new_rollout(
        "digits", NEW, OLD, Selector(tier="edge"), parse_stages(stages, g), names, now=0.0
    )


def with_canary(names: list[str], stages: str, canary: str) -> Rollout:
    """A rollout whose hash order put ``canary`` first (the order is random per rollout)."""
    while True:
        r = start(names, stages)
        if r.targets[0] == canary:
            return r


def test_a_forged_baseline_no_longer_rolls_a_good_version_back() -> None:
    honest = ["n0", "n1", "n2"]
    r = with_canary([*honest, "liar"], "1,100%", "n0")
    fleet = Fleet(honest, {OLD: 0.9, NEW: 0.9})
    fleet.liar = "liar"  # a perfect baseline of thousands of comparisons a second
    done = drive(r, fleet)
    assert done.state == "completed", done.reason
    baseline = done.log[0].baseline or {}
    assert baseline["compared"] < 100 and "liar" in baseline["bounded"]


def test_the_same_forged_baseline_rolled_it_back_when_nothing_bounded_it() -> None:
    """What the liar did before: its comparisons taken at its word (the tier above answering
    all it claims) make the baseline perfect, and the good canary fails against it."""
    honest = ["n0", "n1", "n2"]
    r = with_canary([*honest, "liar"], "1,100%", "n0")
    fleet = Fleet(honest, {OLD: 0.9, NEW: 0.9})
    fleet.liar = "liar"
    views = fleet.views

    def believed() -> dict[str, NodeView]:
        out = views()
        up = out["up-0"].witness
        assert up is not None
        claimed = {**up.counts, "liar": fleet.liar_counts[1]}
        out["up-0"] = replace(out["up-0"], witness=Witness(0.0, claimed))
        return out

    fleet.views = believed  # type: ignore[method-assign]
    done = drive(r, fleet)
    assert done.state == "rolled_back" and done.failed_gate == "agreement"


def test_a_node_claiming_a_version_it_was_not_assigned_is_flagged_and_the_baseline_waited_for() -> (
    None
):
    """The liar, the canary's only baseline, claims the new version before it is assigned: it
    is flagged for the rest of the rollout, and the stage waits for a baseline (then pauses)
    instead of judging on fixed bounds alone."""
    r = with_canary(["n0", "liar"], "1,100%", "n0")
    fleet = Fleet(["n0"], {OLD: 0.95, NEW: 0.6})
    fleet.liar, fleet.liar_serves = "liar", NEW
    done = drive(r, fleet)
    assert done.state == "paused" and "baseline" in done.reason
    assert "not assigned" in done.flagged["liar"]
    assert done.current_stage == 0


def test_forged_comparisons_no_longer_carry_a_confused_version_through() -> None:
    """A liar in the baseline forging a poor agreement (so the confused canary looks no worse),
    then in the last stage forging a perfect one: bounded by the answers from above, the honest
    baseline decides and the confused version is rolled back at its canary."""
    r = with_canary(["n0", "n1", "liar"], "1,100%", "n0")
    fleet = Fleet(["n0", "n1"], {OLD: 0.95, NEW: 0.6})
    fleet.liar, fleet.liar_agreement = "liar", 0.5
    done = drive(r, fleet)
    assert done.state == "rolled_back" and done.failed_gate == "agreement"
    assert done.figures["baseline"] > 0.9


def test_an_observer_whose_answers_go_back_is_flagged_and_not_believed() -> None:
    r = with_canary(["n0", "n1"], "1,100%", "n0")
    fleet = Fleet(["n0", "n1"], {OLD: 0.95, NEW: 0.95})
    now, window = 0.0, None
    while r.phase != "soaking":
        fleet.apply(r)
        result = step(r, fleet.views(), window, now)
        window, r = result.window or window, result.rollout
        fleet.apply(r)
        fleet.run()
        now += 1.0
    assert window is not None and window.answered["up-0"].counts
    views = fleet.views()
    views["up-0"] = replace(views["up-0"], witness=Witness(0.0, {"n0": 0, "n1": 0}))
    figures = stage_figures(r, views, window, r.targets[:1])
    assert "backwards" in figures.flagged["up-0"]
    assert figures.canary.compared == 0


# --- the record and the machine -------------------------------------------------------------


def test_every_change_of_a_rollout_has_the_next_generation_and_a_revoked_version_rolls_back() -> (
    None
):
    r = start(["n0", "n1"], "1,100%")
    assert r.generation == 1
    fleet = Fleet(["n0", "n1"], {OLD: 0.95, NEW: 0.95})
    moved = step(r, fleet.views(), None, 1.0).rollout
    assert moved.state == "in_progress" and moved.generation == 2
    paused = request(moved, "pause", 2.0)
    assert paused.generation == 3
    back = revoke(moved, "swaps 3 and 8", 3.0)
    assert back.state == "rolling_back" and back.failed_gate == "revoked"
    assert "swaps 3 and 8" in back.reason and back.generation == 3
    assert revoke(back, "again", 4.0) == back


def test_a_window_keeps_what_the_tier_above_had_answered() -> None:
    w = Window("r1", 0, 5.0, {"n0": ev(requests=3)}, {"up-0": Witness(1.0, {"n0": 7})})
    assert decode_window(encode_window(w)) == w
    # a window stored before it kept answers still reads
    old = encode_window(replace(w, answered={})).replace(b', "answered": {}', b"")
    assert decode_window(old) == replace(w, answered={})


def test_a_heartbeat_carries_its_answers_for_the_tier_below_into_the_view() -> None:
    beat = NodeStatus(
        node="up-0", tier="gateway", models={"digits": "g1"}, ready=True, time=10.0,
        answered=AnsweredFor(2.0, {"edge-0": {"digits": 5, "other": 1}, "edge-1": {"x": 1}}),
    )  # fmt: skip
    view = view_of("digits", NEW, "up-0", beat, now=10.0, offline_after_s=5.0)
    assert view.witness == Witness(2.0, {"edge-0": 5})


# --- heartbeats and replays ------------------------------------------------------------------


def beat(node: str, t: float, requests: int = 0) -> bytes:
    return encode_node_status(
        NodeStatus(
            node=node,
            tier="edge",
            models={"digits": OLD},
            ready=True,
            time=t,
            evidence={"digits": ev(requests=requests)},
        )
    )


def test_heartbeats_faster_than_the_configured_rate_count_once_an_interval() -> None:
    beats = BeatFilter(min_interval_s=0.5)
    beats.offer("edge-liar", beat("edge-liar", 100.0, 1), now=100.0)
    for i in range(1, 25):  # every 20 ms
        beats.offer("edge-liar", beat("edge-liar", 100.0 + i * 0.02, i + 1), now=100.0 + i * 0.02)
    taken = beats.take(100.48)["edge-liar"]
    assert isinstance(taken, NodeStatus) and taken.evidence["digits"].requests == 1
    taken = beats.take(100.5)["edge-liar"]
    assert isinstance(taken, NodeStatus) and taken.evidence["digits"].requests == 25


def test_a_heartbeat_under_another_key_older_or_dated_ahead_is_dropped() -> None:
    beats = BeatFilter(min_interval_s=0.0)
    beats.offer("edge-1", beat("edge-1", 50.0, 7), now=50.0)
    beats.offer("edge-1", beat("edge-0", 51.0, 99), now=51.0)  # another node's, under edge-1
    beats.offer("edge-1", beat("edge-1", 40.0, 1), now=52.0)  # an old one of its own
    beats.offer("edge-1", beat("edge-1", 10_000.0, 1), now=53.0)  # dated hours ahead
    kept = beats.take(54.0)["edge-1"]
    assert isinstance(kept, NodeStatus) and kept.evidence["digits"].requests == 7
    assert beats.dropped["edge-1"] == 3
    beats.offer("edge-1", beat("edge-1", 55.0, 8), now=55.0)
    kept = beats.take(55.0)["edge-1"]
    assert isinstance(kept, NodeStatus) and kept.evidence["digits"].requests == 8
    beats.offer("edge-1", b"\xc1", now=56.0)
    assert isinstance(beats.take(56.0)["edge-1"], str)
    beats.offer("edge-1", None, now=57.0)
    assert "edge-1" not in beats.take(57.0)


def test_a_reader_drops_entries_under_another_key_or_older_than_the_newest() -> None:
    guard = ReplayGuard()
    assert guard.check("k", "k", 10.0) is None
    assert guard.check("k", "k", 10.0) is None  # the same entry delivered again
    assert "arrived under" in (guard.check("k", "other", 11.0) or "")
    assert "after one stamped" in (guard.check("k", "k", 9.0) or "")
    assert guard.newest("k") == 10.0
    # a writer whose clock is behind writes just after the newest
    assert next_stamp(20.0, 10.0) == 20.0
    assert next_stamp(5.0, 10.0) == 10.0 + STAMP_STEP
    assert next_stamp(5.0, None) == 5.0


def test_the_controller_obeys_no_rollout_record_re_delivered_or_older_than_its_newest() -> None:
    from nats.aio.client import Client

    from mesh.fleet.controller import Controller
    from mesh.fleet.rollout import encode_rollout
    from mesh.fleet.rollouts_kv import rollout_key
    from mesh.transport.jetstream import BucketEntry

    controller = Controller(Client(), name="ctl")
    key = rollout_key("digits")
    first = start(["n0", "n1"], "1,100%")
    newer = request(first, "pause", 5.0)
    controller._on_rollout(BucketEntry(key, encode_rollout(first), 1, deleted=False))
    controller._on_rollout(BucketEntry(key, encode_rollout(newer), 2, deleted=False))
    # the first record again, later in the bucket: older than the newest seen under its key
    controller._on_rollout(BucketEntry(key, encode_rollout(first), 3, deleted=False))
    # another model's record under this key
    other = replace(newer, model="faces", generation=99)
    controller._on_rollout(BucketEntry(key, encode_rollout(other), 4, deleted=False))
    controller._on_rollout(BucketEntry(key, b"not json", 5, deleted=False))
    held, revision = controller.rollouts[key]
    assert held == newer and revision == 2
    assert controller.ignored["MESH_FLEET_ROLLOUTS"] == 3
