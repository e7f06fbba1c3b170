"""Each page's live parts, rendered from the console's state: what a page shows when it opens
and what its stream sends when it changes (the same markup, so the two never differ)."""

from __future__ import annotations

from typing import Any

from mesh.console.fleetboard import site_rows
from mesh.console.markup import Html
from mesh.console.page_fleet import fleet_fragment, node_fragment
from mesh.console.page_quality import quality_fragment
from mesh.console.page_review import queue_fragment
from mesh.console.page_rollouts import rollouts_fragment
from mesh.console.rolloutboard import RolloutCard, card
from mesh.console.state import ConsoleState
from mesh.fleet.rollout import Rollout

PAGES = ("fleet", "node", "rollouts", "review", "quality")


def fragments(
    state: ConsoleState, page: str, *, node: str | None = None, item: str | None = None
) -> dict[str, Html]:
    now = state.clock()
    if page == "fleet":
        rows = state.fleet.rows(now)
        return {"fleet": fleet_fragment(rows, site_rows(rows, now), state.fleet.unreadable_nodes())}
    if page == "node" and node is not None:
        row = state.fleet.row(node, now)
        return {"node": node_fragment(row, node, state.fleet.journal(node), now)}
    if page == "rollouts":
        return {"rollouts": rollouts_fragment(cards(state), state.actions.recent(), now)}
    if page == "review":
        q = state.queue
        return {"review-queue": queue_fragment(q.items, q.total, now, q.problem, item)}
    if page == "quality":
        return {"quality": quality_fragment(state.quality, state.quality_problem)}
    return {}


def cards(state: ConsoleState) -> list[RolloutCard]:
    """Each model's latest rollout, the running ones first, then the latest started."""
    now = state.clock()
    beats = state.beats()

    def order(r: Rollout) -> tuple[bool, float]:
        return (not r.active, -r.created_at)

    return [
        card(r, state.windows.get(r.model), beats, now=now, offline_after_s=state.offline_after_s)
        for r in sorted(state.rollouts.values(), key=order)
    ]


def fleet_json(state: ConsoleState) -> dict[str, Any]:
    now = state.clock()
    rows = state.fleet.rows(now)
    return {
        "nodes": [
            {
                "node": r.name, "tier": r.tier, "site": r.site, "zone": r.zone,
                "state": r.state.value, "online": r.online,
                "last_seen_s": round(r.last_seen_s, 3), "models": r.models,
                "pending": r.pending, "breakers": r.breakers, "problems": r.problems,
                "answers_per_s": r.answers_per_s, "escalation_rate": r.escalation_rate,
                "degraded_rate": r.degraded_rate, "p99_ms": r.p99_ms, "drift": r.drift,
                "agreement": r.agreement, "swaps": r.swaps, "rejected": r.rejected,
            }
            for r in rows
        ],
        "sites": [
            {"site": s.name, "state": s.state.value, "nodes": s.nodes, "online": s.online,
             "last_contact_s": s.last_contact_s}
            for s in site_rows(rows, now)
        ],
        "unreadable": state.fleet.unreadable_nodes(),
    }  # fmt: skip


__all__ = ["PAGES", "cards", "fleet_json", "fragments"]
