"""Bytes of request bodies in flight at the ingress, in all and per caller.

A body holds its bytes from before it is read until its answer is sent: its text, what is
parsed from it and the arrays sent on all live that long. Without a share per caller, one
caller's few large bodies take all the room and every other caller waits behind them; with
one, a caller past its share waits or is refused while the others still get in (the same rule
as ``mesh.node.admission.Admission`` for requests, counted in bytes). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ByteShares:
    total: int
    per_caller: int
    _held: Counter[str] = field(default_factory=Counter)
    _count: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_caller < 1:
            raise ValueError("bytes in flight need room for at least one byte")
        if self.per_caller > self.total:
            raise ValueError("a caller's share cannot be larger than the total")

    def never_fits(self, n: int) -> bool:
        """Whether ``n`` bytes are more than any one caller may ever hold."""
        return n > self.per_caller

    def refusal(self, caller: str, n: int) -> str | None:
        """Why ``caller`` may not take ``n`` more bytes now, or None when it may."""
        if self.never_fits(n):
            return f"{n} bytes are over a caller's share of {self.per_caller} bytes in flight"
        held = self._held[caller]
        if held + n > self.per_caller:
            return f"{caller} has {held} bytes of bodies in flight (its share: {self.per_caller})"
        if self._count + n > self.total:
            return f"{self._count} bytes of bodies in flight (the ingress holds {self.total})"
        return None

    def acquire(self, caller: str, n: int) -> None:
        if n > 0:
            self._held[caller] += n
            self._count += n

    def release(self, caller: str, n: int) -> None:
        n = min(n, self._held[caller])
        held = self._held[caller] - n
        if held > 0:
            self._held[caller] = held
        else:
            del self._held[caller]
        self._count = max(0, self._count - n)

    @property
    def inflight(self) -> int:
        return self._count

    def held_by(self, caller: str) -> int:
        return self._held[caller]
