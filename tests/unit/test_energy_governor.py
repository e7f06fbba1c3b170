"""The power governor as a pure state machine on a fake clock, and in a closed loop with a
simulated node whose power answers to what the governor has it save."""

from __future__ import annotations

import itertools

import pytest

from mesh.energy.governor import LADDER, Governor, GovernorConfig, Savings, Step
from mesh.node.policy import Action, Assessment, DegradedReason, Thresholds, UpstreamView, decide


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimulatedNode:
    """A node's power as a function of its savings: compute, audits, drift sampling, event
    polling, and escalations (cheaper coalesced, none for the share held back)."""

    compute_w = 0.010
    audits_w = 0.030
    drift_w = 0.004
    events_w = 0.006
    escalations_w = 0.080

    def power(self, s: Savings) -> float:
        escalations = self.escalations_w * (0.7 if s.coalesce_s else 1.0)
        return (
            self.compute_w
            + self.audits_w * s.audit_scale
            + (0.0 if s.drift_paused else self.drift_w)
            + (0.0 if s.events_defer_s else self.events_w)
            + escalations * (1.0 - s.degrade_share)
        )


def run(governor: Governor, clock: FakeClock, node: SimulatedNode, budget: float, seconds: int,
        trace: list[tuple[float, float, list[Step]]]) -> None:  # fmt: skip
    for _ in range(seconds):
        clock.now += 1.0
        watts = node.power(governor.savings)
        governor.decide(watts, budget)
        trace.append((clock.now, node.power(governor.savings), governor.steps))


def test_steps_are_taken_in_ladder_order_one_per_hold_while_over_budget() -> None:
    clock = FakeClock()
    governor = Governor(GovernorConfig(hold_s=3.0), clock)
    changes = []
    for _ in range(20):
        clock.now += 1.0
        changes += governor.decide(1.0, 0.1)
    applied = [c.step for c in changes if c.applied]
    assert applied == list(LADDER)
    times = [c.at for c in changes if c.applied]
    assert all(b - a >= 3.0 for a, b in itertools.pairwise(times))
    assert governor.savings.degrade_share == 1.0 and governor.unreachable


def test_under_budget_nothing_is_taken() -> None:
    clock = FakeClock()
    governor = Governor(GovernorConfig(), clock)
    for _ in range(10):
        clock.now += 1.0
        assert governor.decide(0.05, 0.1) == []
    assert governor.steps == [] and governor.savings == Savings()


def test_closed_loop_settles_at_the_budget_with_degrade_only_after_the_cheaper_steps() -> None:
    clock, node = FakeClock(), SimulatedNode()
    governor = Governor(GovernorConfig(hold_s=3.0), clock)
    budget = 0.060  # under what the four cheap steps reach (0.066), over compute alone
    trace: list[tuple[float, float, list[Step]]] = []
    run(governor, clock, node, budget, 120, trace)
    last_window = [w for _, w, _ in trace[-10:]]
    assert abs(sum(last_window) / len(last_window) - budget) / budget <= 0.05
    first_degrade = next(steps for _, _, steps in trace if Step.DEGRADE in steps)
    assert first_degrade == list(LADDER)
    assert 0.0 < governor.savings.degrade_share < 1.0


def test_raising_the_budget_gives_the_steps_back_most_recent_first() -> None:
    clock, node = FakeClock(), SimulatedNode()
    governor = Governor(GovernorConfig(hold_s=3.0), clock)
    trace: list[tuple[float, float, list[Step]]] = []
    run(governor, clock, node, 0.060, 60, trace)
    assert governor.steps == list(LADDER)
    released = []
    for _ in range(60):
        clock.now += 1.0
        released += [c.step for c in governor.decide(node.power(governor.savings), 1.0)]
    assert released == list(reversed(LADDER))
    assert governor.savings == Savings()


def test_a_step_is_not_given_back_when_its_saving_would_put_the_node_over_again() -> None:
    clock, node = FakeClock(), SimulatedNode()
    governor = Governor(GovernorConfig(ladder=(Step.AUDITS, Step.DRIFT), hold_s=3.0), clock)
    # the audits step saves 0.027 W; a budget between with and without it keeps it taken
    budget = node.power(Savings()) - 0.015
    for _ in range(40):
        clock.now += 1.0
        governor.decide(node.power(governor.savings), budget)
    assert governor.steps[0] is Step.AUDITS
    saved = governor.saved_w(Step.AUDITS)
    assert saved is not None and saved == pytest.approx(0.027)


def test_without_a_budget_every_step_is_given_back() -> None:
    clock = FakeClock()
    governor = Governor(GovernorConfig(hold_s=1.0), clock)
    for _ in range(4):
        clock.now += 1.0
        governor.decide(1.0, 0.1)
    assert governor.level == 4
    changes = governor.decide(1.0, None)
    assert [c.applied for c in changes] == [False] * 4 and governor.steps == []


def test_a_ladder_with_degrade_anywhere_but_last_is_refused() -> None:
    with pytest.raises(ValueError, match="last"):
        GovernorConfig(ladder=(Step.DEGRADE, Step.AUDITS))
    with pytest.raises(ValueError, match="twice"):
        GovernorConfig(ladder=(Step.AUDITS, Step.AUDITS))


def test_a_held_case_is_degraded_for_power_only_when_it_could_have_gone_up() -> None:
    unsure, thresholds = Assessment(confidence=0.4), Thresholds(confidence=0.9)
    healthy = UpstreamView(zone="cloud", breaker_open=False, p95_ms=5.0)
    held = decide(unsure, thresholds, budget_ms=500, residency="any", upstream=healthy, hold=True)
    assert (held.action, held.degraded) == (Action.ANSWER, DegradedReason.POWER)
    fenced = decide(
        unsure, thresholds, budget_ms=500, residency="device", upstream=healthy, hold=True
    )
    assert fenced.degraded is DegradedReason.RESIDENCY
    top = decide(unsure, thresholds, budget_ms=500, residency="any", upstream=None, hold=True)
    assert (top.action, top.degraded) == (Action.ANSWER, None)
    sure = decide(
        Assessment(confidence=0.99), thresholds, budget_ms=500, residency="any",
        upstream=healthy, hold=True,
    )  # fmt: skip
    assert sure.degraded is None


def test_event_fetches_wait_only_for_events_whose_deadlines_leave_room() -> None:
    from mesh.events.consumer import deferral

    assert deferral(0.0, 5.0) == 0.0  # the step is not taken
    assert deferral(2.0, None) == 0.0  # no batch seen yet: its budgets are unknown
    assert deferral(2.0, 3.0) == 0.0  # a 3 s budget cannot wait 2 s and still be answered well
    assert deferral(2.0, 5.0) == 2.0
