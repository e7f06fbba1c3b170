"""The fleet page (sites, tiers and nodes at a glance) and a node's page (its journal). Pure:
rows in, markup out."""

from __future__ import annotations

from collections.abc import Sequence

from mesh.console.fleetboard import JournalEntry, NodeRow, NodeState, SiteRow, SiteState
from mesh.console.layout import state_badge
from mesh.console.markup import NONE, Html, ago, escape, fmt, percent


def fleet_fragment(
    rows: Sequence[NodeRow], sites: Sequence[SiteRow], unreadable: dict[str, str]
) -> Html:
    online = sum(1 for r in rows if r.state is NodeState.ONLINE)
    summary = f"{len(rows)} nodes: {online} online, {len(rows) - online} not; {len(sites)} sites"
    parts = [f'<p class="summary">{escape(summary)}</p>', _sites(sites)]
    by_site: dict[str, list[NodeRow]] = {}
    for row in rows:
        by_site.setdefault(row.site, []).append(row)
    states = {s.name: s for s in sites}
    for site, members in by_site.items():
        parts.append(_site_nodes(site, states.get(site), members))
    if unreadable:
        items = "".join(
            f"<li>{escape(name)}: {escape(why)}</li>" for name, why in sorted(unreadable.items())
        )
        parts.append(f"<h2>Unreadable heartbeats</h2><ul>{items}</ul>")
    if not rows and not unreadable:
        parts.append("<p>No node has written a heartbeat yet.</p>")
    return Html("".join(parts))


def _sites(sites: Sequence[SiteRow]) -> Html:
    if not sites:
        return Html("")
    body = "".join(
        f'<tr><th scope="row">{escape(s.name)}</th><td>{_site_state(s)}</td>'
        f"<td>{s.online} of {s.nodes}</td><td>{escape(ago(s.last_contact_s))}</td></tr>"
        for s in sites
    )
    return Html(
        '<h2>Sites</h2><table class="sites"><thead><tr><th scope="col">Site</th>'
        '<th scope="col">State</th><th scope="col">Nodes online</th>'
        '<th scope="col">Last contact</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _site_state(s: SiteRow) -> Html:
    if s.state is SiteState.UNREACHABLE:
        return state_badge("unreachable", f"unreachable, last contact {ago(s.last_contact_s)}")
    return state_badge(s.state.value)


def _site_nodes(site: str, state: SiteRow | None, rows: Sequence[NodeRow]) -> Html:
    caption = f"Site {site}"
    if state is not None and state.state is SiteState.UNREACHABLE:
        caption += f" (unreachable, last contact {ago(state.last_contact_s)})"
    body = "".join(_node_row(r) for r in rows)
    return Html(
        f'<h2 id="site-{escape(site)}">{escape(caption)}</h2>'
        '<div class="scroll"><table class="nodes"><thead><tr>'
        '<th scope="col">Node</th><th scope="col">Tier</th><th scope="col">State</th>'
        '<th scope="col">Last seen</th><th scope="col">Versions</th>'
        '<th scope="col">Breakers</th><th scope="col">Answers/s</th>'
        '<th scope="col">Escalated</th><th scope="col">Degraded</th>'
        '<th scope="col">p99</th><th scope="col">Drift</th><th scope="col">Problems</th>'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def node_state(row: NodeRow) -> Html:
    if row.state is NodeState.UNREACHABLE:
        return state_badge("unreachable", "offline (site unreachable)")
    return state_badge(row.state.value)


def _node_row(r: NodeRow) -> Html:
    versions = ", ".join(f"{m}@{v}" for m, v in sorted(r.models.items())) or NONE
    if r.pending:
        versions += " (taking " + ", ".join(f"{m}@{v}" for m, v in r.pending.items()) + ")"
    breakers = (
        Html(
            " ".join(
                state_badge(s, f"{u} {s.replace('_', ' ')}") for u, s in sorted(r.breakers.items())
            )
        )
        if r.breakers
        else Html(NONE)
    )
    problems = "; ".join(r.problems) or NONE
    return Html(
        f'<tr id="node-{escape(r.name)}" data-state="{escape(r.state.value)}">'
        f'<th scope="row"><a id="link-{escape(r.name)}" href="/nodes/{escape(r.name)}">'
        f"{escape(r.name)}</a></th>"
        f"<td>{escape(r.tier)}</td><td>{node_state(r)}</td>"
        f"<td>{escape(ago(r.last_seen_s))}</td><td>{escape(versions)}</td><td>{breakers}</td>"
        f"<td>{escape(fmt(r.answers_per_s, 3))}</td><td>{escape(percent(r.escalation_rate))}</td>"
        f"<td>{escape(percent(r.degraded_rate))}</td>"
        f"<td>{escape(fmt(r.p99_ms, 3, unit=' ms'))}</td><td>{escape(fmt(r.drift, 3))}</td>"
        f"<td>{escape(problems)}</td></tr>"
    )


def node_fragment(
    row: NodeRow | None, name: str, journal: Sequence[JournalEntry], now: float
) -> Html:
    if row is None:
        return Html(f"<p>No heartbeat of node {escape(name)} has been seen.</p>")
    facts = [
        ("State", node_state(row)),
        ("Last seen", escape(ago(row.last_seen_s))),
        ("Tier", escape(row.tier)),
        ("Site", escape(row.site)),
        ("Zone", escape(row.zone or NONE)),
        ("Versions", escape(", ".join(f"{m}@{v}" for m, v in sorted(row.models.items())) or NONE)),
        ("Taking", escape(", ".join(f"{m}@{v}" for m, v in row.pending.items()) or NONE)),
        ("Breakers", Html(" ".join(state_badge(s, f"{u} {s.replace('_', ' ')}")
                                   for u, s in sorted(row.breakers.items())) or NONE)),
        ("Answers per second", escape(fmt(row.answers_per_s))),
        ("Escalated", escape(percent(row.escalation_rate))),
        ("Degraded", escape(percent(row.degraded_rate))),
        ("p99", escape(fmt(row.p99_ms, unit=" ms"))),
        ("Drift (PSI)", escape(fmt(row.drift))),
        ("Agreement with the tier above", escape(percent(row.agreement))),
        ("Swaps since start", escape(row.swaps)),
        ("Problems", escape("; ".join(row.problems) or "none")),
        ("Mesh version", escape(row.mesh_version or NONE)),
    ]  # fmt: skip
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    refused = "".join(
        f"<li>{escape(what)}: {escape(why)}</li>" for what, why in sorted(row.rejected.items())
    )
    entries = "".join(
        f"<tr><td>{escape(_clock(e.time))} ({escape(ago(now - e.time))})</td>"
        f"<td>{escape(e.kind.value)}</td><td>{escape(e.text)}</td></tr>"
        for e in journal
    )
    journal_html = (
        '<table class="journal"><caption>Swaps, refusals, drift events, breaker transitions and '
        'comings and goings, newest first</caption><thead><tr><th scope="col">When (UTC)</th>'
        f'<th scope="col">What</th><th scope="col">Detail</th></tr></thead><tbody>{entries}'
        "</tbody></table>"
        if entries
        else "<p>Nothing has happened to this node since the console first saw it.</p>"
    )
    return Html(
        f'<dl class="facts">{dl}</dl>'
        + (f"<h2>Versions refused</h2><ul>{refused}</ul>" if refused else "")
        + f"<h2>Journal</h2>{journal_html}"
    )


def _clock(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["fleet_fragment", "node_fragment", "node_state"]
