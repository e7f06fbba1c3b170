"""A permission violation, told to the one who caused it: who, which subject, what it may do.

The server answers a publish or a subscription an identity's permissions do not cover with an
``-ERR 'Permissions Violation for Publish to "X"'`` line and drops the message; nats-py passes
that line to the connection's error callback and nothing else happens, so a request on that
subject waits out its timeout. ``GuardedClient`` (``mesh.transport.guard``) reads those lines
with ``parse_violation`` and fails whatever waits on the subject with ``denied``'s error,
which names the identity (the user JWT's ``name``), the subject, and the subjects the identity
may use instead (the JWT's own permissions: the server enforces those, whatever the role table
said when they were issued).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from mesh.errors import PermissionDeniedError
from mesh.security.creds import CredentialsError, user_claims

#: nats-py lowercases the server's ``-ERR`` text before anyone sees it, subject included.
_VIOLATION = re.compile(
    r"permissions violation for (publish to|publish with reply of|subscription to)"
    r' "([^"]*)"(?: using queue "([^"]*)")?',
    re.IGNORECASE,
)
#: how many of an identity's subjects a message lists before it only counts the rest.
LISTED = 8
JETSTREAM_PREFIX = "$JS."


class Operation(StrEnum):
    PUBLISH = "publish to"
    REPLY = "publish with the reply subject"
    SUBSCRIBE = "subscribe to"


_OPERATIONS = {
    "publish to": Operation.PUBLISH,
    "publish with reply of": Operation.REPLY,
    "subscription to": Operation.SUBSCRIBE,
}


@dataclass(frozen=True, slots=True)
class Violation:
    """What the server refused: an operation on a subject (and the queue group, if any). The
    subject may come lowercased (nats-py's doing), so it is compared without case."""

    operation: Operation
    subject: str
    queue: str | None = None

    def blocks(self, subject: str, inbox: str) -> bool:
        """Whether a request published to ``subject`` with its reply under ``inbox`` is lost:
        its own subject was refused, or the inbox its answer would come to."""
        if self.operation is Operation.PUBLISH:
            return self.subject.lower() == subject.lower()
        return bool(inbox) and self.subject.lower().startswith(inbox.lower())


def parse_violation(text: str) -> Violation | None:
    """The violation in a server's ``-ERR`` text; None for any other error."""
    found = _VIOLATION.search(text)
    if found is None:
        return None
    return Violation(_OPERATIONS[found.group(1).lower()], found.group(2), found.group(3))


@dataclass(frozen=True, slots=True)
class Rights:
    """Who a connection is and what its credentials allow, as the user JWT says."""

    identity: str | None = None
    publish_allow: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()

    @classmethod
    def of_claims(cls, claims: dict[str, Any]) -> Rights:
        nats_claims = claims.get("nats")
        nats_claims = nats_claims if isinstance(nats_claims, dict) else {}

        def listed(section: str, kind: str) -> tuple[str, ...]:
            part = nats_claims.get(section)
            values = part.get(kind) if isinstance(part, dict) else None
            return tuple(v for v in values or () if isinstance(v, str))

        name = claims.get("name")
        return cls(
            identity=name if isinstance(name, str) and name else None,
            publish_allow=listed("pub", "allow"),
            publish_deny=listed("pub", "deny"),
            subscribe_allow=listed("sub", "allow"),
            subscribe_deny=listed("sub", "deny"),
        )

    @classmethod
    def of_credentials(cls, creds: Path | str | None) -> Rights:
        """The rights in a ``.creds`` file (blocking: reads it); unknown when there is none or
        it cannot be read (the connection fails on its own then)."""
        if creds is None:
            return cls()
        try:
            return cls.of_claims(user_claims(creds))
        except CredentialsError:
            return cls()

    @property
    def who(self) -> str:
        return f"identity {self.identity}" if self.identity else "this connection's identity"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    wanted, given = pattern.split("."), subject.split(".")
    for place, token in enumerate(wanted):
        if token == ">":
            return len(given) > place
        if place >= len(given) or (token != "*" and token != given[place]):
            return False
    return len(wanted) == len(given)


def denied(
    violation: Violation, rights: Rights, subject: str | None = None
) -> PermissionDeniedError:
    """The error for ``violation``: the identity, the subject (as the caller spelled it, when
    ``subject`` is given), and what it may do instead."""
    if subject is not None and subject.lower() == violation.subject.lower():
        violation = Violation(violation.operation, subject, violation.queue)
    operation = violation.operation
    publishing = operation is not Operation.SUBSCRIBE
    allow = rights.publish_allow if publishing else rights.subscribe_allow
    deny = rights.publish_deny if publishing else rights.subscribe_deny
    queue = f" in queue group {violation.queue}" if violation.queue else ""
    text = (
        f"{rights.who} may not {operation.value} {violation.subject}{queue} "
        "(the server refused it: Permissions Violation)"
    )
    blocking = [p for p in deny if matches(p, violation.subject)]
    if blocking and any(matches(p, violation.subject) for p in allow):
        text += f"; its permissions deny {blocking[0]}"
    if rights.identity is None:
        return PermissionDeniedError(text + "; use credentials whose identity may")
    verb = "publish to" if publishing else "subscribe to"
    return PermissionDeniedError(
        f"{text}; {rights.identity} may {verb} {_summary(allow, violation)}"
    )


def _summary(allow: tuple[str, ...], violation: Violation) -> str:
    """The allowed subjects worth reading next to the refused one: those of its own family (the
    JetStream API's, or the mesh's), then a count of the others."""
    if not allow:
        return "nothing"
    jetstream = violation.subject.startswith(JETSTREAM_PREFIX)
    near = [p for p in allow if p.startswith(JETSTREAM_PREFIX) == jetstream]
    far = len(allow) - len(near)
    shown = near[:LISTED]
    text = ", ".join(shown) if shown else "none of that kind"
    if len(near) > len(shown):
        text += f" and {len(near) - len(shown)} more"
    if far:
        kind = "other subjects" if jetstream else "JetStream API subjects"
        text += f" (and {far} {kind})"
    return text


__all__ = ["Operation", "Rights", "Violation", "denied", "matches", "parse_violation"]
