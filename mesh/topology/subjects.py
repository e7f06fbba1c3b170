"""Every NATS subject and queue group the mesh uses, in one place (docs/subjects.md draws them).

Request path:

- ``mesh.infer.<model>``: entry subject, taken by the entry tier (the lowest one), queue
  ``mesh.entry``.
- ``mesh.<tier>.infer.<model>``: a tier addressed directly; escalation uses it. Queue
  ``mesh.<tier>``.
- ``mesh.<tier>.forward.<model>``: a model no node of the tier serves: the tier passes it up.

Store-and-forward and telemetry:

- ``mesh.hard.<tier>.<model>``: hard examples a tier recorded (stream ``MESH_HARD_<TIER>``).
- ``mesh.learn.<tier>.<model>``: hard examples a tier took up from the tier below it (stream
  ``MESH_LEARN_<TIER>``).
- ``mesh.telemetry.<node>``: node events (drift, swaps, refusals).
- ``mesh.status.<node>`` and ``$SRV.*``: the NATS micro services API.

Review (the hub's; ``docs/review.md``):

- ``mesh.review.candidate.<model>``: cases a node offers for human review (stream
  ``MESH_REVIEW_CANDIDATES``); ``mesh.review.traffic.<model>.<node>``: a node's running totals.
- ``mesh.review.queue.<model>.<item>``: the review queue (stream ``MESH_REVIEW``), written by the
  intake; ``mesh.review.labelled.<model>.<caller>``: labels told to the application that asked.
- ``mesh.review.api.<operation>.<caller>``: the review API (queue group ``mesh.review``), the
  caller's identity in the subject; ``mesh.review.store.<operation>``: the desk asking the
  intake to store a label.

Events (each site's own: they never cross a leaf link):

- ``mesh.events.<model>.<source>``, ``mesh.results.<model>.<source>``,
  ``mesh.deadletter.<model>.<source>``; ``mesh.actions.<...>`` and ``mesh.actions-dead.<rule>``.

JetStream: ``$KV.<bucket>.<key>``, ``$O.<store>.>``, ``$JS[.<domain>].API.<operation>`` and
``$JS.ACK.<stream>.<consumer>.>``.

Builders format without checking; values that come from a user are checked with
``check_token`` where they enter. A permission may pass ``ANY`` (``*``) or ``REST`` (``>``) as a
token.
"""

from __future__ import annotations

import base64
import re

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")

#: a wildcard for one token, and for the rest of a subject (last token only).
ANY = "*"
REST = ">"


