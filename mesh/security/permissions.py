"""Who may publish and subscribe what: the mesh's permission table, as data.

Every identity (application, node, controller, ingress, console, administrator, site leaf
server) gets publish and subscribe allow and deny lists and whether it may answer the requests
it receives (``allow_responses``). ``ROLE_TABLE`` holds one ``RoleRule`` per role: subject
templates, the JetStream streams the role manages or reads, and the grants that only apply to
an entry tier or to a tier with an upstream. ``permissions_for`` fills the templates in; it
holds no per-role code.

Template fields: ``{name}`` (the identity), ``{inbox}`` (its inbox prefix), ``{tier}``,
``{upstream_tier}``, ``{TIER}`` and ``{UPSTREAM_TIER}`` (as in stream names), and ``{model}``,
one subject per model the identity is limited to, or for every model ``>`` as the last token
and ``*`` elsewhere (the server refuses a permission with ``>`` inside a subject).

Rules the table encodes:

- Every client identity has an inbox prefix of its own, ``_INBOX_<name>`` (connect with
  ``nats.connect(..., inbox_prefix=inbox_prefix(name))``), and may subscribe to no other inbox:
  nobody reads replies meant for someone else.
- A node takes its tier's subjects only in its tier's queue group (``"subject queue"`` is NATS
  syntax for "this subject, in this queue group only"), and the entry subjects only in
  ``mesh.entry`` when it is the entry tier. It publishes only its own telemetry and its own
  tier's hard examples, escalates only to its upstream tier, and answers what it receives
  through ``allow_responses``.
- JetStream is reached only through the API subjects of named streams: a node may look up,
  create and update its own two streams and consume from them, and read the fleet's desired
  state and the model store. Deleting or purging a stream, a consumer or a message is denied to
  every role but the administrator, in the local domain (``$JS.API``) and across domains
  (``$JS.<domain>.API``).
- Only the controller writes the fleet's desired state (``$KV.MESH_FLEET_DESIRED.>``), the
  rollouts (``$KV.MESH_FLEET_ROLLOUTS.>``) and the model store (``$O.MESH_MODELS.>``); a node
  writes only its own heartbeat (``$KV.MESH_NODES_<DOMAIN>.<name>``). The controller and the
  console read the heartbeats and the rollouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from mesh.topology import subjects


class Role(StrEnum):
    APPLICATION = "application"
    NODE = "node"
    CONTROLLER = "controller"
    INGRESS = "ingress"
    CONSOLE = "console"
    OPERATOR = "operator"
    LEAF = "leaf"


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


@dataclass(frozen=True)
class RoleRule:
    """One row of the permission table: templates filled in by ``permissions_for``."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    #: streams whose definition the role looks up, creates and updates, and consumes from.
    js_manage: tuple[str, ...] = ()
    #: streams (KV buckets and object stores included) the role may only read.
    js_read: tuple[str, ...] = ()
    #: granted only to the entry tier.
    entry_subscribe: tuple[str, ...] = ()
    #: granted only to a tier with an upstream tier.
    upstream_publish: tuple[str, ...] = ()
    allow_responses: bool = False


#: JetStream API prefixes: the connected server's domain, and any domain by name.
JS_API_PREFIXES = ("$JS.API", "$JS.*.API")
#: JetStream API operations that destroy data; no role but the administrator may call them.
JS_DESTRUCTIVE = (
    "STREAM.DELETE.>",
    "STREAM.PURGE.>",
    "STREAM.MSG.DELETE.>",
    "CONSUMER.DELETE.>",
)
JS_MANAGE_OPS = (
    "STREAM.INFO.{stream}",
    "STREAM.CREATE.{stream}",
    "STREAM.UPDATE.{stream}",
)
JS_CONSUME_OPS = (
    "CONSUMER.CREATE.{stream}.>",
    "CONSUMER.INFO.{stream}.>",
    "CONSUMER.MSG.NEXT.{stream}.>",
)
JS_READ_OPS = (
    # an ephemeral consumer with no filter (nats-py's ordered consumers) is created here
    "CONSUMER.CREATE.{stream}",
    "STREAM.INFO.{stream}",
    "STREAM.MSG.GET.{stream}",
    "DIRECT.GET.{stream}",
    "DIRECT.GET.{stream}.>",
    *JS_CONSUME_OPS,
)
#: acknowledgements and flow-control replies of a stream's consumers (not API calls).
JS_CONSUMER_REPLIES = ("$JS.ACK.{stream}.>", "$JS.FC.{stream}.>")

