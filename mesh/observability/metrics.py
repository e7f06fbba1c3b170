"""The mesh's metrics: plain counters and histogram buckets, rendered for Prometheus when scraped.

Recording a request costs a dict update (well under a microsecond) instead of the ~15 us an
OpenTelemetry instrument call costs: the work of turning values into metric families happens
once a scrape, in ``MeshCollector.collect``, not once a request. The names and labels are the
ones the README documents (``mesh_requests_total{tier,model,outcome}`` and so on).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: label value standing for every model a tier does not serve, so that callers cannot add series
#: by naming models (each distinct label value is a series on every scrape).
OTHER_MODEL = "_other"

GaugeSource = Callable[[], Iterable[tuple[float, dict[str, str]]]]
Labels = tuple[str, ...]


class CounterFamily:
    """A counter family: label values to a running total."""

    def __init__(self, name: str, description: str, labels: Sequence[str]) -> None:
        self.name = name
        self.description = description
        self.labels = tuple(labels)
        self.values: dict[Labels, float] = {}

    def add(self, amount: float, *label_values: str) -> None:
        values = self.values
        values[label_values] = values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)

    def total(self) -> float:
        return sum(self.values.values())

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.description, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value)
        return family


class HistogramFamily:
    """A histogram family: per label values, a count per bucket, their sum and count.

    A bucket's bound is inclusive, as in Prometheus (``le``). Values are observed in the unit
    the code measures (milliseconds); ``scale`` turns them into the exported one, as Prometheus
    names a duration in seconds (``promtool check metrics``)."""

    def __init__(
        self,
        name: str,
        description: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        scale: float = 1.0,
    ) -> None:
        self.name = name
        self.description = description
        self.labels = tuple(labels)
        self.scale = scale
        self.bounds = tuple(float(b) for b in buckets)
        #: label values to [count per bucket..., count over the last bound, sum, count].
        self.series: dict[Labels, list[float]] = {}

    def observe(self, value: float, *label_values: str) -> None:
        series = self.series.get(label_values)
        if series is None:
            series = self.series[label_values] = [0.0] * (len(self.bounds) + 3)
        series[bisect_left(self.bounds, value)] += 1
        series[-2] += value
        series[-1] += 1

    def observe_many(self, value: float, times: int, *label_values: str) -> None:
        """``observe(value)`` done ``times`` times, in one step."""
        series = self.series.get(label_values)
        if series is None:
            series = self.series[label_values] = [0.0] * (len(self.bounds) + 3)
        series[bisect_left(self.bounds, value)] += times
        series[-2] += value * times
        series[-1] += times

    def sum_count(self, *label_values: str) -> tuple[float, float]:
        series = self.series.get(label_values)
        return (series[-2], series[-1]) if series is not None else (0.0, 0.0)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.description, labels=self.labels)
        for key, series in list(self.series.items()):
            running = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(self.bounds, series, strict=False):
                running += count
                buckets.append((_bound_text(bound * self.scale), running))
            buckets.append(("+Inf", series[-1]))
            family.add_metric(list(key), buckets, series[-2] * self.scale)
        return family


def _bound_text(bound: float) -> str:
    return str(int(bound)) + ".0" if bound == int(bound) else repr(bound)


class MeshMetrics:
    """Counters and histograms of one process, labelled by tier, model and outcome."""

    def __init__(self) -> None:
        self.requests = CounterFamily(
            "mesh_requests",
            "Requests handled, by tier, model and outcome",
            ("tier", "model", "outcome", "code"),
        )
        self.latency = HistogramFamily(
            "mesh_request_duration_seconds",
            "Time from receipt to reply at a tier, upstream wait included",
            ("tier", "model", "outcome"),
            LATENCY_BUCKETS_MS,
            scale=0.001,
        )
        self.escalations = CounterFamily(
            "mesh_escalations", "Cases meant for upstream, by reason", ("tier", "model", "reason")
        )
        self.degraded = CounterFamily(
            "mesh_degraded", "Degraded answers, by reason", ("tier", "model", "reason")
        )
        self.upstream_bytes = CounterFamily(
            "mesh_upstream_bytes", "Request bytes sent to the upstream tier", ("tier", "upstream")
        )
        self.batch_size = HistogramFamily(
            "mesh_batch_size", "Rows per inference batch", ("tier", "model"), BATCH_BUCKETS
        )
        self.breaker_transitions = CounterFamily(
            "mesh_breaker_transitions",
            "Circuit breaker state changes",
            ("tier", "upstream", "from", "to"),
        )
        self.hard_examples = CounterFamily(
            "mesh_hard_examples", "Hard examples recorded and forwarded", ("tier", "event")
        )
        self.dropped = CounterFamily(
            "mesh_dropped_messages",
            "Messages dropped unanswered: no reply subject to answer on",
            ("tier",),
        )
        self._declare_quality_and_fleet()
        self._gauges: dict[str, tuple[str, list[GaugeSource]]] = {}
        # a process whose task count keeps growing leaks (the soak checks that it does not)
        self.observe_gauge(
            "mesh_asyncio_tasks", "asyncio tasks of the process, when scraped", _asyncio_tasks
        )
        #: called before every scrape, to bring figures up to date (the energy ledger).
        self.refreshers: list[Callable[[], None]] = []

    def _declare_quality_and_fleet(self) -> None:
        self.fleet_events = CounterFamily(
            "mesh_fleet_events",
            "What the fleet agent did with assigned versions: swapped, rejected, restored",
            ("tier", "model", "event"),
        )
        self.events = CounterFamily(
            "mesh_events",
            "Inference events consumed, by outcome: answered, degraded, error, malformed, "
            "dead_lettered",
            ("tier", "model", "outcome"),
        )
        self.agreement = CounterFamily(
            "mesh_agreement",
            "Answers of a model version compared with the tier above, by source (escalated: "
            "the upstream's answer came back; audit: a sampled confident answer sent up after "
            "the reply) and result (agree, disagree)",
            ("tier", "model", "version", "source", "result"),
        )
        self.audits = CounterFamily(
            "mesh_audits",
            "Confident answers sent to the tier above to measure agreement, by outcome: sent, "
            "failed (no answer), skipped (too many in flight)",
            ("tier", "model", "version", "outcome"),
        )
        self.review_candidates = CounterFamily(
            "mesh_review_candidates",
            "Cases offered for human review, by reason and outcome: offered (stored at the "
            "hub), duplicate (offered before), failed, dropped (too many in flight), "
            "over_node_limit; at the hub's intake: queued, duplicate, over_limit, invalid",
            ("tier", "model", "reason", "outcome"),
        )
        self.energy = CounterFamily(
            "mesh_energy_joules",
            "Energy the node's ledger counted, by model and component: model (the model calls' "
            "CPU time), node (the rest of the process's CPU time, shared by answers) and radio "
            "(messages and bytes exchanged upstream), priced by the device profile",
            ("tier", "model", "component"),
        )
        self.power_steps = CounterFamily(
            "mesh_power_steps",
            "Steps of the power governor's ladder taken (applied) and given back (released)",
            ("tier", "step", "action"),
        )

    def families(self) -> list[CounterFamily | HistogramFamily]:
        return [
            self.requests,
            self.latency,
            self.escalations,
            self.degraded,
            self.upstream_bytes,
            self.batch_size,
            self.breaker_transitions,
            self.hard_examples,
            self.dropped,
            self.fleet_events,
            self.events,
            self.agreement,
            self.audits,
            self.review_candidates,
            self.energy,
            self.power_steps,
        ]

    def observe_gauge(self, name: str, description: str, source: GaugeSource) -> Callable[[], None]:
        """Register a callback reporting a gauge's current values (breaker state, backlog),
        read at scrape time; returns the function that unregisters it."""
        _, sources = self._gauges.setdefault(name, (description, []))
        sources.append(source)

        def unregister() -> None:
            if source in sources:
                sources.remove(source)

        return unregister

    def collect_gauges(self) -> Iterator[Metric]:
        for name, (description, sources) in list(self._gauges.items()):
            rows = [row for source in list(sources) for row in source()]
            if not rows:
                continue
            names = sorted({key for _, attributes in rows for key in attributes})
            family = GaugeMetricFamily(name, description, labels=names)
            for value, attributes in rows:
                family.add_metric([attributes.get(key, "") for key in names], value)
            yield family


def _asyncio_tasks() -> list[tuple[float, dict[str, str]]]:
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # scraped from outside the event loop
        return []
    return [(float(len(tasks)), {})]


class MeshCollector(Collector):
    """Renders a ``MeshMetrics`` for ``prometheus_client`` at scrape time."""

    def __init__(self, metrics: MeshMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for refresh in list(self.metrics.refreshers):
            refresh()
        for family in self.metrics.families():
            yield family.collect()
        yield from self.metrics.collect_gauges()

    def describe(self) -> Iterator[Metric]:
        # Gauges come and go with the parts that report them, so nothing is declared up front.
        return iter(())


_default: MeshMetrics | None = None


def default_metrics(registry: CollectorRegistry = REGISTRY) -> MeshMetrics:
    """The process's metrics, rendered by the Prometheus registry that ``/metrics`` serves."""
    global _default
    if _default is None:
        _default = MeshMetrics()
        registry.register(MeshCollector(_default))
    return _default


def tier_totals(metrics: MeshMetrics, tier: str) -> tuple[float, float, list[float]]:
    """Requests answered, escalations and the summed latency buckets of ``tier`` so far: the
    heartbeat takes differences of these between two reports."""
    requests = sum(v for k, v in list(metrics.requests.values.items()) if k[0] == tier)
    escalations = sum(v for k, v in list(metrics.escalations.values.items()) if k[0] == tier)
    buckets = [0.0] * (len(metrics.latency.bounds) + 1)
    for key, series in list(metrics.latency.series.items()):
        if key[0] == tier:
            for i in range(len(buckets)):
                buckets[i] += series[i]
    return requests, escalations, buckets


def bucket_quantile(buckets: Sequence[float], bounds: Sequence[float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None with no observations); the
    last bucket (over every bound) reports twice the last bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return float(bounds[i]) if i < len(bounds) else 2.0 * float(bounds[-1])
    return 2.0 * float(bounds[-1])
