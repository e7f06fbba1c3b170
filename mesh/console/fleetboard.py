"""The fleet as the console shows it: every node from its heartbeats (online or offline and
since when, versions, breakers, answers per second, escalation and degraded rates, p99, drift),
every site (unreachable when none of its nodes is heard from), and each node's journal of
swaps, refusals, drift events, breaker transitions and comings and goings. Pure: the feeds
hand it heartbeats and node events, and a clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from mesh.console.markup import NONE
from mesh.fleet.liveness import is_online, is_stopped
from mesh.wire import DriftEvent, NodeEvent, NodeStatus

#: seconds of heartbeats the rates are taken over.
RATE_WINDOW_S = 15.0
#: journal entries kept per node.
JOURNAL_SIZE = 200


class NodeState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"
    #: its site is unreachable: nothing is known of the node since its last contact.
    UNREACHABLE = "unreachable"


class SiteState(StrEnum):
    UP = "up"
    #: some of its nodes are offline or stopped.
    PARTIAL = "partial"
    UNREACHABLE = "unreachable"
    STOPPED = "stopped"


class EntryKind(StrEnum):
    SWAP = "swap"
    REFUSAL = "refusal"
    DRIFT = "drift"
    BREAKER = "breaker"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    time: float
    kind: EntryKind
    text: str


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    tier: str
    site: str
    zone: str
    state: NodeState
    last_seen_s: float
    #: model to version served; and what it is taking now.
    models: dict[str, str]
    pending: dict[str, str]
    breakers: dict[str, str]
    problems: list[str]
    answers_per_s: float | None
    escalation_rate: float | None
    degraded_rate: float | None
    p99_ms: float | None
    drift: float | None
    agreement: float | None
    swaps: int
    mesh_version: str
    rejected: dict[str, str]

    @property
    def online(self) -> bool:
        return self.state is NodeState.ONLINE


@dataclass(frozen=True, slots=True)
class SiteRow:
    name: str
    state: SiteState
    nodes: int
    online: int
    #: seconds since the latest heartbeat of any of its nodes.
    last_contact_s: float | None


@dataclass(slots=True)
class _Totals:
    """A node's answers, escalations and degraded answers since the console first saw it,
    summed over its models across version swaps (each version's counters restart)."""

    answers: int = 0
    escalated: int = 0
    degraded: int = 0


@dataclass
class _Node:
    beat: NodeStatus
    totals: _Totals = field(default_factory=_Totals)
    #: (time, answers, escalated, degraded) per heartbeat, over the rate window.
    samples: deque[tuple[float, int, int, int]] = field(default_factory=deque)
    journal: deque[JournalEntry] = field(default_factory=lambda: deque(maxlen=JOURNAL_SIZE))
    online: bool | None = None


class FleetBoard:
    def __init__(self, offline_after_s: float = 10.0) -> None:
        self.offline_after_s = offline_after_s
        self._nodes: dict[str, _Node] = {}
        self._unreadable: dict[str, str] = {}
        #: bumped on every change a page could show.
        self.version = 0

    # --- what comes in ----------------------------------------------------------------------

    def beat(self, status: NodeStatus) -> bool:
        """A heartbeat; False (ignored) when it is not newer than the one held."""
        node = self._nodes.get(status.node)
        self._unreadable.pop(status.node, None)
        if node is None:
            node = self._nodes[status.node] = _Node(status)
            node.samples.append((status.time, 0, 0, 0))
            self.version += 1
            return True
        previous = node.beat
        if status.time <= previous.time:
            return False
        node.beat = status
        self._count(node, previous, status)
        gap = status.time - previous.time
        if gap > self.offline_after_s and node.online is not False and not is_stopped(previous):
            # silent longer than the threshold, back before a tick saw it gone
            node.journal.append(
                JournalEntry(
                    previous.time + self.offline_after_s,
                    EntryKind.PRESENCE,
                    f"offline: no heartbeat for {gap:.0f} s",
                )
            )
            node.journal.append(JournalEntry(status.time, EntryKind.PRESENCE, "online again"))
            node.online = True
        for entry in _changes(previous, status):
            node.journal.append(entry)
        self.version += 1
        return True

    def unreadable(self, name: str, why: str) -> None:
        """A heartbeat that could not be decoded (shown as such, never as a crash)."""
        if name not in self._nodes:
            self._unreadable[name] = why
            self.version += 1

    def event(self, event: NodeEvent | DriftEvent) -> None:
        """A node's telemetry: drift events and what its agent did. Swaps and refusals are
        also read from the heartbeats (they arrive after a cut, the telemetry does not), so only
        the agent's restores and the drift events are journalled from here."""
        node = self._nodes.get(event.node)
        if node is None:
            return
        if isinstance(event, DriftEvent):
            node.journal.append(
                JournalEntry(
                    event.time,
                    EntryKind.DRIFT,
                    f"drift on {event.model}@{event.model_version}: {event.signal} PSI "
                    f"{event.psi:.3f} over its threshold {event.threshold:.3f}",
                )
            )
        elif event.event == "restored":
            node.journal.append(
                JournalEntry(
                    event.time,
                    EntryKind.SWAP,
                    f"restored {event.model}@{event.version} from its cache at start",
                )
            )
        else:
            return
        self.version += 1

    def backfill(self, name: str, history: Iterable[NodeStatus]) -> None:
        """Journal what a node's stored heartbeats show before the console saw it."""
        node = self._nodes.get(name)
        if node is None:
            return
        beats = sorted((b for b in history if b.node == name), key=lambda b: b.time)
        live = list(node.journal)
        first_live = min((e.time for e in live), default=float("inf"))
        earlier: list[JournalEntry] = []
        for before, after in itertools.pairwise(beats):
            if after.time < first_live:
                earlier.extend(_changes(before, after))
        node.journal.clear()
        node.journal.extend(sorted([*earlier, *live], key=lambda e: e.time))
        self.version += 1

    def tick(self, now: float) -> bool:
        """Journal nodes going offline or coming back; True when any did."""
        changed = False
        for node in self._nodes.values():
            online = is_online(node.beat, now, self.offline_after_s)
            if node.online is not None and online != node.online:
                beat = node.beat
                if online:
                    text = "online again"
                elif is_stopped(beat):
                    text = "stopped (its last heartbeat said so)"
                else:
                    text = f"offline: no heartbeat for {self.offline_after_s:g} s"
                node.journal.append(JournalEntry(now, EntryKind.PRESENCE, text))
                changed = True
            node.online = online
        if changed:
            self.version += 1
        return changed

    # --- what goes out ----------------------------------------------------------------------

    def beats(self) -> dict[str, NodeStatus]:
        return {name: node.beat for name, node in self._nodes.items()}

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def has(self, name: str) -> bool:
        return name in self._nodes

    def unreadable_nodes(self) -> dict[str, str]:
        return dict(self._unreadable)

    def journal(self, name: str) -> list[JournalEntry]:
        node = self._nodes.get(name)
        return list(reversed(node.journal)) if node is not None else []

    def rows(self, now: float) -> list[NodeRow]:
        rows = [self._row(node, now) for node in self._nodes.values()]
        unreachable = {s.name for s in site_rows(rows, now) if s.state is SiteState.UNREACHABLE}
        out = []
        for row in rows:
            if row.site in unreachable and row.state is NodeState.OFFLINE:
                row = _with_state(row, NodeState.UNREACHABLE)
            out.append(row)
        return sorted(out, key=lambda r: (r.site, _tier_order(r.tier), r.name))

    def row(self, name: str, now: float) -> NodeRow | None:
        return next((r for r in self.rows(now) if r.name == name), None)

    def _row(self, node: _Node, now: float) -> NodeRow:
        beat = node.beat
        if is_stopped(beat):
            state = NodeState.STOPPED
        elif is_online(beat, now, self.offline_after_s):
            state = NodeState.ONLINE
        else:
            state = NodeState.OFFLINE
        answers_per_s, escalation, degraded = _rates(node.samples)
        online = state is NodeState.ONLINE
        compared = sum(e.compared for e in beat.evidence.values())
        agreed = sum(e.agreed for e in beat.evidence.values())
        return NodeRow(
            name=beat.node,
            tier=beat.tier,
            site=beat.site or "-",
            zone=beat.zone,
            state=state,
            last_seen_s=max(0.0, now - beat.time),
            models=dict(beat.models),
            pending=dict(beat.pending),
            breakers=dict(beat.breakers),
            problems=list(beat.problems),
            # what a node no longer heard from did last is not what it does now
            answers_per_s=answers_per_s if online else None,
            escalation_rate=escalation if escalation is not None else beat.escalation_rate,
            degraded_rate=degraded,
            p99_ms=beat.p99_ms,
            drift=beat.drift,
            agreement=agreed / compared if compared else None,
            swaps=beat.swaps,
            mesh_version=beat.mesh_version,
            rejected=dict(beat.rejected),
        )

    @staticmethod
    def _count(node: _Node, previous: NodeStatus, status: NodeStatus) -> None:
        totals = node.totals
        for model, now in status.evidence.items():
            then = previous.evidence.get(model)
            same_run = then is not None and (then.version, then.since) == (now.version, now.since)
            base = then if same_run and then is not None else None
            totals.answers += max(0, now.requests - (base.requests if base else 0))
            totals.escalated += max(0, now.escalated - (base.escalated if base else 0))
            totals.degraded += max(0, now.degraded - (base.degraded if base else 0))
        node.samples.append((status.time, totals.answers, totals.escalated, totals.degraded))
        while len(node.samples) > 2 and status.time - node.samples[1][0] >= RATE_WINDOW_S:
            node.samples.popleft()


def site_rows(rows: Iterable[NodeRow], now: float) -> list[SiteRow]:
    """Each site's state: unreachable when none of its nodes is heard from and not all of them
    said they stopped (a cut link silences every node behind it at once)."""
    by_site: dict[str, list[NodeRow]] = {}
    for row in rows:
        by_site.setdefault(row.site, []).append(row)
    out = []
    for site, members in sorted(by_site.items()):
        online = sum(1 for r in members if r.state is NodeState.ONLINE)
        stopped = sum(1 for r in members if r.state is NodeState.STOPPED)
        last = min((r.last_seen_s for r in members), default=None)
        if online == len(members):
            state = SiteState.UP
        elif stopped == len(members):
            state = SiteState.STOPPED
        elif online == 0:
            state = SiteState.UNREACHABLE
        else:
            state = SiteState.PARTIAL
        out.append(SiteRow(site, state, len(members), online, last))
    return out


def _rates(
    samples: deque[tuple[float, int, int, int]],
) -> tuple[float | None, float | None, float | None]:
    if len(samples) < 2:
        return None, None, None
    t0, a0, e0, d0 = samples[0]
    t1, a1, e1, d1 = samples[-1]
    span = t1 - t0
    answers = a1 - a0
    per_s = answers / span if span > 0 else None
    if answers <= 0:
        return per_s, None, None
    return per_s, (e1 - e0) / answers, (d1 - d0) / answers


def _changes(before: NodeStatus, after: NodeStatus) -> list[JournalEntry]:
    """What changed between two heartbeats of one node: swaps, refusals, breakers."""
    t = after.time
    out: list[JournalEntry] = []
    for model, version in sorted(after.models.items()):
        old = before.models.get(model)
        if old is not None and old != version:
            out.append(JournalEntry(t, EntryKind.SWAP, f"swapped {model} {old} → {version}"))
    for what, why in sorted(after.rejected.items()):
        if what not in before.rejected:
            out.append(JournalEntry(t, EntryKind.REFUSAL, f"refused {what}: {why}"))
    for upstream, state in sorted(after.breakers.items()):
        old = before.breakers.get(upstream)
        if old is not None and old != state:
            out.append(
                JournalEntry(t, EntryKind.BREAKER, f"breaker to {upstream}: {old} → {state}")
            )
    return out


_TIERS = {"edge": 0, "gateway": 1, "cloud": 2}


def _tier_order(tier: str) -> int:
    return _TIERS.get(tier, 3)


def _with_state(row: NodeRow, state: NodeState) -> NodeRow:
    return replace(row, state=state)


def versions_text(models: Mapping[str, str]) -> str:
    return ", ".join(f"{m}@{v}" for m, v in sorted(models.items())) or NONE


__all__ = [
    "EntryKind",
    "FleetBoard",
    "JournalEntry",
    "NodeRow",
    "NodeState",
    "SiteRow",
    "SiteState",
    "site_rows",
    "versions_text",
]
