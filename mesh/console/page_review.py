"""The review page: one item at a time, its input drawn as a person reads it, every tier's
answer and confidence, a button per class (and its key), skip; beside it the queue, live. Pure:
the review API's answers (plain dicts from the network, read defensively) in, markup out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mesh.console.figure import draw_input
from mesh.console.markup import NONE, Html, ago, escape, percent

#: classes that get a key: 0 to 9.
KEYED = 10


def queue_fragment(
    items: Sequence[Mapping[str, Any]],
    total: int,
    now: float,
    problem: str | None,
    current: str | None,
) -> Html:
    if problem is not None:
        return Html(f'<p class="flash" role="status">{escape(problem)}</p>')
    if not items:
        return Html("<p>The queue is empty: nothing waits for a person.</p>")
    rows = []
    for item in items:
        item_id = str(item.get("id", ""))
        served = _served(item)
        mark = ' aria-current="true"' if item_id == current else ""
        rows.append(
            f'<tr id="queued-{escape(item_id)}"><th scope="row">'
            f'<a href="/review?item={escape(item_id)}"{mark}>{escape(item_id[:12])}</a></th>'
            f"<td>{escape(item.get('model'))}</td><td>{escape(item.get('reason'))}</td>"
            f"<td>{escape(served)}</td><td>{escape(_age(item, now))}</td></tr>"
        )
    return Html(
        f'<p class="summary">{total} waiting for a person</p>'
        '<table class="queue"><caption>The review queue, oldest first</caption><thead><tr>'
        '<th scope="col">Item</th><th scope="col">Model</th><th scope="col">Why</th>'
        '<th scope="col">Answer served</th><th scope="col">Queued</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def item_fragment(
    item: Mapping[str, Any] | None, csrf: str, can_label: bool, note: str | None = None
) -> Html:
    if item is None:
        return Html(
            (f'<p role="status">{escape(note)}</p>' if note else "")
            + "<p>No item to review: the queue is empty.</p>"
        )
    item_id = str(item.get("id", ""))
    classes = [str(c) for c in item.get("classes") or []]
    withheld = item.get("withheld")
    inputs = item.get("input") if isinstance(item.get("input"), dict) else None
    head = (
        f'<h2 id="item-heading" data-item="{escape(item_id)}">Item {escape(item_id[:12])}: '
        f"{escape(item.get('model'))}, {escape(item.get('reason'))}</h2>"
        f"<p>{escape(item.get('why') or '')}</p>"
    )
    figure = draw_input(inputs, withheld if isinstance(withheld, str) else None)
    answers = _answers(item)
    if not can_label:
        controls = (
            "<p>This console has no reviewer identity: it shows the queue but cannot label "
            "(start it with <code>--reviewer-creds</code>).</p>"
        )
    elif withheld:
        controls = _skip_form(item_id, csrf)
    else:
        controls = _label_form(item_id, classes, csrf) + _skip_form(item_id, csrf)
    status = f'<p role="status">{escape(note)}</p>' if note else ""
    return Html(
        f'<article class="item" id="item-{escape(item_id)}" aria-labelledby="item-heading">'
        f'{status}{head}<div class="item-body">{figure}{answers}</div>{controls}</article>'
    )


def _label_form(item_id: str, classes: Sequence[str], csrf: str) -> str:
    names = classes or [str(i) for i in range(10)]
    buttons = []
    for i, name in enumerate(names):
        key = f' data-key="{i}" aria-keyshortcuts="{i}"' if i < KEYED else ""
        hint = f"<kbd>{i}</kbd> " if i < KEYED else ""
        shown = name if name == str(i) else f"{i} {name}"
        buttons.append(
            f'<button type="submit" name="label" value="{i}" class="label"{key}>'
            f'{hint}<span class="visually-hidden">label as </span>{escape(shown)}</button>'
        )
    return (
        f'<form class="labels" method="post" action="/review/{escape(item_id)}/label" '
        f'data-item="{escape(item_id)}"><fieldset><legend>Label this item (keys 0 to '
        f"{min(len(names), KEYED) - 1})</legend>"
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{"".join(buttons)}'
        "</fieldset></form>"
    )


def _skip_form(item_id: str, csrf: str) -> str:
    return (
        f'<form class="skip-form" method="post" action="/review/{escape(item_id)}/skip" '
        f'data-item="{escape(item_id)}"><input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button type="submit" class="skip-button" data-key="s" aria-keyshortcuts="s">'
        "<kbd>s</kbd> Skip</button></form>"
    )


def _answers(item: Mapping[str, Any]) -> str:
    rows = []
    for a in item.get("answers") or []:
        if not isinstance(a, dict):
            continue
        label = a.get("label")
        name = a.get("class")
        answer = (
            NONE
            if label is None
            else (f"{label} {name}" if name and name != str(label) else str(label))
        )
        conf = a.get("confidence")
        served = "served to the caller" if a.get("served") else ""
        rows.append(
            f'<tr><th scope="row">{escape(a.get("tier"))}</th><td>{escape(a.get("node"))}</td>'
            f"<td>{escape(a.get('version'))}</td><td>{escape(answer)}</td>"
            f"<td>{escape(percent(conf if isinstance(conf, int | float) else None))}</td>"
            f"<td>{escape(served)}</td></tr>"
        )
    if not rows:
        return "<p>No tier's answer was kept with this item.</p>"
    return (
        '<table class="answers"><caption>What each tier answered</caption><thead><tr>'
        '<th scope="col">Tier</th><th scope="col">Node</th><th scope="col">Version</th>'
        '<th scope="col">Answer</th><th scope="col">Confidence</th><th scope="col">Served</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _served(item: Mapping[str, Any]) -> str:
    for a in item.get("answers") or []:
        if isinstance(a, dict) and a.get("served"):
            conf = a.get("confidence")
            shown = percent(conf if isinstance(conf, int | float) else None)
            return f"{a.get('label')} ({shown}) at {a.get('tier')}"
    return NONE


def _age(item: Mapping[str, Any], now: float) -> str:
    at = item.get("queued_at") or item.get("created_at")
    return ago(now - at) if isinstance(at, int | float) else NONE


__all__ = ["item_fragment", "queue_fragment"]
