"""Every JetStream stream, bucket and durable consumer of the mesh: names, configurations, and
which domain holds which. Pure: ``mesh.transport.jetstream`` turns these into nats-py's
configurations and the provisioning step (``mesh fleet init``, ``mesh up``) creates them with an
administrator's identity. No runtime identity creates or updates a stream: nodes, controllers,
applications and the console only look streams up and use the consumers their role needs.

Per domain (``MeshTopology.plan``):

- every tier with a tier above it: ``MESH_HARD_<TIER>`` on ``mesh.hard.<tier>.>``, a work queue
  of the hard examples it recorded (what is acknowledged is gone, what is left is the backlog);
- every tier with a tier below it: ``MESH_LEARN_<TIER>`` on ``mesh.learn.<tier>.>``, the hard
  examples it took up from below (limits retention, deduplicated by request id);
- the entry tier's domains: the event streams (``MESH_EVENTS``, ``MESH_RESULTS``,
  ``MESH_EVENTS_DEAD``, ``MESH_ACTIONS_DEAD``);
- the review queue, at the hub: ``MESH_REVIEW_CANDIDATES`` (what nodes offer),
  ``MESH_REVIEW`` (the queue), the bucket ``MESH_REVIEW_LABELS``, ``MESH_REVIEW_LABELLED`` (labels
  told to the applications that asked) and ``MESH_REVIEW_TRAFFIC`` (nodes' running totals), all
  limits retention (never a work queue: nats-server #3207);
- the fleet: at the hub the model store ``MESH_MODELS`` and the buckets ``MESH_FLEET_DESIRED``,
  ``MESH_FLEET_NODES`` (sourcing every domain's heartbeats), ``MESH_FLEET_ROLLOUTS`` and
  ``MESH_FLEET_REVOKED``; in every domain ``MESH_NODES_<DOMAIN>``; in every site mirrors of the
  model store, the desired state and the revocations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from mesh.topology import subjects
from mesh.topology.subjects import check_token, stream_token

MiB = 1024 * 1024
DAY_S = 24 * 3600.0

# --- names ----------------------------------------------------------------------------------

EVENTS_STREAM = "MESH_EVENTS"
RESULTS_STREAM = "MESH_RESULTS"
DEAD_STREAM = "MESH_EVENTS_DEAD"
ACTIONS_DEAD_STREAM = "MESH_ACTIONS_DEAD"
#: the event streams, in the entry tier's domains.
EVENT_STREAMS = (EVENTS_STREAM, RESULTS_STREAM, DEAD_STREAM, ACTIONS_DEAD_STREAM)

MODEL_STORE = "MESH_MODELS"
DESIRED_BUCKET = "MESH_FLEET_DESIRED"
#: heartbeats of every node, at the hub, sourced from each domain's ``MESH_NODES_<DOMAIN>``.
NODES_BUCKET = "MESH_FLEET_NODES"
#: rollouts (``rollout.<model>``), their evidence windows and the controllers' leader lease.
ROLLOUTS_BUCKET = "MESH_FLEET_ROLLOUTS"
#: revoked versions (``<model>.<version>`` to a signed revocation), mirrored to every site.
REVOKED_BUCKET = "MESH_FLEET_REVOKED"

MODEL_STORE_STREAM = subjects.object_stream(MODEL_STORE)
DESIRED_STREAM = subjects.kv_stream(DESIRED_BUCKET)
NODES_STREAM = subjects.kv_stream(NODES_BUCKET)
ROLLOUTS_STREAM = subjects.kv_stream(ROLLOUTS_BUCKET)
REVOKED_STREAM = subjects.kv_stream(REVOKED_BUCKET)

REVIEW_CANDIDATES_STREAM = "MESH_REVIEW_CANDIDATES"
REVIEW_STREAM = "MESH_REVIEW"
#: labels and skips by item id, with their history (who, when; a relabel keeps the one before).
REVIEW_LABELS_BUCKET = "MESH_REVIEW_LABELS"
REVIEW_LABELS_STREAM = subjects.kv_stream(REVIEW_LABELS_BUCKET)
REVIEW_LABELLED_STREAM = "MESH_REVIEW_LABELLED"
REVIEW_TRAFFIC_STREAM = "MESH_REVIEW_TRAFFIC"
#: the durable consumer through which the review intake takes the nodes' candidates.
REVIEW_INTAKE_CONSUMER = "review-intake"

HUB_DOMAIN = "hub"

#: the key of a model's latest rollout in ``MESH_FLEET_ROLLOUTS`` (``rollout.<model>``); the
#: bucket's other keys are the controllers' (evidence windows, the leader's lease).
ROLLOUT_KEY_PREFIX = "rollout."


def rollout_key(model: str) -> str:
    return f"{ROLLOUT_KEY_PREFIX}{model}"


#: heartbeats kept per node (in each domain's bucket and in the hub's).
HEARTBEAT_HISTORY = 64
DESIRED_HISTORY = 8
ROLLOUT_HISTORY = 16
REVOKED_HISTORY = 1


def hard_example_stream(tier: str) -> str:
    """The stream where a tier keeps the hard examples it recorded, in its own domain."""
    return f"MESH_HARD_{stream_token(tier)}"


def inbox_stream(tier: str) -> str:
    """The stream where a tier keeps the hard examples it took up, in its own domain."""
    return f"MESH_LEARN_{stream_token(tier)}"


def nodes_bucket(domain: str) -> str:
    """The heartbeat bucket of a JetStream domain: ``MESH_NODES_<DOMAIN>``."""
    return "MESH_NODES_" + stream_token(check_token(domain, "domain"))


def collector_consumer(tier: str, domain: str | None = None) -> str:
    """The durable consumer through which ``tier`` takes up the hard examples of the tier
    below it (on that tier's ``MESH_HARD_<TIER>``; the tier's replicas share it), in the
    stream's ``domain`` when it is another than the collector's own (``collect-<tier>-<domain>``).

    The domain is in the name because an acknowledgement subject is not: it names the stream and
    the consumer only (``$JS.ACK.<stream>.<consumer>...``), and every site's stream has the same
    name. With one consumer name for all sites, the hub's acknowledgement of one site's message
    reaches every site's consumer and removes whatever each had delivered under that sequence,
    taken up or not (a hard example lost when the collector fails before storing it)."""
    name = f"collect-{check_token(tier, 'tier')}"
    return name if domain is None else f"{name}-{check_token(domain, 'domain')}"


def events_consumer(tier: str, model: str) -> str:
    """The durable pull consumer a tier's replicas share for one model's events."""
    return f"mesh-{check_token(tier, 'tier')}-{check_token(model, 'model name')}"


def site_local_subjects() -> tuple[str, ...]:
    """What never crosses a site's leaf link, either way: every site has streams of the same
    names on these subjects (its events, results and dead letters, its hard examples and what
    its tiers took up), so a copy crossing would be stored by every other site too (a site's
    raw inputs in another site's streams, each hard example taken up once per site)."""
    return (
        f"{subjects.EVENTS_PREFIX}.>",
        f"{subjects.RESULTS_PREFIX}.>",
        f"{subjects.DEAD_PREFIX}.>",
        subjects.ACTIONS_DEAD_WILDCARD,
        f"{subjects.HARD_PREFIX}.>",
        f"{subjects.LEARN_PREFIX}.>",
    )


#: acknowledgements made at a site stay there (its leaf link exports none): consumers at every
#: site share their names (``mesh-<tier>-<model>`` on the event stream, the apps' result
#: consumers, ``collect-<tier>`` of a tier collecting at its own site), and an acknowledgement
#: subject does not name the domain, so one site's would acknowledge another's delivery. The
#: hub's acknowledgements of a site's stream come in, to consumers named with that site's
#: domain (``collector_consumer``).
SITE_KEPT_SUBJECTS = (subjects.JS_ACK_ALL,)


# --- configurations -------------------------------------------------------------------------


class Retention(StrEnum):
    LIMITS = "limits"
    WORK_QUEUE = "workqueue"


class Discard(StrEnum):
    OLD = "old"
    NEW = "new"


@dataclass(frozen=True)
class Source:
    """A stream another one sources (or mirrors), in ``domain`` (None: the same domain)."""

    stream: str
    domain: str | None = None
    #: (from, to) subject transform applied to what is sourced.
    transform: tuple[str, str] | None = None


@dataclass(frozen=True)
class StreamSpec:
    name: str
    description: str
    subjects: tuple[str, ...] = ()
    retention: Retention = Retention.LIMITS
    discard: Discard = Discard.OLD
    max_bytes: int = -1
    max_age_s: float = 0.0
    max_msg_size: int = -1
    duplicate_window_s: float = 0.0
    max_msgs_per_subject: int = -1
    #: with ``discard`` new: a subject at ``max_msgs_per_subject`` refuses more, the others not.
    discard_new_per_subject: bool = False
    mirror: Source | None = None
    sources: tuple[Source, ...] = ()
    replicas: int = 1
    #: the stream's messages may not be deleted or purged through the API, by anyone.
    protected: bool = True


@dataclass(frozen=True)
class BucketSpec:
    """A KV bucket (``KV_<bucket>``)."""

    bucket: str
    description: str
    history: int = 1
    sources: tuple[Source, ...] = ()
    replicas: int = 1

    @property
    def stream(self) -> str:
        return subjects.kv_stream(self.bucket)


@dataclass(frozen=True)
class ObjectStoreSpec:
    store: str
    description: str
    replicas: int = 1

    @property
    def stream(self) -> str:
        return subjects.object_stream(self.store)


Spec = StreamSpec | BucketSpec | ObjectStoreSpec


class HardExampleLimits(BaseModel):
    """Bounds of each tier's hard-example streams (``MESH_HARD_<TIER>``, ``MESH_LEARN_<TIER>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(256 * MiB, ge=1024)
    """Size bound of a tier's backlog, and of what it took up from below."""
    max_age_s: float = Field(7 * DAY_S, gt=0)
    """Age bound of both: at least the longest link outage a site must ride out."""
    duplicate_window_s: float = Field(DAY_S, gt=0)
    """How long both remember request ids to drop a second copy."""


class EventLimits(BaseModel):
    """Bounds of the event streams, and each source's share of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(256 * MiB, ge=1024)
    """Size bound of the event stream (events not yet inferred: acknowledged ones are gone)."""
    max_event_bytes: int = Field(1 * MiB, ge=1024)
    """Largest event the stream takes; a larger one is refused at publish."""
    per_source_events: int = Field(64, ge=1)
    """Events of one source for one model waiting to be inferred, at most: more are refused at
    publish (RESOURCE_EXHAUSTED for that source only). So one source holds at most
    ``per_source_events * max_event_bytes`` of the stream per model, and another source's event
    waits behind at most this many of its events."""
    max_age_s: float = Field(7 * DAY_S, gt=0)
    """Age bound of events and results."""
    results_max_bytes: int = Field(256 * MiB, ge=1024)
    """Size bound of the result stream: the oldest results go first."""
    max_result_bytes: int = Field(1 * MiB, ge=512)
    """Largest result event the result stream keeps."""
    duplicate_window_s: float = Field(600, gt=0)
    """How long both streams remember event ids to drop a second copy."""


class ReviewLimits(BaseModel):
    """Bounds of the review streams at the hub (``docs/review.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_s: float = Field(30 * DAY_S, gt=0)
    """How long the queue keeps an item, labelled or not, and the labels told to applications
    and the nodes' totals: the span the ground truth and the report cover."""
    max_bytes: int = Field(256 * MiB, ge=1024)
    """Size bound of the queue (items keep their input: one row each)."""
    duplicate_window_s: float = Field(DAY_S, gt=0)
    """How long the queue remembers item ids (one per request) to drop a second copy."""
    candidates_max_age_s: float = Field(DAY_S, gt=0)
    """How long a candidate waits for the intake: one older than this was never worth a look."""
    candidates_max_bytes: int = Field(64 * MiB, ge=1024)
    """Size bound of what nodes offered and the intake has not judged yet."""
    label_history: int = Field(16, ge=2, le=64)
    """Labels kept per item: the current one and those it replaced."""
    labelled_max_bytes: int = Field(64 * MiB, ge=1024)
    """Size bound of the labels told to applications."""
    traffic_max_bytes: int = Field(64 * MiB, ge=1024)
    """Size bound of the nodes' running totals (requests and escalations per version)."""


_HARD_DEFAULTS = HardExampleLimits()
_EVENT_DEFAULTS = EventLimits()
_REVIEW_DEFAULTS = ReviewLimits()


class FleetLimits(BaseModel):
    """Bounds of the fleet's heartbeat buckets (readers take each node's latest only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_history: int = Field(HEARTBEAT_HISTORY, ge=1, le=64)
    """Heartbeats kept per node in its domain's ``MESH_NODES_<DOMAIN>``."""
    hub_heartbeat_history: int = Field(HEARTBEAT_HISTORY, ge=1, le=64)
    """Heartbeats kept per node in the hub's ``MESH_FLEET_NODES``, on every hub server: at
    10,000 nodes each kept heartbeat is about 8 MB per server (docs/scale.md)."""


class StreamLimits(BaseModel):
    """The limits the provisioning step gives the mesh's streams (``mesh fleet init``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hard_examples: HardExampleLimits = HardExampleLimits()
    events: EventLimits = EventLimits()
    review: ReviewLimits = ReviewLimits()
    fleet: FleetLimits = FleetLimits()


@dataclass(frozen=True)
class TierPlacement:
    """A tier of the chain and where its nodes connect: every site's server, or the hub's."""

    name: str
    at_sites: bool


@dataclass(frozen=True)
class MeshTopology:
    """The chain of tiers (lowest first), the domains, and what each domain holds."""

    tiers: tuple[TierPlacement, ...]
    sites: tuple[str, ...] = ()
    hub: str = HUB_DOMAIN
    #: models whose events the entry tier takes; None: any model.
    event_models: tuple[str, ...] | None = None
    events: bool = True
    fleet: bool = True
    #: the review queue's streams at the hub (``docs/review.md``).
    review: bool = True
    limits: StreamLimits = field(default_factory=StreamLimits)
    #: replicas of every stream in the hub's domain (3 on a clustered hub).
    hub_replicas: int = 1

    def domains(self) -> tuple[str, ...]:
        return (self.hub, *self.sites)

    def domains_of(self, tier: str) -> tuple[str, ...]:
        placement = self._placement(tier)
        return self.sites if placement.at_sites else (self.hub,)

    def below(self, tier: str) -> str | None:
        names = [t.name for t in self.tiers]
        at = names.index(self._placement(tier).name)
        return names[at - 1] if at > 0 else None

    def above(self, tier: str) -> str | None:
        names = [t.name for t in self.tiers]
        at = names.index(self._placement(tier).name)
        return names[at + 1] if at + 1 < len(names) else None

    def _placement(self, tier: str) -> TierPlacement:
        for placement in self.tiers:
            if placement.name == tier:
                return placement
        raise ValueError(f"tier {tier!r} is not in the chain {[t.name for t in self.tiers]}")

    def plan(self, domain: str) -> list[Spec]:
        """What ``domain`` holds, in the order it must be created."""
        if domain not in self.domains():
            raise ValueError(f"domain {domain!r} is not among {list(self.domains())}")
        replicas = self.hub_replicas if domain == self.hub else 1
        here = [t.name for t in self.tiers if domain in self.domains_of(t.name)]
        specs: list[Spec] = []
        for tier in here:
            if self.above(tier) is not None:
                specs.append(hard_example_spec(tier, self.limits.hard_examples, replicas))
            if self.below(tier) is not None:
                specs.append(learn_spec(tier, self.limits.hard_examples, replicas))
        if self.events and self.tiers and self.tiers[0].name in here:
            specs.extend(event_specs(self.event_models, self.limits.events, replicas))
        if self.fleet:
            specs.extend(self._fleet(domain, replicas))
        if self.review and domain == self.hub:
            specs.extend(review_specs(self.limits.review, replicas))
        return specs

    def _fleet(self, domain: str, replicas: int) -> list[Spec]:
        own = BucketSpec(
            nodes_bucket(domain),
            f"Heartbeats of the nodes in domain {domain}",
            history=self.limits.fleet.heartbeat_history,
            replicas=replicas,
        )
        if domain != self.hub:
            return [
                own,
                _mirror(DESIRED_STREAM, self.hub, DESIRED_HISTORY),
                # every message of its subject: an object's chunks all go on one subject, and
                # keeping one a subject left a site the last 67456 of 198528 bytes
                _mirror(MODEL_STORE_STREAM, self.hub, -1),
                _mirror(REVOKED_STREAM, self.hub, REVOKED_HISTORY),
            ]
        heartbeat_sources = tuple(
            Source(
                subjects.kv_stream(nodes_bucket(d)),
                None if d == self.hub else d,
                (subjects.kv(nodes_bucket(d), ">"), subjects.kv(NODES_BUCKET, ">")),
            )
            for d in self.domains()
        )
        return [
            ObjectStoreSpec(
                MODEL_STORE, "Signed model artifacts: <model>/<version>/<part>", replicas
            ),
            BucketSpec(
                DESIRED_BUCKET,
                "Desired state: <model>.<selector> to the version those nodes serve",
                history=DESIRED_HISTORY,
                replicas=replicas,
            ),
            BucketSpec(
                ROLLOUTS_BUCKET,
                "Rollouts (rollout.<model>), their evidence windows and the controller lease",
                history=ROLLOUT_HISTORY,
                replicas=replicas,
            ),
            BucketSpec(
                REVOKED_BUCKET,
                "Revoked versions: <model>.<version> to a revocation signed with the fleet's key",
                history=REVOKED_HISTORY,
                replicas=replicas,
            ),
            own,
            BucketSpec(
                NODES_BUCKET,
                "Heartbeats of every node, sourced from each domain's MESH_NODES_<DOMAIN>",
                history=self.limits.fleet.hub_heartbeat_history,
                sources=heartbeat_sources,
                replicas=replicas,
            ),
        ]


def _mirror(stream: str, hub: str, history: int) -> StreamSpec:
    """A site's copy of a hub stream: its nodes watch and fetch from their own server while the
    hub is out of reach."""
    return StreamSpec(
        name=stream,
        description=f"Mirror of {stream} in the {hub} domain, for this site's nodes",
        mirror=Source(stream, hub),
        max_msgs_per_subject=history,
        protected=False,
    )


def hard_example_spec(
    tier: str, limits: HardExampleLimits = _HARD_DEFAULTS, replicas: int = 1
) -> StreamSpec:
    return StreamSpec(
        name=hard_example_stream(tier),
        description=f"Hard examples tier {tier} recorded, until the tier above takes them up",
        subjects=(subjects.hard_examples_wildcard(tier),),
        retention=Retention.WORK_QUEUE,
        discard=Discard.OLD,
        max_bytes=limits.max_bytes,
        max_age_s=limits.max_age_s,
        duplicate_window_s=min(limits.duplicate_window_s, limits.max_age_s),
        replicas=replicas,
    )


def learn_spec(
    tier: str, limits: HardExampleLimits = _HARD_DEFAULTS, replicas: int = 1
) -> StreamSpec:
    return StreamSpec(
        name=inbox_stream(tier),
        description=f"Hard examples tier {tier} took up from the tier below it",
        subjects=(subjects.inbox_wildcard(tier),),
        max_bytes=limits.max_bytes,
        max_age_s=limits.max_age_s,
        duplicate_window_s=min(limits.duplicate_window_s, limits.max_age_s),
        replicas=replicas,
    )


def event_subjects(models: tuple[str, ...] | None) -> tuple[str, ...]:
    """What the event stream takes: one subject per model served, so an event for a model no
    tier serves is refused at publish (no stream answers it)."""
    if models is None:
        return (subjects.event(subjects.ANY, subjects.ANY),)
    return tuple(subjects.event(check_token(m, "model name"), subjects.ANY) for m in models)


def event_specs(
    models: tuple[str, ...] | None, limits: EventLimits = _EVENT_DEFAULTS, replicas: int = 1
) -> list[StreamSpec]:
    window = limits.duplicate_window_s
    return [
        StreamSpec(
            name=EVENTS_STREAM,
            description="Inference events waiting to be inferred (mesh.events.<model>.<source>)",
            subjects=event_subjects(models),
            retention=Retention.WORK_QUEUE,
            discard=Discard.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=limits.per_source_events,
            max_bytes=limits.max_bytes,
            max_msg_size=limits.max_event_bytes,
            max_age_s=limits.max_age_s,
            duplicate_window_s=window,
            replicas=replicas,
        ),
        StreamSpec(
            name=RESULTS_STREAM,
            description="One result event per inference event (mesh.results.<model>.<source>)",
            subjects=(subjects.result(subjects.ANY, subjects.ANY),),
            max_bytes=limits.results_max_bytes,
            max_msg_size=limits.max_result_bytes,
            max_age_s=limits.max_age_s,
            duplicate_window_s=window,
            replicas=replicas,
        ),
        StreamSpec(
            name=DEAD_STREAM,
            description="Events that failed max_deliver times, with the reason in a header",
            subjects=(subjects.dead_letter(subjects.ANY, subjects.ANY),),
            max_bytes=dead_letter_bytes(limits),
            max_age_s=limits.max_age_s,
            replicas=replicas,
        ),
        StreamSpec(
            name=ACTIONS_DEAD_STREAM,
            description="Action events whose webhook kept failing, with the reason in a header",
            subjects=(subjects.ACTIONS_DEAD_WILDCARD,),
            max_bytes=dead_letter_bytes(limits),
            max_age_s=limits.max_age_s,
            replicas=replicas,
        ),
    ]


def dead_letter_bytes(limits: EventLimits) -> int:
    """Size bound of a dead-letter stream: a quarter of the event stream's (JetStream reserves
    every stream's max_bytes from the server's file store up front)."""
    return max(MiB, limits.max_bytes // 4)


def review_specs(limits: ReviewLimits = _REVIEW_DEFAULTS, replicas: int = 1) -> list[Spec]:
    """The review queue's streams and bucket, at the hub."""
    return [
        StreamSpec(
            name=REVIEW_CANDIDATES_STREAM,
            description="Cases nodes offer for human review, until the intake judges them",
            subjects=(subjects.REVIEW_CANDIDATES,),
            max_bytes=limits.candidates_max_bytes,
            max_age_s=limits.candidates_max_age_s,
            duplicate_window_s=min(600.0, limits.candidates_max_age_s),
            replicas=replicas,
        ),
        StreamSpec(
            name=REVIEW_STREAM,
            description="The review queue: one item per request (mesh.review.queue.<model>.<id>)",
            subjects=(subjects.REVIEW_QUEUE,),
            max_bytes=limits.max_bytes,
            max_age_s=limits.max_age_s,
            duplicate_window_s=min(limits.duplicate_window_s, limits.max_age_s),
            replicas=replicas,
        ),
        BucketSpec(
            REVIEW_LABELS_BUCKET,
            "Labels and skips of review items by item id, with the ones they replaced",
            history=limits.label_history,
            replicas=replicas,
        ),
        StreamSpec(
            name=REVIEW_LABELLED_STREAM,
            description="Labels told to the application that asked (mesh.review.labelled."
            "<model>.<caller>)",
            subjects=(subjects.REVIEW_LABELLED,),
            max_bytes=limits.labelled_max_bytes,
            max_age_s=limits.max_age_s,
            duplicate_window_s=600.0,
            replicas=replicas,
        ),
        StreamSpec(
            name=REVIEW_TRAFFIC_STREAM,
            description="Nodes' running totals of requests and escalations per model version",
            subjects=(subjects.REVIEW_TRAFFIC,),
            max_bytes=limits.traffic_max_bytes,
            max_age_s=limits.max_age_s,
            replicas=replicas,
        ),
    ]


def standard_topology(
    tiers: tuple[str, ...] = ("edge", "gateway", "cloud"),
    *,
    sites: tuple[str, ...] = ("site",),
    hub: str = HUB_DOMAIN,
    **options: object,
) -> MeshTopology:
    """The README's layout: the top tier at the hub, every other tier at each site. With no
    sites, every tier is at the hub (one server, as the tests' single-server chains run)."""
    placements = tuple(
        TierPlacement(t, at_sites=bool(sites) and i < len(tiers) - 1) for i, t in enumerate(tiers)
    )
    return MeshTopology(tiers=placements, sites=sites, hub=hub, **options)  # type: ignore[arg-type]
