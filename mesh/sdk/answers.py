"""What the mesh answers an application: a request's result, an event's acknowledgement and an
event's result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh import wire
from mesh.errors import MeshError
from mesh.typedefs import Array


@dataclass(slots=True)
class InferResult:
    """The mesh's answer to one request. Read-only by convention: not a frozen dataclass, since
    one is built per request and a frozen ``__init__`` costs several times a plain one."""

    id: str
    model: str
    outputs: dict[str, Array]
    labels: list[int]
    confidence: float
    confidence_kind: str
    tier: str
    node: str
    model_version: str
    path: list[wire.Hop]
    degraded: bool
    reason: str | None
    #: bytes of the request as sent.
    request_bytes: int

    @property
    def label(self) -> int | None:
        """The predicted class of the first row."""
        return self.labels[0] if self.labels else None

    @classmethod
    def from_response(cls, resp: wire.InferResponse, request_bytes: int) -> InferResult:
        return cls(
            resp.id,
            resp.model,
            resp.outputs,
            resp.labels,
            resp.confidence,
            resp.confidence_kind,
            resp.tier,
            resp.node,
            resp.model_version,
            resp.path,
            resp.degraded,
            resp.reason,
            request_bytes,
        )


@dataclass(slots=True)
class PublishAck:
    """An event stored: its id, the stream and sequence, and whether it was there already."""

    event_id: str
    stream: str
    sequence: int
    duplicate: bool


@dataclass(slots=True)
class EventResult(InferResult):
    """A result event: what ``infer`` would have returned, plus the event's id, when it was
    published and stored, and its sequence in the event stream. An error result has ``error``
    set and empty outputs."""

    event_id: str = ""
    source: str = ""
    published_at: float = 0.0
    stored_at: float = 0.0
    event_sequence: int = 0
    error: MeshError | None = None

    @classmethod
    def of(cls, record: Any, reply: wire.Message, size: int) -> EventResult:
        extra = {
            "event_id": record.event_id,
            "source": record.source,
            "published_at": record.published_at,
            "stored_at": record.stored_at,
            "event_sequence": record.event_sequence,
        }
        if isinstance(reply, wire.ErrorReply):
            return cls(
                reply.id, record.model, {}, [], 0.0, "", reply.tier, reply.node, "", [], False,
                None, size, error=reply.to_exception(), **extra,
            )  # fmt: skip
        return cls(
            reply.id, reply.model, reply.outputs, reply.labels, reply.confidence,
            reply.confidence_kind, reply.tier, reply.node, reply.model_version, reply.path,
            reply.degraded, reply.reason, size, **extra,
        )  # fmt: skip
