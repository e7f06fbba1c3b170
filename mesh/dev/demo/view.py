"""The live view of a demo run: a panel on a terminal, a progress line a few seconds otherwise."""

from __future__ import annotations

import asyncio
import contextlib

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import (
    BATTERY_NODE,
    MODEL,
    BatteryView,
    DemoConfig,
    LinkView,
    ReviewView,
    Tally,
    tiers_in_order,
)

PANEL_WIDTH = 104
TIER_STYLE = {"edge": "green", "gateway": "yellow", "cloud": "cyan"}
BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}
TRANSITION_TEXT = {
    "closed->open": "gateway breaker to the cloud [bold red]opens[/]: the gateway answers alone",
    "open->half_open": "gateway breaker [yellow]half-open[/]: one probe goes to the cloud",
    "half_open->open": "probe failed: the breaker [bold red]opens[/] again, for longer",
    "half_open->closed": "probe answered: the breaker [green]closes[/], escalation resumes",
}


def thousands(value: int) -> str:
    return f"{value:,}"


def _tier_text(tally: Tally) -> Text:
    text = Text()
    total = max(tally.answered, 1)
    for tier in tiers_in_order(tally.by_tier):
        count = tally.by_tier[tier]
        if text:
            text.append("   ")
        text.append(tier, style=TIER_STYLE.get(tier, "white"))
        text.append(f" {thousands(count)} ({count / total:.0%})")
    return text or Text("-", style="dim")


def _link_text(view: LinkView, now: float) -> Text:
    if view.link == "cut":
        since = now - (view.cut_at_s or now)
        return Text.assemble(("CUT", "bold red"), f"  for {since:.1f} s (fault proxy refuses)")
    if view.link == "reconnecting":
        return Text.assemble(("restored", "yellow"), ", leaf server reconnecting")
    return Text("up", style="green")


def _mw(watts: float | None) -> str:
    return "-" if watts is None else f"{watts * 1000:.0f}"


def battery_text(battery: BatteryView) -> Text:
    """``69%  draws 140 of 120 mW  0.31 mJ an answer (cloud-only 1.74)  ladder: audits``."""
    text = Text()
    if battery.percent is not None:
        text.append(f"{battery.percent:.0f}%  ", style="bold")
    over = (
        battery.watts is not None
        and battery.budget_w is not None
        and battery.watts > battery.budget_w * 1.05
    )
    text.append(
        f"draws {_mw(battery.watts)} of {_mw(battery.budget_w)} mW",
        style="yellow" if over else "green",
    )
    if battery.joules_per_answer is not None:
        text.append(f"   {battery.joules_per_answer * 1000:.2f} mJ an answer")
        if battery.upstream_j is not None:
            text.append(f" (cloud-only {battery.upstream_j * 1000:.2f})", style="dim")
    ladder = ", ".join(battery.steps) or "no step"
    text.append("   ladder: ", style="dim")
    text.append(ladder, style="magenta" if battery.steps else "dim")
    if battery.degrade_share:
        text.append(f" ({battery.degrade_share:.0%} held)", style="magenta")
    return text


