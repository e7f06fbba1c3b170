"""Recent latencies of one upstream, for the "is the budget enough to escalate" decision, and
when to ask again a request whose answer is late.

Pure: no I/O, an injectable clock. A tracker keeps the last ``window`` observations that are at
most ``max_age_seconds`` old, so a p95 reflects the link as it is now, not as it was an hour
ago. Quantiles interpolate linearly between order statistics (numpy's default ``linear``).

``HedgePolicy`` turns a tracker into a hedging schedule (issue 26): a request still unanswered
once the usual answer time of its subject has passed is sent again (same request id, so it is
the same request), then again with backoff while its budget lasts; the first answer wins. A
node that stops reading (SIGSTOP, a GC pause, a disk stall, a starved CPU) keeps its
connection and its place in the queue group, so without this its share of requests waits out
their budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class LatencyTracker:
    """Sliding record of round-trip latencies (milliseconds) to one upstream."""

    def __init__(
        self,
        window: int = 200,
        max_age_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        min_samples: int = 5,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be > 0")
        if not 1 <= min_samples <= window:
            raise ValueError("min_samples must be in [1, window]")
        self.window = window
        self.max_age_seconds = max_age_seconds
        self.min_samples = min_samples
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._sorted: list[float] | None = None
        #: how many times the record was cleared (what was derived from it is stale then).
        self.clears = 0

    def now(self) -> float:
        """The tracker's clock."""
        return self._clock()

    def observe(self, ms: float) -> float:
        """Record one latency; returns the clock's time it was recorded at."""
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"latency must be a finite non-negative number, got {ms!r}")
        now = self._clock()
        self._samples.append((now, float(ms)))
        self._sorted = None
        return now

    @property
    def count(self) -> int:
        self._expire()
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in ms, or ``None`` with fewer than ``min_samples``."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        self._expire()
        if len(self._samples) < self.min_samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(ms for _, ms in self._samples)
        values = self._sorted
        position = q * (len(values) - 1)
        lower = math.floor(position)
        upper = min(lower + 1, len(values) - 1)
        return values[lower] + (values[upper] - values[lower]) * (position - lower)

    @property
    def p50(self) -> float | None:
        return self.quantile(0.5)

    @property
    def p95(self) -> float | None:
        return self.quantile(0.95)

    def clear(self) -> None:
        self._samples.clear()
        self._sorted = None
        self.clears += 1

    def _expire(self) -> None:
        cutoff = self._clock() - self.max_age_seconds
        expired = False
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
            expired = True
        if expired:
            self._sorted = None


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """How eagerly late requests are asked again."""

    #: the usual answer time is this quantile of the recent answers: past it, an answer is late.
    quantile: float = 0.99
    #: each hedge waits this many times longer than the one before.
    backoff: float = 2.0
    #: the longest wait between two hedges, as a share of the request's budget (never shorter
    #: than the usual answer time): a queue group picks its member at random, so what makes a
    #: loss unlikely is the number of hedges a budget holds (see ``HedgePolicy``). A dense
    #: schedule costs little: a request stops being hedged once answered, so with one member
    #: stuck it takes 2 hedges on average however many its budget would hold.
    max_gap_share: float = 1 / 16
    #: hedges earned per answer, and the most that can be saved up: hedging can at most
    #: double the load a tier sees, and stops once answers stop (an overload is not helped by
    #: asking again, a stuck member is).
    credit_per_answer: float = 1.0
    max_credit: float = 100.0
    #: the usual answer time is recomputed after this many answers (a quantile sorts the record).
    refresh_every: int = 32
    #: hedge only while at least this many members of the queue group answered within the
    #: record's age: a copy cannot reach a member other than the one that is late when there is
    #: none, and would only double that member's work.
    min_members: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError("quantile must be in (0, 1]")
        if self.backoff < 1.0:
            raise ValueError("backoff must be >= 1")
        if not 0.0 < self.max_gap_share <= 1.0:
            raise ValueError("max_gap_share must be in (0, 1]")
        if self.credit_per_answer < 0 or self.max_credit < 1:
            raise ValueError("credit_per_answer must be >= 0 and max_credit >= 1")
        if self.refresh_every < 1:
            raise ValueError("refresh_every must be >= 1")
        if self.min_members < 1:
            raise ValueError("min_members must be >= 1")


