"""Heartbeats as the controller counts them.

A node writes its heartbeat every ``fleet.heartbeat_s``; a stolen identity may write its own key
as often as it likes (every 20 ms was tried). The controller keeps only the latest heartbeat of
each key as it arrives, undecoded, and takes it in at most once every ``min_interval_s`` per key:
heartbeats faster than the configured rate count once, and cost one decode. A heartbeat taken in
must name the key it arrived under as its node, must not be older than the last one taken in
for that key (an old beat re-delivered into the bucket: ``mesh.fleet.replay``) and must not be
dated more than ``max_skew_s`` ahead (it would read as online for ever). One that fails is
dropped and counted; the last good one stays. Pure: no I/O, clocks given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mesh.errors import InvalidArgumentError
from mesh.fleet.replay import ReplayGuard
from mesh.wire import NodeStatus, decode_node_status

log = logging.getLogger("mesh.fleet.controller")

#: how far ahead of the controller's clock a heartbeat may be dated.
MAX_SKEW_S = 300.0


@dataclass
class BeatFilter:
    """The heartbeats a rollout judges, one per node, each taken in at most once an interval."""

    min_interval_s: float
    max_skew_s: float = MAX_SKEW_S
    #: node name to its latest heartbeat taken in, or why it could not be read.
    taken: dict[str, NodeStatus | str] = field(default_factory=dict)
    #: heartbeats dropped (wrong key, older, dated ahead), per node.
    dropped: dict[str, int] = field(default_factory=dict)
    _pending: dict[str, bytes] = field(default_factory=dict)
    _taken_at: dict[str, float] = field(default_factory=dict)
    _guard: ReplayGuard = field(default_factory=ReplayGuard)

    def offer(self, key: str, value: bytes | None, now: float) -> None:
        """A heartbeat arrived under ``key`` (None: the key was deleted)."""
        if value is None:
            self._pending.pop(key, None)
            self.taken.pop(key, None)
            return
        self._pending[key] = value
        if now - self._taken_at.get(key, -1e18) >= self.min_interval_s:
            self._take(key, now)

    def take(self, now: float) -> dict[str, NodeStatus | str]:
        """Take in every held heartbeat whose key's interval has passed; the heartbeats now."""
        for key in [k for k in self._pending if now - self._taken_at[k] >= self.min_interval_s]:
            self._take(key, now)
        return self.taken

    def _take(self, key: str, now: float) -> None:
        raw = self._pending.pop(key)
        self._taken_at[key] = now
        try:
            status = decode_node_status(raw)
        except InvalidArgumentError as exc:
            self.taken[key] = exc.message
            return
        if status.time > now + self.max_skew_s:
            problem: str | None = f"heartbeat of {key} dated {status.time - now:.0f}s ahead"
        else:
            problem = self._guard.check(key, status.node, status.time)
        if problem is not None:
            count = self.dropped.get(key, 0) + 1
            self.dropped[key] = count
            if count & (count - 1) == 0:  # 1, 2, 4, 8...: a flood does not flood the log
                log.warning("heartbeat dropped (%d so far): %s", count, problem)
            return
        self.taken[key] = status
