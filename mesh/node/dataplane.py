"""The request path of a tier, top to bottom, independent of any transport.

A batch of requests goes through one local pass (``answer_batch``, synchronous): validate each,
run each model once over all its rows, score every row at once, observe drift, and decide per
request with the policy. Most requests end there, answered. Those the policy sends up, and those
for a model not served here, come back as outcomes to ``complete`` (async): escalate to the
upstream tier and relay its answer, or, when escalation is refused or fails, answer here marked
degraded and keep the case as a hard example for store-and-forward.

The NATS adapter (``mesh.transport.endpoint``) and any other transport only translate to and from
this class; it imports no transport (the upstream and the hard-example sink are Protocols).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mesh import wire
from mesh.energy.governor import Savings
from mesh.energy.ledger import EnergyLedger
from mesh.errors import (
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    UnavailableError,
)
from mesh.lifecycle import Service
from mesh.node import policy
from mesh.node.audits import AUDIT_PARAMETER, Auditor
from mesh.node.batching import batch_signature
from mesh.node.escalation import Escalator
from mesh.node.outcomes import (
    Escalation,
    HardExampleSink,
    ModelTable,
    Outcome,
    ReviewSink,
    TierIdentity,
)
from mesh.node.policy import (
    Action,
    Assessment,
    Decision,
    DegradedReason,
    EscalationReason,
    UpstreamView,
)
from mesh.node.served import LocalAnswer, ServedModel
from mesh.node.shadow import ShadowRunner
from mesh.node.slices import concatenate, request_answers, rows_of
from mesh.node.upstream import UpstreamFailure, UpstreamLink, UpstreamTransport
from mesh.observability.metrics import OTHER_MODEL, MeshMetrics
from mesh.typedefs import Feeds

log = logging.getLogger("mesh.dataplane")

#: most names of forwarded models kept as metric label values (see ``metric_model``).
MAX_FORWARDED_NAMES = 64


@dataclass(slots=True)
class _Group:
    """Requests of one model whose inputs merge into one batch."""

    model: ServedModel
    outcomes: list[Outcome] = field(default_factory=list)
    feeds: list[Feeds] = field(default_factory=list)
    #: rows of each request.
    counts: list[int] = field(default_factory=list)
    rows: int = 0
    #: whether it runs before its inputs were checked for NaN and infinity (see ``_merge``).
    unchecked: bool = False


class DataPlane(Service):
    def __init__(
        self,
        identity: TierIdentity,
        models: ModelTable,
        upstream: UpstreamLink | None = None,
        hard_examples: HardExampleSink | None = None,
        *,
        metrics: MeshMetrics,
        clock: Callable[[], float] = time.monotonic,
        peers: UpstreamTransport | None = None,
        review: ReviewSink | None = None,
        shadow: ShadowRunner | None = None,
        energy: EnergyLedger | None = None,
        savings: Savings | None = None,
    ) -> None:
        self.identity = identity
        self.models = models
        self.upstream = upstream
        #: this tier's other nodes, which may serve models this one does not (a tier may be
        #: heterogeneous): asked first for a request fresh from a client this node cannot serve.
        self.peers = peers
        self.hard_examples = hard_examples
        self.metrics = metrics
        self._clock = clock
        #: longest ``stop`` waits for hard examples still being recorded.
        self.drain_seconds = 5.0
        self._recording: set[asyncio.Task[None]] = set()
        #: told of the cases a person should see (``mesh.review.feed``); None: no review.
        self.review = review
        #: versions run in shadow beside the served ones (a rollout's shadow stage); None: none.
        self.shadow = shadow
        #: the energy ledger told of every exchange upstream (None: no ledger).
        self.energy = energy
        #: what the power governor has the node save now (``mesh.energy.governor``).
        self.savings = savings if savings is not None else Savings()
        self._auditor = Auditor(identity.tier, metrics, review, shadow=shadow, energy=energy)
        self._sender = Escalator(identity.tier, metrics, energy, self.savings, self.metric_model)
        self._forwarded_names: set[str] = set()
        self._random = random.random

    # --- one request, end to end -------------------------------------------------------------

    async def infer(self, request: wire.InferRequest, received_at: float) -> wire.InferResponse:
        """Answer one ``request``, received at ``received_at`` (this tier's clock)."""
        (outcome,) = await self.answer_batch_async([(request, received_at)])
        return await self.finish(outcome)

    async def finish(self, outcome: Outcome) -> wire.InferResponse:
        """The answer of an outcome of the local pass: raise its error, or complete it."""
        if outcome.error is not None:
            raise outcome.error
        if outcome.response is not None:
            return outcome.response
        return await self.complete(outcome)

    # --- the local pass over a batch ---------------------------------------------------------

    def answer_batch(self, batch: Sequence[tuple[wire.InferRequest, float]]) -> list[Outcome]:
        """The local pass over ``batch`` (request, received_at), every model run on this thread."""
        outcomes, groups = self._group(batch)
        for group in groups:
            self._run_group(group, None)
        return outcomes

    async def answer_batch_async(
        self, batch: Sequence[tuple[wire.InferRequest, float]]
    ) -> list[Outcome]:
        """``answer_batch``, with models too costly for the event loop run in their worker."""
        outcomes, groups = self._group(batch)
        for group in groups:
            feeds = self._merge(group)
            if feeds is None:
                continue
            if group.model.runs_inline(group.rows):
                self._run_group(group, feeds)
                continue
            try:
                outputs = await group.model.run_in_worker(feeds)
            except Exception as exc:
                self._fail_group(group, exc, feeds)
                continue
            self._conclude(group, feeds, outputs)
        return outcomes

    def _group(
        self, batch: Sequence[tuple[wire.InferRequest, float]]
    ) -> tuple[list[Outcome], list[_Group]]:
        outcomes: list[Outcome] = []
        groups: dict[tuple[str, object], _Group] = {}
        ordered: list[_Group] = []
        max_hops = self.identity.max_hops
        zone = self.identity.zone
        models = self.models.models
        for request, received_at in batch:
            outcome = Outcome(request, received_at)
            outcomes.append(outcome)
            if request.residency != "any" and not policy.may_reach(request.residency, zone):
                # The receiving tier enforces residency too: a sender that ignored the label
                # (or a caller that addressed this tier directly) does not get it processed here.
                outcome.error = InvalidArgumentError(
                    f"request {request.id} is labelled residency {request.residency!r}; tier "
                    f"{self.identity.tier} is in zone {zone!r}, which that label does not allow"
                )
                continue
            if request.hops >= max_hops:
                outcome.error = InvalidArgumentError(
                    f"request {request.id} has passed {request.hops} tiers; the mesh allows "
                    f"{self.identity.max_hops}: check the upstream chain for a loop"
                )
                continue
            model = models.get(request.model)
            if model is None:
                outcome.escalation = Escalation(reason=EscalationReason.NOT_SERVED)
                continue
            try:
                feeds = model.validate(request.inputs)
            except MeshError as error:
                outcome.error = error
                continue
            key = (
                model.name,
                None if model.always_merges else batch_signature(feeds) or id(outcome),
            )
            group = groups.get(key)
            rows = rows_of(feeds)
            if group is None or group.rows + rows > model.max_batch_rows:
                group = groups[key] = _Group(model, [outcome], [feeds], [rows], rows)
                ordered.append(group)
                continue
            group.outcomes.append(outcome)
            group.feeds.append(feeds)
            group.counts.append(rows)
            group.rows += rows
        return outcomes, ordered

    def _merge(self, group: _Group) -> Feeds | None:
        """The group's feeds as one batch; requests with non-finite inputs are failed and left
        out (NaN compares false with every threshold, so it could pass for confident).

        A request alone in its batch, for a model whose fused novelty flags such inputs, is
        checked after the run instead, and only when its novelty is not finite
        (``_checked_after``): it has no neighbours a NaN could spread to."""
        feeds = concatenate(group.feeds)
        if group.model.checks_inputs_after and len(group.outcomes) == 1:
            group.unchecked = True
            return feeds
        finite = group.model.finite_rows(feeds)
        if finite is None:
            return feeds
        kept_outcomes: list[Outcome] = []
        kept_feeds: list[Feeds] = []
        kept_counts: list[int] = []
        offset = 0
        for outcome, request_feeds, rows in zip(
            group.outcomes, group.feeds, group.counts, strict=True
        ):
            if finite[offset : offset + rows].all():
                kept_outcomes.append(outcome)
                kept_feeds.append(request_feeds)
                kept_counts.append(rows)
            else:
                outcome.error = _non_finite(outcome)
            offset += rows
        group.outcomes, group.feeds, group.counts = kept_outcomes, kept_feeds, kept_counts
        group.rows = sum(kept_counts)
        if not kept_feeds:
            return None
        return concatenate(kept_feeds)

    def _run_group(self, group: _Group, feeds: Feeds | None) -> None:
        if feeds is None:
            feeds = self._merge(group)
            if feeds is None:
                return
        try:
            outputs = group.model.run(feeds)
        except Exception as exc:
            self._fail_group(group, exc, feeds)
            return
        self._conclude(group, feeds, outputs)

    def _fail_group(self, group: _Group, exc: Exception, feeds: Feeds) -> None:
        """A batch call raised ``exc``. With one request, that request gets it (anything but a
        mesh error as an internal one; or, when its inputs were not checked yet and hold NaN or
        infinity, that error); with several, each runs alone, so one bad request cannot fail
        its neighbours."""
        if group.unchecked and not self._checked_after(group, feeds, None):
            return
        if len(group.outcomes) == 1:
            group.outcomes[0].error = (
                exc
                if isinstance(exc, MeshError)
                else InternalError(f"model {group.model.name}: {exc!r}")
            )
            group.model.evidence.requests += 1
            group.model.evidence.errors += 1
            return
        for outcome, alone, rows in zip(group.outcomes, group.feeds, group.counts, strict=True):
            self._run_group(_Group(group.model, [outcome], [alone], [rows], rows), alone)

    def _conclude(self, group: _Group, feeds: Feeds, outputs: Feeds) -> None:
        model = group.model
        evidence = model.evidence
        try:
            scores = model.score(feeds, outputs)
        except MeshError as error:
            self.metrics.batch_size.observe(group.rows, self.identity.tier, model.name)
            for outcome in group.outcomes:
                outcome.error = error
            evidence.requests += len(group.outcomes)
            evidence.errors += len(group.outcomes)
            return
        novelties = scores.novelty.tolist() if scores.novelty is not None else None
        if group.unchecked and not self._checked_after(group, feeds, novelties):
            return
        self.metrics.batch_size.observe(group.rows, self.identity.tier, model.name)
        evidence.requests += len(group.outcomes)
        savings = self.savings
        if not savings.drift_paused:
            model.observe_drift(feeds, scores)
        upstream: UpstreamView | None = None  # read once, and only if a request is unsure
        thresholds = model.thresholds
        now = self._clock()
        answers = request_answers(outputs, scores, group.counts, novelties)
        for outcome, local in zip(group.outcomes, answers, strict=True):
            if policy.confident(local.confidence, local.novelty, thresholds):
                outcome.response = self._answer_here(outcome, model, local, None, now)
                audited = (
                    model.audit_rate
                    and self._random() < model.audit_rate * savings.audit_scale
                    and self._auditor.audit(self.upstream, outcome.request, model, local)
                )
                if not audited and self.review is not None:
                    # an audited answer is offered once its verdict is in
                    self.review.answered(outcome.request, model, local)
                continue
            request = outcome.request
            if upstream is None and self.upstream is not None:
                upstream = self.upstream.view()
            decision = policy.decide(
                Assessment(local.confidence, local.novelty),
                thresholds,
                budget_ms=request.budget_ms - self._elapsed_ms(outcome.received_at),
                residency=request.residency,
                upstream=upstream,
                hold=savings.degrade_share > 0.0 and savings.holds(),
            )
            self._settle(outcome, model, local, decision)
        if self.shadow is not None and model.name in self.shadow.models:
            # after every reply of the batch is made; the shadow runs on a copy, later
            self._offer_shadow(self.shadow, group, feeds, scores.labels)

    @staticmethod
    def _offer_shadow(shadow: ShadowRunner, group: _Group, feeds: Feeds, labels: list[int]) -> None:
        answered: list[tuple[str, list[int]]] = []
        at = 0
        for outcome, rows in zip(group.outcomes, group.counts, strict=True):
            answered.append((outcome.request.id, labels[at : at + rows]))
            at += rows
        shadow.offer(group.model.name, feeds, answered)

    @staticmethod
    def _checked_after(group: _Group, feeds: Feeds, novelties: list[float] | None) -> bool:
        """For a request that ran before its inputs were checked: whether they are finite, which
        a finite novelty of every row proves (``ServedModel.checks_inputs_after``); else the
        request fails as ``_merge`` would have failed it, and nothing of its run is kept."""
        if novelties is not None and all(map(math.isfinite, novelties)):
            return True
        if group.model.finite_rows(feeds) is None:
            return True
        for outcome in group.outcomes:
            outcome.error = _non_finite(outcome)
        return False

    def _settle(
        self, outcome: Outcome, model: ServedModel, local: LocalAnswer, decision: Decision
    ) -> None:
        if decision.escalation is not None:
            outcome.escalation_reason = decision.escalation
            model.evidence.escalated += 1
            self.metrics.escalations.add(
                1, self.identity.tier, model.name, decision.escalation.value
            )
        if decision.action is Action.ESCALATE and self.upstream is not None:
            outcome.escalation = Escalation(model, local, decision.escalation)
            return
        outcome.response = self._answer_here(outcome, model, local, decision.degraded)
        review = self.review
        if decision.escalation is not None and review is not None:
            review.unsure(outcome.request, model, local, decision.degraded, decision.escalation)

    # --- what the local pass could not finish ------------------------------------------------

    async def complete(self, outcome: Outcome) -> wire.InferResponse:
        """Escalate (or forward) a request the local pass left open; raises ``MeshError``."""
        escalation = outcome.escalation
        if escalation is None:
            raise InternalError(f"request {outcome.request.id} has nothing left to complete")
        if escalation.model is None or escalation.local is None:
            return await self._forward(outcome.request, outcome.received_at)
        assert self.upstream is not None
        request, received_at = outcome.request, outcome.received_at
        onward = request
        if self.review is not None:
            onward = self.review.carry(request, escalation.model, escalation.local)
        try:
            share = await self._sender.hold(self.upstream, self._budget_left(request, received_at))
            reply = await self._escalate(
                self.upstream, onward, received_at, escalation.model.name, share
            )
        except UpstreamFailure as failure:
            log.info(
                "request %s answered at %s: escalation failed (%s)",
                request.id,
                self.identity.tier,
                failure.detail,
            )
            answer = self._answer_here(outcome, escalation.model, escalation.local, failure.reason)
            if self.review is not None:
                self.review.unsure(
                    request, escalation.model, escalation.local, failure.reason, escalation.reason
                )
            return answer
        self._auditor.compared(
            escalation.model, escalation.local.labels, reply.labels, "escalated", request.id
        )
        return self._relay(
            reply,
            received_at,
            "escalated",
            escalation.model,
            escalation.local.confidence,
            escalation.reason,
        )

    async def _forward(self, request: wire.InferRequest, received_at: float) -> wire.InferResponse:
        """A model not served here: the "complex" case, passed on with no local answer: to a
        neighbour of this tier that serves it (for a request fresh from a client, hops 0), else
        up the chain."""
        self.metrics.escalations.add(
            1, self.identity.tier, self.metric_model(request.model), "not_served"
        )
        if self.peers is not None and request.hops == 0:
            budget_ms = self._budget_left(request, received_at)
            try:
                answer = await self.peers.send(replace(request, hops=1), budget_ms / 1000.0)
            except UpstreamFailure as failure:
                self._sender.unanswered(request.model)
                if failure.reason is not DegradedReason.NO_RESPONDERS:
                    if failure.error is not None:
                        raise failure.error.to_exception() from None
                    raise UnavailableError(
                        f"the {self.identity.tier} node serving {request.model!r} did not "
                        f"answer: {failure.detail}"
                    ) from None
            else:
                self._sender.exchanged(request.model, answer)
                return self._relay(
                    answer.response,
                    received_at,
                    "forwarded",
                    None,
                    None,
                    EscalationReason.NOT_SERVED,
                )
        if self.upstream is None:
            raise NotFoundError(
                f"model {request.model!r} is not served at tier {self.identity.tier}, "
                "the top of the chain"
            )
        if not policy.may_reach(request.residency, self.upstream.zone):
            raise NotFoundError(
                f"model {request.model!r} is not served within residency "
                f"{request.residency!r} (tier {self.identity.tier} does not serve it)"
            )
        try:
            reply = await self._escalate(self.upstream, request, received_at, request.model)
        except UpstreamFailure as failure:
            if failure.error is not None:
                raise failure.error.to_exception() from None
            raise UnavailableError(
                f"model {request.model!r} is served only above tier {self.identity.tier}, "
                f"which cannot reach it: {failure.detail}"
            ) from None
        if len(self._forwarded_names) < MAX_FORWARDED_NAMES:
            self._forwarded_names.add(request.model)
        return self._relay(reply, received_at, "forwarded", None, None, EscalationReason.NOT_SERVED)

    async def _escalate(
        self,
        upstream: UpstreamLink,
        request: wire.InferRequest,
        received_at: float,
        model: str,
        share: float = 1.0,
    ) -> wire.InferResponse:
        budget_ms = self._budget_left(request, received_at)
        return await self._sender.escalate(upstream, request, budget_ms, model, share)

    def metric_model(self, model: str) -> str:
        """The model's name as a metric label: served and forwarded models keep theirs, any
        other name a caller sends is ``_other``, so callers cannot add series at will."""
        if model in self.models.models or model in self._forwarded_names:
            return model
        return OTHER_MODEL

    # --- answers -----------------------------------------------------------------------------

    def _relay(
        self,
        response: wire.InferResponse,
        received_at: float,
        action: str,
        model: ServedModel | None,
        local_confidence: float | None,
        reason: EscalationReason | None,
    ) -> wire.InferResponse:
        hop = wire.Hop(
            tier=self.identity.tier,
            node=self.identity.node,
            action=action,
            latency_ms=self._elapsed_ms(received_at),
            model_version=model.version if model is not None else None,
            confidence=local_confidence,
            reason=reason.value if reason is not None else None,
        )
        return replace(response, path=[hop, *response.path])

    def _answer_here(
        self,
        outcome: Outcome,
        model: ServedModel,
        local: LocalAnswer,
        degraded: DegradedReason | None,
        now: float | None = None,
    ) -> wire.InferResponse:
        request = outcome.request
        reason = degraded.value if degraded is not None else None
        identity = self.identity
        # Positional: this runs once a request, and keyword arguments cost more here.
        hop = wire.Hop(
            identity.tier,
            identity.node,
            "answered" if degraded is None else "fallback",
            ((now if now is not None else self._clock()) - outcome.received_at) * 1000.0,
            model.version,
            local.confidence,
            reason,
        )
        model.evidence.observe_latency(hop.latency_ms)
        answer = wire.InferResponse(
            request.id,
            model.name,
            model.version,
            identity.tier,
            identity.node,
            local.outputs,
            local.labels,
            local.confidence,
            model.confidence_kind.value,
            [hop],
            degraded is not None,
            reason,
        )
        if degraded is not None:
            model.evidence.degraded += 1
            self.metrics.degraded.add(1, self.identity.tier, model.name, degraded.value)
            self._keep_hard_example(request, answer, degraded)
        return answer

    def _keep_hard_example(
        self, request: wire.InferRequest, answer: wire.InferResponse, reason: DegradedReason
    ) -> None:
        """Record the case beside the reply, not before it: a degraded answer is needed most
        when things are slow, and must not wait for the store. ``close`` waits for them."""
        if (
            self.hard_examples is None
            or reason is DegradedReason.RESIDENCY
            or reason is DegradedReason.POWER
            or request.parameters.get(AUDIT_PARAMETER)
        ):
            # Residency forbids the raw input leaving this zone, later as much as now; sending a
            # power-degraded case up later would spend what holding it back saved.
            return
        task = asyncio.create_task(self._record(self.hard_examples, request, answer, reason))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    @staticmethod
    async def _record(
        sink: HardExampleSink,
        request: wire.InferRequest,
        answer: wire.InferResponse,
        reason: DegradedReason,
    ) -> None:
        try:
            await sink.record(request, answer, reason.value)
        except Exception:
            log.exception("could not keep hard example %s", request.id)

    async def _stop(self) -> None:
        """Wait for hard examples still being recorded; audits are only evidence, dropped."""
        self._auditor.cancel()
        self._sender.coalescer.release_all()
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=self.drain_seconds)

    def _elapsed_ms(self, received_at: float) -> float:
        return (self._clock() - received_at) * 1000.0

    def _budget_left(self, request: wire.InferRequest, received_at: float) -> float:
        return request.budget_ms - self._elapsed_ms(received_at)


def _non_finite(outcome: Outcome) -> InvalidArgumentError:
    """The error of a request whose inputs hold NaN or infinity, checked before or after its run."""
    return InvalidArgumentError(f"request {outcome.request.id} has NaN or infinite input values")
