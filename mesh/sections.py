"""The sections of the mesh's settings, each part's own: how to reach NATS, the upstream link,
models, batching, hard examples, the review feed, the shadow, events and their actions, the fleet
agent. A process's settings (``mesh.settings``) nest them; each section refuses unknown keys.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mesh.node.breaker import BreakerConfig
from mesh.node.policy import RESIDENCY_ZONES
from mesh.scoring.confidence import ConfidenceKind
from mesh.topology.subjects import check_token


def check_zone(zone: str) -> str:
    """A residency zone a setting names: one of ``RESIDENCY_ZONES``."""
    if zone not in RESIDENCY_ZONES:
        raise ValueError(f"zone must be one of {RESIDENCY_ZONES}")
    return zone


class _Section(BaseModel):
    """A nested section: an unknown key is an error, as it is at the top level."""

    model_config = ConfigDict(extra="forbid")


class NatsSettings(_Section):
    """How a service connects to NATS: the one place for servers, credentials and TLS."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    """NATS server URLs; the local (site or device) server first."""
    credentials: Path | None = None
    """A ``.creds`` file (JWT and nkey seed) for this process's NATS identity
    (``mesh identities init``); a mesh server takes no connection without one."""
    inbox_prefix: str | None = None
    """Prefix of this connection's reply subjects. Default: the ``_INBOX_<name>`` prefix that
    the credentials' permissions allow (read from the creds file), else ``_INBOX``."""
    nkeys_seed: Path | None = None
    """An nkey seed file, for servers configured with nkeys but no JWTs."""
    tls_ca: Path | None = None
    """CA bundle to verify the server with TLS."""
    tls_cert: Path | None = None
    """Client certificate for mutual TLS."""
    tls_key: Path | None = None
    """Key of the client certificate."""
    connect_timeout_s: float = Field(2.0, gt=0)
    """Seconds to wait for one connection attempt."""
    reconnect_wait_s: float = Field(0.5, gt=0)
    """Seconds between reconnect attempts; the client reconnects forever."""
    first_connect_s: float = Field(60.0, gt=0)
    """How long a starting process keeps trying to reach NATS before it gives up (it may start
    before its server); a signal stops it at once however long this is."""
    drain_timeout_s: float = Field(1.0, gt=0)
    """Longest wait, at shutdown, for requests in flight to be answered before the connection
    closes. A process stops within 2 s of SIGTERM whatever this says (``mesh.services.process``)."""
    watch_interval_s: float = Field(2.0, gt=0)
    """Seconds between the node's own round trips checking that its connection still reads."""
    watch_timeout_s: float = Field(3.0, gt=0)
    """Seconds without its round trip back after which a connection that claims to be up is dead."""


class UpstreamSettings(_Section):
    """The next tier up, where unsure or unserved cases go."""

    tier: str
    """Name of the upstream tier (its subjects are ``mesh.<tier>.infer.<model>``)."""
    zone: str = "cloud"
    """Residency zone of the upstream tier: ``device``, ``site`` or ``cloud``."""
    timeout_ms: float = Field(2000.0, gt=0)
    """Longest wait for the upstream, whatever the request's budget."""
    reserve_ms: float = Field(2.0, ge=0)
    """Budget kept back from the escalation to answer locally if the upstream fails."""
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    """Circuit breaker on the link to the upstream tier (``mesh.node.breaker.BreakerConfig``)."""

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_zone(v)

    @field_validator("tier")
    @classmethod
    def _tier(cls, v: str) -> str:
        return check_token(v, "tier")


class BatchingSettings(_Section):
    """Dynamic micro-batching of one model; off when ``max_batch_size`` is 1."""

    max_batch_size: int = Field(32, ge=1)
    """Most rows run as one batch."""
    max_delay_ms: float = Field(1.0, ge=0)
    """Longest a request waits for others to join its batch."""


