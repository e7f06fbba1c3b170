"""The rollout's state machine: the desired state a rollout implies, one step of it on a look
at the fleet, and what people ask of it. Every function takes a snapshot and a clock and
returns the next record; the controller does the reading and writing."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.fleet.liveness import is_online
from mesh.fleet.rollout.evidence import (
    Figures,
    NodeView,
    Window,
    evidence_problem,
    open_window,
    shadow_figures,
    shadow_problem,
    stage_figures,
)
from mesh.fleet.rollout.judge import LabelFigures, Verdict, VerdictResult, judge, judge_shadow
from mesh.fleet.rollout.record import Rollout, RolloutPhase, StageLog, StagePhase
from mesh.fleet.rollout.witness import witness_of
from mesh.wire import NodeStatus

#: how long a rollback waits for online nodes to report the previous version before it ends.
ROLLBACK_WAIT_S = 120.0
#: most nodes listed in ``flagged``.
MAX_FLAGGED = 50


# --- desired state a rollout implies --------------------------------------------------------


@dataclass(frozen=True)
class Assignments:
    """The desired state a rollout implies now: the selector's version, the versions of its
    target nodes that differ from it or run a shadow (the other targets' node keys are
    removed), and the version each of those runs in shadow."""

    base: str | None
    nodes: dict[str, str]
    shadows: dict[str, str] = field(default_factory=dict)


def desired_for(r: Rollout) -> Assignments:
    """What the controller makes the desired state say, written every tick (idempotent), so a
    new leader finishes what an old one started. A stage's nodes get node keys; the last stage
    (the whole selector) moves the selector's own assignment; the end removes the node keys.

    Until the version reaches a node, and after a failure, each node is held to what it served
    when the rollout started: the selector's assignment says the version most of them served,
    and a node that served another has a node key of its own, kept after a rollback."""
    own = {n: v for n, v in r.previous_versions.items() if v != r.previous_version}
    if r.state in (
        RolloutPhase.PENDING,
        RolloutPhase.ROLLING_BACK,
        RolloutPhase.ROLLED_BACK,
        RolloutPhase.ABORTED,
        RolloutPhase.FAILED,
    ):
        return Assignments(r.previous_version, own)
    if r.state == RolloutPhase.COMPLETED:
        return Assignments(r.version, {})
    stage = r.stages[r.current_stage]
    if stage.shadow:
        # each node of the stage keeps what it serves and runs the version beside it
        members = r.targets[: r.stage_size(r.current_stage)]
        held = {n: r.previous_versions.get(n) or r.previous_version for n in members}
        nodes = {**own, **{n: v for n, v in held.items() if v is not None}}
        return Assignments(r.previous_version, nodes, {n: r.version for n in nodes if n in held})
    if stage.is_whole:
        earlier = r.stage_size(r.current_stage - 1) if r.current_stage else 0
        return Assignments(r.version, {n: r.version for n in r.targets[:earlier]})
    size = r.stage_size(r.current_stage)
    return Assignments(r.previous_version, {**own, **{n: r.version for n in r.targets[:size]}})


# --- one step of the controller ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    #: a window opened by this step, to store before the rollout.
    window: Window | None = None
    #: what happened, for the log.
    events: tuple[str, ...] = ()


def step(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window | None,
    now: float,
    labels: LabelFigures | None = None,
) -> Step:
    """The rollout after one look at the fleet at ``now`` (and, when the review queue answered,
    at what labels say of the version and the one it replaces); a changed record has the next
    generation (readers drop a record older than one they have seen: ``mesh.fleet.replay``)."""
    result = _step(r, nodes, window, now, labels)
    if result.rollout != r:
        result = replace(result, rollout=replace(result.rollout, generation=r.generation + 1))
    return result


def assigned(r: Rollout) -> frozenset[str]:
    """The targets the rollout has assigned its version so far (the stages up to the current
    one; every target once it completed)."""
    if r.state == RolloutPhase.PENDING:
        return frozenset()
    if r.state == RolloutPhase.COMPLETED:
        return frozenset(r.targets)
    if r.in_shadow:
        return frozenset()
    return frozenset(r.targets[: r.stage_size(r.current_stage)])


def exclusions(r: Rollout, nodes: Mapping[str, NodeView]) -> dict[str, str]:
    """The targets whose telemetry this step ignores, and why: counters that cannot be true,
    a version the rollout has not assigned them, or flagged earlier in the rollout (once a node
    lied, nothing it says counts for the rest of the rollout)."""
    out = dict(r.flagged)
    given = assigned(r)
    for name in r.targets:
        view = nodes.get(name)
        if view is None:
            continue
        if view.problem is not None:
            out.setdefault(name, view.problem)
        elif view.serving == r.version and name not in given:
            out.setdefault(
                name,
                f"reports serving {r.version}, which the rollout has not assigned it "
                f"(it is assigned {r.previous_version})",
            )
    return out


def _step(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window | None,
    now: float,
    labels: LabelFigures | None,
) -> Step:
    excluded = exclusions(r, nodes)
    serving = [
        n for n, v in nodes.items() if v.online and v.serving == r.version and n not in excluded
    ]
    flagged = dict(r.flagged)
    for name, reason in excluded.items():
        if len(flagged) >= MAX_FLAGGED:
            break
        flagged.setdefault(name, reason)
    served = dict(r.answers_served)
    for name in serving:
        if name in r.targets and (count := nodes[name].answers_served) > served.get(name, 0):
            served[name] = count
    base = replace(
        r,
        max_nodes_serving=max(r.max_nodes_serving, len(serving)),
        flagged=flagged,
        answers_served=served,
    )
    if r.state == RolloutPhase.PENDING:
        log = _set_log(base.log, 0, started_at=now)
        return Step(
            replace(
                base,
                state=RolloutPhase.IN_PROGRESS,
                phase=StagePhase.DEPLOYING,
                log=log,
                updated_at=now,
            ),
            events=(
                f"rollout {r.id} of {r.model}@{r.version} started over {len(r.targets)} nodes",
            ),
        )
    if r.state == RolloutPhase.IN_PROGRESS:
        return _step_stage(base, nodes, window, now, excluded, labels)
    if r.state == RolloutPhase.ROLLING_BACK:
        back = [
            n for n in r.targets if (v := nodes.get(n)) is not None and v.online
            and v.serving == r.version
        ]  # fmt: skip
        waited = now - r.updated_at
        if not back or waited > ROLLBACK_WAIT_S:
            outcome = r.outcome or RolloutPhase.ROLLED_BACK
            note = f"; {len(back)} online nodes still on {r.version}" if back else ""
            return Step(
                replace(base, state=outcome, outcome=outcome, updated_at=now),
                events=(f"rollout {r.id} ended {outcome}{note}",),
            )
    return Step(base)


def _refused(r: Rollout, nodes: Mapping[str, NodeView], now: float) -> Step | None:
    """The stage failed when a node of it refused the version (signature, manifest, device)."""
    members = r.targets[: r.stage_size(r.current_stage)]
    refused = {n: v.rejected for n in members if (v := nodes.get(n)) is not None and v.rejected}
    if not refused:
        return None
    first = next(iter(refused.values()))
    return _fail(
        r,
        now,
        "install",
        {"refused_by": dict(list(refused.items())[:10])},
        f"{len(refused)} node(s) refused {r.version}: {first}",
    )


def _step_stage(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window | None,
    now: float,
    excluded: Collection[str],
    labels: LabelFigures | None,
) -> Step:
    refused = _refused(r, nodes, now)
    if refused is not None:
        return refused
    if r.phase == StagePhase.DEPLOYING:
        return _deploy(r, nodes, now, excluded)
    return _soak(r, nodes, window, now, excluded, labels)


def _deploy(
    r: Rollout, nodes: Mapping[str, NodeView], now: float, excluded: Collection[str]
) -> Step:
    """The stage is reached once every online node of it serves the version (runs it in
    shadow, for a shadow stage)."""
    i = r.current_stage
    stage = r.stages[i]
    size = r.stage_size(i)
    members = r.targets[:size]
    # A node whose telemetry cannot be trusted is not waited for either (it is flagged).
    online = [
        n for n in members
        if (v := nodes.get(n)) is not None and v.online and n not in excluded
    ]  # fmt: skip
    if stage.shadow:
        missing = [n for n in online if nodes[n].shadowing != r.version]
    else:
        missing = [n for n in online if nodes[n].serving != r.version]
    log = r.log[i]
    started = log.started_at if log.started_at is not None else now
    if online and not missing:
        opened = open_window(r, nodes, now, excluded)
        logs = _set_log(r.log, i, reached_at=now, started_at=started)
        return Step(
            replace(r, phase=StagePhase.SOAKING, log=logs, updated_at=now),
            window=opened,
            events=(
                f"stage {i + 1}/{len(r.stages)} ({stage.name}) reached: {len(online)} of "
                f"{size} nodes online {'run' if stage.shadow else 'serve'} {r.version}"
                f"{' in shadow' if stage.shadow else ''} after {now - started:.1f}s",
            ),
        )
    if now - started > stage.gate.deploy_timeout_s:
        if not online:
            # Nothing failed: no node of the stage could be deployed to or judged (all of them
            # offline or flagged). Rolling back would reach none of them either; a person
            # resumes once they are back, or aborts.
            return _pause(
                r,
                now,
                f"no node of stage {i + 1}/{len(r.stages)} ({stage.name}) was online for "
                f"{stage.gate.deploy_timeout_s:.0f}s ({size} offline or flagged): nothing to "
                "deploy to or judge",
            )
        return _fail(
            r,
            now,
            "deploy",
            {"not_serving": missing[:20], "online": len(online)},
            f"{len(missing)} of {len(online)} online nodes of stage {stage.name} "
            f"did not take {r.version} within {stage.gate.deploy_timeout_s:.0f}s",
        )
    return Step(r)


def _soak(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window | None,
    now: float,
    excluded: Collection[str],
    labels: LabelFigures | None,
) -> Step:
    """After the soak the stage is judged: it passes on, fails back, or waits for evidence."""
    i = r.current_stage
    stage = r.stages[i]
    gate = stage.gate
    if window is None or window.rollout != r.id or window.stage != i:
        return Step(
            r, window=open_window(r, nodes, now, excluded), events=("evidence window reopened",)
        )
    if now - window.started_at < gate.soak_s:
        return Step(r)
    members = r.targets[: r.stage_size(i)]
    verdict, r, logged = _verdict(r, nodes, window, members, excluded, labels)
    if verdict.result == VerdictResult.WAIT:
        if now - window.started_at > gate.max_wait_s:
            return _pause(r, now, f"not enough evidence: {verdict.reason}", verdict.reason)
        return Step(r)
    canary_log, baseline_log = logged
    figures_log = _set_log(
        r.log, i, judged_at=now, result=verdict.result, canary=canary_log,
        baseline=baseline_log, labels=labels.as_dict() if labels is not None else None,
    )  # fmt: skip
    r = replace(r, log=figures_log)
    if verdict.result == VerdictResult.FAIL:
        assert verdict.gate is not None
        return _fail(r, now, verdict.gate, verdict.figures, verdict.reason)
    if i + 1 == len(r.stages):
        return Step(
            replace(
                r, state=RolloutPhase.COMPLETED, outcome=RolloutPhase.COMPLETED, updated_at=now
            ).decided(),
            events=(f"rollout {r.id}: {r.model}@{r.version} completed on {len(r.targets)} nodes",),
        )
    logs = _set_log(r.log, i + 1, started_at=now)
    given, size = r.stage_size(i), r.stage_size(i + 1)
    targets = _reachable_first(r.targets, given, nodes, excluded)
    later = set(r.targets[given:size]) - set(targets[given:size])
    return Step(
        replace(
            r, current_stage=i + 1, phase=StagePhase.DEPLOYING, log=logs, targets=targets,
            updated_at=now,
        ),
        events=(
            f"stage {i + 1} ({stage.name}) passed: {verdict.reason}",
            *([f"{len(later)} offline or flagged node(s) left for a later stage"] if later else []),
        ),
    )  # fmt: skip


def _reachable_first(
    targets: tuple[str, ...],
    given: int,
    nodes: Mapping[str, NodeView],
    excluded: Collection[str],
) -> tuple[str, ...]:
    """The targets with those not yet given the version (past the first ``given``) reordered:
    the online and trusted first, each group in its drawn order. A stage is there for its
    evidence, and a node offline (a site cut off) gives none: drawn into the stage, it would
    let the stage be reached with fewer nodes on the version than it names. Offline ones take
    the version when they come back, by the last stage's assignment at the latest."""
    rest = targets[given:]
    ready = [n for n in rest if (v := nodes.get(n)) is not None and v.online and n not in excluded]
    chosen = set(ready)
    return (*targets[:given], *ready, *(n for n in rest if n not in chosen))


