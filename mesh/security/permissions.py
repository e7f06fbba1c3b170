"""Who may publish and subscribe what: the mesh's permission table, generated from the topology.

Every subject, stream and consumer name here comes from ``mesh.topology`` (the one home of the
names the mesh puts on the wire), so a rename changes the permissions with it and can neither
open nor close a door by accident. ``permissions_for`` builds one identity's rights from its role
and where it sits (tier, the tiers above and below, the entry tier, its JetStream domain, the
models it is limited to); ``docs/security.md`` prints the table it makes.

Rules the table encodes:

- Every client identity has an inbox prefix of its own, ``_INBOX_<name>``, and may subscribe to
  no other inbox: nobody reads replies meant for someone else.
- A node takes its tier's subjects only in its tier's queue group (``"subject queue"`` is NATS
  syntax for "this subject, in this queue group only"), and the entry subjects only in
  ``mesh.entry`` when it is the entry tier. It publishes its own telemetry and heartbeat and its
  own tier's hard examples, escalates only to the tier above, and answers what it receives
  through ``allow_responses``.
- JetStream is administered by the fleet, not by its members. Streams and buckets are created
  and configured by the provisioning step (``mesh fleet init``, ``mesh up``) with the
  administrator's identity. No other role may create, update, delete, purge, seal, snapshot or
  restore any stream, nor delete a consumer or a message, in the local domain (``$JS.API``) or
  any other (``$JS.<domain>.API``); a site's leaf link may not carry those calls to the hub
  either. Runtime roles call only the read operations of the streams their role reads, and
  create only their own durable consumers, by name and filter
  (``CONSUMER.CREATE.<stream>.<consumer>.<filter>``).
- Nobody consumes a stream whose content only it writes (a node's hard examples are taken up
  by the tier above it, never forwarded by the node itself). NATS sends a consumer's deliveries
  to the subject its creator names without checking that identity's rights (nats-server #8274),
  so a role that could read back what it wrote could write anything anywhere; here a role can
  only re-deliver what others wrote, and the readers of the fleet's buckets check each entry's
  key and order (``docs/security.md``).
- Only the controller writes the fleet's desired state, its rollouts, its revocations and the
  model store; a node writes only its own heartbeat key, in its own domain's bucket. The console
  may also write a rollout's record (pause, resume, abort, as ``mesh rollout pause`` does),
  never the controllers' windows and lease in that bucket.
- The review queue has two service identities so that neither reads back what it wrote: the
  intake takes the nodes' candidates and writes the queue, the labels and what applications are
  told; the desk reads those and answers the review API, asking the intake to store labels. A
  caller of the API names itself in the subject (``mesh.review.api.<op>.<name>``), which its
  permissions allow for its own name only: a reviewer may label, the console only read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from mesh.topology import streams, subjects
from mesh.topology.subjects import ANY, REST


class Role(StrEnum):
    APPLICATION = "application"
    NODE = "node"
    CONTROLLER = "controller"
    INGRESS = "ingress"
    CONSOLE = "console"
    OPERATOR = "operator"
    LEAF = "leaf"
    #: a person who labels review items (``mesh review``, the console on their behalf).
    REVIEWER = "reviewer"
    #: the review queue's intake: takes the nodes' candidates, writes the queue and the labels.
    REVIEW_INTAKE = "review-intake"
    #: the review queue's desk: reads the queue and the labels, answers the review API.
    REVIEW_DESK = "review-desk"
    #: an edge tier hosted in an application's own process (``MeshClient.connect(local=...)``):
    #: a node's rights but for taking requests and events over NATS (it is asked in-process).
    LOCAL_EDGE = "local-edge"


@dataclass(frozen=True)
class Permissions:
    """NATS user permissions, as they go into a user JWT (or an ``authorization`` block)."""

    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    #: an entry ``"subject queue"`` allows the subject only in that queue group.
    subscribe_allow: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    #: may publish once to the reply subject of each request it received.
    allow_responses: bool = False


# --- the JetStream API, verb by verb --------------------------------------------------------

#: reading a stream, a KV bucket or an object store: look it up, get messages, and watch it
#: through an ordered consumer (nats-py creates those without a name, ``CONSUMER.CREATE.<s>``).
JS_READ = (
    "STREAM.INFO.{stream}",
    "STREAM.MSG.GET.{stream}",
    "DIRECT.GET.{stream}",
    "DIRECT.GET.{stream}.>",
    "CONSUMER.CREATE.{stream}",
    # nats-py looks its ordered consumer up by the name the server gave it
    "CONSUMER.INFO.{stream}.*",
)
#: one durable consumer, by name and filter: create (or find) it, read its state, pull from it.
JS_CONSUME = (
    "CONSUMER.CREATE.{stream}.{consumer}.{filter}",
    "CONSUMER.INFO.{stream}.{consumer}",
    "CONSUMER.MSG.NEXT.{stream}.{consumer}",
)
#: what only the administrator may call, in any domain.
JS_ADMIN = (
    "STREAM.CREATE.>",
    "STREAM.UPDATE.>",
    "STREAM.DELETE.>",
    "STREAM.PURGE.>",
    "STREAM.MSG.DELETE.>",
    "STREAM.SNAPSHOT.>",
    "STREAM.RESTORE.>",
    "STREAM.PEER.REMOVE.>",
    "STREAM.LEADER.STEPDOWN.>",
    "CONSUMER.DELETE.>",
    "CONSUMER.DURABLE.CREATE.>",
    "CONSUMER.LEADER.STEPDOWN.>",
    "META.>",
    "ACCOUNT.PURGE.>",
    "SERVER.>",
)
#: the local domain's API and any domain's by name.
JS_DOMAINS = (None, ANY)


def js_api(operations: Iterable[str], **fields: str) -> list[str]:
    """``operations`` filled in with ``fields``, under the local and every named domain."""
    return [
        subjects.js_api(op.format(**fields), domain) for op in operations for domain in JS_DOMAINS
    ]


NO_JS_ADMIN = tuple(js_api(JS_ADMIN))
DESIRED_WRITE = subjects.kv(streams.DESIRED_BUCKET, REST)
ROLLOUTS_WRITE = subjects.kv(streams.ROLLOUTS_BUCKET, REST)
#: the rollout records alone (``rollout.<model>``), not the controllers' other keys.
ROLLOUT_RECORDS_WRITE = subjects.kv(streams.ROLLOUTS_BUCKET, streams.rollout_key(ANY))
REVOKED_WRITE = subjects.kv(streams.REVOKED_BUCKET, REST)
MODEL_STORE_WRITE = subjects.object_subjects(streams.MODEL_STORE)
#: what only the review intake writes (the queue, the labels and what applications are told),
#: and the desk's requests to it.
REVIEW_WRITE = (
    subjects.REVIEW_QUEUE,
    subjects.kv(streams.REVIEW_LABELS_BUCKET, REST),
    subjects.REVIEW_LABELLED_ALL,
    subjects.REVIEW_STORE,
)
#: a client may not write what only the controller or the administrator writes.
NOT_CONTROL = (*NO_JS_ADMIN, DESIRED_WRITE, MODEL_STORE_WRITE, ROLLOUTS_WRITE, REVOKED_WRITE)


@dataclass
class _Rights:
    """Rights being built up for one identity: what it may publish and subscribe."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)

    def read(self, stream: str) -> None:
        self.publish.extend(js_api(JS_READ, stream=stream))
        self.publish.append(subjects.js_flow_control(stream))

    def consume(self, stream: str, consumer: str, filter_subject: str) -> None:
        self.publish.extend(
            js_api(JS_CONSUME, stream=stream, consumer=consumer, filter=filter_subject)
        )
        self.publish.append(subjects.js_ack(stream, consumer))

    def info(self, stream: str) -> None:
        self.publish.extend(js_api(["STREAM.INFO.{stream}"], stream=stream))

    def permissions(
        self, *, deny: Sequence[str] = NOT_CONTROL, responses: bool = False
    ) -> Permissions:
        return Permissions(
            publish_allow=_unique(self.publish),
            publish_deny=tuple(deny),
            subscribe_allow=_unique(self.subscribe),
            allow_responses=responses,
        )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Placement:
    """Where an identity sits: its name, tier, the tiers next to it, domain and models."""

    name: str
    tier: str | None = None
    upstream_tier: str | None = None
    downstream_tier: str | None = None
    entry: bool = False
    #: the JetStream domain of the server a node connects to (where its heartbeat goes).
    domain: str | None = None
    #: the models it is limited to; None: every model.
    models: Sequence[str] | None = None

    def model_tokens(self, last: bool) -> list[str]:
        """One token per model, or the wildcard: ``>`` as a subject's last token, else ``*``."""
        if self.models is None:
            return [REST if last else ANY]
        return [subjects.check_token(m, "model name") for m in self.models]


