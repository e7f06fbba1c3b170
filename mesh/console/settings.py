"""Settings of the console (``mesh console``; variables ``MESH_CONSOLE_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from mesh.console.access import DEFAULT_PERSON, MIN_TOKEN_CHARS
from mesh.settings import NatsSettings, ServiceSettings
from mesh.topology.subjects import check_token


class ConsoleSettings(ServiceSettings):
    """The operator console: an HTTP server for people, reading NATS as the ``console``
    identity and acting only through the mesh's own NATS APIs."""

    model_config = SettingsConfigDict(env_prefix="MESH_CONSOLE_")

    token: str = ""
    """The token a person opens the console with (``MESH_CONSOLE_TOKEN``; at least 16
    characters); it stands for the person ``operator``. ``tokens`` names several people."""
    tokens: dict[str, str] = Field(default_factory=dict)
    """Person name to their own token, so the action log says who acted."""
    reviewer_credentials: Path | None = None
    """Credentials of a reviewer identity (role ``reviewer``) the console labels with, on the
    same servers; without them the review page shows the queue but cannot label."""
    domain: str = "hub"
    """JetStream domain of the fleet's registry and rollouts (the hub's)."""
    host: str = "127.0.0.1"
    """Address the console listens on."""
    port: int = Field(8090, ge=0, le=65535)
    """Its port; 0 picks a free one."""
    offline_after_s: float = Field(10.0, gt=0)
    """Seconds without a heartbeat after which a node shows offline."""
    review_poll_s: float = Field(2.0, gt=0)
    """Seconds between looks at the review queue."""
    quality_poll_s: float = Field(10.0, gt=0)
    """Seconds between looks at ground truth (the review desk's stats and report)."""
    report_days: int = Field(14, ge=1, le=90)
    """Days of the daily report the quality page plots."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_token(v, "domain")

    @model_validator(mode="after")
    def _people(self) -> ConsoleSettings:
        if not self.people():
            raise ValueError(
                "token: the console needs a token for people (MESH_CONSOLE_TOKEN or tokens)"
            )
        for person, token in self.people().items():
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"the token of {person} is shorter than {MIN_TOKEN_CHARS}")
        return self

    def people(self) -> dict[str, str]:
        people = dict(self.tokens)
        if self.token:
            people.setdefault(DEFAULT_PERSON, self.token)
        return people

    def reviewer_nats(self) -> NatsSettings | None:
        """The reviewer's connection: the console's servers and TLS, its own identity."""
        if self.reviewer_credentials is None:
            return None
        return self.nats.model_copy(
            update={"credentials": self.reviewer_credentials, "inbox_prefix": None}
        )


__all__ = ["ConsoleSettings"]
