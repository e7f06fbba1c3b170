"""A rollout as the console shows it: its stages and how far each got, each gate's figures
against its bound (live, from the evidence window and the nodes' heartbeats, while a stage
soaks; as judged once it was), the nodes whose telemetry was ignored, and what a person may do
with it. Pure: the same evidence functions the controller judges with, on the same records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from mesh.console.markup import NONE
from mesh.fleet.rollout import (
    Figures,
    Gate,
    NodeView,
    Rollout,
    RolloutPhase,
    StagePhase,
    view_of,
)
from mesh.fleet.rollout.evidence import Window, shadow_figures, stage_figures
from mesh.fleet.rollout.judge import (
    P99_FLOOR_MS,
    Verdict,
    VerdictResult,
    judge,
    judge_shadow,
    rate_gates,
)
from mesh.wire import NodeStatus

#: what a person may ask of a rollout in each state (``mesh.fleet.rollout.request`` checks it).
ACTIONS = ("pause", "resume", "abort")


class StageStatus(StrEnum):
    PASSED = "passed"
    RUNNING = "running"
    FAILED = "failed"
    WAITING = "not started"
    HALTED = "halted"


@dataclass(frozen=True, slots=True)
class GateRow:
    name: str
    canary: str
    baseline: str
    bound: str
    #: whether the canary's figure is within the bound (None: nothing to judge yet).
    holds: bool | None


@dataclass(frozen=True, slots=True)
class StageRow:
    index: int
    name: str
    size: int
    status: StageStatus
    seconds: float | None
    result: str | None
    #: a shadow stage: its nodes run the version beside the served one, answering nobody.
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class RolloutCard:
    rollout: Rollout
    stages: list[StageRow]
    #: the gates of the stage shown (the running one, or the last judged).
    gate_stage: int | None
    gates: list[GateRow]
    #: where the figures come from, and what the judge says of them now.
    source: str
    verdict: str
    actions: list[str]


def allowed_actions(r: Rollout) -> list[str]:
    if r.state in (RolloutPhase.PENDING, RolloutPhase.IN_PROGRESS):
        return ["pause", "abort"]
    if r.state is RolloutPhase.PAUSED:
        return ["resume", "abort"]
    if r.state is RolloutPhase.ROLLING_BACK:
        return []
    return []


def card(
    r: Rollout,
    window: Window | None,
    heartbeats: Mapping[str, NodeStatus],
    *,
    now: float,
    offline_after_s: float,
) -> RolloutCard:
    stages = [_stage_row(r, i, now) for i in range(len(r.stages))]
    shown, canary, baseline, source = _figures(r, window, heartbeats, now, offline_after_s)
    gates: list[GateRow] = []
    verdict = ""
    if shown is not None and canary is not None:
        gate = r.stages[shown].gate
        shadow = r.stages[shown].shadow
        gates = (
            shadow_gate_rows(gate, canary, baseline, _matched(r, shown, source, window, heartbeats,
                                                              now, offline_after_s))
            if shadow
            else gate_rows(gate, canary, baseline)
        )  # fmt: skip
        if r.log[shown].labels is not None:
            gates.append(label_row(gate, r.log[shown].labels or {}))
        if source.startswith("live"):
            v = _live_verdict(r, shown, canary, baseline, window, heartbeats, now, offline_after_s)
            verdict = {
                VerdictResult.WAIT: f"waiting: {v.reason}",
                VerdictResult.PASS: "every gate holds so far",
                VerdictResult.FAIL: f"would fail now: {v.reason}",
            }[v.result]
    if r.failed_gate:
        verdict = f"failed gate {r.failed_gate}: {r.reason}"
    elif r.reason and not verdict:
        verdict = r.reason
    return RolloutCard(r, stages, shown, gates, source, verdict, allowed_actions(r))


def _stage_row(r: Rollout, i: int, now: float) -> StageRow:
    log = r.log[i]
    stage = r.stages[i]
    seconds = None
    if log.started_at is not None:
        seconds = (log.judged_at or now) - log.started_at
    if log.result == VerdictResult.PASS:
        status = StageStatus.PASSED
    elif log.result == VerdictResult.FAIL or (r.failed_gate and i == r.current_stage):
        status = StageStatus.FAILED
    elif i == r.current_stage and r.active and log.started_at is not None:
        status = StageStatus.RUNNING
    elif i == r.current_stage and not r.active and r.state is not RolloutPhase.COMPLETED:
        status = StageStatus.HALTED
    else:
        status = StageStatus.WAITING
    return StageRow(i, stage.name, r.stage_size(i), status, seconds, log.result, stage.shadow)


def _views(
    r: Rollout, heartbeats: Mapping[str, NodeStatus], now: float, offline_after_s: float
) -> dict[str, NodeView]:
    return {
        name: view_of(r.model, r.version, name, beat, now=now, offline_after_s=offline_after_s)
        for name, beat in heartbeats.items()
        if name in set(r.targets)
    }


def _live_verdict(
    r: Rollout,
    i: int,
    canary: Figures,
    baseline: Figures | None,
    window: Window | None,
    heartbeats: Mapping[str, NodeStatus],
    now: float,
    offline_after_s: float,
) -> Verdict:
    gate = r.stages[i].gate
    if not r.stages[i].shadow or window is None:
        return judge(gate, canary, baseline)
    views = _views(r, heartbeats, now, offline_after_s)
    members = r.targets[: r.stage_size(i)]
    return judge_shadow(gate, shadow_figures(r, views, window, members, set(r.flagged)))


def _matched(
    r: Rollout,
    i: int,
    source: str,
    window: Window | None,
    heartbeats: Mapping[str, NodeStatus],
    now: float,
    offline_after_s: float,
) -> int:
    """How often the version in shadow answered as the serving one did (live or as judged)."""
    if source.startswith("live") and window is not None:
        views = _views(r, heartbeats, now, offline_after_s)
        members = r.targets[: r.stage_size(i)]
        return shadow_figures(r, views, window, members, set(r.flagged)).matched
    return int((r.log[i].canary or {}).get("matched", 0))


def _figures(
    r: Rollout,
    window: Window | None,
    heartbeats: Mapping[str, NodeStatus],
    now: float,
    offline_after_s: float,
) -> tuple[int | None, Figures | None, Figures | None, str]:
    """The stage whose gates are shown, its canary's and baseline's figures, and whence."""
    i = min(r.current_stage, len(r.stages) - 1)
    soaking = (
        r.state is RolloutPhase.IN_PROGRESS
        and r.phase is StagePhase.SOAKING
        and window is not None
        and window.rollout == r.id
        and window.stage == i
    )
    if soaking and window is not None:
        views = _views(r, heartbeats, now, offline_after_s)
        members = r.targets[: r.stage_size(i)]
        stage = r.stages[i]
        canary: Figures
        baseline: Figures | None
        if stage.shadow:
            shadow = shadow_figures(r, views, window, members, excluded=set(r.flagged))
            canary, baseline = shadow.shadow, shadow.serving
        else:
            figures = stage_figures(r, views, window, members, excluded=set(r.flagged))
            canary, baseline = figures.canary, figures.baseline
        if stage.is_whole and i > 0:
            served = [j for j in range(i) if not r.stages[j].shadow]
            reference = r.log[served[-1]].baseline if served else None
            baseline = Figures.from_dict(reference) if reference else None
        elapsed = now - window.started_at
        soak = stage.gate.soak_s
        return i, canary, baseline, f"live: {elapsed:.0f} s of a {soak:g} s soak"
    for j in range(len(r.stages) - 1, -1, -1):
        log = r.log[j]
        if log.canary is not None:
            baseline = Figures.from_dict(log.baseline) if log.baseline else None
            return j, Figures.from_dict(log.canary), baseline, "as judged"
    return None, None, None, ""


def gate_rows(gate: Gate, canary: Figures, baseline: Figures | None) -> list[GateRow]:
    """Each gate's canary figure against its bound. The gates judge interval bounds (a
    handful of unlucky answers fails nothing); these are the point figures behind them."""
    base = baseline if baseline is not None and baseline.nodes > 0 else None
    measurable = canary.escalated + canary.audits > 0
    rows = [
        GateRow(
            "answers",
            str(canary.requests),
            _n(base.requests if base else None),
            f"≥ {gate.min_requests}",
            canary.requests >= gate.min_requests,
        )
    ]
    if measurable:
        rows.append(
            GateRow(
                "compared upstream",
                str(canary.compared),
                _n(base.compared if base else None),
                f"≥ {gate.min_samples}",
                canary.compared >= gate.min_samples,
            )
        )
    for rate in rate_gates(gate, canary, base):
        bounds = []
        if rate.fixed is not None:
            bounds.append(rate.fixed)
        if rate.increase is not None and rate.base_rate is not None:
            bounds.append(rate.base_rate + rate.increase)
        rows.append(_upper(rate.label, rate.rate, rate.base_rate, bounds, _rate))
    p99_bounds = []
    if gate.max_p99_ms is not None:
        p99_bounds.append(gate.max_p99_ms)
    base_p99 = base.quantile(0.99) if base else None
    if base_p99 is not None:
        p99_bounds.append(max(base_p99 * gate.max_p99_ratio, P99_FLOOR_MS))
    rows.append(_upper("p99", canary.quantile(0.99), base_p99, p99_bounds, _ms))
    if gate.max_p95_ms is not None:
        rows.append(_upper("p95", canary.quantile(0.95), None, [gate.max_p95_ms], _ms))
    drift_bounds = [gate.max_drift] if gate.max_drift is not None else []
    rows.append(_upper("drift", canary.drift, base.drift if base else None, drift_bounds, _num))
    if measurable:
        lows = []
        if gate.min_agreement is not None:
            lows.append(gate.min_agreement)
        if base is not None and base.agreement is not None:
            lows.append(base.agreement - gate.max_agreement_drop)
        low = max(lows) if lows else None
        value = canary.agreement
        rows.append(
            GateRow(
                "agreement with the tier above",
                _rate(value),
                _rate(base.agreement if base else None),
                f"≥ {_rate(low)}" if low is not None else "no bound",
                None if value is None or low is None else value >= low,
            )
        )
    return rows


def shadow_gate_rows(
    gate: Gate, shadow: Figures, serving: Figures | None, matched: int
) -> list[GateRow]:
    """A shadow stage's gates: the version run beside the serving one, on the same requests
    (the "Canary" column is the version in shadow, "Baseline" the serving version)."""
    rows = [
        GateRow(
            "requests run in shadow", str(shadow.requests), NONE, f"≥ {gate.min_requests}",
            shadow.requests >= gate.min_requests,
        ),
        GateRow(
            "compared upstream", str(shadow.compared), _n(serving.compared if serving else None),
            f"≥ {gate.min_samples}", shadow.compared >= gate.min_samples,
        ),
    ]  # fmt: skip
    alike = matched / shadow.requests if shadow.requests else None
    rows.append(
        GateRow(
            "answered as the serving version",
            _rate(alike),
            "100.0%",
            f"≥ {_rate(gate.min_serving_agreement)}",
            None if alike is None else alike >= gate.min_serving_agreement,
        )
    )
    rows.append(_upper("error rate", shadow.error_rate, 0.0, [gate.max_error_rate_increase], _rate))
    base = serving.agreement if serving is not None else None
    low = None if base is None else base - gate.max_agreement_drop
    if gate.min_agreement is not None:
        low = max(low or 0.0, gate.min_agreement)
    rows.append(
        GateRow(
            "agreement with the tier above, same requests",
            _rate(shadow.agreement),
            _rate(base),
            f"≥ {_rate(low)}" if low is not None else "no bound",
            None if shadow.agreement is None or low is None else shadow.agreement >= low,
        )
    )
    return rows


def label_row(gate: Gate, labels: Mapping[str, object]) -> GateRow:
    """Labelled accuracy of the version against the replaced version's, from the review queue."""

    def share(value: object) -> float | None:
        return value if isinstance(value, float) else None

    labelled = int(str(labels.get("labelled", 0)))
    base_labelled = int(str(labels.get("baseline_labelled", 0)))
    mine, base = share(labels.get("accuracy")), share(labels.get("baseline_accuracy"))
    judged = min(labelled, base_labelled) >= gate.min_labels and base is not None
    bound = f"≥ {_rate(base - gate.max_label_accuracy_drop)}" if judged and base else (
        f"each side needs {gate.min_labels} labels"
    )  # fmt: skip
    return GateRow(
        "labelled accuracy",
        f"{_rate(mine)} of {labelled}",
        f"{_rate(base)} of {base_labelled}",
        bound,
        None if not judged or mine is None or base is None
        else mine >= base - gate.max_label_accuracy_drop,
    )  # fmt: skip


def _upper(
    name: str,
    value: float | None,
    base_value: float | None,
    bounds: list[float],
    show: Callable[[float | None], str],
) -> GateRow:
    bound = min(bounds) if bounds else None
    return GateRow(
        name,
        show(value),
        show(base_value),
        f"≤ {show(bound)}" if bound is not None else "no bound",
        None if value is None or bound is None else value <= bound,
    )


def _rate(x: float | None) -> str:
    return NONE if x is None else f"{100 * x:.1f}%"


def _ms(x: float | None) -> str:
    return NONE if x is None else f"{x:.3g} ms"


def _num(x: float | None) -> str:
    return NONE if x is None else f"{x:.3g}"


def _n(x: int | None) -> str:
    return NONE if x is None else str(x)


__all__ = [
    "ACTIONS",
    "GateRow",
    "RolloutCard",
    "StageRow",
    "StageStatus",
    "allowed_actions",
    "card",
    "gate_rows",
    "label_row",
    "shadow_gate_rows",
]
