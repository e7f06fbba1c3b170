"""A node's side of the review queue: offer the cases it sees to the hub, and report its traffic.

The data plane calls the feed where it decides (``mesh.node.outcomes.ReviewSink``): a confident
final answer (``answered``), an unsure or degraded one (``unsure``), an audit's verdict
(``audited``), and the top tier's collector a hard example delivered to the hub
(``hard_example``). The feed picks what to offer (``CandidateGate``), builds the item (one row,
every tier's answer, the input unless residency keeps it below the queue's zone) and publishes
it to the hub's ``MESH_REVIEW_CANDIDATES`` after the reply, at most ``max_in_flight`` at once:
never on the reply's path, and a candidate that cannot go is dropped and counted. The hub's
intake holds each model to its limits.

Every ``traffic_interval_s`` it publishes each served version's running totals (requests,
escalations) on ``mesh.review.traffic.<model>.<node>``, the denominators of the ground truth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from nats.aio.client import Client as NATS
from opentelemetry import trace

from mesh import wire
from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.audits import AUDIT_PARAMETER
from mesh.node.outcomes import ModelTable, TierIdentity
from mesh.node.policy import DegradedReason, EscalationReason, may_reach
from mesh.node.served import LocalAnswer, ServedModel
from mesh.node.shadow import ShadowRunner
from mesh.observability.metrics import MeshMetrics
from mesh.review.records import (
    HumanReview,
    ReviewAnswer,
    ReviewItem,
    ReviewReason,
    TrafficReport,
    carried_answers,
    carry_answer,
    encode_item,
    encode_traffic,
    human_review_of,
    item_id,
)
from mesh.review.sampling import CandidateGate
from mesh.settings import ReviewFeedSettings
from mesh.topology import parameters, subjects
from mesh.topology.headers import MSG_ID
from mesh.typedefs import Array

log = logging.getLogger("mesh.review")

#: an item larger than this goes without its input (a NATS message is 1 MiB by default).
MAX_ITEM_BYTES = 512 * 1024
#: how long an item waits for the answer of a version run in shadow on its request.
SHADOW_WAIT_S = 1.0


class ReviewFeed(Service):
    """Offers this node's cases to the review queue; the data plane's ``ReviewSink``."""

    def __init__(
        self,
        nc: NATS,
        *,
        identity: TierIdentity,
        site: str,
        entry: bool,
        top: bool,
        models: ModelTable,
        settings: ReviewFeedSettings,
        metrics: MeshMetrics,
        clock: Callable[[], float] = time.time,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.identity = identity
        #: versions run in shadow here: an item of this node's carries their answers too, so
        #: labels judge them as they judge the served version.
        self.shadow = shadow
        self.site = site
        self.entry = entry
        self.top = top
        self.models = models
        self.settings = settings
        self.gate = CandidateGate(
            sample_rate=settings.sample_rate,
            drift_rate=settings.drift_rate,
            models={
                name: (rates.sample_rate, rates.drift_rate)
                for name, rates in settings.models.items()
            },
            per_minute=settings.max_per_minute,
        )
        self._nc = nc
        self._js = nc.jetstream()
        self._metrics = metrics
        self._clock = clock
        #: models whose drift is over the node's threshold now, to their highest PSI.
        self._drifting: dict[str, float] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._traffic: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self._traffic = asyncio.create_task(self._report_traffic(), name="review-traffic")

    async def _stop(self) -> None:
        await cancel_and_wait([t for t in (self._traffic,) if t is not None])
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=1.0)

    # --- what the data plane tells it -----------------------------------------------------------

    def drifting(self, model: str) -> float | None:
        """The model's highest drift score while it is over the node's threshold, else None."""
        return self._drifting.get(model)

    def set_drift(self, model: str, psi: float | None) -> None:
        if psi is None:
            self._drifting.pop(model, None)
        else:
            self._drifting[model] = psi

    def answered(self, request: wire.InferRequest, model: ServedModel, local: LocalAnswer) -> None:
        """A confident answer given here, the caller's final one. Called for most requests:
        with no wish and no drift, one random draw decides."""
        if not self._drifting and parameters.HUMAN_REVIEW not in request.parameters:
            if not self.gate.sampled(model.name):
                return
            wish: HumanReview | None = HumanReview.AUTO
            if request.parameters.get(AUDIT_PARAMETER):
                return
            reason: ReviewReason | None = ReviewReason.SAMPLE
            psi = None
        else:
            wish = _wish(request)
            if wish is None:
                return
            psi = self._drifting.get(model.name)
            reason = self.gate.for_confident(wish, psi is not None, model.name)
        if reason is None or wish is None:
            return
        row = _weakest_row(model, local)
        why = {
            ReviewReason.REQUESTED: "the caller asked for a person to look",
            ReviewReason.DRIFT: f"{model.name}'s inputs drift (PSI {psi or 0:.2f}); a share of "
            "its answers goes to people",
            ReviewReason.SAMPLE: f"a confident answer ({local.confidence:.2f}) picked at random "
            f"(rate {self.gate.rates(model.name)[0]:g})",
        }[reason]
        detail: dict[str, float | str] = {"psi": psi} if psi is not None else {}
        self._offer_own(reason, wish, request, model, local, row, why, detail)

    def unsure(
        self,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        degraded: DegradedReason | None,
        escalation: EscalationReason | None,
    ) -> None:
        """An answer given here that was meant for the tier above (or that has none above)."""
        wish = _wish(request)
        if wish is None:
            return
        threshold = model.thresholds.confidence
        why_unsure = (
            f"input unlike {model.name}'s reference"
            if escalation is EscalationReason.NOVEL
            else f"confidence {local.confidence:.2f} under {threshold:.2f}"
        )
        if degraded is None and self.top:
            reason = ReviewReason.UNSURE
            why = f"the top tier ({self.identity.tier}) was unsure: {why_unsure}"
        elif degraded is DegradedReason.RESIDENCY:
            reason = ReviewReason.UNSURE
            why = (
                f"tier {self.identity.tier} was unsure ({why_unsure}) and residency "
                f"{request.residency} keeps the input from the tier above"
            )
        elif wish is HumanReview.ALWAYS:
            reason = ReviewReason.REQUESTED
            why = f"the caller asked for a person to look (answered here: {degraded})"
        else:
            return
        detail: dict[str, float | str] = {"threshold": threshold}
        if escalation is not None:
            detail["escalation"] = escalation.value
        if degraded is not None:
            detail["degraded"] = degraded.value
        self._offer_own(
            reason, wish, request, model, local, _weakest_row(model, local), why, detail
        )

    def audited(
        self,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        upstream: wire.InferResponse,
        agreed: bool,
    ) -> None:
        """An audit's verdict on a confident answer given here: a disagreement is offered, an
        agreement as any confident answer is (it may be sampled, with both answers)."""
        wish = _wish(request)
        if wish is None:
            return
        if agreed:
            psi = self._drifting.get(model.name)
            reason = self.gate.for_confident(wish, psi is not None, model.name)
            if reason is None:
                return
            row = _weakest_row(model, local)
            why = f"a confident answer ({local.confidence:.2f}) the tier above agreed with, "
            why += "picked at random" if reason is ReviewReason.SAMPLE else f"offered: {reason}"
        else:
            reason = ReviewReason.DISAGREEMENT
            row = next(
                (i for i, (a, b) in enumerate(zip(local.labels, upstream.labels, strict=False))
                 if a != b),
                0,
            )  # fmt: skip
            why = (
                f"tier {self.identity.tier} answered {local.labels[row]} with confidence "
                f"{local.confidence:.2f}; tier {upstream.tier} answered "
                f"{_at(upstream.labels, row)} ({upstream.confidence:.2f})"
            )
        above = ReviewAnswer(
            upstream.tier,
            upstream.node,
            upstream.model_version,
            _at(upstream.labels, row),
            _finite(upstream.confidence),
        )
        self._offer_own(reason, wish, request, model, local, row, why, {}, above)

    def hard_example(self, example: wire.HardExample) -> None:
        """A hard example this (top) tier took up: a case a lower tier answered on its own."""
        request = example.request
        wish = _wish(request)
        if wish is None:
            return
        answers = [*carried_answers(request.parameters.get(parameters.ANSWERS), 0)]
        recorded = example.answer
        answers.append(
            ReviewAnswer(
                example.tier,
                example.node,
                recorded.model_version,
                _at(recorded.labels, 0),
                _finite(recorded.confidence),
                served=True,
            )
        )
        model = self.models.get(example.model)
        why = (
            f"tier {example.tier} answered it alone ({example.reason}): the tier above was out "
            "of reach, and it reached the hub later"
        )
        self._offer(
            ReviewReason.HARD_EXAMPLE, wish, request, 0, len(recorded.labels) or 1, answers, why,
            {"degraded": example.reason}, classes=model.classes if model is not None else (),
            origin=(example.tier, example.node, "", ""),  # its site and zone are not said
        )  # fmt: skip

    def carry(
        self, request: wire.InferRequest, model: ServedModel, local: LocalAnswer
    ) -> wire.InferRequest:
        """``request`` as it goes up, with this tier's answer among those the tier above may
        offer (unless the caller refused review)."""
        if request.parameters.get(parameters.HUMAN_REVIEW) == HumanReview.NEVER.value:
            return request
        answer = ReviewAnswer(
            self.identity.tier, self.identity.node, model.version, None, _finite(local.confidence)
        )
        text = carry_answer(request.parameters.get(parameters.ANSWERS), answer, local.labels)
        if text is None:
            return request
        return replace(request, parameters={**request.parameters, parameters.ANSWERS: text})

    # --- building and sending -------------------------------------------------------------------

    def _offer_own(
        self,
        reason: ReviewReason,
        wish: HumanReview,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        row: int,
        why: str,
        detail: dict[str, float | str],
        *above: ReviewAnswer,
    ) -> None:
        """Offer a case answered here: with the answers carried from below, this node's (the
        one served) and the tier above's, when it answered too."""
        answers = [*carried_answers(request.parameters.get(parameters.ANSWERS), row)]
        answers.append(
            ReviewAnswer(
                self.identity.tier,
                self.identity.node,
                model.version,
                _at(local.labels, row),
                _finite(local.confidence),
                served=True,
            )
        )
        answers.extend(above)
        self._offer(
            reason, wish, request, row, len(local.labels), answers, why, detail,
            classes=_classes(model, local),
        )  # fmt: skip

    def _offer(
        self,
        reason: ReviewReason,
        wish: HumanReview,
        request: wire.InferRequest,
        row: int,
        rows: int,
        answers: list[ReviewAnswer],
        why: str,
        detail: dict[str, float | str],
        *,
        classes: tuple[str, ...],
        origin: tuple[str, str, str, str] | None = None,
    ) -> None:
        """Build the item and send it after the reply. ``origin`` is the (tier, node, site,
        zone) that answered, when another node did (a hard example): this one by default."""
        name = request.model
        count = self._metrics.review_candidates.add
        if not self.gate.allow(name, wish):
            count(1, self.identity.tier, name, reason.value, "over_node_limit")
            return
        if len(self._sending) >= self.settings.max_in_flight:
            count(1, self.identity.tier, name, reason.value, "dropped")
            return
        tier, node, site, zone = origin or (
            self.identity.tier,
            self.identity.node,
            self.site,
            self.identity.zone,
        )
        caller = request.parameters.get(parameters.CALLER)
        withheld = None
        inputs: dict[str, Array] | None = None
        if may_reach(request.residency, self.settings.zone):
            inputs = _row_of(request.inputs, row, rows)
        else:
            withheld = f"residency {request.residency}"
        item = ReviewItem(
            id=item_id(name, caller if isinstance(caller, str) else None, request.id),
            model=name,
            reason=reason,
            why=why,
            tier=tier,
            node=node,
            site=site,
            zone=zone,
            created_at=self._clock(),
            request_id=request.id,
            caller=caller if isinstance(caller, str) and caller else None,
            human_review=wish,
            residency=request.residency,
            withheld=withheld,
            row=min(row, max(rows - 1, 0)),
            rows=max(rows, 1),
            inputs=inputs,
            answers=tuple(answers),
            classes=classes,
            trace_id=_trace_id(),
            detail=detail,
        )
        shadowed = origin is None and self.shadow is not None and name in self.shadow.models
        task = asyncio.create_task(self._send(item, shadowed))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _with_shadow(self, item: ReviewItem) -> ReviewItem:
        """The item with the answer the version run in shadow here gave its request (it went
        to nobody: ``served`` is false), once that ran."""
        assert self.shadow is not None
        answer = await self.shadow.wait_answer(item.request_id, SHADOW_WAIT_S)
        if answer is None:
            return item
        shadow = ReviewAnswer(
            self.identity.tier,
            self.identity.node,
            answer.version,
            _at(answer.labels, item.row),
            _finite(answer.confidence),
        )
        return replace(item, answers=(*item.answers, shadow))

    async def _send(self, item: ReviewItem, shadowed: bool = False) -> None:
        count = self._metrics.review_candidates.add
        try:
            if shadowed:
                item = await self._with_shadow(item)
            data = encode_item(item)
            if len(data) > MAX_ITEM_BYTES:
                item = replace(item, inputs=None, withheld=f"larger than {MAX_ITEM_BYTES} bytes")
                data = encode_item(item)
            ack = await self._js.publish(
                subjects.review_candidate(item.model),
                data,
                timeout=self.settings.publish_timeout_s,
                headers={MSG_ID: f"{item.id}:{item.reason.value}"},
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            count(1, self.identity.tier, item.model, item.reason.value, "failed")
            log.debug("review candidate %s not offered: %r", item.id, exc)
            return
        outcome = "duplicate" if ack.duplicate else "offered"
        count(1, self.identity.tier, item.model, item.reason.value, outcome)

    async def _report_traffic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.traffic_interval_s)
            now = self._clock()
            for model in list(self.models.models.values()):
                evidence = model.evidence
                report = TrafficReport(
                    node=self.identity.node,
                    tier=self.identity.tier,
                    entry=self.entry,
                    site=self.site,
                    model=model.name,
                    version=model.version,
                    since=evidence.since,
                    requests=evidence.requests,
                    escalated=min(evidence.escalated, evidence.requests),
                    time=now,
                )
                try:
                    await self._nc.publish(
                        subjects.review_traffic(model.name, self.identity.node),
                        encode_traffic(report),
                    )
                except Exception as exc:
                    log.debug("traffic report of %s not sent: %r", model.name, exc)


