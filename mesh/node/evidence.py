"""What one served model version does on this node: the evidence a rollout's gates judge.

Running totals kept in plain Python (a request costs a few attribute increments), read by the
fleet agent into each heartbeat as a ``wire.VersionEvidence``. A version swap starts a new
``Evidence`` with the new ``ServedModel``, so the totals are always of one version.

Agreement with the tier above is counted from two sources: escalated requests, whose upstream
answer the node relays anyway, and the audit: a sampled share of confident answers sent
upstream after the reply (``DataPlane``), never delaying it and never crossing a residency label.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence

from mesh.observability.metrics import LATENCY_BUCKETS_MS
from mesh.wire import EVIDENCE_COUNTERS, VersionEvidence

_BOUNDS = tuple(float(b) for b in LATENCY_BUCKETS_MS)


class Evidence:
    """Totals of one model version on this node since it started serving."""

    # The counters are the wire's (``wire.EvidenceCounters``): every one it declares is kept,
    # zeroed and reported here. The annotations only type the data plane's increments.
    __slots__ = ("latency", "since", *EVIDENCE_COUNTERS)

    requests: int
    errors: int
    escalated: int
    degraded: int
    compared: int
    agreed: int
    audits: int
    audit_failures: int

    def __init__(self, since: float | None = None) -> None:
        self.since = time.time() if since is None else since
        for name in EVIDENCE_COUNTERS:
            setattr(self, name, 0)
        self.latency = [0] * (len(_BOUNDS) + 1)

    def observe_latency(self, ms: float) -> None:
        self.latency[bisect_left(_BOUNDS, ms)] += 1

    def compare(self, local: Sequence[int], upstream: Sequence[int]) -> bool:
        """Count one answer checked against the tier above; True when they agree."""
        agreed = list(local) == list(upstream)
        self.compared += 1
        self.agreed += agreed
        return agreed

    def snapshot(self, version: str, drift: float | None) -> VersionEvidence:
        return VersionEvidence(
            version=version,
            since=self.since,
            latency=tuple(self.latency),
            drift=drift,
            **{name: getattr(self, name) for name in EVIDENCE_COUNTERS},
        )
