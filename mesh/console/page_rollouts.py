"""The rollouts page: each model's latest rollout, its stages, its gates against their bounds,
flagged nodes, the buttons a person may press, and the log of what people did. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from mesh.console.actions import ActionRecord
from mesh.console.layout import state_badge
from mesh.console.markup import Html, ago, escape, fmt
from mesh.console.rolloutboard import GateRow, RolloutCard, StageRow

VERBS = {"pause": "Pause", "resume": "Resume", "abort": "Abort"}


def rollouts_fragment(
    cards: Sequence[RolloutCard], actions: Sequence[ActionRecord], now: float
) -> Html:
    parts: list[str] = [_card(c, now) for c in cards]
    if not cards:
        parts.append("<p>No rollout has been started (<code>mesh rollout start</code>).</p>")
    parts.append(actions_table(actions, now))
    return Html("".join(parts))


def _card(c: RolloutCard, now: float) -> Html:
    r = c.rollout
    i = min(r.current_stage, len(r.stages) - 1)
    head = f"{r.model}@{r.version}" + (
        f" (from {r.previous_version})" if r.previous_version else ""
    )
    where = (
        f"stage {i + 1} of {len(r.stages)} ({r.stages[i].name}, {r.phase.value})"
        if r.active
        else f"ended at stage {i + 1} of {len(r.stages)}"
    )
    started = f"started {ago(now - r.created_at)} by {r.by or 'someone'}"
    if r.shadow:
        started += "; begins in shadow, answering nobody"
    served = (
        f" · answers it served before the decision: {r.answers_served_before_decision}"
        if r.answers_served_before_decision is not None
        else ""
    )
    buttons = "".join(
        f'<a class="button action-{a}" href="/rollouts/{escape(r.model)}/{a}">'
        f'{VERBS[a]}<span class="visually-hidden"> the rollout of {escape(r.model)}</span></a>'
        for a in c.actions
    )
    flagged = ""
    if r.flagged:
        items = "".join(
            f"<li>{escape(n)}: {escape(why)}</li>" for n, why in sorted(r.flagged.items())
        )
        flagged = f"<h3>Nodes whose telemetry was ignored</h3><ul>{items}</ul>"
    verdict = f'<p class="verdict">{escape(c.verdict)}</p>' if c.verdict else ""
    return Html(
        f'<section class="rollout" id="rollout-{escape(r.model)}" '
        f'aria-labelledby="rollout-{escape(r.model)}-h" data-state="{escape(r.state.value)}">'
        f'<h2 id="rollout-{escape(r.model)}-h">{escape(head)}</h2>'
        f"<p>{state_badge(r.state.value)} · {escape(where)} · {escape(started)} · "
        f"{len(r.targets)} nodes · most serving it at once: {r.max_nodes_serving}"
        f"{escape(served)}</p>"
        + verdict
        + (f'<p class="actions">{buttons}</p>' if buttons else "")
        + _stages(r.model, c.stages)
        + _gates(c)
        + flagged
        + "</section>"
    )


def _stages(model: str, stages: Sequence[StageRow]) -> Html:
    rows = "".join(_stage_row(model, s) for s in stages)
    return Html(
        f'<table class="stages"><caption>Stages of the rollout of {escape(model)}</caption>'
        '<thead><tr><th scope="col">Stage</th><th scope="col">Nodes</th>'
        '<th scope="col">Status</th><th scope="col">Time</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


#: what a shadow stage's row says of it.
SHADOW_NOTE = " <small>(in shadow: runs beside the served version, answers nobody)</small>"


def _stage_row(model: str, s: StageRow) -> Html:
    shadow = ' data-shadow="true"' if s.shadow else ""
    return Html(
        f'<tr id="stage-{escape(model)}-{s.index + 1}" data-status="{escape(s.status.value)}"'
        f'{shadow}><th scope="row">{s.index + 1}. {escape(s.name)}'
        f"{SHADOW_NOTE if s.shadow else ''}</th><td>{s.size}</td>"
        f"<td>{state_badge(s.status.value)}</td>"
        f"<td>{escape(fmt(s.seconds, 3, unit=' s'))}</td></tr>"
    )


def _gates(c: RolloutCard) -> Html:
    if c.gate_stage is None or not c.gates:
        return Html("<p>No evidence yet: the stage's nodes are taking the version.</p>")
    stage = c.rollout.stages[c.gate_stage]
    rows = "".join(_gate_row(g) for g in c.gates)
    sides = (
        ("In shadow", "Serving version") if stage.shadow else ("Canary", "Baseline")
    )  # fmt: skip
    return Html(
        f'<table class="gates"><caption>Gates of stage {c.gate_stage + 1} '
        f"({escape(stage.name)}), {escape(c.source)}. Figures are point figures; the gates judge "
        "their 90% interval bounds, so one unlucky answer fails nothing.</caption>"
        f'<thead><tr><th scope="col">Gate</th><th scope="col">{sides[0]}</th>'
        f'<th scope="col">{sides[1]}</th><th scope="col">Bound</th><th scope="col">Now</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _gate_row(g: GateRow) -> Html:
    if g.holds is None:
        now = state_badge("waiting", "nothing to judge yet")
    elif g.holds:
        now = state_badge("holds", "within")
    else:
        now = state_badge("over", "outside")
    return Html(
        f'<tr><th scope="row">{escape(g.name)}</th><td>{escape(g.canary)}</td>'
        f"<td>{escape(g.baseline)}</td><td>{escape(g.bound)}</td><td>{now}</td></tr>"
    )


def actions_table(actions: Sequence[ActionRecord], now: float) -> Html:
    if not actions:
        return Html("<h2>Actions</h2><p>Nobody has acted through the console yet.</p>")
    rows = "".join(
        f"<tr><td>{escape(_clock(a.at))} ({escape(ago(now - a.at))})</td>"
        f"<td>{escape(a.person)}</td><td>{escape(a.action)}</td><td>{escape(a.target)}</td>"
        f"<td>{escape(a.outcome)}</td></tr>"
        for a in actions
    )
    return Html(
        '<h2>Actions</h2><table class="actions-log"><caption>What people did through the '
        'console, newest first</caption><thead><tr><th scope="col">When (UTC)</th>'
        '<th scope="col">Who</th><th scope="col">Action</th><th scope="col">On</th>'
        f'<th scope="col">Outcome</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def confirm_body(model: str, action: str, summary: str, csrf: str) -> Html:
    """The confirmation a person gives before the console acts on a rollout."""
    consequence = {
        "pause": "The rollout holds where it is until someone resumes it.",
        "resume": "The current stage is deployed and soaked again from its start.",
        "abort": "Every node of the rollout returns to the previous version.",
    }[action]
    return Html(
        f"<p>{escape(summary)}</p><p>{escape(consequence)}</p>"
        f'<form method="post" action="/rollouts/{escape(model)}/{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<button type="submit" class="action-{escape(action)}">{VERBS[action]} the rollout of '
        f'{escape(model)}</button> <a href="/rollouts">Cancel</a></form>'
    )


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["VERBS", "actions_table", "confirm_body", "rollouts_fragment"]
