"""The budget governor: a ladder of savings taken one step at a time while the node's ledger
runs over its power budget, and given back when the budget allows. Pure: a clock is injected and
each decision is a function of the measured power, the budget and the time.

The ladder, cheapest in accuracy first (the order is a setting):

1. ``audits``: lower the audit rate (audits are evidence for rollouts, not answers);
2. ``drift``: pause drift sampling (the drift monitor and the review queue's drift share);
3. ``coalesce``: hold escalations a few milliseconds, within each request's budget, so that
   several go up in one write: fewer, larger messages;
4. ``events``: defer event-stream work that has no deadline to meet: event fetches wait and
   come in full batches, the stream statistics are not polled;
5. ``degrade``: answer a share of the unsure requests here, marked degraded with reason
   ``power``. The share is the one continuous step: it rises and falls with the excess (integral
   control), so the node's power settles at its budget instead of under it. The excess is taken
   relative to the power when the step was taken, which bounds what a change of share can move
   (at most that power): the loop's gain stays under ``degrade_gain`` per second whatever the
   escalations cost against the budget.

A discrete step is taken when the power is over budget and the last change is at least
``hold_s`` old (its effect has had time to show in the measured power). What a step saved is
measured: the power before it against the power ``hold_s`` after. A step is given back, the
most recent first, when the power plus what that step saved stays under the budget by
``release_margin``: so a step is not released only to be taken again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    AUDITS = "audits"
    DRIFT = "drift"
    COALESCE = "coalesce"
    EVENTS = "events"
    DEGRADE = "degrade"


LADDER: tuple[Step, ...] = tuple(Step)


@dataclass(slots=True)
class Savings:
    """What the node does differently now: read by the data plane, the drift watch and the event
    consumer at each decision they make (plain attributes: the hot path reads them)."""

    #: the audit rate is multiplied by this.
    audit_scale: float = 1.0
    drift_paused: bool = False
    #: longest an escalation is held to go up with others, in seconds; 0: not held.
    coalesce_s: float = 0.0
    #: seconds an event fetch waits for a full batch; 0: events are not deferred.
    events_defer_s: float = 0.0
    #: share of unsure requests answered here, degraded with reason ``power``.
    degrade_share: float = 0.0
    #: the unsure cases owed to that share so far (``holds``).
    credit: float = 0.0

    def holds(self) -> bool:
        """Whether the next unsure case is one of the share answered here: exactly that share
        of them, spread evenly (a running credit, not a coin, whose noise would show in the
        node's power)."""
        self.credit += self.degrade_share
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    ladder: tuple[Step, ...] = LADDER
    #: a step is taken while the power is over ``budget * (1 + over)``.
    over: float = 0.0
    #: seconds between two changes of the ladder (a step's effect must show first).
    hold_s: float = 3.0
    #: a step is given back when power plus its saving is under ``budget * (1 - margin)``.
    release_margin: float = 0.05
    audit_scale: float = 0.1
    coalesce_s: float = 0.02
    events_defer_s: float = 2.0
    #: change of the degraded share per second, per unit of relative excess.
    degrade_gain: float = 0.3

    def __post_init__(self) -> None:
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError("a step appears twice in the ladder")
        if Step.DEGRADE in self.ladder and self.ladder[-1] is not Step.DEGRADE:
            raise ValueError("degrade, the step that costs accuracy, must be the ladder's last")


@dataclass(frozen=True, slots=True)
class StepChange:
    """A step taken (``applied``) or given back, with the figures it was decided on."""

    step: Step
    applied: bool
    at: float
    watts: float
    budget_w: float | None
    #: what the step was measured to save, in watts (None before it was measured).
    saved_w: float | None = None


@dataclass
class _Taken:
    step: Step
    at: float
    before_w: float
    saved_w: float | None = None


@dataclass
class Governor:
    config: GovernorConfig = field(default_factory=GovernorConfig)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.savings = Savings()
        self._taken: list[_Taken] = []
        self._changed_at = -math.inf
        self._decided_at: float | None = None
        #: steps given back, waiting to learn what they saved: (step, at, power before).
        self._released: _Taken | None = None
        self._saved: dict[Step, float] = {}
        #: every step is taken, the whole unsure share answered here, and still over budget.
        self.unreachable = False

    @property
    def steps(self) -> list[Step]:
        """Steps in effect, in the order taken."""
        return [t.step for t in self._taken]

    @property
    def level(self) -> int:
        return len(self._taken)

    def saved_w(self, step: Step) -> float | None:
        return self._saved.get(step)

    def decide(self, watts: float, budget_w: float | None) -> list[StepChange]:
        """One decision on the power measured now (watts, averaged over the last few seconds)
        and the budget (None: no budget, every step is given back at once)."""
        now = self.clock()
        since, self._decided_at = (
            now - self._decided_at if self._decided_at is not None else 0.0,
            now,
        )
        self._learn(now, watts)
        if budget_w is None:
            return [self._release(now, watts, None) for _ in list(self._taken)]
        held = now - self._changed_at >= self.config.hold_s
        over = watts > budget_w * (1.0 + self.config.over)
        top = self._taken[-1].step if self._taken else None
        if top is Step.DEGRADE:
            return self._steer(now, watts, budget_w, held, min(since, self.config.hold_s))
        if over:
            self.unreachable = False
            upcoming = self._next()
            if upcoming is None or not held:
                return []
            return [self._take(upcoming, now, watts, budget_w)]
        if top is None or not held:
            return []
        saved = self._saved.get(top, 0.0)
        if watts + saved <= budget_w * (1.0 - self.config.release_margin):
            return [self._release(now, watts, budget_w)]
        return []

    def _steer(
        self, now: float, watts: float, budget_w: float, held: bool, seconds: float
    ) -> list[StepChange]:
        """The degraded share follows the excess; the step is given back once it is 0 and the
        power is under the budget by the margin."""
        savings = self.savings
        scale = max(self._taken[-1].before_w, budget_w, 1e-9)
        error = (watts - budget_w) / scale
        change = self.config.degrade_gain * error * seconds
        share = min(1.0, max(0.0, savings.degrade_share + change))
        savings.degrade_share = share
        self.unreachable = share >= 1.0 and watts > budget_w * (1.0 + self.config.over)
        margin = budget_w * (1.0 - self.config.release_margin)
        if share <= 0.0 and held and watts <= margin:
            return [self._release(now, watts, budget_w)]
        return []

    def _next(self) -> Step | None:
        taken = {t.step for t in self._taken}
        return next((s for s in self.config.ladder if s not in taken), None)

    def _take(self, step: Step, now: float, watts: float, budget_w: float) -> StepChange:
        self._taken.append(_Taken(step, now, watts))
        self._changed_at = now
        self._released = None
        self._apply(step, on=True)
        return StepChange(step, True, now, watts, budget_w, self._saved.get(step))

    def _release(self, now: float, watts: float, budget_w: float | None) -> StepChange:
        taken = self._taken.pop()
        self._changed_at = now
        self._released = _Taken(taken.step, now, watts)
        self._apply(taken.step, on=False)
        self.unreachable = False
        return StepChange(taken.step, False, now, watts, budget_w, self._saved.get(taken.step))

    def _learn(self, now: float, watts: float) -> None:
        """What the last change saved, once ``hold_s`` has passed since it: the power before a
        step taken against the power now, or the power now against before a step given back."""
        if now - self._changed_at < self.config.hold_s:
            return
        if self._taken and self._taken[-1].saved_w is None:
            last = self._taken[-1]
            last.saved_w = max(0.0, last.before_w - watts)
            self._saved[last.step] = max(self._saved.get(last.step, 0.0), last.saved_w)
        released = self._released
        if released is not None:
            self._released = None
            rise = max(0.0, watts - released.before_w)
            self._saved[released.step] = max(self._saved.get(released.step, 0.0), rise)

    def _apply(self, step: Step, *, on: bool) -> None:
        savings, config = self.savings, self.config
        if step is Step.AUDITS:
            savings.audit_scale = config.audit_scale if on else 1.0
        elif step is Step.DRIFT:
            savings.drift_paused = on
        elif step is Step.COALESCE:
            savings.coalesce_s = config.coalesce_s if on else 0.0
        elif step is Step.EVENTS:
            savings.events_defer_s = config.events_defer_s if on else 0.0
        else:
            savings.degrade_share = 0.0


def steps_text(steps: Sequence[Step]) -> str:
    return ", ".join(s.value for s in steps) or "none"
