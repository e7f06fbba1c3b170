"""Ground truth over time: what labels say of each model version at each tier, what the traffic
behind them was, and what errors, escalations and labels cost. Pure.

- **Accuracy** of a (model, version, tier): of the labelled items that version answered at that
  tier, the share it answered as the person did, with its 95% Wilson interval. The queue holds
  the cases nobody was sure of, so this is the accuracy on hard cases; the ``sample`` reason's
  items are a random draw of confident answers, and their accuracy estimates those.
- **Escalation rate** and **labels per 1,000 requests**: from the nodes' running totals
  (``TrafficReport``), as differences between reports, day by day.
- **Cost** (``CostModel``, in any unit the operator chooses): wrong answers, escalations and
  human labels; ``DayFigures`` gives a day's error cost and productivity.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh.fleet.rollout.statistics import wilson_lower, wilson_upper
from mesh.review.ledger import Entry
from mesh.review.records import LabelKind, ReviewReason, TrafficReport

#: two-sided 95%: each bound one-sided 97.5%.
Z_95 = 1.96


@dataclass(frozen=True, slots=True)
class Share:
    """``hits`` of ``total``, with the 95% Wilson interval (None without samples)."""

    hits: int
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    @property
    def low(self) -> float | None:
        return wilson_lower(self.hits, self.total, Z_95) if self.total else None

    @property
    def high(self) -> float | None:
        return wilson_upper(self.hits, self.total, Z_95) if self.total else None

    def figures(self) -> dict[str, float | int | None]:
        return {
            "hits": self.hits,
            "total": self.total,
            "value": _round(self.value),
            "low": _round(self.low),
            "high": _round(self.high),
        }


@dataclass(frozen=True, slots=True)
class CostModel:
    """What each outcome costs, in one unit (money, minutes...)."""

    wrong_answer: float = 10.0
    escalation: float = 0.01
    human_label: float = 0.5
    unit: str = "units"


def day_of(t: float) -> str:
    """The UTC day of a wall-clock time, as ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat()


# --- traffic ----------------------------------------------------------------------------------


@dataclass
class TrafficLedger:
    """Requests and escalations per day and (model, version, tier), from running totals that
    restart with each version on each node (``since``) and may arrive late or twice."""

    #: (node, model, version, since) to the last (requests, escalated, time) seen.
    last: dict[tuple[str, str, str, float], tuple[int, int, float]] = field(default_factory=dict)
    #: (day, model, version, tier) to [requests, escalated].
    days: dict[tuple[str, str, str, str], list[int]] = field(default_factory=dict)
    #: (day, model) to requests taken at the entry tier: the mesh's requests.
    entry: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, report: TrafficReport) -> None:
        key = (report.node, report.model, report.version, report.since)
        requests, escalated, seen = self.last.get(key, (0, 0, float("-inf")))
        if report.time <= seen:
            return
        self.last[key] = (report.requests, report.escalated, report.time)
        more = max(0, report.requests - requests)
        more_escalated = max(0, report.escalated - escalated)
        if not more and not more_escalated:
            return
        day = day_of(report.time)
        totals = self.days.setdefault((day, report.model, report.version, report.tier), [0, 0])
        totals[0] += more
        totals[1] += more_escalated
        if report.entry:
            self.entry[(day, report.model)] = self.entry.get((day, report.model), 0) + more

    def totals(self, model: str, version: str, tier: str) -> tuple[int, int]:
        requests = escalated = 0
        for (_, m, v, t), (r, e) in self.days.items():
            if (m, v, t) == (model, version, tier):
                requests += r
                escalated += e
        return requests, escalated

    def day(self, day: str, model: str) -> tuple[int, int]:
        """The mesh's requests of ``model`` on ``day`` (the entry tier's) and its escalations
        at every tier."""
        escalated = sum(e for (d, m, _, _), (_, e) in self.days.items() if (d, m) == (day, model))
        return self.entry.get((day, model), 0), escalated


# --- per version ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionStats:
    model: str
    version: str
    tier: str
    #: labelled items this version answered here, and how many as the person did.
    accuracy: Share
    requests: int
    escalated: int

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.requests if self.requests else None

    @property
    def labels_per_1000(self) -> float | None:
        return 1000.0 * self.accuracy.total / self.requests if self.requests else None

    def figures(self) -> dict[str, object]:
        return {
            "model": self.model,
            "version": self.version,
            "tier": self.tier,
            "labelled": self.accuracy.total,
            "correct": self.accuracy.hits,
            "accuracy": self.accuracy.figures(),
            "requests": self.requests,
            "escalated": self.escalated,
            "escalation_rate": _round(self.escalation_rate),
            "labels_per_1000": _round(self.labels_per_1000),
        }