def check_token(value: str, what: str) -> str:
    """A subject token must be one NATS token: no dots, wildcards or spaces."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9_-]+ to be a NATS subject token")
    return value


# --- request path ---------------------------------------------------------------------------

ENTRY_PREFIX = "mesh.infer."
ENTRY_WILDCARD = "mesh.infer.>"
ENTRY_QUEUE = "mesh.entry"


def entry(model: str) -> str:
    return f"mesh.infer.{model}"


def tier_infer(tier: str, model: str) -> str:
    return f"mesh.{tier}.infer.{model}"


def tier_forward(tier: str, model: str) -> str:
    """Where a tier takes requests for models it may not serve itself, to pass them on up: a
    lower tier sends here when no node of the tier serves ``mesh.<tier>.infer.<model>``."""
    return f"mesh.{tier}.forward.{model}"


def tier_forward_wildcard(tier: str) -> str:
    return tier_forward(tier, REST)


def tier_wildcard(tier: str) -> str:
    return tier_infer(tier, REST)


def tier_queue(tier: str) -> str:
    return f"mesh.{tier}"


def model_of(subject: str) -> str:
    """The model token of an infer subject (the last token)."""
    return subject.rsplit(".", 1)[-1]


# --- hard examples, telemetry, status -------------------------------------------------------


HARD_PREFIX = "mesh.hard"
LEARN_PREFIX = "mesh.learn"


def hard_examples(tier: str, model: str) -> str:
    return f"{HARD_PREFIX}.{tier}.{model}"


def hard_examples_wildcard(tier: str) -> str:
    return hard_examples(tier, REST)


def inbox(tier: str, model: str) -> str:
    """Where a tier keeps the hard examples it took up from the tier below (``mesh.learn``)."""
    return f"{LEARN_PREFIX}.{tier}.{model}"


def inbox_wildcard(tier: str) -> str:
    return inbox(tier, REST)


def telemetry(node: str) -> str:
    return f"mesh.telemetry.{node}"


TELEMETRY_WILDCARD = "mesh.telemetry.>"


def status(node: str) -> str:
    return f"mesh.status.{check_token(node, 'node name')}"


STATUS_ANY = "mesh.status.*"

#: the NATS micro services name every node registers under.
SERVICE_NAME = "mesh-node"
#: the micro services control subjects: ``$SRV.<verb>[.mesh-node[.<id>]]``.
SERVICE_CONTROL = tuple(
    subject
    for verb in ("PING", "INFO", "STATS")
    for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}", f"$SRV.{verb}.{SERVICE_NAME}.*")
)


# --- review ---------------------------------------------------------------------------------

REVIEW_PREFIX = "mesh.review"


def review_candidate(model: str) -> str:
    return f"{REVIEW_PREFIX}.candidate.{model}"


REVIEW_CANDIDATES = review_candidate(REST)


def review_traffic(model: str, node: str) -> str:
    return f"{REVIEW_PREFIX}.traffic.{model}.{node}"


REVIEW_TRAFFIC = f"{REVIEW_PREFIX}.traffic.>"


def review_queue(model: str, item: str) -> str:
    return f"{REVIEW_PREFIX}.queue.{model}.{item}"


REVIEW_QUEUE = f"{REVIEW_PREFIX}.queue.>"


def review_labelled(model: str, caller: str) -> str:
    """Where the label of a case ``caller`` asked about is told to it."""
    return f"{REVIEW_PREFIX}.labelled.{model}.{caller}"


REVIEW_LABELLED = review_labelled(ANY, ANY)
REVIEW_LABELLED_ALL = f"{REVIEW_PREFIX}.labelled.>"


def review_api(operation: str, caller: str) -> str:
    """The review API: ``caller`` is the identity asking (its permissions allow no other)."""
    return f"{REVIEW_PREFIX}.api.{operation}.{caller}"


REVIEW_API = f"{REVIEW_PREFIX}.api.>"
#: what the review API answers: reading the queue and its ground truth, and labelling.
REVIEW_READS = ("list", "show", "stats", "report")
REVIEW_WRITES = ("label", "skip")
REVIEW_QUEUE_GROUP = "mesh.review"


def review_store(operation: str) -> str:
    """The desk asking the intake to store a label or a skip."""
    return f"{REVIEW_PREFIX}.store.{operation}"


REVIEW_STORE = review_store(REST)
REVIEW_STORE_GROUP = "mesh.review-intake"


# --- events ---------------------------------------------------------------------------------

EVENTS_PREFIX = "mesh.events"
RESULTS_PREFIX = "mesh.results"
DEAD_PREFIX = "mesh.deadletter"
ACTIONS_PREFIX = "mesh.actions"
ACTIONS_DEAD_PREFIX = "mesh.actions-dead"


def event(model: str, source: str) -> str:
    return f"{EVENTS_PREFIX}.{model}.{source}"


def result(model: str, source: str) -> str:
    return f"{RESULTS_PREFIX}.{model}.{source}"


def dead_letter(model: str, source: str) -> str:
    return f"{DEAD_PREFIX}.{model}.{source}"


def action_dead(rule: str) -> str:
    return f"{ACTIONS_DEAD_PREFIX}.{rule}"


ACTIONS_WILDCARD = f"{ACTIONS_PREFIX}.>"
ACTIONS_DEAD_WILDCARD = action_dead(REST)


def source_of(subject: str) -> str:
    """The source token of an event, result or dead-letter subject (``_unknown`` if none)."""
    parts = subject.split(".")
    return parts[3] if len(parts) == 4 else "_unknown"


# --- JetStream ------------------------------------------------------------------------------


def kv(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_subjects(store: str) -> str:
    return f"$O.{store}.>"


def object_stream(store: str) -> str:
    return f"OBJ_{store}"


def object_meta(store: str, name: str = REST) -> str:
    """The subject of an object's meta record (its name base64url-encoded), or of them all."""
    token = name if name == REST else base64.urlsafe_b64encode(name.encode()).decode()
    return f"$O.{store}.M.{token}"


def object_chunks(store: str, nuid: str) -> str:
    return f"$O.{store}.C.{nuid}"


def js_api(operation: str, domain: str | None = None) -> str:
    """A JetStream API subject: the connected server's (``$JS.API``) or a domain's."""
    return f"$JS.API.{operation}" if domain is None else f"$JS.{domain}.API.{operation}"


def js_ack(stream: str, consumer: str = REST) -> str:
    """Acknowledgements of a consumer's deliveries (``$JS.ACK.<stream>.<consumer>.>``)."""
    return f"$JS.ACK.{stream}.{consumer}.>" if consumer != REST else f"$JS.ACK.{stream}.>"


#: every acknowledgement of every consumer.
JS_ACK_ALL = "$JS.ACK.>"


def js_flow_control(stream: str) -> str:
    return f"$JS.FC.{stream}.>"


def inbox_prefix(name: str) -> str:
    """The inbox prefix of an identity, the only one it may subscribe to:
    ``nats.connect(..., inbox_prefix=inbox_prefix(name))``."""
    return f"_INBOX_{check_token(name, 'identity name')}"


def stream_token(tier: str) -> str:
    """A tier's name as a stream name token: upper case, ``-`` as ``_``."""
    return tier.upper().replace("-", "_")
