"""``mesh rollout status`` as text: where each rollout is, and for every judged stage each
gate's figures against its bound (the stored canary and baseline figures, the stage's gate).

The gates judge interval bounds (``mesh.fleet.rollout.judge``); the figures shown are the point
estimates beside the bound they were held to, so a reader sees how close a stage came."""

from __future__ import annotations

import time

from mesh.fleet.rollout import P99_FLOOR_MS, Figures, Gate, Rollout, RolloutPhase, StageLog
from mesh.fleet.rollout.judge import rate_gates

NO_ROLLOUTS = "no rollouts yet: mesh rollout start MODEL VERSION starts one"


def describe(r: Rollout, now: float | None = None) -> list[str]:
    """The lines of one rollout: a headline, then one block per stage that started."""
    now = time.time() if now is None else now
    lines = [headline(r, now)]
    for i, (stage, entry) in enumerate(zip(r.stages, r.log, strict=True)):
        if entry.started_at is None:
            continue
        lines.append(
            f"  {i + 1}. {stage.name} ({_count(r.stage_size(i), 'node')}): "
            f"{_progress(r, i, entry, now)}"
        )
        if entry.canary is not None and stage.shadow:
            lines += [f"       {line}" for line in shadow_lines(stage.gate, entry)]
        elif entry.canary is not None:
            canary = Figures.from_dict(entry.canary)
            baseline = Figures.from_dict(entry.baseline) if entry.baseline else None
            lines += [f"       {line}" for line in gate_lines(stage.gate, canary, baseline)]
        if entry.labels is not None:
            lines.append(f"       {label_line(stage.gate, entry.labels)}")
        for side in (entry.canary or {}, entry.baseline or {}):
            for node, how in (side.get("bounded") or {}).items():
                lines.append(f"       bounded by the tier above: {node}: {how}")
    if r.failed_gate:
        lines.append(f"  failed gate {r.failed_gate}: {r.reason}")
        if r.figures:
            figures = ", ".join(f"{k} {v}" for k, v in r.figures.items())
            lines.append(f"  its figures: {figures}")
    elif r.reason:
        lines.append(f"  {r.reason}")
    if r.flagged:
        lines.append(f"  flagged: telemetry ignored from {_count(len(r.flagged), 'node')}")
        lines += [f"    {node}: {why}" for node, why in r.flagged.items()]
    return lines


def headline(r: Rollout, now: float) -> str:
    line = _headline(r, now)
    if r.answers_served_before_decision is not None:
        line += f"; it answered {_count(r.answers_served_before_decision, 'request')} first"
    return line


def _headline(r: Rollout, now: float) -> str:
    name = f"{r.model}@{r.version} ({r.id})"
    total = len(r.stages)
    at = min(r.current_stage, total - 1)
    where = f"stage {at + 1}/{total} {r.stages[at].name}"
    took = _duration(r.updated_at - r.created_at)
    if r.state == RolloutPhase.COMPLETED:
        return (
            f"{name}: completed on {_count(len(r.targets), 'node')} of {r.selector.key} in "
            f"{_count(total, 'stage')}, {took}"
        )
    back = _back_to(r)
    if r.state in (RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED, RolloutPhase.FAILED):
        cause = f"failed gate {r.failed_gate}" if r.failed_gate else r.reason or str(r.state)
        return f"{name}: {r.state} at {where} ({cause}) after {took}; {back}"
    if r.state == RolloutPhase.ROLLING_BACK:
        return f"{name}: rolling back from {where}; {back}"
    if r.state == RolloutPhase.PENDING:
        return f"{name}: pending, waiting for a controller (mesh controller) to take it"
    serving = f"{r.max_nodes_serving} of {len(r.targets)} nodes served it at most"
    return f"{name}: {r.state}, {where} ({r.phase}); {serving}"


def _back_to(r: Rollout) -> str:
    others = sorted({v for v in r.previous_versions.values() if v != r.previous_version})
    if not others:
        return f"its nodes go back to {r.previous_version}"
    return f"its nodes go back to {r.previous_version} (and {', '.join(others)}, each its own)"


def _progress(r: Rollout, i: int, entry: StageLog, now: float) -> str:
    started = entry.started_at or now
    if entry.judged_at is not None:
        return f"{entry.result or '-'} after {_duration(entry.judged_at - started)}"
    if not r.active or i != r.current_stage:
        return "stopped"
    if entry.reached_at is None:
        return f"deploying for {_duration(now - started)}"
    soak = r.stages[i].gate.soak_s
    return f"soaking for {_duration(now - entry.reached_at)} (soak {_duration(soak)})"


