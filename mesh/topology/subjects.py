"""Every NATS subject and queue group the mesh uses, in one place.

- ``mesh.infer.<model>``: entry subject, taken by the entry tier (the lowest one).
- ``mesh.<tier>.infer.<model>``: a tier addressed directly; escalation uses it.
- ``mesh.hard.<tier>.<model>``: hard examples a tier could not get answered upstream.
- ``mesh.learn.<tier>.<model>``: hard examples delivered to a tier (its inbox stream).
- ``mesh.telemetry.<node>``: node events (drift).
- ``mesh.status.<node>``: a node's status endpoint (NATS micro services API).
- ``$SRV.*``: control through the NATS micro services API.

JetStream stream names are here too: ``MESH_HARD_<TIER>`` and ``MESH_LEARN_<TIER>``.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_token(value: str, what: str) -> str:
    """A subject token must be one NATS token: no dots, wildcards or spaces."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9_-]+ to be a NATS subject token")
    return value


def entry(model: str) -> str:
    return f"mesh.infer.{model}"


ENTRY_PREFIX = "mesh.infer."
ENTRY_WILDCARD = "mesh.infer.>"
ENTRY_QUEUE = "mesh.entry"


def tier_infer(tier: str, model: str) -> str:
    return f"mesh.{tier}.infer.{model}"


def tier_forward(tier: str, model: str) -> str:
    """Where a tier takes requests for models it may not serve itself, to pass them on up: a
    lower tier sends here when no node of the tier serves ``mesh.<tier>.infer.<model>``."""
    return f"mesh.{tier}.forward.{model}"


def tier_forward_wildcard(tier: str) -> str:
    return f"mesh.{tier}.forward.>"


def tier_wildcard(tier: str) -> str:
    return f"mesh.{tier}.infer.>"


def tier_queue(tier: str) -> str:
    return f"mesh.{tier}"


def hard_examples(tier: str, model: str) -> str:
    return f"mesh.hard.{tier}.{model}"


def hard_examples_wildcard(tier: str) -> str:
    return f"mesh.hard.{tier}.>"


def inbox(tier: str, model: str) -> str:
    return f"mesh.learn.{tier}.{model}"


def inbox_wildcard(tier: str) -> str:
    return f"mesh.learn.{tier}.>"


def hard_example_stream(tier: str) -> str:
    """The stream where a tier keeps the hard examples it recorded, in its own domain."""
    return f"MESH_HARD_{_stream_token(tier)}"


def inbox_stream(tier: str) -> str:
    """The stream where a tier receives hard examples, in its own domain."""
    return f"MESH_LEARN_{_stream_token(tier)}"


def _stream_token(tier: str) -> str:
    return tier.upper().replace("-", "_")


def status(node: str) -> str:
    return f"mesh.status.{check_token(node, 'node name')}"


def telemetry(node: str) -> str:
    return f"mesh.telemetry.{node}"


def model_of(subject: str) -> str:
    """The model token of an infer subject (the last token)."""
    return subject.rsplit(".", 1)[-1]