def _application(p: Placement) -> Permissions:
    r = _Rights(subscribe=[f"{subjects.inbox_prefix(p.name)}.>"])
    r.publish.append(f"{subjects.inbox_prefix(p.name)}.>")
    for model in p.model_tokens(last=True):
        # a request may address one tier directly (``MeshClient.infer(..., tier=...)``)
        r.publish += [subjects.entry(model), subjects.tier_infer(ANY, model)]
    for model in p.model_tokens(last=False):
        r.publish.append(subjects.event(model, p.name))
        # results through one durable consumer named after the identity, filtered on its own
        # results only (the filter is part of the create subject)
        r.consume(streams.RESULTS_STREAM, p.name, subjects.result(model, p.name))
        r.subscribe.append(subjects.result(model, p.name))
        # the labels of its own requests and events, through a consumer named after it
        r.consume(streams.REVIEW_LABELLED_STREAM, p.name, subjects.review_labelled(model, p.name))
    return r.permissions()


def _node(p: Placement) -> Permissions:
    return _tier_member(p, takes_requests=True)


def _local_edge(p: Placement) -> Permissions:
    """An edge hosted in an application's process. Its application asks it in-process, so it
    subscribes to no request subject and takes no events (the site's entry tier does). It keeps
    everything else an edge node does: escalation and hard examples for the tier above, its
    tier's other nodes for a model it does not serve, the fleet agent's reads and its
    heartbeat, telemetry, discovery and the review feed. It is no entry tier (no events) and
    takes up no tier's hard examples, whatever its placement says."""
    return _tier_member(replace(p, entry=False, downstream_tier=None), takes_requests=False)


