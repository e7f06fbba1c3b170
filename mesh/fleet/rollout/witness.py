"""What the tier above saw, and how much of a group's figures one node may make up.

A node's evidence is its own word. What the tier above reports answering for it (its heartbeat's
``answered``: escalations and audits, per caller and model) is another node's word, and bounds
the first:

- **Comparisons are capped by answers.** Over a stage's window, a node counts at most as many
  compared answers as the tier above answered for it (summed over the nodes that answered),
  and its agreements are scaled down with them (its own agreement rate kept). A node can only
  compare what came back from above.
- **No node counts for more than its share.** Each node's other counters (requests, errors,
  escalations, degraded answers, audits, latency) are scaled down, rates kept, so that it counts
  for at most ``SHARE_SLACK`` times the requests its share of the tier above's answers stands
  for: the answers the tier above gave it, times the group's typical requests per answer (the
  lower median of its nodes' ratios). An honest node's share wanders a little with chance (an
  audit is a coin toss per confident answer); a liar's forged requests stand for nothing the
  tier above saw. A group with no answers from above at all (a top tier, with no tier above to
  witness it) is bounded the same way by its lower-median node's requests.

So one stolen node identity that writes consistent, inflated counters weighs what it really sent
upstream. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from mesh.wire import EVIDENCE_COUNTERS, NodeStatus, VersionEvidence

#: how many times its share of the tier above's answers a node's requests may stand for.
SHARE_SLACK = 2.0
#: a cut smaller than this share of what a node claimed (and than ``NOISE_COUNT``) is not named
#: in the figures: heartbeats of a node and of the tier above are taken a moment apart, so an
#: honest node's window can claim an answer or two more than the tier above's shows.
NOISE_SHARE = 0.05
NOISE_COUNT = 3
#: the counters a node's weight scales: every one but the comparisons, capped on their own.
SCALED_COUNTERS = tuple(n for n in EVIDENCE_COUNTERS if n not in ("compared", "agreed"))


@dataclass(frozen=True)
class Witness:
    """One node's answers for the tier below, for one model: running totals since ``since``."""

    since: float
    #: caller node to answers.
    counts: Mapping[str, int]


def witness_of(status: NodeStatus, model: str) -> Witness | None:
    """What a heartbeat says its node answered for each caller, for ``model``."""
    answered = status.answered
    if answered is None:
        return None
    counts = {
        caller: models[model] for caller, models in answered.counts.items() if model in models
    }
    return Witness(since=answered.since, counts=counts)


def answered_since(
    then: Mapping[str, Witness], now: Mapping[str, Witness], callers: Sequence[str]
) -> tuple[dict[str, int], dict[str, str]]:
    """Per caller, the answers the tier above gave it since ``then`` (the window's snapshot),
    summed over the answering nodes; and the answering nodes left out, with why (counts gone
    back without a restart). A node that restarted, or was not in the snapshot, counts whole;
    what a node says it answered for itself counts for nothing."""
    wanted = set(callers)
    totals = dict.fromkeys(callers, 0)
    problems: dict[str, str] = {}
    for observer, seen in now.items():
        before = then.get(observer)
        same_run = before is not None and before.since == seen.since
        diffs: dict[str, int] = {}
        for caller, count in seen.counts.items():
            if caller not in wanted or caller == observer:  # nobody is its own tier above
                continue
            base = before.counts.get(caller, 0) if same_run and before is not None else 0
            diffs[caller] = count - base
        back = sorted(c for c, d in diffs.items() if d < 0)
        if back or any(c < 0 for c in seen.counts.values()):
            problems[observer] = f"its answers for {back[:3] or 'a caller'} went backwards"
            continue
        for caller, d in diffs.items():
            totals[caller] += d
    return totals, problems


def lower_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0.0


def bound(
    items: Sequence[tuple[str, VersionEvidence]], answered: Mapping[str, int], witnessed: bool
) -> tuple[list[VersionEvidence], dict[str, str]]:
    """A group's evidence with each node's comparisons capped by ``answered`` (what the tier
    above answered for it over the window) and its weight bounded by its share of those
    answers; and the nodes cut, with how. ``witnessed`` says whether the tier above answered
    any node of the rollout: when it did, a group none of whose nodes it answered weighs
    nothing (a lone liar's baseline is not the rollout's figures)."""
    cut: dict[str, str] = {}
    if witnessed:
        ratio = lower_median(
            [e.requests / a for name, e in items if (a := answered.get(name, 0)) and e.requests]
        )
        caps = {name: SHARE_SLACK * ratio * answered.get(name, 0) for name, _ in items}
        basis = "its share of the tier above's answers"
    else:
        typical = lower_median([float(e.requests) for _, e in items])
        caps = {name: SHARE_SLACK * typical for name, _ in items}
        basis = "the group's median node (nothing answered from above)"
    out: list[VersionEvidence] = []
    for name, e in items:
        words: list[str] = []
        limit = answered.get(name, 0)
        if e.compared > limit:
            if _material(e.compared - limit, e.compared):
                words.append(f"compared {e.compared} capped at the {limit} answered for it above")
            kept = e.agreed * limit // e.compared
            e = replace(e, compared=limit, agreed=kept)
        cap = caps[name]
        if e.requests > cap:
            if _material(e.requests - cap, e.requests):
                words.append(f"{e.requests} requests weigh {math.floor(cap)}, {basis}")
            e = _scaled(e, cap / e.requests)
        if words:
            cut[name] = "; ".join(words)
        out.append(e)
    return out, cut


def _material(cut: float, claimed: int) -> bool:
    return cut > max(NOISE_COUNT, NOISE_SHARE * claimed)


def _scaled(e: VersionEvidence, factor: float) -> VersionEvidence:
    """``e`` counting for ``factor`` of itself: every counter but the comparisons (capped on
    their own) scaled down alike, so its rates are kept."""
    scaled = {name: math.floor(getattr(e, name) * factor) for name in SCALED_COUNTERS}
    latency = tuple(math.floor(c * factor) for c in e.latency)
    return replace(e, latency=latency, **scaled)