def _verdict(
    r: Rollout,
    nodes: Mapping[str, NodeView],
    window: Window,
    members: Sequence[str],
    excluded: Collection[str],
    labels: LabelFigures | None,
) -> tuple[Verdict, Rollout, tuple[dict[str, Any], dict[str, Any] | None]]:
    """The stage's verdict on its window, the record with the nodes to flag, and the figures
    to log (the canary's and the baseline's; in shadow, the version's and the serving one's)."""
    i = r.current_stage
    stage = r.stages[i]
    if stage.shadow:
        shadow = shadow_figures(r, nodes, window, members, excluded)
        return judge_shadow(stage.gate, shadow, labels), _flag(r, shadow.flagged), shadow.as_dicts()
    figures = stage_figures(r, nodes, window, members, excluded)
    canary, baseline = figures.canary, figures.baseline
    if stage.is_whole and i > 0:
        # the last stage has no node outside it: its baseline is the last stage that had one
        served = [j for j in range(i) if not r.stages[j].shadow]
        reference = r.log[served[-1]].baseline if served else None
        baseline = Figures.from_dict(reference) if reference else None
    verdict = judge(stage.gate, canary, baseline, labels)
    if verdict.result == VerdictResult.WAIT and baseline is not None and baseline.nodes == 0:
        verdict = replace(verdict, reason=verdict.reason + _offline_outside(r, nodes, members))
    logged = (canary.as_dict(), baseline.as_dict() if baseline is not None else None)
    return verdict, _flag(r, figures.flagged), logged