DESIRED_BUCKET = "MESH_FLEET_DESIRED"
DESIRED_STREAM = f"KV_{DESIRED_BUCKET}"
DESIRED_WRITE = f"$KV.{DESIRED_BUCKET}.>"
MODEL_STORE = "MESH_MODELS"
MODEL_STORE_STREAM = f"OBJ_{MODEL_STORE}"
MODEL_STORE_WRITE = f"$O.{MODEL_STORE}.>"
NODES_BUCKET = "MESH_FLEET_NODES"
NODES_STREAM = f"KV_{NODES_BUCKET}"
#: rollouts (``rollout.<model>``), their evidence windows and the controllers' leader lease.
ROLLOUTS_BUCKET = "MESH_FLEET_ROLLOUTS"
ROLLOUTS_STREAM = f"KV_{ROLLOUTS_BUCKET}"
ROLLOUTS_WRITE = f"$KV.{ROLLOUTS_BUCKET}.>"
#: where a node writes its heartbeat: its own key in its domain's ``MESH_NODES_<DOMAIN>``. A
#: wildcard is a whole token, so this is its key in any bucket; the desired state is denied
#: apart (``NOT_CONTROL``), and no other bucket has a key named after a node.
HEARTBEAT_WRITE = "$KV.*.{name}"
#: the fleet's KV buckets, as stream names: a wildcard is a whole token, so each is named.
FLEET_BUCKET_STREAMS = (DESIRED_STREAM, NODES_STREAM, ROLLOUTS_STREAM)

SERVICE_NAME = "mesh-node"
#: a node's NATS micro services control subjects: ``$SRV.<verb>[.mesh-node[.<id>]]``.
SERVICE_CONTROL = tuple(
    subject
    for verb in ("PING", "INFO", "STATS")
    for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}", f"$SRV.{verb}.{SERVICE_NAME}.*")
)

INBOX = "{inbox}.>"
NO_DESTRUCTION = tuple(f"{prefix}.{op}" for prefix in JS_API_PREFIXES for op in JS_DESTRUCTIVE)
#: a client may not write what only the controller or the administrator writes.
NOT_CONTROL = (*NO_DESTRUCTION, DESIRED_WRITE, MODEL_STORE_WRITE, ROLLOUTS_WRITE)

ROLE_TABLE: Mapping[Role, RoleRule] = {
    Role.APPLICATION: RoleRule(
        # A request may also address one tier directly (``MeshClient.infer(..., tier=...)``).
        # Results are read through one durable consumer named after the identity, whose filter
        # may only be its own results (the filter is part of the create subject).
        publish=(
            "mesh.infer.{model}",
            "mesh.*.infer.{model}",
            "mesh.events.{model}.{name}",
            *(
                f"{prefix}.{op}"
                for prefix in JS_API_PREFIXES
                for op in (
                    "CONSUMER.CREATE.MESH_RESULTS.{name}.mesh.results.{model}.{name}",
                    "CONSUMER.INFO.MESH_RESULTS.{name}",
                    "CONSUMER.MSG.NEXT.MESH_RESULTS.{name}",
                )
            ),
            "$JS.ACK.MESH_RESULTS.{name}.>",
            INBOX,
        ),
        subscribe=(INBOX, "mesh.results.{model}.{name}"),
        publish_deny=NOT_CONTROL,
    ),
    Role.NODE: RoleRule(
        publish=(
            "mesh.telemetry.{name}",
            "mesh.hard.{tier}.{model}",
            # a request for a model this node does not serve, to a neighbour of its tier that does
            "mesh.{tier}.infer.{model}",
            HEARTBEAT_WRITE,
            # result events and dead letters of the event streams (entry tier)
            "mesh.results.{model}.*",
            "mesh.deadletter.{model}.*",
            # what the event streams' action rules publish, and actions that failed
            "mesh.actions.>",
            "mesh.actions-dead.>",
            INBOX,
        ),
        subscribe=(
            "mesh.{tier}.infer.{model} mesh.{tier}",
            "mesh.{tier}.forward.{model} mesh.{tier}",
            "mesh.status.{name}",
            *SERVICE_CONTROL,
            INBOX,
        ),
        publish_deny=NOT_CONTROL,
        js_manage=(
            "MESH_HARD_{TIER}",
            "MESH_LEARN_{TIER}",
            "MESH_EVENTS",
            "MESH_RESULTS",
            "MESH_EVENTS_DEAD",
            "MESH_ACTIONS_DEAD",
        ),
        js_read=(DESIRED_STREAM, MODEL_STORE_STREAM),
        entry_subscribe=("mesh.infer.{model} mesh.entry",),
        upstream_publish=(
            "mesh.{upstream_tier}.infer.{model}",
            "mesh.{upstream_tier}.forward.{model}",
            "mesh.learn.{upstream_tier}.{model}",
        ),
        allow_responses=True,
    ),
    Role.CONTROLLER: RoleRule(
        publish=(
            DESIRED_WRITE,
            MODEL_STORE_WRITE,
            ROLLOUTS_WRITE,
            *SERVICE_CONTROL,
            "mesh.status.*",
            INBOX,
        ),
        subscribe=(INBOX, "mesh.telemetry.>"),
        publish_deny=NO_DESTRUCTION,
        js_manage=(DESIRED_STREAM, MODEL_STORE_STREAM, ROLLOUTS_STREAM),
        js_read=(*FLEET_BUCKET_STREAMS, MODEL_STORE_STREAM),
    ),
    Role.INGRESS: RoleRule(
        # it asks the nodes what the entry tier serves (readiness, versions) as the console does
        publish=(
            "mesh.infer.{model}",
            "mesh.events.{model}.*",
            *SERVICE_CONTROL,
            "mesh.status.*",
            INBOX,
        ),
        subscribe=(INBOX, "mesh.results.{model}.*"),
        publish_deny=NOT_CONTROL,
    ),
    Role.CONSOLE: RoleRule(
        publish=(*SERVICE_CONTROL, "mesh.status.*", INBOX),
        subscribe=(INBOX, "mesh.telemetry.>"),
        publish_deny=NOT_CONTROL,
        js_read=FLEET_BUCKET_STREAMS,
    ),
    Role.OPERATOR: RoleRule(publish=(">",), subscribe=(">",), allow_responses=True),
    # A site's leaf server carries every site identity's traffic, each already held to its own
    # permissions by the site server; what a leaf may never do, even taken over, is write the
    # fleet's desired state or models, destroy streams, or talk to the system account.
    Role.LEAF: RoleRule(
        publish=(">",),
        subscribe=(">",),
        publish_deny=(*NOT_CONTROL, "$SYS.>"),
        subscribe_deny=("$SYS.>",),
    ),
}


