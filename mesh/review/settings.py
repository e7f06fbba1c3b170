"""Settings of the review service (``mesh review serve``; variables ``MESH_REVIEW_SERVICE_*``):
its two identities, the queue's limits per model and reason, and the cost model."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from mesh.review.records import ReviewReason
from mesh.review.sampling import WindowLimits
from mesh.review.truth import CostModel
from mesh.settings import NatsSettings, ServiceSettings
from mesh.topology.subjects import check_token


class LimitSettings(BaseModel):
    """At most this many items in any minute, hour and day (null: no bound on that window)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_minute: int | None = Field(None, ge=0)
    """Items in any 60 seconds."""
    per_hour: int | None = Field(None, ge=0)
    """Items in any hour."""
    per_day: int | None = Field(None, ge=0)
    """Items in any 24 hours."""

    def windows(self) -> WindowLimits:
        return WindowLimits(self.per_minute, self.per_hour, self.per_day)


def _default_limits() -> LimitSettings:
    return LimitSettings(per_minute=20, per_hour=300, per_day=2000)


def _default_reasons() -> dict[ReviewReason, LimitSettings]:
    # Samples and drift are many and each worth less than an unsure answer: they may take at
    # most a share of a model's limits, leaving the rest for the cases nobody was sure of.
    share = LimitSettings(per_minute=5, per_hour=60, per_day=400)
    return {ReviewReason.SAMPLE: share, ReviewReason.DRIFT: share}


class CostSettings(BaseModel):
    """What each outcome costs, in one unit of the operator's choosing (``mesh review report``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wrong_answer: float = Field(10.0, ge=0)
    """A wrong answer the mesh gave."""
    escalation: float = Field(0.01, ge=0)
    """A case sent up a tier (the upstream's compute and the link)."""
    human_label: float = Field(0.5, ge=0)
    """A person's label."""
    unit: str = "units"
    """What the figures are in (EUR, minutes...)."""

    def model(self) -> CostModel:
        return CostModel(self.wrong_answer, self.escalation, self.human_label, self.unit)


class ReviewServiceSettings(ServiceSettings):
    """The review service at the hub: the intake (candidates in, the queue and labels out) and
    the desk (the review API), each with its own identity."""

    model_config = SettingsConfigDict(env_prefix="MESH_REVIEW_SERVICE_")

    intake_credentials: Path | None = None
    """Credentials of the intake's identity (role ``review-intake``); ``nats.credentials`` are
    the desk's (role ``review-desk``). Both connect to ``nats.servers`` (the hub's)."""
    domain: str = "hub"
    """JetStream domain of the review streams (the hub's)."""
    limits: LimitSettings = Field(default_factory=_default_limits)
    """Items one model may add to the queue, every reason together."""
    reasons: dict[ReviewReason, LimitSettings] = Field(default_factory=_default_reasons)
    """Bounds of one reason within a model's (``sample``, ``drift``...)."""
    models: dict[str, LimitSettings] = Field(default_factory=dict)
    """A model's own limits in place of ``limits``."""
    cost: CostSettings = Field(default_factory=CostSettings)
    """The cost model of the report and the metrics."""
    fetch_batch: int = Field(64, ge=1)
    """Candidates the intake takes at once."""
    http_host: str = "127.0.0.1"
    """Address of the health, readiness and metrics server."""
    http_port: int | None = Field(0, ge=0, le=65535)
    """Its port; 0 picks a free one, null disables it."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_token(v, "domain")

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, LimitSettings]) -> dict[str, LimitSettings]:
        for name in v:
            check_token(name, "model name")
        return v

    @model_validator(mode="after")
    def _intake(self) -> ReviewServiceSettings:
        if self.intake_credentials is None and self.nats.credentials is not None:
            raise ValueError(
                "intake_credentials: the intake needs an identity of its own (role "
                "review-intake), beside the desk's in nats.credentials"
            )
        return self

    def intake_nats(self) -> NatsSettings:
        """The intake's connection: the desk's servers and TLS, its own identity."""
        return self.nats.model_copy(
            update={"credentials": self.intake_credentials, "inbox_prefix": None}
        )


__all__ = ["CostSettings", "LimitSettings", "ReviewServiceSettings"]
