"""HTML built from strings with every dynamic value escaped: ``Html`` is markup already safe to
embed, anything else goes through ``escape`` on its way in."""

from __future__ import annotations

import html
from collections.abc import Iterable

#: what a figure shows when there is none (an en dash).
NONE = "\u2013"


class Html(str):
    """A string of markup that is already safe: it is embedded as it is."""

    __slots__ = ()


def escape(value: object) -> Html:
    """``value`` as text in HTML (markup passes through unchanged)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(sep.join(escape(p) for p in parts))


def tag(name: str, content: object = "", /, **attrs: object) -> Html:
    """``<name attrs>content</name>``; an attribute set to None or False is left out, True is
    written bare, and a trailing underscore is dropped (``class_``)."""
    words = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        words.append(attr if value is True else f'{attr}="{escape(value)}"')
    return Html(f"<{' '.join(words)}>{escape(content)}</{name}>")


def fmt(value: float | None, digits: int = 3, *, unit: str = "", none: str = NONE) -> str:
    """A figure for people: significant digits, a unit, a dash when there is none."""
    if value is None:
        return none
    return f"{value:.{digits}g}{unit}"


def percent(value: float | None, digits: int = 1, *, none: str = NONE) -> str:
    return none if value is None else f"{100 * value:.{digits}f}%"


def ago(seconds: float | None) -> str:
    """How long ago, in words a person reads at a glance."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


__all__ = ["Html", "ago", "escape", "fmt", "join", "percent", "tag"]
