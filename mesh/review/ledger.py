"""The desk's view of the queue: every item's metadata (not its input) with the labels given it,
in the order the queue holds them. Pure: the desk feeds it from the queue stream and the label
bucket, and answers the review API from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from mesh.review.records import LabelKind, ReviewItem, ReviewLabel, ReviewReason


class Status(StrEnum):
    PENDING = "pending"
    LABELLED = "labelled"
    SKIPPED = "skipped"


@dataclass(slots=True)
class Entry:
    """An item without its input (``item.withheld`` None: the queue holds one at
    ``sequence``), and its labels."""

    item: ReviewItem
    sequence: int
    #: the label records given it, oldest first (a relabel adds one; none is lost).
    labels: list[ReviewLabel] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def current(self) -> ReviewLabel | None:
        return self.labels[-1] if self.labels else None

    @property
    def revision(self) -> int:
        current = self.current
        return current.revision if current is not None else 0

    @property
    def status(self) -> Status:
        current = self.current
        if current is None:
            return Status.PENDING
        return Status.LABELLED if current.kind is LabelKind.LABEL else Status.SKIPPED

    @property
    def label(self) -> int | None:
        """The class a person gave it (the last label; a skip after a label leaves it)."""
        for record in reversed(self.labels):
            if record.kind is LabelKind.LABEL:
                return record.label
        return None


class ReviewLedger:
    """Items by id in queue order, and their labels (which may arrive before the item does)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._early: dict[str, list[ReviewLabel]] = {}
        #: the queue's last sequence seen: what a reader resumes after.
        self.last_sequence = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def add(self, item: ReviewItem, sequence: int) -> Entry:
        """An item the queue holds at ``sequence``; a second copy keeps the first."""
        self.last_sequence = max(self.last_sequence, sequence)
        entry = self._entries.get(item.id)
        if entry is not None:
            return entry
        without_input = _metadata(item)
        entry = Entry(without_input, sequence)
        for label in self._early.pop(item.id, []):
            _insert(entry.labels, label)
        self._entries[item.id] = entry
        return entry

    def record(self, label: ReviewLabel) -> None:
        """A label record at its revision (seen twice, kept once)."""
        entry = self._entries.get(label.item)
        if entry is None:
            _insert(self._early.setdefault(label.item, []), label)
            return
        _insert(entry.labels, label)

    def find(self, item: str) -> Entry | None:
        return self._entries.get(item)

    def pending(
        self,
        model: str | None = None,
        reason: ReviewReason | None = None,
        *,
        status: Status | None = Status.PENDING,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Entry], int]:
        """Up to ``limit`` items after the first ``offset``, oldest first, and how many match
        in all."""
        found: list[Entry] = []
        total = 0
        for entry in self._entries.values():
            item = entry.item
            if model is not None and item.model != model:
                continue
            if reason is not None and item.reason is not reason:
                continue
            if status is not None and entry.status is not status:
                continue
            total += 1
            if total > offset and len(found) < limit:
                found.append(entry)
        return found, total

    def queued_since(self, since: float) -> list[tuple[str, ReviewReason, float]]:
        """(model, reason, queued at) of what was queued since ``since``: the intake's windows."""
        return [
            (e.item.model, e.item.reason, e.item.queued_at)
            for e in self._entries.values()
            if e.item.queued_at is not None and e.item.queued_at >= since
        ]


def _metadata(item: ReviewItem) -> ReviewItem:
    """The item without its input (``show`` reads that from the queue): ``withheld`` still
    says whether the queue has one."""
    return replace(item, inputs=None) if item.inputs is not None else item


def _insert(labels: list[ReviewLabel], label: ReviewLabel) -> None:
    if any(existing.revision == label.revision for existing in labels):
        return
    labels.append(label)
    labels.sort(key=lambda record: record.revision)


__all__ = ["Entry", "ReviewLedger", "Status"]
