"""The quality page: labelled accuracy per version over time, and per day the accuracy people
found, the escalation rate and the error cost, as plots; the figures behind them as tables.
Pure."""

from __future__ import annotations

from mesh.console.charts import line_chart
from mesh.console.markup import Html, escape, fmt, percent
from mesh.console.quality import QualityBoard

#: the per-day plots of shares: the chart's id, the figure plotted and its title.
_DAILY_SHARES = (
    ("day-acc", "accuracy", "Accuracy people found, per day"),
    ("esc", "escalation", "Escalation rate and share of answers a person touched, per day"),
)


def _pct(y: float) -> str:
    return f"{100 * y:.0f}%"


def quality_fragment(board: QualityBoard, problem: str | None) -> Html:
    parts: list[str] = []
    if problem is not None:
        parts.append(f'<p class="flash" role="status">{escape(problem)}</p>')
    models = board.models()
    if not models:
        parts.append("<p>No labels yet: ground truth appears here as people label the queue.</p>")
    unit = str(board.cost_model.get("unit", "units"))
    for model in models:
        days, daily = board.daily(model)
        series = board.accuracy_series(model)
        note = (
            ""
            if board.backfilled
            else " (since the console started: it draws earlier labels only while the queue "
            "holds at most 1,000 labelled items)"
        )
        parts.append(f'<section aria-labelledby="q-{escape(model)}"><h2 id="q-{escape(model)}">'
                     f"{escape(model)}</h2>")  # fmt: skip
        parts.append(
            line_chart(
                f"acc-{model}",
                f"Labelled accuracy per version and tier, as labels arrived (UTC){note}",
                series,
                y_range=(0.0, 1.0),
                y_format=_pct,
            )
        )
        for chart, key, title in _DAILY_SHARES:
            parts.append(
                line_chart(
                    f"{chart}-{model}",
                    title,
                    daily[key],
                    y_range=(0.0, 1.0),
                    y_format=_pct,
                    categories=days,
                )
            )
        parts.append(
            line_chart(
                f"cost-{model}",
                f"Error cost per day, in {unit}",
                daily["cost"],
                y_format=lambda y: f"{y:.3g}",
                categories=days,
            )
        )
        parts.append(_versions_table(board, model))
        parts.append("</section>")
    return Html("".join(parts))


def _versions_table(board: QualityBoard, model: str) -> str:
    rows = "".join(
        f'<tr><th scope="row">{escape(v.version)}</th><td>{escape(v.tier)}</td>'
        f"<td>{v.labelled}</td><td>{escape(percent(v.accuracy))}</td>"
        f"<td>{escape(percent(v.low))} to {escape(percent(v.high))}</td>"
        f"<td>{v.requests}</td><td>{escape(percent(v.escalation_rate))}</td>"
        f"<td>{escape(fmt(v.labels_per_1000))}</td></tr>"
        for v in board.versions
        if v.model == model
    )
    if not rows:
        return ""
    return (
        f'<table class="versions"><caption>Ground truth of {escape(model)} per version and '
        'tier</caption><thead><tr><th scope="col">Version</th><th scope="col">Tier</th>'
        '<th scope="col">Labelled</th><th scope="col">Accuracy</th>'
        '<th scope="col">95% interval</th><th scope="col">Requests</th>'
        '<th scope="col">Escalated</th><th scope="col">Labels per 1,000</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


__all__ = ["quality_fragment"]
