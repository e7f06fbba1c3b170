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
from mesh.wire import VersionEvidence

_BOUNDS = tuple(float(b) for b in LATENCY_BUCKETS_MS)


class Evidence:
    """Totals of one model version on this node since it started serving."""

    __slots__ = (
        "agreed",
        "audit_failures",
        "audits",
        "compared",
        "degraded",
        "errors",
        "escalated",
        "latency",
        "requests",
        "since",
    )

    def __init__(self, since: float | None = None) -> None:
        self.since = time.time() if since is None else since
        self.requests = 0
        self.errors = 0
        self.escalated = 0
        self.degraded = 0
        self.compared = 0
        self.agreed = 0
        self.audits = 0
        self.audit_failures = 0
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
            requests=self.requests,
            errors=self.errors,
            escalated=self.escalated,
            degraded=self.degraded,
            compared=self.compared,
            agreed=self.agreed,
            audits=self.audits,
            audit_failures=self.audit_failures,
            latency=tuple(self.latency),
            drift=drift,
        )