def _wish(request: wire.InferRequest) -> HumanReview | None:
    """What the caller asked for; None when no item may come of it (refused, or an audit: its
    answer went to nobody)."""
    if not request.parameters:
        return HumanReview.AUTO
    if request.parameters.get(AUDIT_PARAMETER):
        return None
    wish = human_review_of(request.parameters)
    return None if wish is HumanReview.NEVER else wish


def _weakest_row(model: ServedModel, local: LocalAnswer) -> int:
    """The row the model was least sure of (by its top probability), or the only one."""
    if len(local.labels) <= 1:
        return 0
    probabilities = local.outputs.get(model.scored_output)
    if not isinstance(probabilities, np.ndarray) or probabilities.ndim != 2:
        return 0
    if probabilities.shape[0] != len(local.labels):
        return 0
    return int(np.argmin(probabilities.max(axis=1)))


def _classes(model: ServedModel, local: LocalAnswer) -> tuple[str, ...]:
    """The model's class names; without a manifest, its class ids (its probabilities' width)."""
    if model.classes:
        return model.classes
    probabilities = local.outputs.get(model.scored_output)
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        return tuple(str(i) for i in range(probabilities.shape[1]))
    return ()


def _row_of(inputs: dict[str, Array], row: int, rows: int) -> dict[str, Array]:
    """The inputs of one row (a tensor without that row dimension is kept whole)."""
    out: dict[str, Array] = {}
    for name, array in inputs.items():
        if array.ndim >= 1 and array.shape[0] == rows and rows > 1:
            out[name] = np.ascontiguousarray(array[row : row + 1])
        else:
            out[name] = array
    return out


def _at(labels: list[int], row: int) -> int | None:
    return labels[row] if 0 <= row < len(labels) else None


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