def gate_lines(gate: Gate, canary: Figures, baseline: Figures | None) -> list[str]:
    """Each gate the stage was held to: the canary's figure, the baseline's, and the bound."""
    base = baseline if baseline is not None and baseline.nodes > 0 else None
    measurable = canary.escalated + canary.audits > 0
    lines = [_evidence_line(gate, canary, base, measurable)]
    for row in rate_gates(gate, canary, base):
        bounds = []
        if row.fixed is not None:
            bounds.append(f"at most {row.fixed:.3f}")
        if row.base_rate is not None and row.increase is not None:
            bounds.append(f"baseline {row.base_rate:.3f} + {row.increase:.3f}")
        if bounds:
            lines.append(f"{row.label} {_num(row.rate, 3)} against {'; '.join(bounds)}")
    lines += _latency_lines(gate, canary, base)
    if canary.drift is not None and (gate.max_drift is not None or gate.max_drift_increase):
        bounds = [f"at most {gate.max_drift:.3f}"] if gate.max_drift is not None else []
        if gate.max_drift_increase is not None and base is not None and base.drift is not None:
            bounds.append(f"baseline {base.drift:.3f} + {gate.max_drift_increase:.3f}")
        if bounds:
            lines.append(f"drift {canary.drift:.3f} against {'; '.join(bounds)}")
    if measurable:
        bounds = [f"at least {gate.min_agreement:.3f}"] if gate.min_agreement is not None else []
        if base is not None and base.agreement is not None:
            bounds.append(f"baseline {base.agreement:.3f} - {gate.max_agreement_drop:.3f}")
        if bounds:
            lines.append(
                f"agreement {_num(canary.agreement, 3)} on {canary.compared} compared against "
                f"{'; '.join(bounds)}"
            )
    return lines


def shadow_lines(gate: Gate, entry: StageLog) -> list[str]:
    """A shadow stage's figures: the version run beside the serving one on the same requests."""
    shadow = Figures.from_dict(entry.canary or {})
    serving = Figures.from_dict(entry.baseline or {})
    raw = entry.canary or {}
    matched, skipped = int(raw.get("matched", 0)), int(raw.get("skipped", 0))
    lines = [
        f"in shadow on {_count(shadow.nodes, 'node')}: requests {shadow.requests} (needs "
        f"{gate.min_requests}), {skipped} skipped over its CPU share; compared upstream "
        f"{shadow.compared} (needs {gate.min_samples})",
        f"answered as the serving version {matched} of {shadow.requests} against at least "
        f"{gate.min_serving_agreement:.3f}",
        f"errors {shadow.errors} against the serving version's 0 + {gate.max_error_rate_increase}",
    ]
    if shadow.compared:
        lines.append(
            f"agreement with the tier above {_num(shadow.agreement, 3)} on {shadow.compared} "
            f"against the serving version's {_num(serving.agreement, 3)} on the same - "
            f"{gate.max_agreement_drop:.3f}"
        )
    return lines


def label_line(gate: Gate, labels: dict[str, object]) -> str:
    """Labelled accuracy of the version and of the one it replaces, and whether it judged."""

    def side(labelled: object, accuracy: object) -> str:
        shown = f"{accuracy:.3f}" if isinstance(accuracy, float) else "-"
        return f"{shown} on {labelled} labelled"

    judged = min(int(str(labels.get("labelled", 0))), int(str(labels.get("baseline_labelled", 0))))
    note = (
        f"against the replaced version's - {gate.max_label_accuracy_drop:.3f}"
        if judged >= gate.min_labels
        else f"not judged: each side needs {gate.min_labels} labels"
    )
    return (
        f"labelled accuracy {side(labels.get('labelled'), labels.get('accuracy'))}, the replaced "
        f"version {side(labels.get('baseline_labelled'), labels.get('baseline_accuracy'))}; {note}"
    )


def _evidence_line(gate: Gate, canary: Figures, base: Figures | None, measurable: bool) -> str:
    parts = [f"requests {canary.requests} (needs {gate.min_requests})"]
    if measurable:
        parts.append(f"compared upstream {canary.compared} (needs {gate.min_samples})")
    who = f"canary {_count(canary.nodes, 'node')}"
    against = (
        f"baseline {_count(base.nodes, 'node')}, {base.requests} requests"
        if base is not None
        else "no baseline"
    )
    return f"{who}: {', '.join(parts)}; {against}"


def _latency_lines(gate: Gate, canary: Figures, base: Figures | None) -> list[str]:
    lines: list[str] = []
    p99 = canary.quantile(0.99)
    bounds = [f"at most {gate.max_p99_ms:g} ms"] if gate.max_p99_ms is not None else []
    base_p99 = base.quantile(0.99) if base is not None else None
    if base_p99 is not None:
        relative = max(base_p99 * gate.max_p99_ratio, P99_FLOOR_MS)
        bounds.append(
            f"{relative:g} ms (baseline {base_p99:g} ms x {gate.max_p99_ratio:g}, "
            f"never under {P99_FLOOR_MS:g})"
        )
    if bounds:
        lines.append(f"p99 {_num(p99, 1)} ms against {'; '.join(bounds)}")
    if gate.max_p95_ms is not None:
        lines.append(f"p95 {_num(canary.quantile(0.95), 1)} ms against {gate.max_p95_ms:g} ms")
    return lines


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"
