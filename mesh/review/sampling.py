"""How many cases reach people, and which: pure, with an injectable clock and random source.

Two places decide. A node picks what it offers (``CandidateGate``): every unsure answer of the
top tier, every disagreement an audit finds, a share of confident answers (``sample_rate``), a
larger share while the model's inputs drift (``drift_rate``), what a caller asked for, and never
what a caller refused; and it offers at most ``per_minute`` a model, so a busy node does not send
the hub what the hub would refuse. The hub's intake then holds each model to its limits per
minute, hour and day (``QueueLimits``), overall and per reason, so people are not flooded.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mesh.review.records import HumanReview, ReviewReason

MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """At most this many in any minute, hour and day (None: no bound on that window)."""

    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def windows(self) -> list[tuple[str, float, int]]:
        named = (("minute", MINUTE_S, self.per_minute), ("hour", HOUR_S, self.per_hour),
                 ("day", DAY_S, self.per_day))  # fmt: skip
        return [(name, span, bound) for name, span, bound in named if bound is not None]


@dataclass
class SlidingWindows:
    """Times of what was admitted per key, over the last ``horizon`` seconds (a day: enough to
    count any window)."""

    horizon: float = DAY_S
    times: dict[str, list[float]] = field(default_factory=dict)

    def full(self, key: str, limits: WindowLimits, now: float) -> str | None:
        """The first window of ``limits`` that is full for ``key`` at ``now``, or None."""
        times = self._pruned(key, now)
        for name, span, bound in limits.windows():
            if len(times) - bisect_left(times, now - span) >= bound:
                return name
        return None

    def add(self, key: str, at: float) -> None:
        insort(self.times.setdefault(key, []), at)

    def remove(self, key: str, at: float) -> None:
        times = self.times.get(key)
        if times:
            i = bisect_left(times, at)
            if i < len(times) and times[i] == at:
                del times[i]

    def count(self, key: str, span: float, now: float) -> int:
        times = self._pruned(key, now)
        return len(times) - bisect_left(times, now - span)

    def _pruned(self, key: str, now: float) -> list[float]:
        times = self.times.setdefault(key, [])
        old = bisect_left(times, now - self.horizon)
        if old:
            del times[:old]
        return times


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    #: why not: which bound was full (``digits per minute (20)``).
    why: str = ""


class QueueLimits:
    """The hub's limits per model: every reason together (``limits``, or ``models[model]``)
    and each reason on its own (``reasons``); wall-clock seconds, since the windows must
    survive a restart (``seed``)."""

    def __init__(
        self,
        limits: WindowLimits,
        *,
        reasons: Mapping[ReviewReason, WindowLimits] | None = None,
        models: Mapping[str, WindowLimits] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.reasons = dict(reasons or {})
        self.models = dict(models or {})
        self._clock = clock
        self._windows = SlidingWindows()

    def admit(self, model: str, reason: ReviewReason) -> tuple[Verdict, float]:
        """Whether one more item of ``model`` for ``reason`` may be queued now; when it may, it
        is counted at the time returned (``release`` it if it turned out a duplicate)."""
        now = self._clock()
        overall = self.models.get(model, self.limits)
        full = self._windows.full(model, overall, now)
        if full is not None:
            return Verdict(False, _why(model, "", full, overall)), now
        per_reason = self.reasons.get(reason)
        if per_reason is not None:
            full = self._windows.full(_key(model, reason), per_reason, now)
            if full is not None:
                return Verdict(False, _why(model, reason, full, per_reason)), now
        self._windows.add(model, now)
        self._windows.add(_key(model, reason), now)
        return Verdict(True), now

    def release(self, model: str, reason: ReviewReason, at: float) -> None:
        """Uncount an admission made at ``at`` (the queue already held the item)."""
        self._windows.remove(model, at)
        self._windows.remove(_key(model, reason), at)

    def seed(self, queued: Iterable[tuple[str, ReviewReason, float]]) -> None:
        """Count what was queued before this intake started: (model, reason, queued at)."""
        now = self._clock()
        for model, reason, at in queued:
            if now - at < DAY_S:
                self._windows.add(model, at)
                self._windows.add(_key(model, reason), at)

    def counts(self, model: str) -> dict[str, int]:
        now = self._clock()
        return {
            name: self._windows.count(model, span, now)
            for name, span in (("minute", MINUTE_S), ("hour", HOUR_S), ("day", DAY_S))
        }


def _key(model: str, reason: ReviewReason) -> str:
    return f"{model}\0{reason.value}"


def _why(model: str, reason: ReviewReason | str, window: str, limits: WindowLimits) -> str:
    bound = {"minute": limits.per_minute, "hour": limits.per_hour, "day": limits.per_day}[window]
    what = f"{model} {reason}" if reason else model
    return f"{what}: {bound} a {window} already queued"


class CandidateGate:
    """What a node offers for review, before anything is built or sent."""

    def __init__(
        self,
        *,
        sample_rate: float,
        drift_rate: float,
        per_minute: int,
        models: Mapping[str, tuple[float, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sample_rate = sample_rate
        self.drift_rate = drift_rate
        #: a model's own (sample rate, drift rate) in place of the node's.
        self.models = dict(models or {})
        self.limits = WindowLimits(per_minute=per_minute)
        self._clock = clock
        self._rand = rand
        self._windows = SlidingWindows(horizon=MINUTE_S)

    def for_confident(
        self, wish: HumanReview, drifting: bool, model: str = ""
    ) -> ReviewReason | None:
        """The reason to offer a confident, final answer, if any: the caller's wish, then a
        drifting model's share, then the random sample."""
        if wish is HumanReview.NEVER:
            return None
        if wish is HumanReview.ALWAYS:
            return ReviewReason.REQUESTED
        drift_rate = self.models[model][1] if model in self.models else self.drift_rate
        if drifting and drift_rate and self._rand() < drift_rate:
            return ReviewReason.DRIFT
        return ReviewReason.SAMPLE if self.sampled(model) else None

    def sampled(self, model: str = "") -> bool:
        """The random sample alone: whether a confident answer of ``model`` is drawn."""
        rate = self.models[model][0] if model in self.models else self.sample_rate
        return bool(rate) and self._rand() < rate

    def rates(self, model: str) -> tuple[float, float]:
        return self.models.get(model, (self.sample_rate, self.drift_rate))

    def allow(self, model: str, wish: HumanReview) -> bool:
        """Whether one more candidate of ``model`` may go now (counted if so). What a caller
        asked for is bounded by the hub only: the hub tells it when it is over."""
        if wish is HumanReview.NEVER:
            return False
        now = self._clock()
        if wish is not HumanReview.ALWAYS and self._windows.full(model, self.limits, now):
            return False
        self._windows.add(model, now)
        return True


__all__ = [
    "CandidateGate",
    "QueueLimits",
    "SlidingWindows",
    "Verdict",
    "WindowLimits",
]
