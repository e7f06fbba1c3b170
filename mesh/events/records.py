"""The inference event and the result event (``schemas/inference-event.schema.json``,
``schemas/result-event.schema.json``): msgpack maps with ``v`` and ``kind``, as every wire
message. A result carries the reply a request would have got (``mesh.wire`` response or error,
as bytes) so that a consumer decodes it with the same code. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.errors import InvalidArgumentError
from mesh.review.records import HumanReview
from mesh.topology import parameters
from mesh.typedefs import Array
from mesh.wire import InferRequest
from mesh.wire.codec import (
    REQUEST_LIMITS,
    VERSION,
    finite,
    packb,
    require,
    require_kind,
    unpack_map,
)
from mesh.wire.tensors import decode_tensors, encode_tensors

EVENT_KIND = "inference_event"
#: what an event's ``human_review`` may be.
HUMAN_REVIEW_VALUES = tuple(h.value for h in HumanReview)
RESULT_KIND = "result_event"
#: longest event id: it is the JetStream message id both streams deduplicate on.
MAX_EVENT_ID = 128


@dataclass(slots=True)
class InferenceEvent:
    id: str
    model: str
    source: str
    inputs: dict[str, Array]
    budget_ms: float
    residency: str
    #: wall-clock unix seconds when the publisher sent it: the budget counts from here.
    published_at: float
    #: whether a person sees the case: ``auto``, ``always`` or ``never`` (``docs/review.md``).
    human_review: str = "auto"

    def request(self) -> InferRequest:
        # the source is the only identity that may publish as it: its labels are told to it
        review = {parameters.CALLER: self.source}
        if self.human_review != "auto":
            review[parameters.HUMAN_REVIEW] = self.human_review
        return InferRequest(
            id=self.id,
            model=self.model,
            inputs=self.inputs,
            budget_ms=self.budget_ms,
            residency=self.residency,
            parameters=review,
        )


def check_event_id(value: str) -> str:
    if not value or len(value) > MAX_EVENT_ID or not value.isprintable() or " " in value:
        raise InvalidArgumentError(
            f"event id {value[:40]!r} must be 1 to {MAX_EVENT_ID} printable characters, no spaces"
        )
    return value


def encode_event(event: InferenceEvent) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": EVENT_KIND,
            "id": check_event_id(event.id),
            "model": event.model,
            "source": event.source,
            "inputs": encode_tensors(event.inputs),
            "budget_ms": float(event.budget_ms),
            "residency": event.residency,
            "published_at": float(event.published_at),
            "human_review": event.human_review,
        }
    )


def decode_event(data: bytes) -> InferenceEvent:
    what = "inference event"
    obj = unpack_map(data, what, REQUEST_LIMITS)
    require_kind(obj, EVENT_KIND, what)
    inputs = decode_tensors(require(obj, "inputs", dict, what), what)
    if not inputs:
        raise InvalidArgumentError(f"{what} has no inputs")
    budget = finite(require(obj, "budget_ms", (int, float), what), "budget_ms", what)
    if budget <= 0:
        raise InvalidArgumentError(f"{what} budget_ms must be positive, got {budget}")
    return InferenceEvent(
        id=check_event_id(require(obj, "id", str, what)),
        model=require(obj, "model", str, what),
        source=require(obj, "source", str, what),
        inputs=inputs,
        budget_ms=budget,
        residency=require(obj, "residency", str, what),
        published_at=finite(require(obj, "published_at", (int, float), what), "published_at", what),
        human_review=_human_review(obj.get("human_review")),
    )


def _human_review(value: object) -> str:
    if value is None:
        return "auto"
    if value not in HUMAN_REVIEW_VALUES:
        raise InvalidArgumentError(
            f"inference event human_review {str(value)[:40]!r} is not one of "
            f"{list(HUMAN_REVIEW_VALUES)}"
        )
    return str(value)


@dataclass(slots=True)
class ResultEvent:
    event_id: str
    model: str
    source: str
    published_at: float
    #: wall-clock unix seconds when the entry tier stored the result.
    stored_at: float
    #: the event's sequence in its stream: results of escalated events may arrive after later
    #: events' results, and this orders them again.
    event_sequence: int
    #: the reply a request would have got: an encoded response or error (``mesh.wire``).
    reply: bytes


def encode_result(result: ResultEvent) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": RESULT_KIND,
            "event_id": result.event_id,
            "model": result.model,
            "source": result.source,
            "published_at": float(result.published_at),
            "stored_at": float(result.stored_at),
            "event_sequence": int(result.event_sequence),
            "reply": result.reply,
        }
    )


def decode_result(data: bytes) -> ResultEvent:
    what = "result event"
    obj = unpack_map(data, what)
    require_kind(obj, RESULT_KIND, what)
    return ResultEvent(
        event_id=require(obj, "event_id", str, what),
        model=require(obj, "model", str, what),
        source=require(obj, "source", str, what),
        published_at=finite(require(obj, "published_at", (int, float), what), "published_at", what),
        stored_at=finite(require(obj, "stored_at", (int, float), what), "stored_at", what),
        event_sequence=require(obj, "event_sequence", int, what),
        reply=require(obj, "reply", bytes, what),
    )
