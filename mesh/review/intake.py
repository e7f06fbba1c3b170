"""The review queue's intake, at the hub: takes the nodes' candidates, holds each model to its
limits, and writes the queue; stores the labels the desk asks it to, and tells the application
that asked.

It has an identity of its own (role ``review-intake``): the nodes write the candidates it
consumes, and what it writes (the queue, the labels, the label events) is read by the desk and
the applications, never by itself (NATS delivers a consumer's messages wherever its caller asks,
nats-server #8274: an identity reading back what it wrote could write anything anywhere).

- A candidate is acknowledged once it is judged: queued (the queue's duplicate window drops a
  second item of the same request, and the admission is then uncounted), over a limit, or
  malformed. One the intake could not store is left for redelivery.
- A label is written to ``MESH_REVIEW_LABELS`` with the revision the desk read as the expected
  last one, so two reviewers labelling at once cannot both store a first label: the second gets
  an error and changes nothing. Then its caller is told on ``mesh.review.labelled.<model>.
  <caller>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh.errors import InvalidArgumentError, MeshError, UnavailableError
from mesh.lifecycle import Service, cancel_and_wait
from mesh.observability.metrics import MeshMetrics
from mesh.review.api import decode_reply, encode_error, encode_result, parse_body
from mesh.review.records import (
    LabelEvent,
    LabelKind,
    ReviewLabel,
    decode_item,
    encode_item,
    encode_label,
    encode_label_event,
)
from mesh.review.sampling import QueueLimits
from mesh.topology import subjects
from mesh.topology.headers import MSG_ID
from mesh.topology.streams import (
    REVIEW_CANDIDATES_STREAM,
    REVIEW_INTAKE_CONSUMER,
    REVIEW_LABELLED_STREAM,
    REVIEW_LABELS_BUCKET,
    REVIEW_LABELS_STREAM,
    REVIEW_STREAM,
)
from mesh.transport.jetstream import consume, require_stream

log = logging.getLogger("mesh.review")

#: JetStream's "wrong last sequence": the key moved on since the desk read it.
WRONG_LAST_SEQUENCE = 10071
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
INTAKE_TIER = "hub"


class ReviewIntake(Service):
    def __init__(
        self,
        nc: NATS,
        *,
        limits: QueueLimits,
        metrics: MeshMetrics,
        domain: str | None = None,
        batch: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.domain = domain
        #: candidates by outcome (queued, duplicate, over_limit, invalid), for tests and logs.
        self.counts: dict[str, int] = {}
        self._nc = nc
        self._js = nc.jetstream(domain=domain)
        self._metrics = metrics
        self._batch = batch
        self._clock = clock
        self._loop: asyncio.Task[None] | None = None
        self._store_sub: Any = None

    async def _start(self) -> None:
        for stream in (
            REVIEW_CANDIDATES_STREAM,
            REVIEW_STREAM,
            REVIEW_LABELS_STREAM,
            REVIEW_LABELLED_STREAM,
        ):
            await require_stream(self._js, stream, domain=self.domain)
        config = ConsumerConfig(
            name=REVIEW_INTAKE_CONSUMER,
            durable_name=REVIEW_INTAKE_CONSUMER,
            filter_subject=subjects.REVIEW_CANDIDATES,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30.0,
        )
        await self._js.add_consumer(REVIEW_CANDIDATES_STREAM, config)
        sub = await self._js.pull_subscribe_bind(
            durable=REVIEW_INTAKE_CONSUMER, stream=REVIEW_CANDIDATES_STREAM
        )
        self._loop = asyncio.create_task(self._run(sub), name="review-intake")
        self._store_sub = await self._nc.subscribe(
            subjects.REVIEW_STORE, queue=subjects.REVIEW_STORE_GROUP, cb=self._on_store
        )

    async def _stop(self) -> None:
        if self._store_sub is not None:
            with contextlib.suppress(Exception):
                await self._store_sub.unsubscribe()
        await cancel_and_wait([t for t in (self._loop,) if t is not None])

    # --- candidates -------------------------------------------------------------------------

    async def _run(self, sub: Any) -> None:
        await consume(sub, self._batch, self._take, "review candidates")

    async def _take(self, msg: Msg) -> None:
        try:
            item = decode_item(msg.data)
            if item.model != subjects.model_of(msg.subject):
                raise InvalidArgumentError(f"item of {item.model} offered on {msg.subject}")
        except InvalidArgumentError as exc:
            log.warning("a malformed review candidate was dropped: %s", exc.message)
            self._count("_other", "_other", "invalid")
            await msg.ack()
            return
        verdict, at = self.limits.admit(item.model, item.reason)
        if not verdict.admitted:
            log.debug("candidate %s not queued: %s", item.id, verdict.why)
            self._count(item.model, item.reason.value, "over_limit")
            await msg.ack()
            return
        try:
            ack = await self._js.publish(
                subjects.review_queue(item.model, item.id),
                encode_item(item.queued(at)),
                timeout=2.0,
                headers={MSG_ID: item.id},
            )
        except BaseException:
            self.limits.release(item.model, item.reason, at)
            raise
        if ack.duplicate:
            self.limits.release(item.model, item.reason, at)
        self._count(item.model, item.reason.value, "duplicate" if ack.duplicate else "queued")
        await msg.ack()

    def _count(self, model: str, reason: str, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self._metrics.review_candidates.add(1, INTAKE_TIER, model, reason, outcome)

    # --- labels -----------------------------------------------------------------------------

    async def _on_store(self, msg: Msg) -> None:
        try:
            result = await self._store(parse_body(msg.data))
        except MeshError as error:
            body, headers = encode_error(error)
            await respond(self._nc, msg, body, headers)
            return
        except Exception as exc:
            log.exception("storing a label failed")
            body, headers = encode_error(UnavailableError(f"the label was not stored: {exc!r}"))
            await respond(self._nc, msg, body, headers)
            return
        await respond(self._nc, msg, encode_result(result))

    async def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        request = StoreRequest.from_body(body)
        label = request.label
        try:
            ack = await self._js.publish(
                subjects.kv(REVIEW_LABELS_BUCKET, label.item),
                encode_label(label),
                timeout=2.0,
                headers={EXPECTED_LAST_SUBJECT_SEQUENCE: str(request.expected)},
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise InvalidArgumentError(
                    f"item {label.item} was labelled by someone else just now: read it again "
                    "and relabel it if it must change"
                ) from None
            raise
        told = False
        if label.kind is LabelKind.LABEL and request.caller and label.label is not None:
            told = await self._tell(request, label, int(ack.seq))
        return {"revision": int(ack.seq), "told": told}

    async def _tell(self, request: StoreRequest, label: ReviewLabel, revision: int) -> bool:
        """Tell the caller of the item's request its label; a failure is logged: the label
        stands (the caller may read it again through the API's owner)."""
        assert label.label is not None and request.caller is not None
        event = LabelEvent(
            item=label.item,
            model=label.model,
            request_id=request.request_id,
            label=label.label,
            name=label.name,
            by=label.by,
            at=label.at,
            relabel=label.relabel,
        )
        try:
            await self._js.publish(
                subjects.review_labelled(label.model, request.caller),
                encode_label_event(event),
                timeout=2.0,
                headers={MSG_ID: f"{label.item}:{revision}"},
            )
        except Exception as exc:
            log.warning("label of %s not told to %s: %r", label.item, request.caller, exc)
            return False
        return True


class StoreRequest:
    """The desk's request to store one label: the record, the revision it read last, and whom
    to tell."""

    def __init__(
        self, label: ReviewLabel, expected: int, caller: str | None, request_id: str
    ) -> None:
        self.label = label
        self.expected = expected
        self.caller = caller
        self.request_id = request_id

    def body(self) -> dict[str, Any]:
        label = self.label
        return {
            "item": label.item,
            "model": label.model,
            "kind": label.kind.value,
            "label": label.label,
            "name": label.name,
            "by": label.by,
            "at": label.at,
            "relabel": label.relabel,
            "expected": self.expected,
            "caller": self.caller,
            "request_id": self.request_id,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StoreRequest:
        try:
            kind = LabelKind(body["kind"])
            label = body.get("label")
            if kind is LabelKind.LABEL and (not isinstance(label, int) or isinstance(label, bool)):
                raise ValueError("a label needs its class id")
            expected = body.get("expected", 0)
            if not isinstance(expected, int) or expected < 0:
                raise ValueError("expected must be a revision")
            record = ReviewLabel(
                item=subjects.check_token(str(body["item"]), "item"),
                model=subjects.check_token(str(body["model"]), "model"),
                kind=kind,
                label=label if kind is LabelKind.LABEL else None,
                name=body.get("name") if isinstance(body.get("name"), str) else None,
                by=str(body["by"]),
                at=float(body["at"]),
                relabel=bool(body.get("relabel", False)),
            )
            caller = body.get("caller")
            if caller is not None:
                caller = subjects.check_token(str(caller), "caller")
            return cls(record, expected, caller, str(body.get("request_id", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"store request: {exc}") from None


async def store_label(nc: NATS, request: StoreRequest, timeout: float = 5.0) -> dict[str, Any]:
    """The desk's side: ask the intake to store ``request``; its typed error if it refuses."""
    try:
        msg = await nc.request(
            subjects.review_store(request.label.kind.value),
            json.dumps(request.body()).encode(),
            timeout=timeout,
        )
    except nats.errors.NoRespondersError:
        raise UnavailableError("no review intake runs: the label was not stored") from None
    except nats.errors.TimeoutError:
        raise UnavailableError("no answer from the review intake: label unconfirmed") from None
    result = decode_reply(msg.data)
    if not isinstance(result, dict):
        raise UnavailableError("the review intake answered oddly: the label may not be stored")
    return result


async def respond(nc: NATS, msg: Msg, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Answer a request (an error with its headers); a request without a reply is dropped."""
    if not msg.reply:
        return
    try:
        await nc.publish(msg.reply, body, headers=headers)
    except Exception:
        log.exception("could not answer on %s", msg.reply[:128])


__all__ = ["ReviewIntake", "StoreRequest", "respond", "store_label"]
