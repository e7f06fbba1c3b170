"""The frame every page shares: the head, the skip link, the navigation, the live region the
script updates, and the page's stream. Pure."""

from __future__ import annotations

from mesh.console.markup import Html, escape

PAGES = (("fleet", "/", "Fleet"), ("rollouts", "/rollouts", "Rollouts"),
         ("review", "/review", "Review"), ("quality", "/quality", "Quality"))  # fmt: skip
#: bumped when the static files change, so a browser does not keep an old copy.
ASSETS = "1"


def page(
    *,
    title: str,
    active: str,
    body: Html,
    csrf: str = "",
    stream: str | None = None,
    flash: str | None = None,
) -> Html:
    """A whole page; ``stream`` is the URL of its server-sent events (None: a static page)."""
    current = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="{href}"{current if key == active else ""}>{escape(label)}</a></li>'
        for key, href, label in PAGES
    )
    stream_attr = f' data-stream="{escape(stream)}"' if stream else ""
    notice = f'<p class="flash" role="status">{escape(flash)}</p>' if flash else ""
    return Html(
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{escape(csrf)}">'
        f"<title>{escape(title)} · mesh console</title>"
        f'<link rel="stylesheet" href="/static/console.css?v={ASSETS}">'
        f'<script src="/static/console.js?v={ASSETS}" defer></script>'
        f'</head><body data-page="{escape(active)}"{stream_attr}>'
        '<a class="skip" href="#main">Skip to content</a>'
        '<header><p class="brand">mesh console</p>'
        f'<nav aria-label="Pages"><ul>{nav}</ul></nav>'
        '<p class="connection" id="connection" role="status">live updates: connecting</p>'
        "</header>"
        f'<main id="main" tabindex="-1"><h1>{escape(title)}</h1>{notice}{body}</main>'
        '<div id="announce" class="visually-hidden" aria-live="polite"></div>'
        "</body></html>"
    )


def refusal(message: str) -> Html:
    """What a page asked for without a valid credential shows: how to get in."""
    return Html(
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Sign in · mesh console</title>"
        f'<link rel="stylesheet" href="/static/console.css?v={ASSETS}">'
        "</head><body>"
        '<main id="main"><h1>mesh console</h1>'
        f'<p class="flash" role="alert">{escape(message)}</p>'
        "<p>Open the address <code>mesh up</code> printed (<code>MESH_CONSOLE_URL</code>) with "
        "<code>?token=</code> and the token it printed (<code>MESH_CONSOLE_TOKEN</code>), "
        "or enter the token here.</p>"
        '<form method="get" action=""><label for="token">Console token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required> <button type="submit">Open the console</button></form>'
        "</main></body></html>"
    )


def state_badge(state: str, text: str | None = None) -> Html:
    """A state as a word with a symbol and a colour: never colour alone."""
    symbol = {
        "online": "●", "up": "●", "passed": "✔", "completed": "✔", "holds": "✔",
        "offline": "○", "unreachable": "◌", "stopped": "■", "partial": "◐",
        "failed": "✘", "over": "✘", "rolled_back": "↺", "rolling_back": "↺", "aborted": "■",
        "paused": "⏸", "running": "▶", "in_progress": "▶", "pending": "…",
        "not started": "·", "waiting": "…", "halted": "■", "open": "✘", "half_open": "◐",
        "closed": "●",
    }.get(state, "·")  # fmt: skip
    css = state.replace(" ", "-").replace("_", "-")
    return Html(
        f'<span class="state state-{escape(css)}"><span aria-hidden="true">{symbol}</span> '
        f"{escape(text or state.replace('_', ' '))}</span>"
    )


__all__ = ["PAGES", "page", "refusal", "state_badge"]
