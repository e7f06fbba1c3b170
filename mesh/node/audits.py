"""Audits: a confident answer's request also sent to the tier above after the reply, to count
whether it agrees, and the agreement counted for escalated answers too. That agreement is the
evidence a rollout's gates judge a version on (``mesh.node.evidence``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from mesh import wire
from mesh.energy.ledger import EnergyLedger
from mesh.node import policy
from mesh.node.breaker import BreakerState
from mesh.node.outcomes import ReviewSink
from mesh.node.served import LocalAnswer, ServedModel
from mesh.node.shadow import ShadowRunner
from mesh.node.upstream import UpstreamLink
from mesh.observability.metrics import MeshMetrics

log = logging.getLogger("mesh.dataplane")

#: most audits (confident answers sent upstream to compare) in flight; more are skipped, so a
#: slow upstream cannot pile them up.
MAX_AUDITS_IN_FLIGHT = 64
#: request parameter marking an audit: the tier above answers it as any request, but keeps no
#: hard example of it and audits nothing of it in turn (it was answered already).
AUDIT_PARAMETER = "mesh_audit"


class Auditor:
    """Audits in flight for one tier, and the agreement each answer from above makes."""

    def __init__(
        self,
        tier: str,
        metrics: MeshMetrics,
        review: ReviewSink | None = None,
        shadow: ShadowRunner | None = None,
        energy: EnergyLedger | None = None,
    ) -> None:
        self.tier = tier
        self.metrics = metrics
        #: told of each audit's exchange upstream: audits spend the radio too.
        self.energy = energy
        #: told each audit's verdict: a disagreement is a case for a person.
        self.review = review
        #: told the tier above's answer, to judge a version run in shadow by it too.
        self.shadow = shadow
        self._audits: set[asyncio.Task[None]] = set()

    def compared(
        self,
        model: ServedModel,
        local: list[int],
        upstream: list[int],
        source: str,
        request_id: str | None = None,
    ) -> bool:
        if self.shadow is not None and request_id is not None:
            self.shadow.upstream(request_id, local, upstream)
        agreed = model.evidence.compare(local, upstream)
        self.metrics.agreement.add(
            1, self.tier, model.name, model.version, source, "agree" if agreed else "disagree"
        )
        return agreed

    def audit(
        self,
        upstream: UpstreamLink | None,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
    ) -> bool:
        """Send a confident answer's request to the tier above after the reply, to count
        whether it agrees; whether it was sent. Called while the reply is being made: the task
        runs only once the local pass yields, and nothing waits for it. Never across a residency
        label, never through an open or probing breaker, and at most ``MAX_AUDITS_IN_FLIGHT``
        at once."""
        if (
            upstream is None
            or upstream.breaker.state is not BreakerState.CLOSED
            or not policy.may_reach(request.residency, upstream.zone)
            or request.parameters.get(AUDIT_PARAMETER)
        ):
            return False
        if len(self._audits) >= MAX_AUDITS_IN_FLIGHT:
            self.metrics.audits.add(1, self.tier, model.name, model.version, "skipped")
            return False
        model.evidence.audits += 1
        self.metrics.audits.add(1, self.tier, model.name, model.version, "sent")
        task = asyncio.create_task(self._run(upstream, request, model, local))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)
        return True

    async def _run(
        self,
        upstream: UpstreamLink,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
    ) -> None:
        onward = replace(
            request,
            budget_ms=upstream.timeout_ms,
            hops=request.hops + 1,
            parameters={**request.parameters, AUDIT_PARAMETER: True},
        )
        try:
            reply = await upstream.transport.send(onward, upstream.timeout_ms / 1000.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.energy is not None:
                self.energy.unanswered(model.name)
            model.evidence.audit_failures += 1
            self.metrics.audits.add(1, self.tier, model.name, model.version, "failed")
            log.debug("audit of request %s not answered upstream: %r", request.id, exc)
            return
        if self.energy is not None:
            self.energy.exchanged(model.name, reply.request_bytes, reply.reply_bytes)
        if reply.response.degraded:
            # the tier above answered on its own, cut off from its own upstream: that is not the
            # answer the audit asks for
            model.evidence.audit_failures += 1
            self.metrics.audits.add(1, self.tier, model.name, model.version, "failed")
            return
        agreed = self.compared(model, local.labels, reply.response.labels, "audit", request.id)
        if self.review is not None:
            self.review.audited(request, model, local, reply.response, agreed)

    def cancel(self) -> None:
        """Audits are only evidence: a stopping node drops those in flight."""
        for task in list(self._audits):
            task.cancel()
