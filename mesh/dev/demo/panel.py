"""The demo's report drawn on the terminal: a headline, the answers by tier, the facts of the run
(accuracy, bytes, the outage, the breaker, hard examples, the fleet, events) and one trace."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mesh.dev.demo.report import DemoReport, TierLatency
from mesh.dev.demo.state import Transition
from mesh.dev.demo.view import PANEL_WIDTH, TIER_STYLE, thousands


def report_panel(report: DemoReport) -> Panel:
    """The report as the terminal shows it: green when nothing was lost, red otherwise."""
    parts: list[RenderableType] = [_headline(report), Text(""), _tiers(report), _facts(report)]
    trace = report.trace
    if trace.tree:
        parts += [
            Text(""),
            Text.assemble(
                ("one escalated request's trace ", "bold"), (trace.trace_id or "", "magenta")
            ),
            Text("\n".join(trace.tree), style="white", no_wrap=True, overflow="ellipsis"),
        ]
    return Panel(
        Group(*parts),
        title="[bold]edge mesh demo: report[/]",
        border_style="green" if report.passed else "red",
        box=box.ROUNDED,
        padding=(0, 1),
        width=PANEL_WIDTH,
    )


def render_report(report: DemoReport, console: Console) -> None:
    console.print(report_panel(report))


def breaker_summary(transitions: Sequence[Transition]) -> str:
    """When the breaker opened and closed, and how many probes failed in between."""
    if not transitions:
        return "no transition seen"
    opened = next((t.at_s for t in transitions if t.after == "open"), None)
    failed = sum(1 for t in transitions if (t.before, t.after) == ("half_open", "open"))
    closed = [t.at_s for t in transitions if t.after == "closed"]
    parts = []
    if opened is not None:
        parts.append(f"opened at {opened:.1f} s")
    parts.append(f"{failed} failed probe{'s' if failed != 1 else ''}")
    if closed:
        parts.append(f"closed at {closed[-1]:.1f} s")
    return ", ".join(parts) + f"   ({len(transitions)} transitions)"


def _headline(report: DemoReport) -> Text:
    errors = sum(report.errors.values())
    return Text.assemble(
        (f"{thousands(report.answered)} of {thousands(report.requests)} answered", "bold"),
        "   lost ",
        (thousands(report.lost), "bold green" if report.lost == 0 else "bold red"),
        "   error replies ",
        (thousands(errors), "bold green" if not report.errors else "bold red"),
        f"   in {report.duration_s:.1f} s",
    )


def _tiers(report: DemoReport) -> Table:
    tiers = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="answers by tier", title_style="bold")
    tiers.add_column("tier")
    tiers.add_column("answered", justify="right")
    tiers.add_column("share", justify="right")
    tiers.add_column("p50 ms", justify="right")
    tiers.add_column("p99 ms", justify="right")
    tiers.add_column("degraded", justify="right")
    for tier, share in report.by_tier.items():
        lat = report.latency_ms.get(tier, TierLatency(0.0, 0.0, 0))
        tiers.add_row(
            Text(tier, style=TIER_STYLE.get(tier, "white")),
            thousands(report.answered_by_tier[tier]),
            f"{share:.1%}",
            f"{lat.p50:.2f}",
            f"{lat.p99:.2f}",
            thousands(report.degraded.by_tier.get(tier, 0)),
        )
    return tiers


def _facts(report: DemoReport) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", justify="right", no_wrap=True)
    facts.add_column()
    _add_traffic(facts, report)
    _add_outage(facts, report)
    _add_fleet(facts, report)
    _add_learning(facts, report)
    _add_events(facts, report)
    _add_energy(facts, report)
    return facts


def _add_traffic(facts: Table, report: DemoReport) -> None:
    facts.add_row(
        "accuracy",
        f"cascade {report.accuracy:.2%}   cloud alone {report.cloud_only_accuracy:.2%}  "
        f"(same inputs)",
    )
    up, cloud_up = report.upstream_bytes, report.cloud_only_upstream_bytes
    facts.add_row(
        "bytes to the cloud",
        f"{thousands(up)} B from the site   cloud-only {thousands(cloud_up)} B   "
        f"({up / max(cloud_up, 1):.1%} of it)",
    )
    degraded = report.degraded
    reasons = ", ".join(f"{r} {thousands(c)}" for r, c in degraded.reasons.items()) or "none"
    facts.add_row("degraded answers", f"{thousands(degraded.count)}   ({reasons})")


def _add_outage(facts: Table, report: DemoReport) -> None:
    link = report.link
    if link.cut_at_s is not None:
        restored = link.restored_at_s if link.restored_at_s is not None else float("nan")
        facts.add_row(
            "link outage",
            f"cut at {link.cut_at_s:.1f} s, restored at {restored:.1f} s, "
            f"leaf back at {link.leaf_reconnected_at_s or float('nan'):.1f} s",
        )
    facts.add_row("gateway breaker", breaker_summary(report.breaker_transitions))
    hard = report.hard_examples
    drained = f", drained at {hard.drained_at_s:.1f} s" if hard.drained_at_s is not None else ""
    facts.add_row(
        "hard examples",
        Text.assemble(
            f"buffered {thousands(hard.buffered)}   delivered to the hub ",
            (thousands(hard.delivered), "green" if hard.delivered == hard.buffered else "red"),
            f"   backlog peak {thousands(hard.backlog_peak)}{drained}",
        ),
    )


def _add_fleet(facts: Table, report: DemoReport) -> None:
    fleet = report.fleet
    if fleet.nodes:
        facts.add_row(
            "fleet",
            Text.assemble(
                f"{fleet.nodes} nodes   version swaps ",
                (str(fleet.swaps), "green" if fleet.swaps else "yellow"),
                "   artifacts refused ",
                (str(fleet.rejected), "yellow" if fleet.rejected else "green"),
            ),
        )
        for line in fleet.events:
            facts.add_row("", Text(line, style="dim"))
    for r in report.rollouts:
        outcome = str(r.get("outcome"))
        facts.add_row(
            "rollout",
            Text.assemble(
                f"{r.get('model')}@{r.get('version')}   ",
                (outcome, "green" if outcome == "completed" else "yellow"),
                f"   gate {r['failed_gate']}" if r.get("failed_gate") else "",
                "   began in shadow" if r.get("shadow") else "",
                f"   canary {r.get('canary_nodes')} node(s), at most "
                f"{r.get('max_nodes_serving')} serving it, "
                f"{r.get('answers_served_before_decision')} answers before the decision",
            ),
        )


def _add_learning(facts: Table, report: DemoReport) -> None:
    review = report.review
    if review is not None:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(review.by_reason.items())) or "none"
        reviewer = review.reviewer
        facts.add_row(
            "review queue",
            f"queued {review.queued} ({review.queued_per_min:g}/min: {reasons})   labelled "
            f"{review.labelled} by the simulated reviewer ({reviewer.get('wrong_on_purpose')} "
            f"wrong on purpose)   pending {review.pending}",
        )
    improvement = report.improvement
    if improvement is not None:
        facts.add_row(
            "improvement",
            f"on {improvement.heldout_rows} held-out rows: {improvement.line()}",
        )


def _add_events(facts: Table, report: DemoReport) -> None:
    ev = report.events
    if ev.published:
        facts.add_row(
            "events",
            Text.assemble(
                f"published {ev.published}   results stored ",
                (str(ev.results), "green" if ev.results == ev.published else "red"),
                f"   error results {ev.errors}   alerts fired {ev.alerts}",
            ),
        )


def _add_energy(facts: Table, report: DemoReport) -> None:
    energy = report.energy
    if energy.device_joules_per_answer is None:
        return
    line = f"{energy.device_joules_per_answer * 1000:.2f} mJ an answer on {energy.profile}"
    if energy.cloud_only_device_joules_per_answer is not None:
        line += f" (cloud-only {energy.cloud_only_device_joules_per_answer * 1000:.2f} mJ)"
    taken = [s["step"] for s in energy.governor_steps if s["action"] == "applied"]
    line += f"   governor steps taken: {', '.join(map(str, taken)) or 'none'}"
    facts.add_row(f"{energy.node} energy", line)
