"""The node's heartbeat: its status, with what the agent is doing and how the node did since
the last beat, written to its key in ``MESH_NODES_<DOMAIN>`` every ``heartbeat_s`` and after
every version the agent swaps in or refuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext

from mesh.fleet.liveness import STOPPED
from mesh.observability.metrics import MeshMetrics, bucket_quantile, tier_totals
from mesh.settings import FleetSettings
from mesh.topology import subjects
from mesh.topology.streams import nodes_bucket
from mesh.wire import NodeStatus, encode_node_status

log = logging.getLogger("mesh.fleet.agent")


@dataclass
class AgentState:
    """What the heartbeat reports of the agent."""

    pending: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    swaps: int = 0
    #: model to the version served before its latest downgrade.
    downgraded: dict[str, str] = field(default_factory=dict)


class StatusSource(Protocol):
    def status(self) -> NodeStatus: ...


class Heartbeat:
    def __init__(
        self,
        js: JetStreamContext,
        node: StatusSource,
        settings: FleetSettings,
        state: AgentState,
        *,
        name: str,
        tier: str,
        metrics: MeshMetrics,
        mesh_version: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self._js = js
        self._node = node
        self.settings = settings
        self.state = state
        self.name = name
        self.tier = tier
        self.metrics = metrics
        self._mesh_version = mesh_version
        self._last_totals: tuple[float, float, list[float]] | None = None
        self._figures: tuple[float | None, float | None] = (None, None)

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("heartbeat of node %s not stored: %r", self.name, exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def beat(self, ready: bool | None = None) -> None:
        """Write the status now; ``ready=False`` is the last beat of a node that stops."""
        base = self._node.status()
        rate, p99 = self._window_figures()
        status = NodeStatus(
            node=base.node,
            tier=base.tier,
            models=base.models,
            breakers=base.breakers,
            backlog=base.backlog,
            ready=base.ready if ready is None else ready,
            time=time.time(),
            site=self.settings.site_name,
            zone=base.zone,
            labels=dict(self.settings.labels),
            pending=dict(self.state.pending),
            rejected=dict(self.state.rejected),
            problems=base.problems if ready is None else [STOPPED],
            escalation_rate=rate,
            drift=base.drift,
            p99_ms=p99,
            swaps=self.state.swaps,
            mesh_version=await self._mesh_version() if self._mesh_version else "",
            evidence=base.evidence,
            answered=base.answered,
            downgraded=dict(self.state.downgraded),
            shadows=base.shadows,
            power=base.power,
        )
        subject = subjects.kv(nodes_bucket(self.settings.domain), self.name)
        await self._js.publish(subject, encode_node_status(status), timeout=2.0)

    def _window_figures(self) -> tuple[float | None, float | None]:
        """Escalation rate and p99 (ms) since the last heartbeat; the last figures when no
        request came in between."""
        totals = tier_totals(self.metrics, self.tier)
        last, self._last_totals = self._last_totals, totals
        if last is None:
            return self._figures
        requests = totals[0] - last[0]
        if requests <= 0:
            return self._figures
        escalations = totals[1] - last[1]
        buckets = [a - b for a, b in zip(totals[2], last[2], strict=True)]
        p99 = bucket_quantile(buckets, self.metrics.latency.bounds, 0.99)
        self._figures = (min(1.0, escalations / requests), p99)
        return self._figures
