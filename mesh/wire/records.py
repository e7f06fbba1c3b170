"""Records a node writes about itself: hard examples, node status and drift events.

Same conventions as the request messages: msgpack maps with ``v`` and ``kind``, dataclasses, pure
functions over bytes, unknown fields ignored, ``InvalidArgumentError`` on bad input. The JSON
Schemas are ``schemas/hard-example.schema.json`` and ``schemas/node-status.schema.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.wire.codec import (
    VERSION,
    finite,
    optional,
    optional_number,
    packb,
    require,
    require_kind,
    str_map,
    unpack_map,
    unpack_raw,
)
from mesh.wire.messages import InferRequest, InferResponse, decode_request, encode_request
from mesh.wire.power import PowerStatus, power_from_map, power_to_map
from mesh.wire.shadow import ShadowEvidence, shadow_from_map, shadow_to_map


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
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
    #: why escalation failed, from ``mesh.node.policy.DEGRADED_REASONS``.
    reason: str
    #: wall-clock unix seconds when the tier recorded the case.
    created_at: float
    request: InferRequest
    answer: RecordedAnswer
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
            answer=RecordedAnswer(
                labels=list(answer.labels),
                confidence=answer.confidence,
                model_version=answer.model_version,
            ),
            traceparent=traceparent,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceCounters:
    """The running totals of one model version, declared once: the node counts them
    (``mesh.node.evidence``), its heartbeat carries them (``VersionEvidence``) and a rollout sums
    them over a group of nodes (``mesh.fleet.rollout.evidence.Figures``).

    ``compared`` answers were checked against the tier above (escalated ones, whose upstream answer
    came back, and audited confident ones); ``agreed`` of them got the same labels there."""

    requests: int = 0
    errors: int = 0
    escalated: int = 0
    degraded: int = 0
    compared: int = 0
    agreed: int = 0
    #: confident answers sent upstream to be compared (the audit), and those that failed.
    audits: int = 0
    audit_failures: int = 0


#: the counters' names, in the order the heartbeat writes them.
EVIDENCE_COUNTERS = tuple(f.name for f in fields(EvidenceCounters))


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionEvidence(EvidenceCounters):
    """What one model version did on one node since it started serving there: running totals
    the fleet controller takes differences of, over a window, to judge a rollout's stage.

    ``latency`` counts local answers per bucket of
    ``mesh.observability.metrics.LATENCY_BUCKETS_MS`` (one more for answers over the last bound)."""

    version: str
    #: wall-clock unix seconds when this version started serving on the node.
    since: float
    latency: tuple[int, ...] = ()
    #: highest drift score (PSI) of this version's signals, or None.
    drift: float | None = None


@dataclass(frozen=True, slots=True)
class AnsweredFor:
    """What a node answered for the tier below: per caller identity (the ``_INBOX_<name>`` its
    reply went to, as ``<name>``) and model, the escalations and audits it answered since
    ``since``. The fleet controller caps what each caller says it compared with the tier above by
    these counts (``mesh.fleet.rollout.witness``)."""

    #: wall-clock unix seconds when the node started counting (a restart starts over).
    since: float
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


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
    # What the fleet's heartbeat adds (optional on the wire, for older senders):
    site: str = ""
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: model to the version the node is fetching, verifying or warming now.
    pending: dict[str, str] = field(default_factory=dict)
    #: ``model@version`` to why the node refused it (it will not retry that version).
    rejected: dict[str, str] = field(default_factory=dict)
    #: why the node is not ready, in words; empty when it is.
    problems: list[str] = field(default_factory=list)
    #: share of recent answers that escalated, or None before any answer.
    escalation_rate: float | None = None
    #: highest population stability index of the drift signals, or None.
    drift: float | None = None
    #: p99 of recent local answers, in ms, or None.
    p99_ms: float | None = None
    #: version swaps done since the node started.
    swaps: int = 0
    mesh_version: str = ""
    #: per model served, what its version did here (the rollout gates' evidence).
    evidence: dict[str, VersionEvidence] = field(default_factory=dict)
    #: what this node answered for the tier below, per caller and model (None: not counted).
    answered: AnsweredFor | None = None
    #: model to the version it served before its latest downgrade (an older version assigned).
    downgraded: dict[str, str] = field(default_factory=dict)
    #: per model, the version it runs in shadow beside the served one, and what it did.
    shadows: dict[str, ShadowEvidence] = field(default_factory=dict)
    #: its energy ledger and power governor (``mesh.wire.power``); None: no ledger.
    power: PowerStatus | None = None


# --- hard examples -------------------------------------------------------------------------


def encode_hard_example(example: HardExample) -> bytes:
    if example.id != example.request.id:
        raise InvalidArgumentError(
            f"hard example id {example.id!r} differs from its request id {example.request.id!r}"
        )
    return packb(
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
    obj = unpack_map(data, what)
    require_kind(obj, "hard_example", what)
    example_id = require(obj, "id", str, what)
    request_map = require(obj, "request", dict, what)
    try:
        request = decode_request(packb(request_map))
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
        model=require(obj, "model", str, what),
        tier=require(obj, "tier", str, what),
        node=require(obj, "node", str, what),
        reason=require(obj, "reason", str, what),
        created_at=finite(require(obj, "created_at", (int, float), what), "created_at", what),
        request=request,
        answer=_decode_answer(require(obj, "answer", dict, what)),
        traceparent=traceparent,
    )


def _decode_answer(obj: dict[str, Any]) -> RecordedAnswer:
    what = "hard example answer"
    labels = require(obj, "labels", list, what)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise InvalidArgumentError(f"{what} labels must be a list of integers")
    confidence = require(obj, "confidence", (int, float), what)
    return RecordedAnswer(
        labels=labels,
        confidence=finite(confidence, "confidence", what),
        model_version=require(obj, "model_version", str, what),
    )


# --- node status ---------------------------------------------------------------------------


def encode_node_status(status: NodeStatus) -> bytes:
    return packb(
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
            "site": status.site,
            "zone": status.zone,
            "labels": dict(status.labels),
            "pending": dict(status.pending),
            "rejected": dict(status.rejected),
            "problems": list(status.problems),
            "escalation_rate": status.escalation_rate,
            "drift": status.drift,
            "p99_ms": status.p99_ms,
            "swaps": status.swaps,
            "mesh_version": status.mesh_version,
            "evidence": {model: evidence_to_map(e) for model, e in status.evidence.items()},
            "answered": _encode_answered(status.answered),
            "downgraded": dict(status.downgraded),
            "shadows": {model: shadow_to_map(e) for model, e in status.shadows.items()},
            "power": power_to_map(status.power) if status.power is not None else None,
        }
    )


def _encode_answered(answered: AnsweredFor | None) -> dict[str, Any] | None:
    if answered is None:
        return None
    return {
        "since": float(answered.since),
        "callers": {caller: dict(models) for caller, models in answered.counts.items()},
    }


#: most callers a heartbeat's ``answered`` may name (a node counts at most this many too).
MAX_ANSWERED_CALLERS = 4096


def _decode_answered(obj: object, what: str) -> AnsweredFor | None:
    """Types only, as for evidence: whether the counts can be true is the rollout's to judge."""
    if obj is None:
        return None
    where = f"{what} answered"
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{where} must be a map")
    callers = optional(obj, "callers", dict, {}, where)
    if len(callers) > MAX_ANSWERED_CALLERS:
        raise InvalidArgumentError(
            f"{where} names {len(callers)} callers, over {MAX_ANSWERED_CALLERS}"
        )
    counts: dict[str, dict[str, int]] = {}
    for caller, models in callers.items():
        if not isinstance(caller, str) or not isinstance(models, dict):
            raise InvalidArgumentError(f"{where} must map caller names to maps")
        if not all(
            isinstance(m, str) and isinstance(n, int) and not isinstance(n, bool)
            for m, n in models.items()
        ):
            raise InvalidArgumentError(f"{where} of {caller[:64]!r} must map models to counts")
        counts[caller] = dict(models)
    return AnsweredFor(
        since=finite(require(obj, "since", (int, float), where), "since", where), counts=counts
    )


