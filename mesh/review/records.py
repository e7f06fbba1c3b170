"""What the review queue holds and says: items, labels, what an application is told, and the
nodes' running totals. Msgpack maps with ``v`` and ``kind`` like every wire record, decoded with
unknown fields ignored; pure (``docs/review.md`` draws the flow).

An item is one row of one request: the row a tier was least sure of (or the first), its input
unless the request's residency keeps it below the queue's zone, and what every tier that saw it
answered for that row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.topology import parameters
from mesh.topology.subjects import check_token
from mesh.typedefs import Array
from mesh.wire.codec import VERSION, finite, packb, require, require_kind, unpack_map
from mesh.wire.messages import MAX_PARAMETER_TEXT
from mesh.wire.tensors import decode_tensors, encode_tensors

ITEM_KIND = "review_item"
LABEL_KIND = "review_label"
LABEL_EVENT_KIND = "label_event"
TRAFFIC_KIND = "traffic_report"

#: most answers, classes and characters of a class name an item carries.
MAX_ANSWERS = 16
MAX_CLASSES = 4096
MAX_CLASS_NAME = 256
#: longest ``why`` and detail text kept.
MAX_TEXT = 512


class ReviewReason(StrEnum):
    """Why an item is in the queue."""

    #: the top tier answered unsure (or the highest tier the request's residency allows did).
    UNSURE = "unsure"
    #: an audit found the tier above answering a confident answer otherwise.
    DISAGREEMENT = "disagreement"
    #: a case a lower tier could not send up in time, delivered to the hub later.
    HARD_EXAMPLE = "hard_example"
    #: a confident answer picked at random: ground truth for answers nobody doubted.
    SAMPLE = "sample"
    #: an input seen while the model's inputs or confidences drift from its reference.
    DRIFT = "drift"
    #: the caller asked for a person (``human_review=always``).
    REQUESTED = "requested"


class HumanReview(StrEnum):
    """A request's wish: ``auto`` lets the queue's rules decide."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


def check_human_review(value: object) -> HumanReview:
    """A caller's ``human_review``, or a typed error naming the choices."""
    if isinstance(value, HumanReview):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return HumanReview(value.lower())
    except ValueError:
        raise InvalidArgumentError(
            f"human_review {str(value)[:40]!r} is not one of {[h.value for h in HumanReview]}"
        ) from None


def human_review_of(request_parameters: Mapping[str, Any]) -> HumanReview:
    """What a request asks for; a value the entry did not check counts as ``auto``."""
    value = request_parameters.get(parameters.HUMAN_REVIEW)
    if value is None:
        return HumanReview.AUTO
    try:
        return HumanReview(value)
    except ValueError:
        return HumanReview.AUTO


def item_id(model: str, caller: str | None, request_id: str) -> str:
    """The item of a request: one per (model, caller, request id), whatever tier offers it, so
    the queue's duplicate window keeps one. A NATS token and a KV key."""
    digest = hashlib.sha256(f"{model}\0{caller or ''}\0{request_id}".encode()).hexdigest()
    return f"r{digest[:24]}"


