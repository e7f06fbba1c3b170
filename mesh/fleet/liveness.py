"""Whether a node is online: one rule for the controller, a rollout and ``mesh fleet status``.

A node is online while its last heartbeat is recent and does not say it stopped (the agent's
last beat on the way down, so the fleet sees a node stop rather than time out)."""

from __future__ import annotations

from mesh.wire import NodeStatus

#: the problem a node's last heartbeat names when it stops.
STOPPED = "stopped"


def is_stopped(status: NodeStatus) -> bool:
    return STOPPED in status.problems


def is_online(status: NodeStatus, now: float, offline_after_s: float) -> bool:
    """Seen within ``offline_after_s`` of ``now`` and not stopped."""
    return now - status.time <= offline_after_s and not is_stopped(status)
