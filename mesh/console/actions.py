"""The log of what people did through the console: who, when, what, on what, and how it went.
Pure: the operations record here and also write each entry to the process's log."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: entries kept to show; the process's log keeps every one.
KEPT = 200


@dataclass(frozen=True, slots=True)
class ActionRecord:
    at: float
    person: str
    #: ``rollout.pause``, ``review.label``...
    action: str
    target: str
    #: ``done``, or the error the mesh answered.
    outcome: str
    detail: str = ""


class ActionLog:
    def __init__(self) -> None:
        self._records: deque[ActionRecord] = deque(maxlen=KEPT)

    def add(self, record: ActionRecord) -> None:
        self._records.append(record)

    def recent(self, limit: int = 50) -> list[ActionRecord]:
        return list(reversed(self._records))[:limit]


__all__ = ["ActionLog", "ActionRecord"]