def version_stats(
    entries: Iterable[Entry], traffic: TrafficLedger, model: str | None = None
) -> list[VersionStats]:
    """Per (model, version, tier): labelled accuracy and the traffic behind it; a version with
    traffic and no labels is listed too."""
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for entry in entries:
        label = entry.label
        if label is None or (model is not None and entry.item.model != model):
            continue
        for answer in entry.item.answers:
            if answer.label is None:
                continue
            c = counts[(entry.item.model, answer.version, answer.tier)]
            c[0] += answer.label == label
            c[1] += 1
    keys = set(counts)
    keys.update((m, v, t) for (_, m, v, t) in traffic.days if model is None or m == model)
    out = []
    for m, v, t in sorted(keys):
        hits, total = counts.get((m, v, t), (0, 0))
        requests, escalated = traffic.totals(m, v, t)
        out.append(VersionStats(m, v, t, Share(hits, total), requests, escalated))
    return out


# --- per day ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One model's day: traffic, what reached people, what they found, and what it cost."""

    day: str
    model: str
    requests: int
    escalations: int
    queued: int
    #: label actions that day (a relabel is one more), and skips.
    labels: int
    skips: int
    #: the answers callers got, on the items labelled that day: right of labelled.
    served: Share
    #: the same, on the random draw of confident answers alone (``sample``).
    sampled: Share
    cost: CostModel

    @property
    def errors_found(self) -> int:
        return self.served.total - self.served.hits

    @property
    def error_rate(self) -> float | None:
        """Estimated share of wrong answers: the sample's when there is one."""
        value = self.sampled.value
        return None if value is None else 1.0 - value

    @property
    def errors_estimated(self) -> float | None:
        rate = self.error_rate
        return None if rate is None else rate * self.requests

    def figures(self) -> dict[str, object]:
        cost = self.cost
        wrong = self.errors_estimated
        counted_wrong = wrong if wrong is not None else float(self.errors_found)
        error_cost = counted_wrong * cost.wrong_answer
        escalation_cost = self.escalations * cost.escalation
        label_cost = self.labels * cost.human_label
        total = error_cost + escalation_cost + label_cost
        high = self.sampled.low
        return {
            "day": self.day,
            "model": self.model,
            "requests": self.requests,
            "escalations": self.escalations,
            "queued": self.queued,
            "labels": self.labels,
            "skips": self.skips,
            "served_accuracy": self.served.figures(),
            "sampled_accuracy": self.sampled.figures(),
            "errors": {
                "found": self.errors_found,
                "estimated": _round(wrong, 1),
                "estimated_high": _round(None if high is None else (1.0 - high) * self.requests, 1),
                "from": "sample" if wrong is not None else "found",
            },
            "cost": {
                "unit": cost.unit,
                "errors": _round(error_cost, 2),
                "escalations": _round(escalation_cost, 2),
                "labels": _round(label_cost, 2),
                "total": _round(total, 2),
                "per_1000_requests": _round(
                    1000.0 * total / self.requests if self.requests else None, 3
                ),
            },
            "productivity": {
                "answers": self.requests,
                "answers_per_label": _round(
                    self.requests / self.labels if self.labels else None, 1
                ),
                "escalation_rate": _round(
                    self.escalations / self.requests if self.requests else None
                ),
                "human_share": _round(self.labels / self.requests if self.requests else None),
            },
        }


def daily_report(
    entries: Iterable[Entry],
    traffic: TrafficLedger,
    cost: CostModel,
    *,
    days: int,
    now: float,
    model: str | None = None,
) -> list[DayFigures]:
    """The last ``days`` days up to ``now``'s, oldest first, for every model seen (or one)."""
    wanted = [day_of(now - 86400.0 * back) for back in range(days - 1, -1, -1)]
    models: set[str] = {m for (_, m, _, _) in traffic.days}
    queued: dict[tuple[str, str], int] = defaultdict(int)
    labels: dict[tuple[str, str], int] = defaultdict(int)
    skips: dict[tuple[str, str], int] = defaultdict(int)
    served: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    sampled: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for entry in entries:
        item = entry.item
        models.add(item.model)
        if item.queued_at is not None:
            queued[(day_of(item.queued_at), item.model)] += 1
        for record in entry.labels:
            key = (day_of(record.at), item.model)
            if record.kind is LabelKind.LABEL:
                labels[key] += 1
            else:
                skips[key] += 1
        current = entry.current
        answer = item.served()
        if current is None or current.kind is not LabelKind.LABEL or answer is None:
            continue
        if answer.label is None:
            continue
        key = (day_of(current.at), item.model)
        right = int(answer.label == current.label)
        served[key][0] += right
        served[key][1] += 1
        if item.reason is ReviewReason.SAMPLE:
            sampled[key][0] += right
            sampled[key][1] += 1
    out = []
    for m in sorted(models):
        if model is not None and m != model:
            continue
        for day in wanted:
            requests, escalations = traffic.day(day, m)
            key = (day, m)
            out.append(
                DayFigures(
                    day=day,
                    model=m,
                    requests=requests,
                    escalations=escalations,
                    queued=queued.get(key, 0),
                    labels=labels.get(key, 0),
                    skips=skips.get(key, 0),
                    served=Share(*served.get(key, (0, 0))),
                    sampled=Share(*sampled.get(key, (0, 0))),
                    cost=cost,
                )
            )
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


__all__ = [
    "CostModel",
    "DayFigures",
    "Share",
    "TrafficLedger",
    "VersionStats",
    "daily_report",
    "day_of",
    "version_stats",
]
