"""Records a node writes about itself: hard examples and node status, on the same wire as requests.

Same conventions as ``mesh.wire``: msgpack maps with ``v`` and ``kind``, dataclasses, pure
functions over bytes, unknown fields ignored, ``InvalidArgumentError`` on bad input. The JSON
Schemas are ``schemas/hard-example.schema.json`` and ``schemas/node-status.schema.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.wire import (
    VERSION,
    InferRequest,
    InferResponse,
    _packb,
    _require,
    _unpack_map,
    decode_request,
    encode_request,
    unpack_raw,
)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """What the recording tier answered on its own (the degraded reply the caller got)."""

    labels: list[int]
    confidence: float
    model_version: str


@dataclass(frozen=True, slots=True)
class HardExample:
    """A request a tier could not get answered upstream, kept to forward once the link is back.

    ``id`` is the request id: JetStream deduplicates on it, so it must equal ``request.id``.
    """

    id: str
    model: str
    tier: str
    node: str
    #: why escalation failed, from ``mesh.policy.DEGRADED_REASONS``.
    reason: str
    #: wall-clock unix seconds when the tier recorded the case.
    created_at: float
    request: InferRequest
    answer: LocalAnswer
    #: W3C ``traceparent`` of the request's trace, to link the forwarding span to it.
    traceparent: str | None = None

    @classmethod
    def of(
        cls,
        request: InferRequest,
        answer: InferResponse,
        reason: str,
        created_at: float,
        traceparent: str | None = None,
    ) -> HardExample:
        """The hard example for a request this tier answered itself with ``answer``."""
        return cls(
            id=request.id,
            model=request.model,
            tier=answer.tier,
            node=answer.node,
            reason=reason,
            created_at=created_at,
            request=request,
            answer=LocalAnswer(
                labels=list(answer.labels),
                confidence=answer.confidence,
                model_version=answer.model_version,
            ),
            traceparent=traceparent,
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node reports about itself on ``mesh.telemetry.<node>``."""

    node: str
    tier: str
    #: served model name to the version loaded now.
    models: dict[str, str] = field(default_factory=dict)
    #: upstream name to its circuit-breaker state (``closed``, ``open``, ``half_open``).
    breakers: dict[str, str] = field(default_factory=dict)
    #: hard examples stored and not yet forwarded upstream.
    backlog: int = 0
    ready: bool = False
    #: wall-clock unix seconds of the report.
    time: float = 0.0


# --- hard examples -------------------------------------------------------------------------


def encode_hard_example(example: HardExample) -> bytes:
    if example.id != example.request.id:
        raise InvalidArgumentError(
            f"hard example id {example.id!r} differs from its request id {example.request.id!r}"
        )
    return _packb(
        {
            "v": VERSION,
            "kind": "hard_example",
            "id": example.id,
            "model": example.model,
            "tier": example.tier,
            "node": example.node,
            "reason": example.reason,
            "created_at": float(example.created_at),
            # The request exactly as it travelled, so a consumer decodes it with decode_request.
            "request": unpack_raw(encode_request(example.request)),
            "answer": {
                "labels": list(example.answer.labels),
                "confidence": float(example.answer.confidence),
                "model_version": example.answer.model_version,
            },
            "traceparent": example.traceparent,
        }
    )


def decode_hard_example(data: bytes) -> HardExample:
    what = "hard example"
    obj = _unpack_map(data, what)
    _require_kind(obj, "hard_example", what)
    example_id = _require(obj, "id", str, what)
    request_map = _require(obj, "request", dict, what)
    try:
        request = decode_request(_packb(request_map))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{what} carries a bad request: {exc.message}") from None
    if request.id != example_id:
        raise InvalidArgumentError(
            f"{what} id {example_id!r} differs from its request id {request.id!r}"
        )
    traceparent = obj.get("traceparent")
    if traceparent is not None and not isinstance(traceparent, str):
        raise InvalidArgumentError(f"{what} traceparent must be a string")
    return HardExample(
        id=example_id,
        model=_require(obj, "model", str, what),
        tier=_require(obj, "tier", str, what),
        node=_require(obj, "node", str, what),
        reason=_require(obj, "reason", str, what),
        created_at=_finite(_require(obj, "created_at", (int, float), what), "created_at", what),
        request=request,
        answer=_decode_answer(_require(obj, "answer", dict, what)),
        traceparent=traceparent,
    )


def _decode_answer(obj: dict[str, Any]) -> LocalAnswer:
    what = "hard example answer"
    labels = _require(obj, "labels", list, what)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise InvalidArgumentError(f"{what} labels must be a list of integers")
    confidence = _require(obj, "confidence", (int, float), what)
    return LocalAnswer(
        labels=labels,
        confidence=_finite(confidence, "confidence", what),
        model_version=_require(obj, "model_version", str, what),
    )


# --- node status ---------------------------------------------------------------------------


def encode_node_status(status: NodeStatus) -> bytes:
    return _packb(
        {
            "v": VERSION,
            "kind": "node_status",
            "node": status.node,
            "tier": status.tier,
            "models": dict(status.models),
            "breakers": dict(status.breakers),
            "backlog": status.backlog,
            "ready": status.ready,
            "time": float(status.time),
        }
    )


def decode_node_status(data: bytes) -> NodeStatus:
    what = "node status"
    obj = _unpack_map(data, what)
    _require_kind(obj, "node_status", what)
    backlog = _require(obj, "backlog", int, what)
    if backlog < 0:
        raise InvalidArgumentError(f"{what} backlog must be non-negative, got {backlog}")
    return NodeStatus(
        node=_require(obj, "node", str, what),
        tier=_require(obj, "tier", str, what),
        models=_str_map(_require(obj, "models", dict, what), "models", what),
        breakers=_str_map(_require(obj, "breakers", dict, what), "breakers", what),
        backlog=backlog,
        ready=_require(obj, "ready", bool, what),
        time=_finite(_require(obj, "time", (int, float), what), "time", what),
    )


# --- shared checks -------------------------------------------------------------------------


def _require_kind(obj: dict[str, Any], kind: str, what: str) -> None:
    if obj.get("kind") != kind:
        raise InvalidArgumentError(f"{what} must have kind {kind!r}, got {obj.get('kind')!r}")


def _finite(value: float, key: str, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{what} field {key!r} must be a finite number, got {value!r}")
    return number


def _str_map(obj: dict[Any, Any], key: str, what: str) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise InvalidArgumentError(f"{what} field {key!r} must map strings to strings")
    return dict(obj)


__all__ = [
    "HardExample",
    "LocalAnswer",
    "NodeStatus",
    "decode_hard_example",
    "decode_node_status",
    "encode_hard_example",
    "encode_node_status",
]
