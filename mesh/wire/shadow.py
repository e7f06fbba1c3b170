"""What a node says of a version it runs in shadow beside the one it serves (a rollout's shadow
stage): the ``shadows`` part of its status and fleet heartbeat. Same conventions as the other
records: unknown fields ignored, ``InvalidArgumentError`` on bad input
(``schemas/node-status.schema.json``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.wire.codec import finite, optional, optional_number, require


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowCounters:
    """The running totals of a version run in shadow, declared once: the node counts them
    (``mesh.node.shadow.ShadowTally``), its heartbeat carries them (``ShadowEvidence``) and a
    rollout judges them (``mesh.fleet.rollout.evidence``).

    ``compared`` requests got an answer from the tier above (escalated or audited by the serving
    version); ``agreed`` of them the shadow answered as the tier above did, ``serving_agreed``
    the serving version did: the two agreements on the same requests."""

    requests: int = 0
    errors: int = 0
    #: requests it was not run on: over its share of the CPU, or its queue full.
    skipped: int = 0
    #: requests it answered as the serving version did (every row the same class).
    matched: int = 0
    compared: int = 0
    agreed: int = 0
    serving_agreed: int = 0


#: the shadow's counters, in the order the heartbeat writes them.
SHADOW_COUNTERS = tuple(f.name for f in fields(ShadowCounters))


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowEvidence(ShadowCounters):
    """What a version run in shadow beside the serving one did on a node since it started
    there: running totals, like ``VersionEvidence``. It ran on copies of the serving version's
    inputs after their replies and never answered a caller."""

    version: str
    #: the version it ran beside, whose answers the callers got.
    serving: str
    #: wall-clock unix seconds when it started running here.
    since: float
    #: its model calls' time per request, in the buckets of ``LATENCY_BUCKETS_MS`` (one more).
    latency: tuple[int, ...] = ()
    #: seconds its model calls took: what its share of the CPU is measured in.
    busy_s: float = 0.0


def shadow_to_map(e: ShadowEvidence) -> dict[str, Any]:
    out: dict[str, Any] = {"version": e.version, "serving": e.serving, "since": float(e.since)}
    for name in SHADOW_COUNTERS:
        out[name] = getattr(e, name)
    out["latency"] = list(e.latency)
    out["busy_s"] = float(e.busy_s)
    return out


def shadow_from_map(model: object, obj: object, what: str) -> ShadowEvidence:
    """Types only, as for a version's evidence: what the counters say is judged by the fleet
    (``mesh.fleet.rollout.evidence.shadow_problem``)."""
    if not isinstance(model, str) or not isinstance(obj, dict):
        raise InvalidArgumentError(f"{what} shadows must map model names to maps")
    where = f"{what} shadow of {model[:64]!r}"
    latency = optional(obj, "latency", list, [], where)
    if len(latency) > 64 or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in latency
    ):
        raise InvalidArgumentError(f"{where} latency must be a list of bucket counts")
    return ShadowEvidence(
        version=require(obj, "version", str, where),
        serving=require(obj, "serving", str, where),
        since=finite(require(obj, "since", (int, float), where), "since", where),
        latency=tuple(latency),
        busy_s=optional_number(obj, "busy_s", where) or 0.0,
        **{name: optional(obj, name, int, 0, where) for name in SHADOW_COUNTERS},
    )


__all__ = [
    "SHADOW_COUNTERS",
    "ShadowCounters",
    "ShadowEvidence",
    "shadow_from_map",
    "shadow_to_map",
]