def inbox_prefix(name: str) -> str:
    """The inbox prefix of an identity: ``nats.connect(..., inbox_prefix=inbox_prefix(name))``."""
    return f"_INBOX_{subjects.check_token(name, 'identity name')}"


def permissions_for(
    role: Role | str,
    *,
    name: str,
    tier: str | None = None,
    upstream_tier: str | None = None,
    entry: bool = False,
    models: Sequence[str] | None = None,
) -> Permissions:
    """The permissions of identity ``name`` in ``role``.

    ``tier`` is required for a node; ``upstream_tier`` (None for the top tier) and ``entry`` say
    where it sits in the cascade. ``models`` limits the model subjects to those models; None
    allows every model.
    """
    role = Role(role)
    rule = ROLE_TABLE[role]
    if role is Role.NODE and tier is None:
        raise ValueError("a node's permissions need its tier")
    fields = {
        "name": subjects.check_token(name, "identity name"),
        "inbox": inbox_prefix(name),
        "tier": _token_or_blank(tier, "tier"),
        "TIER": _stream_token(tier),
        "upstream_tier": _token_or_blank(upstream_tier, "upstream tier"),
        "UPSTREAM_TIER": _stream_token(upstream_tier),
    }
    model_tokens = (
        None if models is None else [subjects.check_token(m, "model name") for m in models]
    )

    def fill(templates: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        for template in templates:
            for model in _models_of(template, model_tokens):
                subject = template.format(model=model, **fields)
                if subject not in out:
                    out.append(subject)
        return tuple(out)

    publish = list(rule.publish)
    subscribe = list(rule.subscribe)
    if entry:
        subscribe.extend(rule.entry_subscribe)
    if upstream_tier is not None:
        publish.extend(rule.upstream_publish)
    for stream in rule.js_manage:
        publish.extend(_js_api(stream, (*JS_MANAGE_OPS, *JS_CONSUME_OPS)))
        publish.extend(reply.format(stream=stream) for reply in JS_CONSUMER_REPLIES)
    for stream in rule.js_read:
        publish.extend(_js_api(stream, JS_READ_OPS))
        publish.extend(reply.format(stream=stream) for reply in JS_CONSUMER_REPLIES)
    return Permissions(
        publish_allow=fill(publish),
        publish_deny=fill(rule.publish_deny),
        subscribe_allow=fill(subscribe),
        subscribe_deny=fill(rule.subscribe_deny),
        allow_responses=rule.allow_responses,
    )


def _models_of(template: str, models: list[str] | None) -> list[str]:
    if "{model}" not in template:
        return [""]
    if models is not None:
        return models
    # ">" only as the last token of the subject (before a queue group): elsewhere it is "*".
    return [">" if template.split(" ")[0].endswith("{model}") else "*"]


def _js_api(stream: str, operations: Iterable[str]) -> list[str]:
    # Stream templates hold {TIER}, filled in later with the other fields: escape nothing here.
    return [
        f"{prefix}.{op.replace('{stream}', stream)}"
        for op in operations
        for prefix in JS_API_PREFIXES
    ]


def _token_or_blank(value: str | None, what: str) -> str:
    return "" if value is None else subjects.check_token(value, what)


def _stream_token(tier: str | None) -> str:
    return "" if tier is None else subjects.hard_example_stream(tier).removeprefix("MESH_HARD_")


__all__ = [
    "ROLE_TABLE",
    "Permissions",
    "Role",
    "RoleRule",
    "inbox_prefix",
    "permissions_for",
]
