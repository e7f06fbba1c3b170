"""Every NATS subject and queue group the mesh uses, in one place.

- ``mesh.infer.<model>``: entry subject, taken by the entry tier (the lowest one).
- ``mesh.<tier>.infer.<model>``: a tier addressed directly; escalation uses it.
- ``mesh.hard.<tier>.<model>``: hard examples a tier could not get answered upstream.
- ``mesh.telemetry.<node>``: node status events (drift, breaker transitions).
- ``$SRV.*``: control through the NATS micro services API.
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


ENTRY_WILDCARD = "mesh.infer.>"
ENTRY_QUEUE = "mesh.entry"


def tier_infer(tier: str, model: str) -> str:
    return f"mesh.{tier}.infer.{model}"


def tier_wildcard(tier: str) -> str:
    return f"mesh.{tier}.infer.>"


def tier_queue(tier: str) -> str:
    return f"mesh.{tier}"


def hard_examples(tier: str, model: str) -> str:
    return f"mesh.hard.{tier}.{model}"


def hard_examples_wildcard(tier: str) -> str:
    return f"mesh.hard.{tier}.>"


def telemetry(node: str) -> str:
    return f"mesh.telemetry.{node}"


def model_of(subject: str) -> str:
    """The model token of an infer subject (the last token)."""
    return subject.rsplit(".", 1)[-1]