def _tier_member(p: Placement, *, takes_requests: bool) -> Permissions:
    if p.tier is None:
        raise ValueError("a node's permissions need its tier")
    tier = subjects.check_token(p.tier, "tier")
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(
        publish=[subjects.telemetry(p.name), inbox],
        subscribe=[subjects.status(p.name), *subjects.SERVICE_CONTROL, inbox],
    )
    queue = subjects.tier_queue(tier)
    for model in p.model_tokens(last=True):
        # a request for a model this node does not serve, to a neighbour of its tier that does
        r.publish.append(subjects.tier_infer(tier, model))
        if not takes_requests:
            continue
        r.subscribe.append(f"{subjects.tier_infer(tier, model)} {queue}")
        r.subscribe.append(f"{subjects.tier_forward(tier, model)} {queue}")
        if p.entry:
            r.subscribe.append(f"{subjects.entry(model)} {subjects.ENTRY_QUEUE}")
    if p.upstream_tier is not None:
        _node_upstream(r, p, tier)
    if p.downstream_tier is not None:
        _node_collector(r, p, tier)
    if p.entry:
        _node_events(r, p, tier)
    _node_fleet(r, p)
    for model in p.model_tokens(last=False):
        # cases offered for human review, and its own running totals
        r.publish += [subjects.review_candidate(model), subjects.review_traffic(model, p.name)]
    return r.permissions(responses=True)


def _node_upstream(r: _Rights, p: Placement, tier: str) -> None:
    """Escalation to the tier above, and the hard examples kept for it."""
    up = subjects.check_token(p.upstream_tier or "", "upstream tier")
    for model in p.model_tokens(last=True):
        r.publish += [
            subjects.tier_infer(up, model),
            subjects.tier_forward(up, model),
            subjects.hard_examples(tier, model),
        ]
    r.info(streams.hard_example_stream(tier))


def _node_collector(r: _Rights, p: Placement, tier: str) -> None:
    """Taking up the hard examples of the tier below into this tier's own stream."""
    below = subjects.check_token(p.downstream_tier or "", "downstream tier")
    for model in p.model_tokens(last=True):
        r.publish.append(subjects.inbox(tier, model))
    r.info(streams.inbox_stream(tier))
    r.info(streams.hard_example_stream(below))
    stream, wanted = streams.hard_example_stream(below), subjects.hard_examples_wildcard(below)
    r.consume(stream, streams.collector_consumer(tier), wanted)
    # in another domain the consumer's name carries that domain (``collector_consumer``): any
    # name there, on this stream and with this filter only
    r.publish.extend(
        subjects.js_api(op.format(stream=stream, consumer=ANY, filter=wanted), ANY)
        for op in JS_CONSUME
    )
    r.publish.append(subjects.js_ack(stream, ANY))


