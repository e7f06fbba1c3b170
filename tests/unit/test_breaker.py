from __future__ import annotations

import logging
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mesh.node.breaker import BreakerConfig, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    clock: FakeClock, jitter: float = 0.0, **overrides: float
) -> tuple[CircuitBreaker, list[tuple[str, BreakerState, BreakerState]]]:
    seen: list[tuple[str, BreakerState, BreakerState]] = []
    config = BreakerConfig(jitter=jitter, **overrides)  # type: ignore[arg-type]
    breaker = CircuitBreaker(
        config,
        name="cloud",
        clock=clock,
        rng=random.Random(7),
        on_transition=lambda name, old, new: seen.append((name, old, new)),
    )
    return breaker, seen


def trip(breaker: CircuitBreaker) -> None:
    while breaker.state is not OPEN:
        assert breaker.allow()
        breaker.record_failure()


def test_state_values_are_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_opens_on_consecutive_failures() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=3, min_calls=100)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is CLOSED
    breaker.record_failure()
    assert breaker.state is OPEN
    assert not breaker.allow()


def test_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=3, min_calls=100)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CLOSED


def test_opens_on_failure_rate_over_the_window() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100, failure_rate=0.5, min_calls=10)
    for _ in range(5):
        breaker.record_success()
        clock.advance(0.1)
        breaker.record_failure()
        clock.advance(0.1)
    assert breaker.state is OPEN


def test_failure_rate_is_ignored_below_min_calls() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100, failure_rate=0.5, min_calls=10)
    for _ in range(4):
        breaker.record_success()
        breaker.record_failure()
    breaker.record_failure()
    assert breaker.window_counts() == (9, 5)
    assert breaker.state is CLOSED


def test_failure_rate_below_threshold_stays_closed() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=100, failure_rate=0.5, min_calls=10)
    for _ in range(50):
        breaker.record_success()
        breaker.record_success()
        breaker.record_failure()
    assert breaker.state is CLOSED


def test_old_failures_slide_out_of_the_window() -> None:
    clock = FakeClock()
    breaker, _ = make(
        clock, failure_threshold=100, window_seconds=10, failure_rate=0.5, min_calls=10
    )
    for _ in range(9):
        breaker.record_failure()
    clock.advance(11.0)
    assert breaker.window_counts() == (0, 0)
    for _ in range(9):
        breaker.record_success()
    breaker.record_failure()
    assert breaker.window_counts() == (10, 1)
    assert breaker.state is CLOSED


def test_half_opens_after_the_cool_down() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=2.0)
    trip(breaker)
    assert breaker.open_until == pytest.approx(clock.now + 2.0)
    clock.advance(1.999)
    assert breaker.state is OPEN
    assert breaker.retry_after == pytest.approx(0.001)
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert breaker.open_until is None


def test_half_open_hands_out_bounded_probes() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, half_open_probes=2)
    trip(breaker)
    clock.advance(1.0)
    assert [breaker.allow() for _ in range(4)] == [True, True, False, False]
    breaker.release()
    assert breaker.allow()
    assert not breaker.allow()


def test_closes_after_successful_probes() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, half_open_probes=1, close_after=2)
    trip(breaker)
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.trips == 0
    assert all(breaker.allow() for _ in range(10))


def test_failed_probe_reopens_with_a_growing_capped_cool_down() -> None:
    clock = FakeClock()
    breaker, _ = make(
        clock, failure_threshold=1, open_seconds=1.0, backoff_multiplier=2.0, max_open_seconds=5.0
    )
    cool_downs = []
    trip(breaker)
    for _ in range(5):
        until = breaker.open_until
        assert until is not None
        cool_downs.append(until - clock.now)
        clock.advance(cool_downs[-1])
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is OPEN
    assert cool_downs == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
    assert breaker.trips == 6


def test_successful_close_resets_the_cool_down() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=1.0)
    trip(breaker)
    clock.advance(1.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_success()
    trip(breaker)
    assert breaker.open_until == pytest.approx(clock.now + 1.0)


def test_results_recorded_while_open_change_nothing() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1)
    trip(breaker)
    until = breaker.open_until
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is OPEN
    assert breaker.open_until == until


