"""When a late request is asked again: from the record of answer times, with backoff, within the
budget, and never more often than answers come back."""

from __future__ import annotations

import pytest

from mesh.node.latency import HedgePolicy, HedgeSettings, LatencyTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def policy(answers_ms: list[float], **settings: float) -> HedgePolicy:
    hedging = HedgePolicy(LatencyTracker(clock=FakeClock()), HedgeSettings(**settings))  # type: ignore[arg-type]
    for ms in answers_ms:
        hedging.observe(ms)
    return hedging


def test_nothing_is_late_before_the_record_says_what_usual_is() -> None:
    hedging = policy([2.0, 2.0, 2.0, 2.0])
    assert hedging.first_gap_ms(500.0) is None
    assert not hedging.allow(400.0)
    hedging.observe(2.0)
    assert hedging.first_gap_ms(500.0) == pytest.approx(2.0)


def test_the_first_hedge_waits_the_usual_answer_time_of_the_record() -> None:
    hedging = policy([float(ms) for ms in range(1, 101)])
    assert hedging.first_gap_ms(1000.0) == pytest.approx(hedging.tracker.quantile(0.99))
    slow = policy([float(ms) * 10 for ms in range(1, 101)])
    gap = slow.first_gap_ms(10_000.0)
    assert gap is not None and gap == pytest.approx(990.1)


def test_the_usual_time_follows_the_record_once_enough_answers_came() -> None:
    hedging = policy([1.0] * 50, refresh_every=10)
    assert hedging.usual_ms == pytest.approx(1.0)
    for _ in range(9):
        hedging.observe(100.0)
    assert hedging.usual_ms == pytest.approx(1.0)  # not recomputed for every answer
    hedging.observe(100.0)
    assert hedging.usual_ms == pytest.approx(100.0)


def test_a_cleared_record_knows_no_usual_time_until_it_fills_again() -> None:
    hedging = policy([3.0] * 10)
    assert hedging.usual_ms == pytest.approx(3.0)
    hedging.tracker.clear()  # the breaker half-opened: latencies from before say nothing now
    assert hedging.usual_ms is None
    assert hedging.first_gap_ms(500.0) is None


def test_gaps_grow_with_backoff_up_to_a_share_of_the_budget() -> None:
    hedging = policy([4.0] * 10)
    gap = hedging.first_gap_ms(500.0)
    assert gap == pytest.approx(4.0)
    gaps = [gap]
    for _ in range(6):
        gaps.append(hedging.next_gap_ms(gaps[-1], 500.0))
    assert gaps == pytest.approx([4.0, 8.0, 16.0, 31.25, 31.25, 31.25, 31.25])


def test_gaps_never_fall_below_the_usual_answer_time() -> None:
    hedging = policy([50.0] * 10)
    assert hedging.first_gap_ms(200.0) == pytest.approx(50.0)
    assert hedging.next_gap_ms(50.0, 200.0) == pytest.approx(50.0)  # share of 200: 12.5


def test_a_request_is_never_hedged_when_its_answer_could_not_come_back_in_time() -> None:
    hedging = policy([50.0] * 10)
    assert hedging.first_gap_ms(40.0) is None
    assert not hedging.allow(50.0)
    assert hedging.allow(51.0)


def hedges_in(hedging: HedgePolicy, budget_ms: float) -> int:
    """How many hedges a request that is never answered gets within ``budget_ms``."""
    gap = hedging.first_gap_ms(budget_ms)
    elapsed, count = 0.0, 0
    while gap is not None:
        elapsed += gap
        if not hedging.allow(budget_ms - elapsed):
            break
        count += 1
        gap = hedging.next_gap_ms(gap, budget_ms)
    return count


def test_a_budget_holds_enough_hedges_that_a_random_pick_rarely_misses_every_time() -> None:
    # One of two members stuck: a request is lost only if its send and every hedge pick it.
    hedging = policy([4.0] * 20)
    count = hedges_in(hedging, 500.0)
    assert count >= 15
    assert 0.5 ** (count + 1) < 1 / 50_000


def test_hedges_stop_when_answers_stop_coming_back() -> None:
    hedging = policy([4.0] * 10, max_credit=5.0, credit_per_answer=1.0)
    assert [hedging.allow(400.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert (hedging.sent, hedging.refused) == (5, 2)
    hedging.observe(4.0)
    assert hedging.allow(400.0)
    assert not hedging.allow(400.0)


def test_a_group_of_one_is_never_hedged_a_copy_could_only_reach_the_same_member() -> None:
    clock = FakeClock()
    hedging = HedgePolicy(LatencyTracker(clock=clock, max_age_seconds=10.0))
    for _ in range(10):
        hedging.observe(3.0, "edge-0")
    assert hedging.members == 1
    assert hedging.first_gap_ms(500.0) is None
    hedging.observe(3.0, "edge-1")
    assert hedging.members == 2
    assert hedging.first_gap_ms(500.0) == pytest.approx(3.0)
    # a member not heard from for the record's age no longer counts
    clock.now += 8.0
    for _ in range(40):
        hedging.observe(3.0, "edge-0")
    clock.now += 3.0
    for _ in range(40):
        hedging.observe(3.0, "edge-0")
    assert hedging.first_gap_ms(500.0) is None  # recounted with the usual time
    assert hedging.members == 1


def test_answers_that_do_not_say_who_gave_them_leave_the_group_size_open() -> None:
    hedging = policy([3.0] * 10)
    assert hedging.members is None
    assert hedging.first_gap_ms(500.0) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "settings",
    [{"quantile": 0.0}, {"backoff": 0.5}, {"max_gap_share": 0.0}, {"max_credit": 0.5},
     {"refresh_every": 0}, {"min_members": 0}],
)  # fmt: skip
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HedgeSettings(**settings)  # type: ignore[arg-type]
