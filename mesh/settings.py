"""Typed settings of every mesh process, read from a YAML file, ``MESH_*`` variables and flags.

Environment variables override the file; nested fields use ``__`` (``MESH_NATS__SERVERS``,
``MESH_UPSTREAM__TIMEOUT_MS``). The node reads ``MESH_*``, the ingress ``MESH_INGRESS_*``
(``MESH_INGRESS_NATS__SERVERS``), the controller ``MESH_CONTROLLER_*``. Every field is
documented where it is declared: a process's own fields here, the sections it nests (``nats``,
``upstream``, ``models``...) in ``mesh.sections``.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mesh.energy.settings import EnergySettings
from mesh.sections import (
    ActionRule,
    BatchingSettings,
    EventSettings,
    FleetSettings,
    HardExampleSettings,
    ModelSettings,
    NatsSettings,
    ReviewFeedSettings,
    ReviewRates,
    ShadowSettings,
    UpstreamSettings,
    WebhookSettings,
    check_zone,
)
from mesh.topology.processes import COMMAND_VARIABLES
from mesh.topology.subjects import check_token

# The sections are re-exported: a process's settings and the sections they nest, from one place.
__all__ = [
    "LOG_LEVELS",
    "SETTINGS_PREFIXES",
    "ActionRule",
    "BatchingSettings",
    "ControllerSettings",
    "EventSettings",
    "FleetSettings",
    "HardExampleSettings",
    "IngressSettings",
    "ModelSettings",
    "NatsSettings",
    "NodeSettings",
    "ReviewFeedSettings",
    "ReviewRates",
    "ServiceSettings",
    "ShadowSettings",
    "UpstreamSettings",
    "WebhookSettings",
    "unknown_variables",
]


def _default_node_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServiceSettings(BaseSettings):
    """What every mesh process (node, ingress, controller) is configured with, and how.

    Read from, the first that sets a field winning: command-line flags, ``MESH_*`` variables
    (each process its own prefix), keyword arguments, the YAML file, the flags' defaults."""

    model_config = SettingsConfigDict(
        env_prefix="MESH_", env_nested_delimiter="__", extra="forbid", yaml_file=None
    )

    nats: NatsSettings = Field(default_factory=NatsSettings)
    """The process's NATS connection."""
    log_level: str = "INFO"
    """Least severe log level written (JSON lines on stdout): ``DEBUG`` to ``CRITICAL``."""

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers = _layers.get()
        if layers is None:
            return (env_settings, init_settings)
        sources: list[PydanticBaseSettingsSource] = [
            InitSettingsSource(settings_cls, dict(layers.flags)),
            env_settings,
            init_settings,
        ]
        if layers.file is not None:
            sources.append(_YamlFile(settings_cls, layers.file))
        sources.append(InitSettingsSource(settings_cls, dict(layers.defaults)))
        return tuple(sources)

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        flags: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Self:
        """Settings from a YAML file, overridden by ``overrides``, then by the variables, then
        by ``flags`` (nested like the file); ``defaults`` fill in what none of them sets.
        A file that is not YAML raises ``yaml.YAMLError``; one that is not a mapping,
        ``ValueError``; invalid settings, pydantic's ``ValidationError``."""
        layers = _Layers(
            Path(path) if path is not None else None, dict(flags or {}), dict(defaults or {})
        )
        token = _layers.set(layers)
        try:
            settings = cls(**overrides)
        finally:
            _layers.reset(token)
        misspelt = unknown_variables(cls, os.environ)
        if misspelt:
            raise ValueError("; ".join(misspelt))
        return settings


#: every settings class's variable prefix: a class with a shorter prefix leaves the others' alone.
SETTINGS_PREFIXES = ("MESH_INGRESS_", "MESH_CONTROLLER_", "MESH_REVIEW_SERVICE_", "MESH_CONSOLE_")