def render_live(
    config: DemoConfig, tally: Tally, view: LinkView, review: ReviewView, now: float
) -> RenderableType:
    done = tally.answered + sum(tally.errors.values())
    share = done / config.requests
    width = 36
    filled = int(share * width)
    cut_a, cut_b = int(config.cut_from * width), int(config.cut_to * width)
    bar = Text()
    for i in range(width):
        inside = cut_a <= i < cut_b
        if i < filled:
            bar.append("█", style="red" if inside else "green")
        else:
            bar.append("░" if not inside else "▒", style="red dim" if inside else "dim")
    bar.append(f"  {share:4.0%}  {now:5.1f} s", style="bold")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right", no_wrap=True)
    grid.add_column()
    grid.add_row("progress", bar)
    grid.add_row("site ⇄ hub link", _link_text(view, now))
    lost = Text(
        thousands(sum(tally.errors.values())), style="bold red" if tally.errors else "green"
    )
    grid.add_row(
        "requests",
        Text.assemble(
            f"sent {thousands(tally.sent)}   answered {thousands(tally.answered)}   errors ",
            lost,
            f"   in flight {tally.in_flight}",
        ),
    )
    grid.add_row("answered by", _tier_text(tally))
    degraded = Text(thousands(tally.degraded), style="yellow" if tally.degraded else "")
    if tally.reasons:
        degraded.append(
            "   " + "  ".join(f"{r} {thousands(c)}" for r, c in tally.reasons.most_common()),
            style="dim",
        )
    grid.add_row("degraded answers", degraded)
    breaker = Text(view.breaker.upper(), style=BREAKER_STYLE.get(view.breaker, "white"))
    if view.transitions:
        breaker.append(f"   {len(view.transitions)} transitions", style="dim")
    grid.add_row("gateway breaker", breaker)
    grid.add_row(
        "hard examples",
        Text.assemble(
            "backlog at the gateway ",
            (thousands(view.backlog), "yellow" if view.backlog else "green"),
            f"   delivered to the hub {thousands(view.delivered)}",
        ),
    )
    grid.add_row(
        "review queue",
        Text.assemble(
            f"queued {thousands(review.queued)}   pending ",
            (thousands(review.pending), "yellow" if review.pending else "green"),
            f"   labelled {thousands(review.labelled)} (simulated reviewer, "
            f"{review.wrong} wrong on purpose)",
        ),
    )
    grid.add_row("learning", Text(review.learning, style="magenta"))
    grid.add_row(f"{BATTERY_NODE} on battery", battery_text(view.battery))
    events = Table.grid(padding=(0, 2))
    events.add_column(style="dim", justify="right")
    events.add_column()
    for at, what in view.events[-6:]:
        events.add_row(f"{at:5.1f} s", what)
    body: RenderableType = Group(grid, Text(""), events) if view.events else grid
    return Panel(
        body,
        title=f"[bold]edge mesh demo[/]  ·  {MODEL}  ·  {thousands(config.requests)} requests",
        border_style="blue",
        box=box.ROUNDED,
        padding=(0, 1),
        width=PANEL_WIDTH,
    )


def plain_line(
    config: DemoConfig, tally: Tally, view: LinkView, review: ReviewView, now: float
) -> str:
    tiers = " ".join(f"{t}={tally.by_tier[t]}" for t in tiers_in_order(tally.by_tier))
    return (
        f"{now:5.1f}s  sent {tally.sent}/{config.requests}  answered {tally.answered}  "
        f"errors {sum(tally.errors.values())}  [{tiers}]  degraded {tally.degraded}  "
        f"link {view.link}  breaker {view.breaker}  backlog {view.backlog}  "
        f"delivered {view.delivered}  review queued {review.queued} pending {review.pending} "
        f"labelled {review.labelled}  {BATTERY_NODE} {_mw(view.battery.watts)}/"
        f"{_mw(view.battery.budget_w)} mW ladder {len(view.battery.steps)}"
    )


async def show_live(
    console: Console,
    config: DemoConfig,
    tally: Tally,
    view: LinkView,
    review: ReviewView,
    journal: Journal,
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: the panel four times a second on a terminal; otherwise the journal's
    lines as they happen and a progress line every 3 s."""
    if console.is_terminal:
        with Live(
            render_live(config, tally, view, review, 0.0),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            journal.sink = lambda line: None
            while not stop.is_set():
                live.update(render_live(config, tally, view, review, journal.now()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
            live.update(render_live(config, tally, view, review, journal.now()))
        return
    journal.sink = lambda line: console.print(line, highlight=False)
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 3.0)
        console.print(plain_line(config, tally, view, review, journal.now()), markup=False)