def evidence_to_map(e: VersionEvidence) -> dict[str, Any]:
    out: dict[str, Any] = {"version": e.version, "since": float(e.since)}
    for name in EVIDENCE_COUNTERS:
        out[name] = getattr(e, name)
    out["latency"] = list(e.latency)
    out["drift"] = e.drift
    return out


def _decode_evidence(model: object, obj: object, what: str) -> VersionEvidence:
    """Types only: whether the figures make sense is the rollout gate's to judge (it ignores
    and flags a node whose counters do not add up, rather than this dropping the heartbeat)."""
    if not isinstance(model, str) or not isinstance(obj, dict):
        raise InvalidArgumentError(f"{what} evidence must map model names to maps")
    where = f"{what} evidence of {model[:64]!r}"
    counters = {name: optional(obj, name, int, 0, where) for name in EVIDENCE_COUNTERS}
    latency = optional(obj, "latency", list, [], where)
    if len(latency) > 64 or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in latency
    ):
        raise InvalidArgumentError(f"{where} latency must be a list of bucket counts")
    return VersionEvidence(
        version=require(obj, "version", str, where),
        since=finite(require(obj, "since", (int, float), where), "since", where),
        latency=tuple(latency),
        drift=optional_number(obj, "drift", where),
        **counters,
    )