def test_jitter_stays_within_bounds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=1, open_seconds=4.0, max_open_seconds=4.0, jitter=0.25),
        clock=clock,
        rng=random.Random(1),
    )
    seen = set()
    for _ in range(200):
        trip(breaker)
        until = breaker.open_until
        assert until is not None
        cool_down = until - clock.now
        assert 3.0 <= cool_down <= 4.0
        seen.add(round(cool_down, 6))
        clock.advance(cool_down)
        assert breaker.allow()
        breaker.record_success()
    assert len(seen) > 100


def test_transitions_are_counted_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker, seen = make(clock, failure_threshold=1)
    with caplog.at_level(logging.INFO, logger="mesh.breaker"):
        trip(breaker)
        clock.advance(1.0)
        assert breaker.allow()
        breaker.record_failure()
        clock.advance(2.0)
        assert breaker.allow()
        breaker.record_success()
    assert seen == [
        ("cloud", CLOSED, OPEN),
        ("cloud", OPEN, HALF_OPEN),
        ("cloud", HALF_OPEN, OPEN),
        ("cloud", OPEN, HALF_OPEN),
        ("cloud", HALF_OPEN, CLOSED),
    ]
    assert breaker.transitions == {
        (CLOSED, OPEN): 1,
        (OPEN, HALF_OPEN): 2,
        (HALF_OPEN, OPEN): 1,
        (HALF_OPEN, CLOSED): 1,
    }
    messages = [r.getMessage() for r in caplog.records if r.name == "mesh.breaker"]
    assert len(messages) == 5
    assert all("breaker cloud" in m for m in messages)


def test_a_failing_callback_does_not_break_the_breaker() -> None:
    def explode(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("boom")

    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1), on_transition=explode)
    breaker.record_failure()
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    "overrides",
    [
        {"failure_threshold": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"jitter": 1.0},
        {"open_seconds": 10.0, "max_open_seconds": 5.0},
        {"half_open_probes": 0},
        {"backoff_multiplier": 0.5},
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**overrides)  # type: ignore[arg-type]


class ProbeBound(RuleBasedStateMachine):
    """However calls, results and time interleave, a half-open breaker never has more probes
    out than ``half_open_probes``: grants minus results and releases within one half-open
    episode stay within the bound, and an open breaker grants nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.config = BreakerConfig(
            failure_threshold=2,
            min_calls=4,
            window_seconds=5.0,
            open_seconds=0.5,
            max_open_seconds=4.0,
            half_open_probes=3,
            close_after=2,
        )
        self.breaker = CircuitBreaker(self.config, clock=self.clock, rng=random.Random(0))
        self.outstanding = 0
        self.episode = 0
        self.episode_out = 0

    def _sync_episode(self) -> BreakerState:
        state = self.breaker.state
        episode = self.breaker.transitions[(OPEN, HALF_OPEN)]
        if episode != self.episode:
            self.episode, self.episode_out = episode, 0
        return state

    @rule()
    def allow(self) -> None:
        state = self._sync_episode()
        granted = self.breaker.allow()
        if state is OPEN:
            assert not granted
        if granted:
            self.outstanding += 1
            if state is HALF_OPEN:
                self.episode_out += 1

    @precondition(lambda self: self.outstanding > 0)
    @rule(ok=st.booleans(), give_back=st.booleans())
    def finish(self, ok: bool, give_back: bool) -> None:
        state = self._sync_episode()
        self.outstanding -= 1
        if give_back:
            self.breaker.release()
        elif ok:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        if state is HALF_OPEN:
            self.episode_out -= 1

    @rule(seconds=st.floats(0.0, 5.0))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def probes_bounded(self) -> None:
        state = self._sync_episode()
        assert 0 <= self.breaker.probes_in_flight <= self.config.half_open_probes
        if state is HALF_OPEN:
            assert self.episode_out <= self.config.half_open_probes

    @invariant()
    def cool_down_capped(self) -> None:
        until = self.breaker.open_until
        if until is not None:
            assert until - self.clock.now <= self.config.max_open_seconds


ProbeBound.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_probe_bound = ProbeBound.TestCase
