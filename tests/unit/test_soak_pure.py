"""The soak's pure parts: phase deadlines that name what they waited for, the chaos schedule,
the per-minute tally and the verdicts over it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mesh.dev.soak.chaos import KINDS, ORDER, Action, schedule
from mesh.dev.soak.report import MinuteRecord, judge
from mesh.dev.soak.tally import EventTally, LoadTally, MinuteTally, quantile
from mesh.errors import DeadlineExceededError
from mesh.local.phases import Phases, PhaseTimeoutError


async def test_a_phase_past_its_deadline_names_itself_and_what_it_waited_for() -> None:
    phases = Phases("mesh test")
    with pytest.raises(PhaseTimeoutError) as caught:
        async with phases.phase("nodes", 0.05) as phase:
            phase.waiting_for("the ready line of edge-1")
            await asyncio.sleep(5)
    error = caught.value
    assert isinstance(error, DeadlineExceededError)
    assert (error.phase, error.waiting_for) == ("nodes", "the ready line of edge-1")
    assert "mesh test: phase 'nodes' did not finish within 0s" in str(error)
    assert "nodes" in phases.timings()


async def test_a_timeout_inside_a_phase_is_not_taken_for_the_phases_own() -> None:
    phases = Phases("mesh test")
    with pytest.raises(TimeoutError) as caught:
        async with phases.phase("load", 10):
            raise TimeoutError("a request's own")
    assert not isinstance(caught.value, PhaseTimeoutError)


async def test_deadlines_scale_with_the_machine() -> None:
    phases = Phases("mesh test", scale=0.01)
    with pytest.raises(PhaseTimeoutError):
        async with phases.phase("start", 5):
            await asyncio.sleep(1)


def test_ten_minutes_of_chaos_run_every_kind_between_a_quiet_start_and_a_quiet_end() -> None:
    steps = schedule(600)
    assert [s.action for s in steps[: len(ORDER)]] == list(ORDER)
    assert steps[0].at_s == 120  # the second minute is the baseline
    assert steps[-1].at_s <= 600 - 90  # the last minute and a half is recovery
    assert all(b.at_s - a.at_s == 55 for a, b in itertools.pairwise(steps))
    assert steps[len(ORDER)].turn == 1  # the next hub member's turn


def test_a_short_soak_shrinks_its_schedule_and_only_runs_the_kinds_asked() -> None:
    steps = schedule(60, (Action.KILL_HUB_MEMBER,))
    assert steps and {s.action for s in steps} == {Action.KILL_HUB_MEMBER}
    assert steps[0].at_s == 12 and steps[-1].at_s <= 50
    assert KINDS["kill-hub-member"] is Action.KILL_HUB_MEMBER and len(KINDS) == len(ORDER)
    assert schedule(600, ()) == []


def test_quantiles_and_the_minutes_tally() -> None:
    assert quantile([], 0.99) is None
    assert quantile([float(v) for v in range(1, 101)], 0.99) == 99.0
    tally = LoadTally()
    tally.sent(0)
    tally.sent(0)
    tally.answered(0, "edge", 2.0, False, None)
    tally.lost(0, "DEADLINE_EXCEEDED", "site-0: no answer")
    assert (tally.requests, tally.answered_total, tally.lost_total, tally.in_flight) == (2, 1, 1, 0)
    assert tally.minute(0).per_tier()["edge"]["answers"] == 1


def _minute(n: int, p99: float, rss: float, tasks: int, fds: int) -> MinuteRecord:
    load = MinuteTally(requests=100, answered=100, latencies_ms={"edge": [1.0] * 98 + [p99] * 2})
    return MinuteRecord(
        n, load, {"edge-0": rss}, {}, {}, {"edge-0": fds}, {"edge-0": tasks}, {}, {}, {}
    )


def test_the_verdicts_compare_the_second_minute_with_the_last() -> None:
    events = EventTally()
    events.publish("e1", "site-0")
    events.result("e1", error=False)
    steady = judge(
        [_minute(1, 50, 80, 40, 30), _minute(2, 10, 100, 20, 20), _minute(3, 14, 109, 20, 20)],
        LoadTally(),
        events,
    )
    assert steady.nothing_lost and steady.steady
    assert steady.p99_ratio == pytest.approx(1.4)
    grown = judge(
        [_minute(1, 5, 80, 20, 20), _minute(2, 10, 100, 20, 20), _minute(3, 16, 111, 21, 22)],
        LoadTally(),
        events,
    )
    assert not grown.steady
    assert grown.tasks_growth == {"edge-0": 1} and grown.fds_growth == {"edge-0": 2}
    assert grown.rss_growth["edge-0"] == pytest.approx(0.11)
    events.result("e1", error=False)
    assert not judge([], LoadTally(), events).nothing_lost  # an event with two results


def test_a_connection_moving_between_hub_members_is_not_a_new_descriptor() -> None:
    def minute(n: int, fds: dict[str, int]) -> MinuteRecord:
        load = MinuteTally(requests=1, answered=1, latencies_ms={"edge": [1.0]})
        return MinuteRecord(n, load, {}, {}, {}, fds, {}, {}, {}, {})

    moved = judge(
        [
            minute(1, {}),
            minute(2, {"nats-hub-0": 40, "nats-hub-1": 30, "nats-site-0": 20}),
            minute(3, {"nats-hub-0": 35, "nats-hub-1": 35, "nats-site-0": 20}),
        ],
        LoadTally(),
        EventTally(),
    )
    assert moved.fds_growth == {}
    leaked = judge(
        [
            minute(1, {}),
            minute(2, {"nats-hub-0": 40, "nats-hub-1": 30}),
            minute(3, {"nats-hub-0": 41, "nats-hub-1": 30}),
        ],
        LoadTally(),
        EventTally(),
    )
    assert leaked.fds_growth == {"nats-hub (all members)": 1}