def unknown_variables(cls: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """``MESH_*`` variables that look like settings of ``cls`` but name no field of it, each
    said with the field it was probably meant for: a misspelt top-level setting would otherwise
    be ignored, where a misspelt nested one is refused."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    fields = {name.upper(): name for name in cls.model_fields}
    found: list[str] = []
    for key in environ:
        upper = key.upper()
        if not upper.startswith(prefix) or upper in COMMAND_VARIABLES:
            continue
        if any(p != prefix and p.startswith(prefix) and upper.startswith(p)
               for p in SETTINGS_PREFIXES):  # fmt: skip
            continue
        head = upper[len(prefix) :].split("__")[0]
        if head in fields:
            continue
        close = difflib.get_close_matches(head, list(fields), n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else ""
        found.append(f"{key} names no setting of {cls.__name__}{hint}")
    return found


class NodeSettings(ServiceSettings):
    """A tier node: the same service on every tier, with a different configuration
    (``mesh node``; variables ``MESH_*``)."""

    tier: str
    """Tier name (``edge``, ``gateway``, ``cloud``): the chain is configuration, not code."""
    node: str = Field(default_factory=_default_node_id)
    """Node id, unique in the fleet."""
    zone: str = "device"
    """Residency zone this tier runs in: ``device``, ``site`` or ``cloud``."""
    entry: bool = False
    """Take application requests from ``mesh.infer.<model>`` (the lowest tier)."""
    upstream: UpstreamSettings | None = None
    """Next tier up; none on the top tier."""
    models: list[ModelSettings] = Field(default_factory=list)
    hard_examples: HardExampleSettings = Field(default_factory=HardExampleSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    review: ReviewFeedSettings = Field(default_factory=ReviewFeedSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    energy: EnergySettings = Field(default_factory=EnergySettings)
    """The energy ledger, its device profile and sensors, and the power budget
    (``docs/energy.md``)."""
    max_inflight: int = Field(1024, ge=1)
    """Requests waiting at once (escalations, traced requests); more get RESOURCE_EXHAUSTED."""
    max_inflight_per_caller: int = Field(256, ge=0)
    """Of those, how many one caller (the identity its reply inbox names) may hold; more of
    its requests get RESOURCE_EXHAUSTED while other callers still have room. 0: no share."""
    drift_threshold: float = Field(0.25, gt=0)
    """Population stability index of inputs or confidences that raises a drift event
    (0.1 is a moderate shift, 0.25 a major one)."""
    max_hops: int = Field(8, ge=1)
    """Escalations a request may take before it is refused (a loop guard)."""
    http_host: str = "127.0.0.1"
    """Address of the health, readiness and metrics server."""
    http_port: int | None = Field(0, ge=0, le=65535)
    """Port of that server; 0 picks a free one, null disables it."""

    @field_validator("tier")
    @classmethod
    def _tier(cls, v: str) -> str:
        return check_token(v, "tier")

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_token(v, "node")

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_zone(v)


class IngressSettings(ServiceSettings):
    """The Open Inference Protocol ingress (``mesh ingress``; variables ``MESH_INGRESS_*``)."""

    model_config = SettingsConfigDict(env_prefix="MESH_INGRESS_")

    manifests: list[Path] = Field(default_factory=list)
    """Manifests of the models the entry tier serves: their metadata and input checks.
    Relative paths are relative to the settings file."""
    local: Path | None = None
    """An edge node's settings (YAML) to host in the ingress: it answers the models it serves
    in this process, with no hop to an edge node, and escalates what it is unsure of over NATS
    as an edge node does, on its own connection and ``local-edge`` credentials (its ``nats``
    section). Relative to the settings file."""
    host: str = "127.0.0.1"
    """Address the REST and gRPC servers listen on."""
    http_port: int = Field(8080, ge=0, le=65535)
    """REST port; 0 picks a free one."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """gRPC port; 0 picks a free one."""
    token: str = ""
    """Bearer token callers must send (``Authorization: Bearer ...``); empty: none required."""
    default_budget_ms: float = Field(1000.0, gt=0)
    """Budget of a request that names none."""
    max_budget_ms: float = Field(60_000.0, gt=0)
    """Largest budget a request may ask for."""
    callers: dict[str, str] = Field(default_factory=dict)
    """Named callers' bearer tokens, name to token. A caller sending one is that name for its
    share of the ingress; a caller sending ``token`` (or any caller, when neither is set) is its
    address, which behind a proxy is the proxy's."""
    max_body_bytes: int = Field(64 << 20, ge=1)
    """Largest request body (REST) or message (gRPC: its max message size)."""
    body_bytes_in_flight: int | None = Field(None, ge=1)
    """Bytes of request bodies the ingress holds at once, each from before it is read until its
    answer is sent; a gRPC message holds ``max_body_bytes`` while it is read (gRPC does not say
    a length first). Default: four times ``body_bytes_per_caller``."""
    body_bytes_per_caller: int | None = Field(None, ge=1)
    """Of those, how many one caller may hold: its large bodies wait behind each other, not in
    front of other callers'. At least ``max_body_bytes``, which is the default."""
    body_wait_s: float = Field(1.0, ge=0)
    """Seconds a body waits for room among the bytes in flight before it is refused with 429
    (gRPC RESOURCE_EXHAUSTED)."""
    max_inflight: int = Field(256, ge=1)
    """Calls the ingress holds at once; more get 429 (gRPC RESOURCE_EXHAUSTED)."""
    max_inflight_per_caller: int = Field(64, ge=0)
    """Of those, how many one caller may hold; more of its calls get 429 while other callers
    still have room. 0: no share."""
    header_timeout_s: float = Field(15.0, gt=0)
    """Seconds a REST connection has to send a request's headers, from when it opens or from
    its previous answer (also how long an idle kept-alive connection stays open)."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Seconds a request's body (REST) or message (gRPC) has to arrive once it is let in; a
    slower one gets 408 (gRPC DEADLINE_EXCEEDED)."""
    refresh_s: float = Field(2.0, gt=0)
    """Seconds between asking the entry tier's nodes what they serve."""
    stale_after_s: float = Field(10.0, gt=0)
    """Seconds without an answer from the fleet after which the ingress reports not ready."""

    @field_validator("callers")
    @classmethod
    def _callers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, token in v.items():
            check_token(name, "caller name")
            if not token:
                raise ValueError(f"caller {name} has an empty token")
        if len(set(v.values())) != len(v):
            raise ValueError("two callers have the same token")
        return v

    @model_validator(mode="after")
    def _shares(self) -> Self:
        if self.token and self.token in self.callers.values():
            raise ValueError("token is also a named caller's token: give each its own")
        if self.body_bytes_per_caller is None:
            self.body_bytes_per_caller = self.max_body_bytes
        if self.body_bytes_in_flight is None:
            self.body_bytes_in_flight = 4 * self.body_bytes_per_caller
        if self.body_bytes_per_caller < self.max_body_bytes:
            raise ValueError("body_bytes_per_caller must be at least max_body_bytes")
        if self.body_bytes_in_flight < self.body_bytes_per_caller:
            raise ValueError("body_bytes_in_flight must be at least body_bytes_per_caller")
        if self.max_inflight_per_caller > self.max_inflight:
            raise ValueError("max_inflight_per_caller must be at most max_inflight")
        return self


class ControllerSettings(ServiceSettings):
    """A rollout controller (``mesh controller``; variables ``MESH_CONTROLLER_*``): any number
    may run, one leads."""

    model_config = SettingsConfigDict(env_prefix="MESH_CONTROLLER_")

    name: str = Field(default_factory=lambda: f"controller-{socket.gethostname()}")
    """This controller's name; give each its own (a restart under the same name takes its
    lease back at once)."""
    domain: str = "hub"
    """JetStream domain of the fleet's registry."""
    tick_s: float = Field(1.0, gt=0)
    """Seconds between looks at the fleet."""
    lease_s: float = Field(5.0, gt=0)
    """Seconds a silent leader keeps the lead."""
    offline_after_s: float = Field(10.0, gt=0)
    """Seconds without a heartbeat after which a node counts as offline."""
    heartbeat_s: float = Field(1.0, gt=0)
    """Seconds between the nodes' heartbeats (their ``fleet.heartbeat_s``): a node's heartbeats
    count at most once every half of it, however often it writes them."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_token(v, "domain")


@dataclass(frozen=True)
class _Layers:
    file: Path | None
    flags: dict[str, Any]
    defaults: dict[str, Any]


#: what ``ServiceSettings.load`` is reading (pydantic-settings asks for sources by class).
_layers: ContextVar[_Layers | None] = ContextVar("mesh_settings_layers", default=None)


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with model paths taken relative to the file's folder."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"no settings file at {path}")
        try:
            super().__init__(settings_cls, yaml_file=path)
        except (AttributeError, TypeError, ValueError):
            # pydantic-settings expects a mapping at the top of the file
            raise ValueError(f"{path}: the settings file must be a YAML mapping") from None
        self._base = path.resolve().parent

    def __call__(self) -> dict[str, Any]:
        return _resolve_paths(super().__call__(), self._base)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolved(value: object) -> object:
        if isinstance(value, str) and not Path(value).is_absolute():
            return str(base / value)
        return value

    models = data.get("models")
    if isinstance(models, list):
        for model in models:
            if isinstance(model, dict):
                for key in ("path", "manifest"):
                    if key in model:
                        model[key] = resolved(model[key])
    manifests = data.get("manifests")
    if isinstance(manifests, list):
        data["manifests"] = [resolved(value) for value in manifests]
    if "local" in data:
        data["local"] = resolved(data["local"])
    return data
