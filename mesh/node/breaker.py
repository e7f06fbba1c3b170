"""Circuit breaker per upstream target: pure logic, an injectable clock and random source.

States follow the usual pattern (closed, open, half-open). Decisions documented here:

- The breaker trips from CLOSED on ``failure_threshold`` consecutive failures, or when the
  failure rate over the sliding window reaches ``failure_rate`` with at least ``min_calls``
  calls in the window. The window is kept as ``window_buckets`` time buckets, so memory stays
  constant at any call rate; a call leaves the window between ``window_seconds`` and
  ``window_seconds * (1 + 1 / window_buckets)`` after it was recorded.
- The cool-down of the n-th consecutive trip is ``open_seconds * backoff_multiplier ** (n - 1)``,
  capped at ``max_open_seconds``, then shortened by a random fraction up to ``jitter`` so that
  breakers which tripped together do not probe together. Jitter never exceeds the cap.
- OPEN turns into HALF_OPEN lazily, when ``state`` or ``allow`` is read after the cool-down.
  HALF_OPEN hands out at most ``half_open_probes`` probe slots at a time; ``close_after``
  successful probes close the breaker and reset the trip count (the next trip uses the base
  cool-down again). A single failure in HALF_OPEN re-opens with the next, longer cool-down.
- Results recorded while OPEN (calls allowed before the trip that finish late) change nothing.
  In HALF_OPEN every recorded result is taken as a probe result.
- Not thread-safe: one breaker belongs to one event loop.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger("mesh.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionCallback = Callable[[str, BreakerState, BreakerState], None]
Clock = Callable[[], float]


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens, how long it stays open, and how it probes its way back.

    Also the ``upstream.breaker`` section of a node's settings (``MESH_UPSTREAM__BREAKER__*``),
    validated there by ``__post_init__``."""

    failure_threshold: int = 5
    """Consecutive failures that open the breaker."""
    window_seconds: float = 10.0
    """Length of the sliding window for the failure rate, in seconds."""
    failure_rate: float = 0.5
    """Share of failed calls in the window, in (0, 1], that opens the breaker."""
    min_calls: int = 10
    """Calls needed in the window before the rate counts."""
    window_buckets: int = 10
    """Time buckets the window is divided into (the resolution of the sliding window)."""
    open_seconds: float = 1.0
    """First cool-down before a probe is let through; it grows with repeated trips."""
    backoff_multiplier: float = 2.0
    """Factor by which each further consecutive trip lengthens the cool-down."""
    max_open_seconds: float = 30.0
    """Cap of the growing cool-down, in seconds."""
    jitter: float = 0.1
    """Fraction in [0, 1) by which a cool-down is randomly shortened, so that breakers which
    tripped together do not probe together."""
    half_open_probes: int = 1
    """Probe requests let through at once while half-open."""
    close_after: int = 1
    """Successful probes that close the breaker from half-open."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.window_seconds <= 0 or self.window_buckets < 1:
            raise ValueError("window_seconds must be > 0 and window_buckets >= 1")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        if self.open_seconds <= 0:
            raise ValueError("open_seconds must be > 0")
        if self.max_open_seconds < self.open_seconds:
            raise ValueError(
                f"max_open_seconds ({self.max_open_seconds}) must be at least open_seconds "
                f"({self.open_seconds})"
            )
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.half_open_probes < 1 or self.close_after < 1:
            raise ValueError("half_open_probes and close_after must be >= 1")

    def cool_down(self, trips: int) -> float:
        """Cool-down before jitter for the ``trips``-th consecutive trip (1-based)."""
        exponent = max(trips - 1, 0)
        try:
            base = self.open_seconds * self.backoff_multiplier**exponent
        except OverflowError:
            base = math.inf
        return min(base, self.max_open_seconds)


class CircuitBreaker:
    """A circuit breaker guarding one upstream target (see the module docstring)."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        name: str = "upstream",
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self.name = name
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._buckets: deque[list[int]] = deque()
        self._bucket_width = self.config.window_seconds / self.config.window_buckets
        self._open_until = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self.trips = 0
        self.transitions: Counter[tuple[BreakerState, BreakerState]] = Counter()

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    @property
    def open_until(self) -> float | None:
        """Clock time at which an open breaker lets probes through; ``None`` unless OPEN."""
        return self._open_until if self.state is BreakerState.OPEN else None

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker half-opens; 0 unless OPEN."""
        until = self.open_until
        return 0.0 if until is None else max(until - self._clock(), 0.0)

    @property
    def probes_in_flight(self) -> int:
        return self._probes_in_flight

    def window_counts(self) -> tuple[int, int]:
        """Calls and failures currently in the sliding window."""
        self._prune(self._bucket_index())
        calls = sum(b[1] for b in self._buckets)
        failures = sum(b[2] for b in self._buckets)
        return calls, failures

    def allow(self) -> bool:
        """Whether a call may go upstream now; in HALF_OPEN this takes a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probes_in_flight >= self.config.half_open_probes:
            return False
        self._probes_in_flight += 1
        return True

    def release(self) -> None:
        """Give back a probe slot that ``allow`` handed out but that was not used."""
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._count(failed=False)
        elif state is BreakerState.HALF_OPEN:
            self.release()
            self._probe_successes += 1
            if self._probe_successes >= self.config.close_after:
                self.trips = 0
                self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._count(failed=True)
            if self._consecutive_failures >= self.config.failure_threshold or self._rate_tripped():
                self._trip()
        elif state is BreakerState.HALF_OPEN:
            self._trip()

    def _rate_tripped(self) -> bool:
        calls, failures = self.window_counts()
        return calls >= self.config.min_calls and failures >= self.config.failure_rate * calls

    def _bucket_index(self) -> int:
        return math.floor(self._clock() / self._bucket_width)

    def _prune(self, index: int) -> None:
        oldest = index - self.config.window_buckets
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def _count(self, *, failed: bool) -> None:
        index = self._bucket_index()
        self._prune(index)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)

    def _trip(self) -> None:
        self.trips += 1
        cool_down = self.config.cool_down(self.trips)
        cool_down *= 1.0 - self.config.jitter * self._rng.random()
        self._open_until = self._clock() + cool_down
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.CLOSED:
            self._buckets.clear()
        self.transitions[(old, new)] += 1
        if new is BreakerState.OPEN:
            logger.warning(
                "breaker %s: %s -> %s for %.3fs (trip %d)",
                self.name,
                old,
                new,
                self._open_until - self._clock(),
                self.trips,
            )
        else:
            logger.info("breaker %s: %s -> %s", self.name, old, new)
        if self._on_transition is not None:
            try:
                self._on_transition(self.name, old, new)
            except Exception:
                logger.exception("breaker %s: transition callback failed", self.name)


__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "TransitionCallback",
]
