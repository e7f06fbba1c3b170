"""Plots as inline SVG, drawn on the server: no script, no asset. Each series has its own
colour, dash pattern and marker, and is named in a legend and in the chart's description, so
that no series is told from another by colour alone. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.console.markup import Html, escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28
#: colours that stay apart for the common colour-vision deficiencies (Okabe and Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4")
MARKERS = ("circle", "square", "diamond", "triangle", "circle", "square", "diamond")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    #: (x, y) points, x ascending: unix seconds on a time axis, an index on a category axis.
    points: tuple[tuple[float, float], ...]


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    y_range: tuple[float, float] | None = None,
    y_format: Callable[[float], str] = lambda y: f"{y:.3g}",
    categories: Sequence[str] | None = None,
) -> Html:
    """A line chart; ``categories`` labels the x axis by index (days), else x is a time."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return Html(
            f'<figure class="chart" id="{escape(chart_id)}"><figcaption>{escape(title)}'
            '</figcaption><p class="empty">No figures yet.</p></figure>'
        )
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x0, x1 = min(xs), max(xs)
    if categories is not None:
        x0, x1 = 0.0, float(max(len(categories) - 1, 1))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range if y_range is not None else (min(0.0, min(ys)), max(ys) or 1.0)
    if y1 == y0:
        y1 = y0 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * plot_h

    parts: list[str] = []
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}"/><text class="tick" x="{LEFT - 6}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end">{escape(y_format(y))}</text>'
        )
    for x, label in _x_ticks(x0, x1, categories):
        parts.append(
            f'<text class="tick" x="{px(x):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    legend: list[str] = []
    described: list[str] = []
    for n, s in enumerate(drawn):
        colour, dash, marker = COLOURS[n % 7], DASHES[n % 7], MARKERS[n % 7]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash_attr} points="{path}"/>'
        )
        for x, y in s.points[-40:]:
            parts.append(_marker(marker, px(x), py(y), colour))
        last_y = s.points[-1][1]
        legend.append(
            f'<li><svg width="28" height="12" aria-hidden="true" focusable="false">'
            f'<line x1="0" x2="28" y1="6" y2="6" stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f"{_marker(marker, 14, 6, colour)}</svg> {escape(s.name)}: "
            f"{escape(y_format(last_y))}</li>"
        )
        described.append(f"{s.name} {y_format(last_y)} at the latest point")
    desc = f"{title}. " + "; ".join(described) + "."
    return Html(
        f'<figure class="chart" id="{escape(chart_id)}">'
        f'<figcaption id="{escape(chart_id)}-t">{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{escape(chart_id)}-t '
        f'{escape(chart_id)}-d"><desc id="{escape(chart_id)}-d">{escape(desc)}</desc>'
        + "".join(parts)
        + '</svg><ul class="legend">'
        + "".join(legend)
        + "</ul></figure>"
    )


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    if kind == "diamond":
        return (
            f'<polygon points="{x:.1f},{y - 4:.1f} {x + 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} '
            f'{x - 4:.1f},{y:.1f}" fill="{colour}"/>'
        )
    if kind == "triangle":
        return (
            f'<polygon points="{x:.1f},{y - 4:.1f} {x + 4:.1f},{y + 3:.1f} {x - 4:.1f},'
            f'{y + 3:.1f}" fill="{colour}"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'


def _x_ticks(x0: float, x1: float, categories: Sequence[str] | None) -> list[tuple[float, str]]:
    if categories is not None:
        step = max(1, len(categories) // 7)
        return [(float(i), c) for i, c in enumerate(categories) if i % step == 0]
    out = []
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        stamp = dt.datetime.fromtimestamp(x, dt.UTC)
        out.append((x, stamp.strftime("%H:%M" if x1 - x0 < 86400 else "%m-%d %H:%M")))
    return out


__all__ = ["Series", "line_chart"]