def _offline_outside(r: Rollout, nodes: Mapping[str, NodeView], members: Sequence[str]) -> str:
    """How many of the targets outside the stage are offline, for a baseline that has no node:
    a site cut off is waited for as a liar is, and the reason should say which it is."""
    inside = set(members)
    outside = [n for n in r.targets if n not in inside]
    offline = sum(1 for n in outside if (v := nodes.get(n)) is None or not v.online)
    return f" ({offline} of the {len(outside)} nodes outside it offline)" if offline else ""


def _flag(r: Rollout, fresh: Mapping[str, str]) -> Rollout:
    if not fresh:
        return r
    room = max(0, MAX_FLAGGED - len(r.flagged))
    new = {n: w for n, w in fresh.items() if n not in r.flagged}
    return replace(r, flagged={**r.flagged, **dict(list(new.items())[:room])})


def _fail(r: Rollout, now: float, gate: str, figures: dict[str, Any], reason: str) -> Step:
    return Step(
        replace(r, state=RolloutPhase.ROLLING_BACK, outcome=RolloutPhase.ROLLED_BACK,
                failed_gate=gate, figures=figures, reason=reason, updated_at=now).decided(),
        events=(f"rollout {r.id} failed gate {gate}: {reason}; rolling back to "
                f"{r.previous_version}",),
    )  # fmt: skip


