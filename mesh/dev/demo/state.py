"""What a demo run observes: its settings, every request's outcome, the site's link and breaker."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "digits"
GATEWAY_TIER = "gateway"
GATEWAY = f"{GATEWAY_TIER}-0"
TIER_ORDER = ("edge", "gateway", "cloud")
EDGE_REPLICAS = 2
#: the edge device on battery: a Raspberry Pi 4 asked to last ``BATTERY_HOURS`` on
#: ``BATTERY_WH`` (at full charge that leaves it ample power over its idle floor).
BATTERY_NODE = "edge-1"
BATTERY_WH = 20.0
BATTERY_HOURS = 8.0
#: the level the demo reports once the fleet's scenarios are done leaves the node this share of
#: what it draws then: its governor has to save the rest.
BATTERY_SQUEEZE = 0.6

_GATEWAY_METRIC = re.compile(
    r"^(mesh_upstream_bytes\w*_total|mesh_breaker_transitions\w*_total)(\{[^}]*\})?\s+(\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class DemoConfig:
    requests: int = 5000
    #: paced rate; 5,000 requests at 100/s last about 50 s.
    rate_per_s: float = 100.0
    concurrency: int = 32
    budget_ms: float = 500.0
    #: the site-to-hub link is cut between these fractions of the run, once the fleet's
    #: scenarios (their controller and the review queue are at the hub) are over.
    cut_from: float = 0.7
    cut_to: float = 0.85
    drain_timeout_s: float = 30.0
    poll_interval_s: float = 0.25
    cache: Path = Path.home() / ".cache" / "edge-mesh" / "demo"
    #: the short run: fewer labels before the loop learns, and no confused version (its
    #: traffic is too short for a shadow stage judged on 300 compared answers).
    quick: bool = False
    #: labels the learn job waits for.
    learn_after: int = 300
    #: the simulated reviewer: how long after an item is queued it labels it, how many at
    #: once, and the share of its labels that are wrong on purpose.
    reviewer_delay_s: float = 0.5
    reviewer_concurrency: int = 8
    reviewer_error_rate: float = 0.02
    #: share of the test split kept out of the traffic (and so out of every label and every
    #: training): the rows the improvement is measured on.
    heldout_share: float = 1 / 3

    @property
    def duration_s(self) -> float:
        return self.requests / self.rate_per_s

    @classmethod
    def of(cls, cache: Path, requests: int | None, quick: bool) -> DemoConfig:
        if quick:
            return cls(
                requests=requests or 2400, rate_per_s=80.0, cache=cache, quick=True,
                learn_after=100,
            )  # fmt: skip
        return cls(requests=requests or 5000, cache=cache)


@dataclass
class Tally:
    """Every request's outcome, as the application saw it."""

    sent: int = 0
    answered: int = 0
    correct: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    by_tier: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    degraded_by_tier: Counter[str] = field(default_factory=Counter)
    request_bytes: int = 0
    escalated_bytes: int = 0
    rows_sent: Counter[int] = field(default_factory=Counter)
    traced_id: str | None = None
    #: the publisher's events answered degraded by the gateway: hard examples too.
    event_hard_examples: int = 0

    @property
    def hard_examples(self) -> int:
        """Cases the gateway answered degraded, requests and events: each one is kept."""
        return self.degraded_by_tier["gateway"] + self.event_hard_examples

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered - sum(self.errors.values())

    @property
    def degraded(self) -> int:
        return sum(self.reasons.values())


@dataclass(frozen=True)
class Transition:
    """One change of the gateway's breaker, seconds into the run."""

    at_s: float
    before: str
    after: str


@dataclass
class BatteryView:
    """The battery edge device as its status and its governor's steps tell it."""

    percent: float | None = None
    watts: float | None = None
    budget_w: float | None = None
    steps: list[str] = field(default_factory=list)
    degrade_share: float = 0.0
    joules_per_answer: float | None = None
    #: what one request and its reply upstream cost it: its energy per answer cloud-only.
    upstream_j: float | None = None
    answers: int = 0
    profile: str = ""
    #: the ledger's joules and answers when the run began: figures are counted from there.
    start: tuple[float, int] | None = None
    #: each step taken or given back: (seconds into the run, step, applied, watts, budget).
    changes: list[tuple[float, str, bool, float, float | None]] = field(default_factory=list)


@dataclass
class LinkView:
    """What the pollers and the fault schedule know about the site, for the display."""

    link: str = "up"
    breaker: str = "?"
    backlog: int = 0
    backlog_peak: int = 0
    #: hard examples the gateway stored in its site stream (the stream's last sequence): more
    #: than the gateway-degraded answers the client saw when one reached the edge too late to
    #: be used (the edge then answered on its own).
    stored: int = 0
    delivered: int = 0
    transitions: list[Transition] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    cut_at_s: float | None = None
    healed_at_s: float | None = None
    relinked_at_s: float | None = None
    drained_at_s: float | None = None
    battery: BatteryView = field(default_factory=BatteryView)


@dataclass
class ReviewView:
    """The review queue and the learning loop, as the live view shows them."""

    queued: int = 0
    pending: int = 0
    labelled: int = 0
    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    #: labels the simulated reviewer gave, and those wrong on purpose.
    given: int = 0
    wrong: int = 0
    #: what the learning loop is doing, in words.
    learning: str = "waiting for labels"


def hard_examples_buffered(view: LinkView, tally: Tally) -> int:
    """Hard examples the hub should end up with: what the gateway stored, or the
    gateway-degraded answers the client saw when it has not stored them all yet (each is
    stored beside its answer, not before it)."""
    return max(view.stored, tally.hard_examples)


class Clock:
    """Seconds since the run began."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


def tiers_in_order(counts: Counter[str]) -> list[str]:
    """The tiers that answered, the known chain first, then any other in name order."""
    known = [t for t in TIER_ORDER if counts[t]]
    return known + sorted(t for t in counts if t not in TIER_ORDER and counts[t])


def gateway_figures(exposition: str) -> dict[str, float]:
    """The gateway's upstream byte and breaker transition counters, keyed by name and labels."""
    figures: dict[str, float] = {}
    for line in exposition.splitlines():
        match = _GATEWAY_METRIC.match(line)
        if match:
            key = match.group(1) + (match.group(2) or "")
            figures[key] = figures.get(key, 0.0) + float(match.group(3))
    return figures


def transition_counts(figures: dict[str, float]) -> dict[str, int]:
    """Breaker transitions by ``from->to``, from the gateway's counters."""
    counts: Counter[str] = Counter()
    for key, value in figures.items():
        if not key.startswith("mesh_breaker_transitions"):
            continue
        labels = dict(_LABEL.findall(key))
        counts[f"{labels.get('from', '?')}->{labels.get('to', '?')}"] += int(value)
    return dict(counts)
