"""What the soak's load saw, minute by minute: requests, answers, losses, latencies per answering
tier, degraded answers by reason; and its events: each one published and the results stored for
it. Pure: the load records here, the report reads from here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


def quantile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile ``q`` of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class MinuteTally:
    """One minute of requests (by when they were sent)."""

    requests: int = 0
    answered: int = 0
    lost: int = 0
    #: latency in ms of each answer, by the tier that gave it.
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    degraded: Counter[str] = field(default_factory=Counter)
    #: lost requests by error code.
    lost_by: Counter[str] = field(default_factory=Counter)

    def all_latencies(self) -> list[float]:
        return [ms for values in self.latencies_ms.values() for ms in values]

    def p(self, q: float) -> float | None:
        return quantile(self.all_latencies(), q)

    def per_tier(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for tier, values in sorted(self.latencies_ms.items()):
            out[tier] = {
                "answers": len(values),
                "p50_ms": _r(quantile(values, 0.5)),
                "p99_ms": _r(quantile(values, 0.99)),
            }
        return out


class LoadTally:
    """Every request's outcome, filed under the minute it was sent in."""

    def __init__(self) -> None:
        self.minutes: dict[int, MinuteTally] = {}
        #: a few lost requests, said as they were (id, site, error), for the report.
        self.lost_examples: list[str] = []
        self.in_flight = 0

    def minute(self, index: int) -> MinuteTally:
        tally = self.minutes.get(index)
        if tally is None:
            tally = self.minutes[index] = MinuteTally()
        return tally

    def sent(self, minute: int) -> None:
        self.minute(minute).requests += 1
        self.in_flight += 1

    def answered(
        self, minute: int, tier: str, latency_ms: float, degraded: bool, reason: str | None
    ) -> None:
        tally = self.minute(minute)
        tally.answered += 1
        tally.latencies_ms.setdefault(tier, []).append(latency_ms)
        if degraded:
            tally.degraded[reason or "unknown"] += 1
        self.in_flight -= 1

    def lost(self, minute: int, code: str, example: str) -> None:
        tally = self.minute(minute)
        tally.lost += 1
        tally.lost_by[code] += 1
        if len(self.lost_examples) < 20:
            self.lost_examples.append(example)
        self.in_flight -= 1

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.minutes.values())

    @property
    def answered_total(self) -> int:
        return sum(m.answered for m in self.minutes.values())

    @property
    def lost_total(self) -> int:
        return sum(m.lost for m in self.minutes.values())


class EventTally:
    """Events published (by id, per site) and the results stored for each."""

    def __init__(self) -> None:
        self.published: dict[str, str] = {}
        #: results stored per event id.
        self.results: Counter[str] = Counter()
        #: results whose event this run did not publish (should be none).
        self.strangers = 0
        #: publishes refused or not acknowledged, by error code.
        self.refused: Counter[str] = Counter()
        #: results that carry an error instead of an answer.
        self.error_results = 0

    def publish(self, event_id: str, site: str) -> None:
        self.published[event_id] = site

    def result(self, event_id: str, error: bool) -> None:
        if event_id not in self.published:
            self.strangers += 1
            return
        self.results[event_id] += 1
        if error:
            self.error_results += 1

    @property
    def waiting(self) -> list[str]:
        """Events with no result yet."""
        return [e for e in self.published if self.results[e] == 0]

    @property
    def repeated(self) -> list[str]:
        """Events with more than one result."""
        return [e for e, n in self.results.items() if n > 1]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


__all__ = ["EventTally", "LoadTally", "MinuteTally", "quantile"]