class HedgePolicy:
    """When to send a late request again, from the record of its subject's answer times.

    Why repeated hedges suffice although a queue group picks a member at random: with one of
    ``n`` members stuck, each copy reaches it with probability ``1/n``, independently of the
    others, so a request is lost only if its first send and all its ``k`` hedges pick the stuck
    member: ``(1/n) ** (k + 1)``. With a usual answer time of 4 ms and a 500 ms budget the
    schedule holds 17 hedges (15 at 20 ms), so one of two members stuck loses about 1 request
    in 250 000 of those that reached it (1 in 65 000), for as long as the server keeps it in
    the group: the servers drop a client that answers no PING for about 3.6 s
    (``mesh.local.servers``), and from then on every copy reaches a live member.

    No hedge while the record is shorter than the tracker's ``min_samples``: nothing is late
    before the usual answer time is known. No hedge either while fewer than ``min_members``
    members answered lately (when the caller says who answered): a group of one has nobody
    else to ask. A member frozen since before the caller started is not missed by this: the
    servers drop it within seconds of its freeze."""

    def __init__(self, tracker: LatencyTracker, settings: HedgeSettings | None = None) -> None:
        self.tracker = tracker
        self.settings = settings or HedgeSettings()
        self._usual_ms: float | None = None
        self._since_refresh = 0
        self._clears = tracker.clears
        self._credit = self.settings.max_credit
        #: when each member of the group last answered (by name), and how many did lately;
        #: None until an answer says who gave it (then the group's size is unknown).
        self._seen: dict[str, float] = {}
        self._members: int | None = None
        #: hedges sent, and hedges not sent for lack of credit.
        self.sent = 0
        self.refused = 0

    def observe(self, ms: float, member: str | None = None) -> None:
        """An answer came ``ms`` after the copy that brought it was sent, from ``member`` of
        the queue group (None: not known)."""
        now = self.tracker.observe(ms)
        self._since_refresh += 1
        credit = self._credit + self.settings.credit_per_answer
        self._credit = credit if credit < self.settings.max_credit else self.settings.max_credit
        if member is not None:
            seen = self._seen
            if self._members is not None and member not in seen:
                self._members += 1
            seen[member] = now

    @property
    def members(self) -> int | None:
        """How many members answered within the record's age (None: nobody said)."""
        if self._seen and self._members is None:
            self._count_members()
        return self._members

    @property
    def usual_ms(self) -> float | None:
        """The usual answer time, in ms (None until the record is long enough)."""
        tracker = self.tracker
        stale = self._since_refresh >= self.settings.refresh_every or self._clears != tracker.clears
        if self._usual_ms is None or stale:
            self._usual_ms = tracker.quantile(self.settings.quantile)
            self._since_refresh = 0
            self._clears = tracker.clears
            self._count_members()
        return self._usual_ms

    def first_gap_ms(self, budget_ms: float) -> float | None:
        """How long after the first send a request is late; None: never hedge it."""
        usual = self.usual_ms
        if usual is None or usual >= budget_ms:
            return None
        members = self._members
        if members is not None and members < self.settings.min_members:
            return None
        return usual

    def _count_members(self) -> None:
        if not self._seen:
            return
        cutoff = self.tracker.now() - self.tracker.max_age_seconds
        self._seen = {name: at for name, at in self._seen.items() if at >= cutoff}
        self._members = len(self._seen)

    def next_gap_ms(self, gap_ms: float, budget_ms: float) -> float:
        """The wait after a hedge that followed a wait of ``gap_ms``."""
        longest = max(budget_ms * self.settings.max_gap_share, self.usual_ms or 0.0)
        return min(gap_ms * self.settings.backoff, longest)

    def allow(self, left_ms: float) -> bool:
        """Whether to send a hedge now, with ``left_ms`` of the budget left: only when an
        answer can still come back in time, and while credit lasts (spent when True)."""
        usual = self.usual_ms
        if usual is None or left_ms <= usual:
            return False
        if self._credit < 1.0:
            self.refused += 1
            return False
        self._credit -= 1.0
        self.sent += 1
        return True


__all__ = ["HedgePolicy", "HedgeSettings", "LatencyTracker"]
