"""Staged rollouts: the plan, the gates and every step, as data and pure functions.

A rollout takes one model version to the nodes matching a selector in stages (a node count or a
cumulative share of those nodes; the last stage is all of them). Each stage:

1. **deploying**: the controller assigns the version to the stage's nodes (``desired_for``) and
   waits until every one of them that is online serves it. A node that refuses it (signature,
   manifest or its device gate) fails the stage at once.
2. **soaking**: a window opens with a snapshot of every target node's evidence (``Window``).
   After ``soak_s`` the stage is judged on the differences since the snapshot: the canary
   nodes (serving the new version) against the baseline (the rollout's other nodes, still on
   the previous version, over the same window) and against any fixed bound (``judge``). Too
   little evidence waits; waiting past ``max_wait_s`` pauses the rollout for a person.
3. a pass moves to the next stage (or completes: the whole selector is assigned the version);
   a failure rolls every node of the rollout back to the previous version and names the gate
   and its figures.

Nodes whose telemetry does not add up, or that report a version the rollout has not assigned
them, are left out of the judgement for the rest of the rollout and listed in ``flagged``. Each
node's comparisons are capped by what the tier above reports answering for it, and its weight
in a group's figures by its share of those answers (``witness``); heartbeats count at most once
an interval (``beats``).

The parts, each importing only those before it: ``statistics`` (interval bounds), ``plan``
(gates and stages), ``record`` (the rollout in KV, its ``RolloutPhase``), ``witness`` (what the
tier above saw), ``evidence`` (node views, evidence windows, figures), ``judge`` (a stage's
verdict), ``machine`` (``step``, ``request``, ``revoke``) and ``beats`` (heartbeats taken in).
The controller (``mesh.fleet.controller``) runs ``step`` and writes what it returns; nothing
here does I/O, so every rule is tested with a fake clock (``tests/unit/test_rollout.py``).
"""

from mesh.fleet.rollout.beats import BeatFilter
from mesh.fleet.rollout.evidence import (
    DRIFT_NODE_ROWS,
    Figures,
    NodeView,
    StageFigures,
    Window,
    aggregate,
    decode_window,
    delta,
    encode_window,
    evidence_problem,
    open_window,
    stage_figures,
)
from mesh.fleet.rollout.judge import (
    DRIFT_MIN_REQUESTS,
    P99_FLOOR_MS,
    LabelFigures,
    Verdict,
    VerdictResult,
    judge,
    judge_shadow,
    label_figures,
    slower_than,
)
from mesh.fleet.rollout.machine import (
    MAX_FLAGGED,
    ROLLBACK_WAIT_S,
    Assignments,
    Step,
    assigned,
    desired_for,
    exclusions,
    request,
    revoke,
    step,
    view_of,
)
from mesh.fleet.rollout.plan import Gate, Stage, parse_duration, parse_stages
from mesh.fleet.rollout.record import (
    ACTIVE,
    FINAL,
    OUTCOMES,
    Rollout,
    RolloutPhase,
    StageLog,
    StagePhase,
    decode_rollout,
    encode_rollout,
    new_rollout,
    report,
)
from mesh.fleet.rollout.statistics import (
    difference_lower,
    difference_upper,
    wilson_lower,
    wilson_upper,
)
from mesh.fleet.rollout.witness import SHARE_SLACK, Witness, answered_since, bound, witness_of

__all__ = [
    "ACTIVE",
    "DRIFT_MIN_REQUESTS",
    "DRIFT_NODE_ROWS",
    "FINAL",
    "MAX_FLAGGED",
    "OUTCOMES",
    "P99_FLOOR_MS",
    "ROLLBACK_WAIT_S",
    "SHARE_SLACK",
    "Assignments",
    "BeatFilter",
    "Figures",
    "Gate",
    "LabelFigures",
    "NodeView",
    "Rollout",
    "RolloutPhase",
    "Stage",
    "StageFigures",
    "StageLog",
    "StagePhase",
    "Step",
    "Verdict",
    "VerdictResult",
    "Window",
    "Witness",
    "aggregate",
    "answered_since",
    "assigned",
    "bound",
    "decode_rollout",
    "decode_window",
    "delta",
    "desired_for",
    "difference_lower",
    "difference_upper",
    "encode_rollout",
    "encode_window",
    "evidence_problem",
    "exclusions",
    "judge",
    "judge_shadow",
    "label_figures",
    "new_rollout",
    "open_window",
    "parse_duration",
    "parse_stages",
    "report",
    "request",
    "revoke",
    "slower_than",
    "stage_figures",
    "step",
    "view_of",
    "wilson_lower",
    "wilson_upper",
    "witness_of",
]