def _node_events(r: _Rights, p: Placement, tier: str) -> None:
    """The entry tier's event consumers, results, dead letters and actions."""
    for model in p.model_tokens(last=False):
        r.publish += [subjects.result(model, ANY), subjects.dead_letter(model, ANY)]
        consumer = ANY if p.models is None else streams.events_consumer(tier, model)
        r.consume(streams.EVENTS_STREAM, consumer, subjects.event(model, REST))
    r.publish += [subjects.ACTIONS_WILDCARD, subjects.ACTIONS_DEAD_WILDCARD]
    for stream in streams.EVENT_STREAMS:
        r.info(stream)


def _node_fleet(r: _Rights, p: Placement) -> None:
    """The fleet agent: reads the desired state, the revocations and the model store of its
    domain, and writes its own heartbeat key there."""
    r.read(streams.DESIRED_STREAM)
    r.read(streams.REVOKED_STREAM)
    r.read(streams.MODEL_STORE_STREAM)
    if p.domain is not None:
        bucket = streams.nodes_bucket(p.domain)
        r.publish.append(subjects.kv(bucket, p.name))
        r.info(subjects.kv_stream(bucket))


def _controller(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(
        publish=[
            DESIRED_WRITE,
            ROLLOUTS_WRITE,
            REVOKED_WRITE,
            MODEL_STORE_WRITE,
            *subjects.SERVICE_CONTROL,
            subjects.STATUS_ANY,
            inbox,
        ],
        subscribe=[inbox, subjects.TELEMETRY_WILDCARD],
    )
    for stream in (
        streams.DESIRED_STREAM,
        streams.ROLLOUTS_STREAM,
        streams.REVOKED_STREAM,
        streams.NODES_STREAM,
        streams.MODEL_STORE_STREAM,
    ):
        r.read(stream)
    # labels judge its rollouts (``stats``), and the learn job exports the labelled items
    # (``list``, ``show``) with its identity: it reads the review queue, it labels nothing
    _review_api(r, p, subjects.REVIEW_READS)
    return r.permissions(deny=NO_JS_ADMIN)


def _ingress(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    # it asks the nodes what the entry tier serves (readiness, versions) as the console does
    r = _Rights(publish=[*subjects.SERVICE_CONTROL, subjects.STATUS_ANY, inbox], subscribe=[inbox])
    for model in p.model_tokens(last=True):
        r.publish.append(subjects.entry(model))
    for model in p.model_tokens(last=False):
        r.publish.append(subjects.event(model, ANY))
        r.subscribe.append(subjects.result(model, ANY))
    return r.permissions()


def _console(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(
        # pause, resume and abort are compare-and-set writes of a rollout's record, as
        # ``mesh rollout pause`` makes them; the console may write those keys and no other key of
        # the bucket (the controllers' evidence windows and lease), nor the desired state
        publish=[*subjects.SERVICE_CONTROL, subjects.STATUS_ANY, inbox, ROLLOUT_RECORDS_WRITE],
        subscribe=[inbox, subjects.TELEMETRY_WILDCARD],
    )
    for stream in (
        streams.DESIRED_STREAM,
        streams.NODES_STREAM,
        streams.ROLLOUTS_STREAM,
        streams.REVOKED_STREAM,
    ):
        r.read(stream)
    # it shows the review queue and its ground truth; labelling is a reviewer's
    _review_api(r, p, subjects.REVIEW_READS)
    return r.permissions(deny=(*NO_JS_ADMIN, DESIRED_WRITE, MODEL_STORE_WRITE, REVOKED_WRITE))


def _review_api(r: _Rights, p: Placement, operations: Iterable[str]) -> None:
    r.publish += [subjects.review_api(op, p.name) for op in operations]


def _reviewer(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(publish=[inbox], subscribe=[inbox])
    _review_api(r, p, (*subjects.REVIEW_READS, *subjects.REVIEW_WRITES))
    return r.permissions(deny=(*NOT_CONTROL, *REVIEW_WRITE))


def _review_intake(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(
        publish=[
            inbox,
            subjects.REVIEW_QUEUE,
            subjects.kv(streams.REVIEW_LABELS_BUCKET, REST),
            subjects.REVIEW_LABELLED_ALL,
        ],
        subscribe=[inbox, f"{subjects.REVIEW_STORE} {subjects.REVIEW_STORE_GROUP}"],
    )
    r.consume(
        streams.REVIEW_CANDIDATES_STREAM,
        streams.REVIEW_INTAKE_CONSUMER,
        subjects.REVIEW_CANDIDATES,
    )
    for stream in (
        streams.REVIEW_CANDIDATES_STREAM,
        streams.REVIEW_STREAM,
        streams.REVIEW_LABELS_STREAM,
        streams.REVIEW_LABELLED_STREAM,
    ):
        r.info(stream)
    return r.permissions(responses=True)


def _review_desk(p: Placement) -> Permissions:
    inbox = f"{subjects.inbox_prefix(p.name)}.>"
    r = _Rights(
        publish=[inbox, subjects.REVIEW_STORE],
        subscribe=[inbox, f"{subjects.REVIEW_API} {subjects.REVIEW_QUEUE_GROUP}"],
    )
    for stream in (
        streams.REVIEW_STREAM,
        streams.REVIEW_LABELS_STREAM,
        streams.REVIEW_TRAFFIC_STREAM,
    ):
        r.read(stream)
    deny = [d for d in REVIEW_WRITE if d != subjects.REVIEW_STORE]
    return r.permissions(deny=(*NOT_CONTROL, *deny), responses=True)


def _operator(p: Placement) -> Permissions:
    return Permissions(publish_allow=(REST,), subscribe_allow=(REST,), allow_responses=True)


def _leaf(p: Placement) -> Permissions:
    # A site's leaf server carries every site identity's traffic, each already held to its own
    # permissions by the site server; what a leaf may never do, even taken over, is write the
    # fleet's desired state or models, administer JetStream at the hub, or talk to the system
    # account. (An administrator at the hub may still provision a site's streams through it.)
    return Permissions(
        publish_allow=(REST,),
        subscribe_allow=(REST,),
        publish_deny=(*NOT_CONTROL, *REVIEW_WRITE, "$SYS.>"),
        subscribe_deny=("$SYS.>",),
    )


_BUILDERS = {
    Role.APPLICATION: _application,
    Role.NODE: _node,
    Role.CONTROLLER: _controller,
    Role.INGRESS: _ingress,
    Role.CONSOLE: _console,
    Role.OPERATOR: _operator,
    Role.LEAF: _leaf,
    Role.REVIEWER: _reviewer,
    Role.REVIEW_INTAKE: _review_intake,
    Role.REVIEW_DESK: _review_desk,
    Role.LOCAL_EDGE: _local_edge,
}


def inbox_prefix(name: str) -> str:
    """The inbox prefix of an identity: ``nats.connect(..., inbox_prefix=inbox_prefix(name))``."""
    return subjects.inbox_prefix(name)


def permissions_for(
    role: Role | str,
    *,
    name: str,
    tier: str | None = None,
    upstream_tier: str | None = None,
    downstream_tier: str | None = None,
    entry: bool = False,
    domain: str | None = None,
    models: Sequence[str] | None = None,
) -> Permissions:
    """The permissions of identity ``name`` in ``role``.

    ``tier`` is required for a node; ``upstream_tier`` (None for the top tier),
    ``downstream_tier`` (None for the lowest) and ``entry`` say where it sits in the cascade;
    ``domain`` is the JetStream domain of its server (its heartbeat's bucket). ``models`` limits
    the model subjects to those models; None allows every model.
    """
    placement = Placement(
        name=subjects.check_token(name, "identity name"),
        tier=tier,
        upstream_tier=upstream_tier,
        downstream_tier=downstream_tier,
        entry=entry,
        domain=domain,
        models=models,
    )
    return _BUILDERS[Role(role)](placement)


__all__ = [
    "NOT_CONTROL",
    "NO_JS_ADMIN",
    "REVIEW_WRITE",
    "Permissions",
    "Placement",
    "Role",
    "inbox_prefix",
    "permissions_for",
]