@dataclass(frozen=True, slots=True)
class ReviewAnswer:
    """What one tier answered for the item's row."""

    tier: str
    node: str
    version: str
    #: the class it gave the row (None when the row is beyond what was carried up).
    label: int | None
    confidence: float | None
    #: whether this is the answer the caller got.
    served: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "node": self.node,
            "version": self.version,
            "label": self.label,
            "confidence": self.confidence,
            "served": self.served,
        }

    @classmethod
    def from_wire(cls, obj: object) -> ReviewAnswer:
        what = "review answer"
        if not isinstance(obj, dict):
            raise InvalidArgumentError(f"{what} must be a map")
        label = obj.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise InvalidArgumentError(f"{what} label must be an integer or null")
        confidence = obj.get("confidence")
        if confidence is not None:
            if not isinstance(confidence, int | float) or isinstance(confidence, bool):
                raise InvalidArgumentError(f"{what} confidence must be a number or null")
            confidence = float(confidence) if math.isfinite(confidence) else None
        return cls(
            tier=require(obj, "tier", str, what),
            node=require(obj, "node", str, what),
            version=require(obj, "version", str, what),
            label=label,
            confidence=confidence,
            served=bool(obj.get("served", False)),
        )


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A case for a person: a node's candidate, and once the intake took it, a queue item."""

    id: str
    model: str
    reason: ReviewReason
    #: why, in words ("the top tier answered 0.41, under its threshold 0.60").
    why: str
    #: the tier and node that offered it, the site it runs at and its residency zone.
    tier: str
    node: str
    site: str
    zone: str
    #: wall-clock unix seconds when the node offered it, and when the intake queued it.
    created_at: float
    request_id: str
    #: the identity told its label (None: nobody, as for a caller the entry did not know).
    caller: str | None
    human_review: HumanReview
    residency: str
    #: why the input is not here (``residency device``), or None when it is.
    withheld: str | None
    #: which row of the request this is, of how many.
    row: int
    rows: int
    inputs: dict[str, Array] | None
    answers: tuple[ReviewAnswer, ...]
    #: the model's class names, indexed by class id: what a label may be.
    classes: tuple[str, ...]
    queued_at: float | None = None
    trace_id: str | None = None
    #: figures behind the reason (``psi``, ``threshold``...).
    detail: dict[str, float | str] = field(default_factory=dict)

    def served(self) -> ReviewAnswer | None:
        return next((a for a in self.answers if a.served), None)

    def queued(self, at: float) -> ReviewItem:
        return replace(self, queued_at=at)


def _check_item(item: ReviewItem) -> None:
    check_token(item.id, "review item id")
    check_token(item.model, "model name")
    if not item.answers or len(item.answers) > MAX_ANSWERS:
        raise InvalidArgumentError(f"a review item needs 1 to {MAX_ANSWERS} answers")
    if len(item.classes) > MAX_CLASSES:
        raise InvalidArgumentError(f"a review item has at most {MAX_CLASSES} classes")
    if (item.inputs is None) == (item.withheld is None):
        raise InvalidArgumentError("a review item has either its input or why it was withheld")
    if not 0 <= item.row < max(item.rows, 1):
        raise InvalidArgumentError(f"review item row {item.row} is not among its {item.rows}")


def encode_item(item: ReviewItem) -> bytes:
    try:
        _check_item(item)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return packb(
        {
            "v": VERSION,
            "kind": ITEM_KIND,
            "id": item.id,
            "model": item.model,
            "reason": item.reason.value,
            "why": item.why[:MAX_TEXT],
            "tier": item.tier,
            "node": item.node,
            "site": item.site,
            "zone": item.zone,
            "created_at": float(item.created_at),
            "queued_at": None if item.queued_at is None else float(item.queued_at),
            "request_id": item.request_id,
            "caller": item.caller,
            "human_review": item.human_review.value,
            "residency": item.residency,
            "withheld": item.withheld,
            "row": item.row,
            "rows": item.rows,
            "inputs": None if item.inputs is None else encode_tensors(item.inputs),
            "answers": [a.to_wire() for a in item.answers],
            "classes": list(item.classes),
            "trace_id": item.trace_id,
            "detail": {k: v for k, v in item.detail.items()},
        }
    )


def decode_item(data: bytes) -> ReviewItem:
    what = "review item"
    obj = unpack_map(data, what)
    require_kind(obj, ITEM_KIND, what)
    try:
        reason = ReviewReason(require(obj, "reason", str, what))
        human = HumanReview(obj.get("human_review") or "auto")
    except ValueError as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from None
    answers = require(obj, "answers", list, what)
    classes = require(obj, "classes", list, what)
    if not all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME for c in classes):
        raise InvalidArgumentError(f"{what} classes must be names of at most {MAX_CLASS_NAME}")
    raw_inputs = obj.get("inputs")
    queued_at = obj.get("queued_at")
    item = ReviewItem(
        id=require(obj, "id", str, what),
        model=require(obj, "model", str, what),
        reason=reason,
        why=str(obj.get("why") or "")[:MAX_TEXT],
        tier=require(obj, "tier", str, what),
        node=require(obj, "node", str, what),
        site=str(obj.get("site") or ""),
        zone=str(obj.get("zone") or ""),
        created_at=finite(require(obj, "created_at", (int, float), what), "created_at", what),
        queued_at=None
        if queued_at is None
        else finite(require(obj, "queued_at", (int, float), what), "queued_at", what),
        request_id=require(obj, "request_id", str, what),
        caller=_optional_text(obj.get("caller")),
        human_review=human,
        residency=str(obj.get("residency") or "any"),
        withheld=_optional_text(obj.get("withheld")),
        row=require(obj, "row", int, what),
        rows=require(obj, "rows", int, what),
        inputs=None if raw_inputs is None else decode_tensors(raw_inputs, f"{what} inputs"),
        answers=tuple(ReviewAnswer.from_wire(a) for a in answers[:MAX_ANSWERS]),
        classes=tuple(classes),
        trace_id=_optional_text(obj.get("trace_id")),
        detail=_detail(obj.get("detail")),
    )
    try:
        _check_item(item)
    except ValueError as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from None
    return item