def _pause(r: Rollout, now: float, reason: str, logged: str | None = None) -> Step:
    """The rollout paused for a person, saying why (``logged``: the log's shorter word)."""
    return Step(
        replace(r, state=RolloutPhase.PAUSED, reason=reason, updated_at=now),
        events=(f"rollout {r.id} paused: {logged or reason}",),
    )


def _set_log(log: tuple[StageLog, ...], i: int, **changes: Any) -> tuple[StageLog, ...]:
    items = list(log)
    items[i] = replace(items[i], **changes)
    return tuple(items)


# --- what people ask of a rollout -----------------------------------------------------------


def request(r: Rollout, action: str, now: float, by: str = "") -> Rollout:
    """``pause``, ``resume`` or ``abort``, as the CLI asks; refused when it makes no sense.
    The changed record has the next generation."""
    return replace(_request(r, action, now, by), generation=r.generation + 1)


def revoke(r: Rollout, reason: str, now: float) -> Rollout:
    """The rollout of a version revoked meanwhile: every node goes back (gate ``revoked``)."""
    if not r.active or r.state == RolloutPhase.ROLLING_BACK:
        return r
    return replace(
        r,
        state=RolloutPhase.ROLLING_BACK,
        outcome=RolloutPhase.ROLLED_BACK,
        failed_gate="revoked",
        figures={},
        reason=f"{r.model}@{r.version} was revoked: {reason}",
        updated_at=now,
        generation=r.generation + 1,
    ).decided()


