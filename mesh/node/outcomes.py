"""What the request path passes around: the tier's identity and model table, and what the
local pass made of each request (``Outcome``, with the ``Escalation`` left to finish). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mesh import wire
from mesh.errors import MeshError
from mesh.node.policy import DegradedReason, EscalationReason
from mesh.node.served import LocalAnswer, ServedModel


class HardExampleSink(Protocol):
    """Where cases go that were meant for upstream but answered here (store-and-forward)."""

    async def record(
        self, request: wire.InferRequest, answer: wire.InferResponse, reason: str
    ) -> None: ...


class ReviewSink(Protocol):
    """Where the cases a person should see go (``mesh.review.feed.ReviewFeed``): told at each
    decision, it picks what to offer and sends it after the reply."""

    def answered(
        self, request: wire.InferRequest, model: ServedModel, local: LocalAnswer
    ) -> None: ...

    def unsure(
        self,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        degraded: DegradedReason | None,
        escalation: EscalationReason | None,
    ) -> None: ...

    def audited(
        self,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        upstream: wire.InferResponse,
        agreed: bool,
    ) -> None: ...

    def carry(
        self, request: wire.InferRequest, model: ServedModel, local: LocalAnswer
    ) -> wire.InferRequest: ...


@dataclass(frozen=True, slots=True)
class TierIdentity:
    tier: str
    node: str
    zone: str
    max_hops: int = 8


@dataclass
class ModelTable:
    """The models a tier serves, by name; a version swap replaces an entry atomically."""

    models: dict[str, ServedModel] = field(default_factory=dict)

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def put(self, model: ServedModel) -> ServedModel | None:
        """Serve ``model``; returns the one it replaced. Requests already running keep theirs."""
        previous = self.models.get(model.name)
        self.models[model.name] = model
        return previous

    def versions(self) -> dict[str, str]:
        return {name: m.version for name, m in self.models.items()}


@dataclass(slots=True)
class Escalation:
    """What ``complete`` needs to finish a request the local pass could not."""

    #: the model served here, or None when the request is only forwarded.
    model: ServedModel | None = None
    local: LocalAnswer | None = None
    reason: EscalationReason | None = None


@dataclass(slots=True)
class Outcome:
    """What the local pass made of one request: an answer, an error, or work left to
    ``DataPlane.complete``."""

    request: wire.InferRequest
    received_at: float
    response: wire.InferResponse | None = None
    error: MeshError | None = None
    escalation: Escalation | None = None
    #: why the case was meant for upstream, if it was (for the request's span).
    escalation_reason: EscalationReason | None = None
