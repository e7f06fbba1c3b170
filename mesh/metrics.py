"""The mesh's metric instruments, through the OpenTelemetry metrics API.

Instruments are created once a process; without a configured ``MeterProvider`` they are
OpenTelemetry's no-ops. ``mesh.telemetry`` installs the SDK and the Prometheus reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

_LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

GaugeSource = Callable[[], Iterable[tuple[float, dict[str, str]]]]


@dataclass
class MeshMetrics:
    """Counters and histograms of one process, labelled by tier, model and outcome."""

    meter: metrics.Meter = field(default_factory=lambda: metrics.get_meter("mesh"))

    def __post_init__(self) -> None:
        m = self.meter
        self.requests = m.create_counter(
            "mesh_requests", unit="1", description="Requests handled, by tier, model and outcome"
        )
        self.latency = m.create_histogram(
            "mesh_request_duration",
            unit="ms",
            description="Time from receipt to reply at a tier, upstream wait included",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS_MS,
        )
        self.escalations = m.create_counter(
            "mesh_escalations", unit="1", description="Cases meant for upstream, by reason"
        )
        self.degraded = m.create_counter(
            "mesh_degraded", unit="1", description="Degraded answers, by reason"
        )
        self.upstream_bytes = m.create_counter(
            "mesh_upstream_bytes", unit="By", description="Request bytes sent to the upstream tier"
        )
        self.batch_size = m.create_histogram(
            "mesh_batch_size",
            unit="1",
            description="Rows per inference batch",
            explicit_bucket_boundaries_advisory=_BATCH_BUCKETS,
        )
        self.breaker_transitions = m.create_counter(
            "mesh_breaker_transitions", unit="1", description="Circuit breaker state changes"
        )
        self.hard_examples = m.create_counter(
            "mesh_hard_examples", unit="1", description="Hard examples recorded and forwarded"
        )
        self._gauges: dict[str, list[GaugeSource]] = {}

    def observe_gauge(self, name: str, description: str, source: GaugeSource) -> Callable[[], None]:
        """Register a callback reporting a gauge's current values (breaker state, backlog);
        returns the function that unregisters it."""
        sources = self._gauges.get(name)

        def unregister() -> None:
            if sources is not None and source in sources:
                sources.remove(source)

        if sources is not None:
            sources.append(source)
            return unregister
        sources = [source]
        self._gauges[name] = sources

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            for src in list(sources):
                for value, attributes in src():
                    yield Observation(value, attributes)

        self.meter.create_observable_gauge(name, callbacks=[callback], description=description)
        return unregister


_default: MeshMetrics | None = None


def default_metrics() -> MeshMetrics:
    global _default
    if _default is None:
        _default = MeshMetrics()
    return _default
