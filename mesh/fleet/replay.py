"""Readers of the fleet's buckets check what they read.

NATS delivers a consumer's messages to whatever subject its creator names without checking that
identity's rights (nats-server #8274). Anyone who may read a bucket may therefore re-deliver its
entries into the bucket itself, under any key: an old assignment under another node's key, an
old rollout record under its model's. So every reader of the desired state, the rollouts and the
heartbeats obeys an entry only when the key it names for itself (a desired state's model and
selector, a rollout's model, a heartbeat's node) is the key it arrived under, and when it is not
older (an assignment's ``time``, a rollout's ``generation``, a heartbeat's ``time``) than the
newest entry it has seen under that key, history included. What fails is logged and ignored;
the last good entry stays. Writers keep their stamps increasing per key (``next_stamp``). Pure.
"""

from __future__ import annotations

#: least step a writer adds to the newest stamp of a key it rewrites.
STAMP_STEP = 0.001


class ReplayGuard:
    """The newest stamp seen under each key of one bucket."""

    def __init__(self) -> None:
        self._newest: dict[str, float] = {}

    def check(self, key: str, claimed: str, stamp: float) -> str | None:
        """Why an entry arriving under ``key`` that names ``claimed`` and carries ``stamp`` is
        not to be obeyed, or None (and it is the newest seen under ``key`` now)."""
        if claimed != key:
            return f"an entry for {claimed[:120]!r} arrived under key {key[:120]!r}"
        newest = self._newest.get(key)
        if newest is not None and stamp < newest:
            return (
                f"an entry stamped {stamp} arrived under {key[:120]!r} after one stamped {newest}"
            )
        self._newest[key] = stamp
        return None

    def newest(self, key: str) -> float | None:
        return self._newest.get(key)


def next_stamp(now: float, newest: float | None) -> float:
    """The stamp of a write under a key whose newest stamp is ``newest``: ``now``, unless a
    writer with a clock ahead of this one's wrote later (then just after it)."""
    if newest is None or now > newest:
        return now
    return newest + STAMP_STEP