def _optional_text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None


def _detail(value: object) -> dict[str, float | str]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, float | str] = {}
    for key, v in list(value.items())[:16]:
        if isinstance(key, str) and isinstance(v, int | float | str) and not isinstance(v, bool):
            out[key[:64]] = v[:MAX_TEXT] if isinstance(v, str) else float(v)
    return out


# --- labels ---------------------------------------------------------------------------------


class LabelKind(StrEnum):
    LABEL = "label"
    #: the reviewer passed it over: it leaves the queue unlabelled (a label may still follow).
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ReviewLabel:
    """A person's word on an item, stored once per item (a relabel keeps the one it replaced)."""

    item: str
    model: str
    kind: LabelKind
    #: the class id, and its name (None for a skip).
    label: int | None
    name: str | None
    by: str
    #: wall-clock unix seconds.
    at: float
    relabel: bool = False
    #: the KV revision it is stored at (not on the wire: the bucket says it).
    revision: int = 0


def encode_label(label: ReviewLabel) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": LABEL_KIND,
            "item": label.item,
            "model": label.model,
            "label_kind": label.kind.value,
            "label": label.label,
            "name": label.name,
            "by": label.by,
            "at": float(label.at),
            "relabel": label.relabel,
        }
    )


def decode_label(data: bytes, revision: int = 0) -> ReviewLabel:
    what = "review label"
    obj = unpack_map(data, what)
    require_kind(obj, LABEL_KIND, what)
    try:
        kind = LabelKind(require(obj, "label_kind", str, what))
    except ValueError as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from None
    label = obj.get("label")
    if kind is LabelKind.LABEL and (not isinstance(label, int) or isinstance(label, bool)):
        raise InvalidArgumentError(f"{what} needs an integer class")
    return ReviewLabel(
        item=require(obj, "item", str, what),
        model=require(obj, "model", str, what),
        kind=kind,
        label=label if kind is LabelKind.LABEL else None,
        name=_optional_text(obj.get("name")),
        by=require(obj, "by", str, what),
        at=finite(require(obj, "at", (int, float), what), "at", what),
        relabel=bool(obj.get("relabel", False)),
        revision=revision,
    )


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """What the application that asked is told of a label (``mesh.review.labelled.<model>.
    <caller>``): its own request's id (an event's id for an event) and the class."""

    item: str
    model: str
    request_id: str
    label: int
    name: str | None
    by: str
    at: float
    relabel: bool = False


def encode_label_event(event: LabelEvent) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": LABEL_EVENT_KIND,
            "item": event.item,
            "model": event.model,
            "request_id": event.request_id,
            "label": event.label,
            "name": event.name,
            "by": event.by,
            "at": float(event.at),
            "relabel": event.relabel,
        }
    )


def decode_label_event(data: bytes) -> LabelEvent:
    what = "label event"
    obj = unpack_map(data, what)
    require_kind(obj, LABEL_EVENT_KIND, what)
    return LabelEvent(
        item=require(obj, "item", str, what),
        model=require(obj, "model", str, what),
        request_id=require(obj, "request_id", str, what),
        label=require(obj, "label", int, what),
        name=_optional_text(obj.get("name")),
        by=require(obj, "by", str, what),
        at=finite(require(obj, "at", (int, float), what), "at", what),
        relabel=bool(obj.get("relabel", False)),
    )