def _request(r: Rollout, action: str, now: float, by: str) -> Rollout:
    if action == "pause":
        if r.state not in (RolloutPhase.PENDING, RolloutPhase.IN_PROGRESS):
            raise InvalidArgumentError(f"rollout {r.id} is {r.state}: only a running one pauses")
        return replace(
            r, state=RolloutPhase.PAUSED, reason=f"paused by {by or 'a person'}", updated_at=now
        )
    if action == "resume":
        if r.state != RolloutPhase.PAUSED:
            raise InvalidArgumentError(f"rollout {r.id} is {r.state}, not paused")
        # The stage is deployed and soaked again from the start: what happened while paused
        # is not this stage's evidence.
        stage_log = r.log[r.current_stage]
        state = (
            RolloutPhase.IN_PROGRESS if stage_log.started_at is not None else RolloutPhase.PENDING
        )
        logs = _set_log(r.log, r.current_stage, started_at=now) if stage_log.started_at else r.log
        return replace(
            r, state=state, phase=StagePhase.DEPLOYING, log=logs, reason="", updated_at=now
        )
    if action == "abort":
        if not r.active:
            raise InvalidArgumentError(f"rollout {r.id} already ended {r.state}")
        return replace(
            r,
            state=RolloutPhase.ROLLING_BACK,
            outcome=RolloutPhase.ABORTED,
            reason=f"aborted by {by or 'a person'}",
            updated_at=now,
        ).decided()
    raise InvalidArgumentError(f"unknown rollout action {action!r}")


def view_of(
    model: str,
    version: str,
    name: str,
    status: NodeStatus | str,
    *,
    now: float,
    offline_after_s: float,
) -> NodeView:
    """A node's heartbeat (a ``wire.NodeStatus``, or why it could not be decoded) as a rollout
    of ``model@version`` sees it."""
    if isinstance(status, str):
        return NodeView(name, online=False, problem=f"unreadable heartbeat: {status[:120]}")
    serving = status.models.get(model)
    evidence = status.evidence.get(model)
    problem: str | None = None
    if evidence is not None:
        if evidence.version != serving:
            problem = f"evidence is of version {evidence.version}, the node serves {serving}"
        else:
            problem = evidence_problem(evidence, now)
    shadow = status.shadows.get(model)
    if problem is None and shadow is not None:
        if shadow.serving != serving:
            problem = f"its shadow ran beside {shadow.serving}, the node serves {serving}"
        else:
            problem = shadow_problem(shadow)
    return NodeView(
        name=name,
        online=is_online(status, now, offline_after_s),
        serving=serving,
        rejected=status.rejected.get(f"{model}@{version}"),
        evidence=evidence if problem is None else None,
        problem=problem,
        witness=witness_of(status, model),
        shadow=shadow if problem is None else None,
    )
