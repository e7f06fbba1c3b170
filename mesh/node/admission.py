"""Admission: how many requests a node (or the ingress) holds at once, in all and per caller.

A request that waits on something (an escalation, a traced request, an event's upstream call)
holds a slot until it is answered. Without a share per caller, one application's flood of
unsure requests takes every slot and every other caller gets ``RESOURCE_EXHAUSTED``; with one,
a caller past its share is refused while the others still have room: the flood takes its own
share, not everyone's.

Who the caller is comes from where the answer goes: every mesh identity may subscribe only to
its own inbox prefix ``_INBOX_<name>`` (``mesh.security.permissions``), so a reply subject under
``_INBOX_<name>.`` names the identity that can read the answer. A caller that names someone
else's inbox spends that identity's share, but can never read what it asked for. At a tier
above the entry tier the caller is the lower tier's node, which carries its own callers.
Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: what a reply subject outside any identity's inbox counts as.
UNKNOWN_CALLER = "_other"


def caller_of(reply: str) -> str:
    """The identity a reply subject belongs to: its first token (``_INBOX_<name>``)."""
    head, _, _ = reply.partition(".")
    return head if head.startswith("_INBOX_") else UNKNOWN_CALLER


def caller_name(reply: str) -> str:
    """The identity's name a reply subject belongs to (``_INBOX_<name>``), or empty."""
    head, _, _ = reply.partition(".")
    return head[len("_INBOX_") :] if head.startswith("_INBOX_") else ""


@dataclass
class Admission:
    """Slots in use, in all and per caller; ``per_caller`` of 0 means no share (total only)."""

    total: int
    per_caller: int = 0
    _held: Counter[str] = field(default_factory=Counter)
    _count: int = 0

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError("admission needs at least one slot")
        if self.per_caller < 0:
            raise ValueError("a caller's share cannot be negative")

    def refusal(self, caller: str) -> str | None:
        """Why ``caller`` may not take a slot now, or None when it may."""
        if self._count >= self.total:
            return f"{self.total} requests in flight"
        if self.per_caller and self._held[caller] >= self.per_caller:
            return f"{self.per_caller} requests of {caller} in flight (its share)"
        return None

    def acquire(self, caller: str) -> None:
        self._held[caller] += 1
        self._count += 1

    def release(self, caller: str) -> None:
        held = self._held[caller] - 1
        if held > 0:
            self._held[caller] = held
        else:
            del self._held[caller]
        self._count = max(0, self._count - 1)

    @property
    def inflight(self) -> int:
        return self._count

    def held_by(self, caller: str) -> int:
        return self._held[caller]