# --- what the nodes did ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """A node's running totals of one model version since it started serving it: the
    denominators of the ground truth (escalation rate, labels per 1,000 requests)."""

    node: str
    tier: str
    #: whether the node takes the entry subjects (its requests are the mesh's requests).
    entry: bool
    site: str
    model: str
    version: str
    #: wall-clock unix seconds when the version started serving there (totals restart with it).
    since: float
    requests: int
    escalated: int
    time: float


def encode_traffic(report: TrafficReport) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": TRAFFIC_KIND,
            "node": report.node,
            "tier": report.tier,
            "entry": report.entry,
            "site": report.site,
            "model": report.model,
            "version": report.version,
            "since": float(report.since),
            "requests": report.requests,
            "escalated": report.escalated,
            "time": float(report.time),
        }
    )


def decode_traffic(data: bytes) -> TrafficReport:
    what = "traffic report"
    obj = unpack_map(data, what)
    require_kind(obj, TRAFFIC_KIND, what)
    requests = require(obj, "requests", int, what)
    escalated = require(obj, "escalated", int, what)
    if requests < 0 or escalated < 0 or escalated > requests:
        raise InvalidArgumentError(f"{what} totals must be non-negative, escalated <= requests")
    return TrafficReport(
        node=require(obj, "node", str, what),
        tier=require(obj, "tier", str, what),
        entry=bool(obj.get("entry", False)),
        site=str(obj.get("site") or ""),
        model=require(obj, "model", str, what),
        version=require(obj, "version", str, what),
        since=finite(require(obj, "since", (int, float), what), "since", what),
        requests=requests,
        escalated=escalated,
        time=finite(require(obj, "time", (int, float), what), "time", what),
    )


# --- answers carried up the chain -----------------------------------------------------------

#: most labels of one tier's answer carried up with an escalation (the parameter's text is
#: bounded; an item is one row, and a row beyond these has no label from that tier).
MAX_CARRIED_LABELS = 64


def carry_answer(carried: object, answer: ReviewAnswer, labels: list[int]) -> str | None:
    """``carried`` (the request's ``mesh_answers``) with this tier's answer added, or None when
    the text would be over the protocol's bound for a parameter."""
    entries = _carried_entries(carried)
    confidence = answer.confidence
    if confidence is not None and not math.isfinite(confidence):
        confidence = None
    entries.append(
        [answer.tier, answer.node, answer.version, labels[:MAX_CARRIED_LABELS], confidence]
    )
    text = json.dumps(entries, separators=(",", ":"), allow_nan=False)
    return text if len(text) <= MAX_PARAMETER_TEXT else None


def carried_answers(carried: object, row: int) -> list[ReviewAnswer]:
    """The answers the tiers below gave, for ``row``; what cannot be read is left out."""
    out: list[ReviewAnswer] = []
    for entry in _carried_entries(carried)[:MAX_ANSWERS]:
        tier, node, version, labels, confidence = entry
        label = labels[row] if 0 <= row < len(labels) else None
        out.append(ReviewAnswer(tier, node, version, label, confidence))
    return out


def _carried_entries(carried: object) -> list[list[Any]]:
    if not isinstance(carried, str) or not carried:
        return []
    try:
        entries = json.loads(carried)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    good: list[list[Any]] = []
    for entry in entries:
        if (
            isinstance(entry, list)
            and len(entry) == 5
            and all(isinstance(x, str) for x in entry[:3])
            and isinstance(entry[3], list)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in entry[3])
            and (entry[4] is None or isinstance(entry[4], int | float))
        ):
            good.append(entry)
    return good


__all__ = [
    "HumanReview",
    "LabelEvent",
    "LabelKind",
    "ReviewAnswer",
    "ReviewItem",
    "ReviewLabel",
    "ReviewReason",
    "TrafficReport",
    "carried_answers",
    "carry_answer",
    "check_human_review",
    "decode_item",
    "decode_label",
    "decode_label_event",
    "decode_traffic",
    "encode_item",
    "encode_label",
    "encode_label_event",
    "encode_traffic",
    "human_review_of",
    "item_id",
]