class ModelSettings(_Section):
    """One model a tier serves."""

    name: str
    """Model name on the wire (``mesh.infer.<name>``)."""
    path: Path | None = None
    """The ONNX file; relative paths are relative to the config file. Default: the manifest's."""
    manifest: Path | None = None
    """The model manifest (version, thresholds, reference statistics, sha256)."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    """SHA-256 of the ONNX file, required when it is given by ``path`` without a manifest:
    every load checks the bytes, so no setting loads a file unchecked (``sha256sum FILE``)."""
    version: str | None = None
    """Version reported in answers; defaults to the manifest's, else ``1``."""
    threshold: float | None = None
    """Escalate below this confidence; overrides the manifest's threshold for this tier."""
    confidence: ConfidenceKind | None = None
    """Confidence measure: ``max_prob``, ``margin`` or ``entropy`` (default: manifest, max_prob)."""
    scored_output: str | None = None
    """Output holding class probabilities (default: manifest, else ``probabilities``)."""
    novelty: bool = True
    """Escalate out-of-distribution inputs when the manifest has reference statistics."""
    fuse_scores: bool = True
    """Compute confidence, labels and novelty inside the model's ONNX graph (an in-memory copy
    of it), in the model's own call; off, or for a graph that cannot take them, with numpy."""
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    intra_op_threads: int = Field(1, ge=0)
    """ONNX Runtime threads inside one operator."""
    inline_below_us: float = Field(150.0, ge=0)
    """Run batches predicted cheaper than this on the event loop instead of a worker thread."""
    max_rows: int = Field(256, ge=1)
    """Most rows one request may carry."""
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1)
    """Most input bytes one request may carry."""
    audit_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Share of confident answers also sent to the tier above after the reply, to measure how
    often it agrees (the evidence a rollout's agreement gate judges). Never sent when the
    request's residency does not allow the upstream's zone, or the link's breaker is open."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_token(v, "model name")

    @model_validator(mode="after")
    def _artifact(self) -> ModelSettings:
        if self.path is None and self.manifest is None:
            raise ValueError(f"model {self.name}: set its ONNX file (path) or its manifest")
        if self.manifest is None and self.sha256 is None:
            raise ValueError(
                f"model {self.name}: a model given by path needs its sha256 (or a manifest), "
                "so that every load checks its bytes: set sha256 to the output of sha256sum"
            )
        return self


def _local_domain() -> list[str | None]:
    return [None]


class HardExampleSettings(_Section):
    """Store-and-forward of cases that could not be answered upstream: this tier keeps its own
    in ``MESH_HARD_<TIER>`` and, when it has a tier below, takes up that tier's into its
    ``MESH_LEARN_<TIER>``. The streams are made by the provisioning step (``mesh fleet init``,
    whose ``StreamLimits`` bound them), never by the node."""

    enabled: bool = True
    """Record hard examples (and take up the tier below's) in JetStream."""
    domain: str | None = None
    """JetStream domain of this tier's streams (its server's); None uses the connected
    server's."""
    collect_from: str | None = None
    """The tier below this one whose hard examples this tier takes up; None: none."""
    collect_domains: list[str | None] = Field(default_factory=_local_domain)
    """JetStream domains where that tier's ``MESH_HARD_<TIER>`` streams are (every site the
    tier below runs at); None is the connected server's."""

    @field_validator("collect_from")
    @classmethod
    def _tier(cls, v: str | None) -> str | None:
        return v if v is None else check_token(v, "tier")


class ReviewRates(_Section):
    """One model's shares of confident answers offered for review."""

    sample_rate: float = Field(0.005, ge=0.0, le=1.0)
    """Share of its confident final answers offered at random."""
    drift_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Share offered while its drift score is over the node's ``drift_threshold``."""


class ReviewFeedSettings(_Section):
    """What this node offers the review queue (``docs/review.md``): every unsure answer of the
    top tier, every disagreement an audit finds, hard examples delivered to the hub, and the
    shares of confident answers below; at most ``max_per_minute`` a model. The hub's intake
    then holds each model to its limits per minute, hour and day."""

    enabled: bool = True
    """Offer cases and report traffic (the hub's streams are made by ``mesh fleet init``)."""
    sample_rate: float = Field(0.005, ge=0.0, le=1.0)
    """Share of confident final answers offered at random: ground truth for answers nobody
    doubted."""
    drift_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Share of confident answers offered while the model's drift score is over the node's
    ``drift_threshold``."""
    max_per_minute: int = Field(60, ge=1)
    """Most candidates of one model this node offers in any minute (a caller's
    ``human_review=always`` is bounded by the hub only)."""
    max_in_flight: int = Field(64, ge=1)
    """Candidates being sent at once; more are dropped (counted), never waited for."""
    publish_timeout_s: float = Field(2.0, gt=0)
    """How long one candidate may wait for the hub's acknowledgement."""
    zone: str = "cloud"
    """Residency zone of the review queue (the hub's): an item whose request's residency does
    not allow it goes without its input."""
    traffic_interval_s: float = Field(30.0, gt=0)
    """Seconds between this node's running totals (requests, escalations per version)."""
    models: dict[str, ReviewRates] = Field(default_factory=dict)
    """A model's own rates in place of ``sample_rate`` and ``drift_rate``."""

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_zone(v)


class ShadowSettings(_Section):
    """A version run in shadow beside a served one (a rollout's shadow stage, assigned by the
    fleet): on copies of the served version's inputs, after their replies, in its own worker
    thread; it never answers (``docs/fleet.md``)."""

    cpu_share: float = Field(0.25, gt=0.0, le=1.0)
    """Most of one core its model calls may take: after each call it rests long enough."""
    max_queue: int = Field(64, ge=1)
    """Batches waiting for it; a batch that finds the queue full is skipped (counted)."""


class WebhookSettings(_Section):
    """An HTTP endpoint an action posts its action event to (JSON)."""

    url: str = Field(pattern=r"^https?://")
    """Where to POST."""
    timeout_s: float = Field(5.0, gt=0)
    """Per attempt."""
    attempts: int = Field(4, ge=1, le=20)
    """Tries before the action goes to the actions' dead-letter stream."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (an Authorization header, say)."""


class ActionRule(_Section):
    """Turns result events into actions: every condition set must hold (of any row's label)."""

    name: str
    """Rule name: it names the action events and their dead letters."""
    model: str | None = None
    """Only results of this model."""
    labels: list[int] | None = None
    """Some row's predicted label is one of these."""
    min_confidence: float | None = Field(None, ge=0)
    """The answer's confidence is at least this."""
    max_confidence: float | None = Field(None, ge=0)
    """The answer's confidence is at most this."""
    degraded: bool | None = None
    """The answer is (true) or is not (false) degraded."""
    tiers: list[str] | None = None
    """The answer came from one of these tiers."""
    errors: bool = False
    """Match error results (which have no label or confidence) instead of answers."""
    publish: str | None = Field(None, pattern=r"^mesh\.actions\.[A-Za-z0-9_\-.]+$")
    """Publish the action event on this subject (under ``mesh.actions.``: a node's identity
    may publish there and nowhere else of its choosing)."""
    webhook: WebhookSettings | None = None
    """POST the action event here, retried, then dead-lettered."""

    @field_validator("name")
    @classmethod
    def _rule_name(cls, v: str) -> str:
        return check_token(v, "action rule name")

    @model_validator(mode="after")
    def _one_target(self) -> ActionRule:
        if (self.publish is None) == (self.webhook is None):
            raise ValueError(f"action rule {self.name}: set exactly one of publish and webhook")
        return self


class EventSettings(_Section):
    """Event streams at the entry tier: inference events in, result events out (JetStream, in
    the local domain)."""

    enabled: bool = False
    """Consume ``mesh.events.<model>.<source>`` for the models served (entry tier only). The
    streams, their bounds and each source's quota are the provisioning step's
    (``mesh.topology.streams.EventLimits``)."""
    max_deliver: int = Field(5, ge=1)
    """Deliveries of one event before it goes to the dead-letter stream."""
    ack_wait_s: float = Field(30.0, gt=0)
    """How long an event may be in flight before it is delivered again."""
    max_ack_pending: int = Field(1024, ge=1)
    """Events in flight at once across the tier's replicas."""
    fetch_batch: int = Field(64, ge=1)
    """Events fetched at once: one batch through the data plane."""
    actions: list[ActionRule] = Field(default_factory=list)
    """Rules that turn stored results into actions (published events or webhooks)."""
    max_pending_actions: int = Field(1000, ge=1)
    """Actions under way at once; more go straight to the dead-letter stream (a slow webhook
    never slows inference)."""


class FleetSettings(_Section):
    """The node's fleet agent: takes the versions the fleet's desired state assigns it."""

    enabled: bool = False
    """Watch the desired state and heartbeat into the fleet's registry."""
    domain: str = "hub"
    """JetStream domain of the server this node connects to (a site's, or ``hub``): the
    registry is read there and the heartbeat written to its ``MESH_NODES_<DOMAIN>``."""
    site: str = ""
    """Site name the node reports and selectors match (default: the domain)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels selectors match, e.g. ``{"line": "4"}``."""
    trusted_keys: list[str] = Field(default_factory=list)
    """Public keys (``ed25519:...``, or paths to ``.pub`` files) whose signatures this node
    accepts; more than one while keys rotate."""
    cache_dir: Path | None = None
    """Where verified versions are kept, so a restart serves them without the registry."""
    heartbeat_s: float = Field(2.0, gt=0)
    """Seconds between heartbeats."""
    fetch_timeout_s: float = Field(60.0, gt=0)
    """How long an assigned version may stay missing or incomplete at the node's site before
    the node logs a warning about it (a site's mirror can lag the desired state). It is never
    refused for that: the node tries again, pausing up to 30 s, while it is assigned."""
    gate_runs: int = Field(100, ge=10)
    """Single-row runs of the on-device latency gate."""
    max_artifact_bytes: int = Field(512 * 1024 * 1024, ge=1)
    """Largest artifact the node fetches."""

    @model_validator(mode="after")
    def _complete(self) -> FleetSettings:
        check_token(self.domain, "fleet domain")
        if self.site:
            check_token(self.site, "fleet site")
        if self.enabled and not self.trusted_keys:
            raise ValueError(
                "fleet.enabled needs fleet.trusted_keys: a node loads only signed versions"
            )
        if self.enabled and self.cache_dir is None:
            raise ValueError("fleet.enabled needs fleet.cache_dir for verified versions")
        return self

    @property
    def site_name(self) -> str:
        return self.site or self.domain
