"""Ground truth over time as the console plots it, from the review API's answers: labelled
accuracy per model version (and tier) as labels arrive, and per day the escalation rate and
the error cost. Pure.

The review desk answers accuracy as it stands now (``stats``); the console keeps a point each
time a version's labelled count moves, and, when it starts, draws the history before that from
the labelled items themselves (when the desk lists all of them, up to 1,000)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.console.charts import Series

#: points kept per version.
MAX_POINTS = 2000


@dataclass(frozen=True, slots=True)
class VersionFigures:
    model: str
    version: str
    tier: str
    labelled: int
    accuracy: float | None
    low: float | None
    high: float | None
    requests: int
    escalation_rate: float | None
    labels_per_1000: float | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.tier)


class QualityBoard:
    def __init__(self) -> None:
        #: (model, version, tier) to (time, labelled, accuracy) points.
        self._series: dict[tuple[str, str, str], deque[tuple[float, int, float]]] = {}
        self.versions: list[VersionFigures] = []
        self.days: list[dict[str, Any]] = []
        self.cost_model: dict[str, Any] = {}
        self.queue: dict[str, Any] = {}
        self.version = 0
        self.backfilled = False

    def stats(self, now: float, stats: Mapping[str, Any]) -> None:
        """A ``stats`` answer: the figures of every version now."""
        versions = [_version(v) for v in stats.get("versions") or [] if isinstance(v, dict)]
        changed = versions != self.versions or stats.get("queue") != self.queue
        self.versions = versions
        self.queue = dict(stats.get("queue") or {})
        for v in versions:
            if v.accuracy is None:
                continue
            points = self._series.setdefault(v.key, deque(maxlen=MAX_POINTS))
            if not points or points[-1][1] != v.labelled:
                points.append((now, v.labelled, v.accuracy))
                changed = True
        if changed:
            self.version += 1

    def report(self, report: Mapping[str, Any]) -> None:
        days = [d for d in report.get("days") or [] if isinstance(d, dict)]
        if days != self.days:
            self.days = days
            self.cost_model = dict(report.get("cost_model") or {})
            self.version += 1

    def backfill(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Cumulative accuracy per version and tier from labelled items, as each label came."""
        labelled = []
        for item in items:
            label = item.get("label")
            if not isinstance(label, dict) or label.get("kind") != "label":
                continue
            at, given = label.get("at"), label.get("label")
            if isinstance(at, int | float) and isinstance(given, int):
                labelled.append((float(at), given, item))
        counts: dict[tuple[str, str, str], list[int]] = {}
        history: dict[tuple[str, str, str], list[tuple[float, int, float]]] = {}
        for at, given, item in sorted(labelled, key=lambda x: x[0]):
            for answer in item.get("answers") or []:
                if not isinstance(answer, dict) or not isinstance(answer.get("label"), int):
                    continue
                key = (str(item.get("model")), str(answer.get("version")), str(answer.get("tier")))
                c = counts.setdefault(key, [0, 0])
                c[0] += answer["label"] == given
                c[1] += 1
                history.setdefault(key, []).append((at, c[1], c[0] / c[1]))
        for key, points in history.items():
            live = self._series.get(key)
            merged = deque(points, maxlen=MAX_POINTS)
            if live:
                merged.extend(p for p in live if p[1] > points[-1][1])
            self._series[key] = merged
        self.backfilled = True
        self.version += 1

    def models(self) -> list[str]:
        found = {k[0] for k in self._series} | {v.model for v in self.versions}
        found |= {str(d.get("model")) for d in self.days}
        return sorted(found)

    def accuracy_series(self, model: str) -> list[Series]:
        return [
            Series(f"{version} at {tier}", tuple((t, acc) for t, _, acc in points))
            for (m, version, tier), points in sorted(self._series.items())
            if m == model
        ]

    def daily(self, model: str) -> tuple[list[str], dict[str, list[Series]]]:
        """The days, and per figure (escalation rate, error cost...) its series."""
        days = [d for d in self.days if d.get("model") == model]
        names = [str(d.get("day", ""))[5:] for d in days]

        def series(name: str, pick: Any) -> Series:
            points = []
            for i, d in enumerate(days):
                value = pick(d)
                if isinstance(value, int | float):
                    points.append((float(i), float(value)))
            return Series(name, tuple(points))

        return names, {
            "escalation": [
                series("escalation rate", lambda d: _get(d, "productivity", "escalation_rate")),
                series(
                    "answers a person touched", lambda d: _get(d, "productivity", "human_share")
                ),
            ],
            "cost": [
                series("total", lambda d: _get(d, "cost", "total")),
                series("wrong answers", lambda d: _get(d, "cost", "errors")),
                series("escalations", lambda d: _get(d, "cost", "escalations")),
                series("labels", lambda d: _get(d, "cost", "labels")),
            ],
            "accuracy": [
                series("answers served (labelled that day)",
                       lambda d: _get(d, "served_accuracy", "value")),
                series("random sample of confident answers",
                       lambda d: _get(d, "sampled_accuracy", "value")),
            ],
        }  # fmt: skip


def _get(d: Mapping[str, Any], *path: str) -> Any:
    value: Any = d
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _version(v: Mapping[str, Any]) -> VersionFigures:
    accuracy = v.get("accuracy") if isinstance(v.get("accuracy"), dict) else {}
    assert isinstance(accuracy, dict)

    def num(x: Any) -> float | None:
        return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None

    return VersionFigures(
        model=str(v.get("model", "")),
        version=str(v.get("version", "")),
        tier=str(v.get("tier", "")),
        labelled=int(v.get("labelled") or 0),
        accuracy=num(accuracy.get("value")),
        low=num(accuracy.get("low")),
        high=num(accuracy.get("high")),
        requests=int(v.get("requests") or 0),
        escalation_rate=num(v.get("escalation_rate")),
        labels_per_1000=num(v.get("labels_per_1000")),
    )


__all__ = ["QualityBoard", "VersionFigures"]