def decode_node_status(data: bytes) -> NodeStatus:
    what = "node status"
    obj = unpack_map(data, what)
    require_kind(obj, "node_status", what)
    backlog = require(obj, "backlog", int, what)
    if backlog < 0:
        raise InvalidArgumentError(f"{what} backlog must be non-negative, got {backlog}")
    return NodeStatus(
        node=require(obj, "node", str, what),
        tier=require(obj, "tier", str, what),
        models=str_map(require(obj, "models", dict, what), "models", what),
        breakers=str_map(require(obj, "breakers", dict, what), "breakers", what),
        backlog=backlog,
        ready=require(obj, "ready", bool, what),
        time=finite(require(obj, "time", (int, float), what), "time", what),
        site=optional(obj, "site", str, "", what),
        zone=optional(obj, "zone", str, "", what),
        labels=str_map(optional(obj, "labels", dict, {}, what), "labels", what),
        pending=str_map(optional(obj, "pending", dict, {}, what), "pending", what),
        rejected=str_map(optional(obj, "rejected", dict, {}, what), "rejected", what),
        problems=[str(p) for p in optional(obj, "problems", list, [], what)],
        escalation_rate=optional_number(obj, "escalation_rate", what),
        drift=optional_number(obj, "drift", what),
        p99_ms=optional_number(obj, "p99_ms", what),
        swaps=max(0, optional(obj, "swaps", int, 0, what)),
        mesh_version=optional(obj, "mesh_version", str, "", what),
        evidence={
            model: _decode_evidence(model, e, what)
            for model, e in optional(obj, "evidence", dict, {}, what).items()
        },
        answered=_decode_answered(obj.get("answered"), what),
        downgraded=str_map(optional(obj, "downgraded", dict, {}, what), "downgraded", what),
        shadows={
            model: shadow_from_map(model, e, what)
            for model, e in optional(obj, "shadows", dict, {}, what).items()
        },
        power=power_from_map(obj["power"], what) if obj.get("power") is not None else None,
    )


# --- node events ---------------------------------------------------------------------------

#: what a node's agent did with a version: ``swapped`` (serving it now), ``rejected`` (refused:
#: signature, bytes, manifest, device gate or a revocation), ``restored`` (loaded from its cache at
#: start), ``downgraded`` (a warning: it swapped to a version older than the one it served) and
#: ``revoked`` (a warning: the version it serves was revoked; it swaps away from it).
NODE_EVENTS = ("swapped", "rejected", "restored", "downgraded", "revoked")


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """What a node's fleet agent did (``schemas/node-event.schema.json``)."""

    node: str
    tier: str
    event: str
    model: str
    version: str
    #: the version served before (``swapped``), else None.
    previous: str | None
    #: why, in words (for ``rejected`` the check that failed).
    reason: str
    time: float


def encode_node_event(event: NodeEvent) -> bytes:
    if event.event not in NODE_EVENTS:
        raise InvalidArgumentError(f"node event {event.event!r} is not one of {NODE_EVENTS}")
    return packb(
        {
            "v": VERSION,
            "kind": "node_event",
            "node": event.node,
            "tier": event.tier,
            "event": event.event,
            "model": event.model,
            "version": event.version,
            "previous": event.previous,
            "reason": event.reason,
            "time": float(event.time),
        }
    )


def decode_node_event(data: bytes) -> NodeEvent:
    what = "node event"
    obj = unpack_map(data, what)
    require_kind(obj, "node_event", what)
    event = require(obj, "event", str, what)
    if event not in NODE_EVENTS:
        raise InvalidArgumentError(f"{what} event {event!r} is not one of {NODE_EVENTS}")
    previous = obj.get("previous")
    return NodeEvent(
        node=require(obj, "node", str, what),
        tier=require(obj, "tier", str, what),
        event=event,
        model=require(obj, "model", str, what),
        version=require(obj, "version", str, what),
        previous=previous if isinstance(previous, str) else None,
        reason=require(obj, "reason", str, what),
        time=finite(require(obj, "time", (int, float), what), "time", what),
    )


# --- drift events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A drift score crossed its threshold (``schemas/drift-event.schema.json``)."""

    node: str
    tier: str
    model: str
    model_version: str
    #: which signal drifted: ``input`` (intensity) or ``confidence``.
    signal: str
    psi: float
    threshold: float
    #: wall-clock unix seconds of the event.
    time: float


def encode_drift_event(event: DriftEvent) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": "drift",
            "node": event.node,
            "tier": event.tier,
            "model": event.model,
            "model_version": event.model_version,
            "signal": event.signal,
            "psi": float(event.psi),
            "threshold": float(event.threshold),
            "time": float(event.time),
        }
    )


def decode_drift_event(data: bytes) -> DriftEvent:
    what = "drift event"
    obj = unpack_map(data, what)
    require_kind(obj, "drift", what)
    return DriftEvent(
        node=require(obj, "node", str, what),
        tier=require(obj, "tier", str, what),
        model=require(obj, "model", str, what),
        model_version=require(obj, "model_version", str, what),
        signal=require(obj, "signal", str, what),
        psi=finite(require(obj, "psi", (int, float), what), "psi", what),
        threshold=finite(require(obj, "threshold", (int, float), what), "threshold", what),
        time=finite(require(obj, "time", (int, float), what), "time", what),
    )


__all__ = [
    "EVIDENCE_COUNTERS",
    "MAX_ANSWERED_CALLERS",
    "AnsweredFor",
    "DriftEvent",
    "HardExample",
    "NodeEvent",
    "NodeStatus",
    "RecordedAnswer",
    "VersionEvidence",
    "decode_drift_event",
    "decode_hard_example",
    "decode_node_event",
    "decode_node_status",
    "encode_drift_event",
    "encode_hard_example",
    "encode_node_event",
    "encode_node_status",
    "evidence_to_map",
]
