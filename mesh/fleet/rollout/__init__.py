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

Nodes whose telemetry does not add up are left out of the judgement and listed in ``flagged``.

The parts, each importing only those before it: ``statistics`` (interval bounds), ``plan``
(gates and stages), ``record`` (the rollout in KV, its ``RolloutPhase``), ``evidence`` (node
views, evidence windows, figures), ``judge`` (a stage's verdict) and ``machine`` (``step``,
``request``). The controller (``mesh.fleet.controller``) runs ``step`` and writes what it
returns; nothing here does I/O, so every rule is tested with a fake clock
(``tests/unit/test_rollout.py``).
"""

from mesh.fleet.rollout.evidence import (
    DRIFT_NODE_ROWS,
    Figures,
    NodeView,
    Window,
    aggregate,
    decode_window,
    delta,
    encode_window,
    evidence_problem,
)
from mesh.fleet.rollout.judge import (
    DRIFT_MIN_REQUESTS,
    P99_FLOOR_MS,
    Verdict,
    VerdictResult,
    judge,
    slower_than,
)
from mesh.fleet.rollout.machine import (
    MAX_FLAGGED,
    ROLLBACK_WAIT_S,
    Assignments,
    Step,
    desired_for,
    request,
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

__all__ = [
    "ACTIVE",
    "DRIFT_MIN_REQUESTS",
    "DRIFT_NODE_ROWS",
    "FINAL",
    "MAX_FLAGGED",
    "OUTCOMES",
    "P99_FLOOR_MS",
    "ROLLBACK_WAIT_S",
    "Assignments",
    "Figures",
    "Gate",
    "NodeView",
    "Rollout",
    "RolloutPhase",
    "Stage",
    "StageLog",
    "StagePhase",
    "Step",
    "Verdict",
    "VerdictResult",
    "Window",
    "aggregate",
    "decode_rollout",
    "decode_window",
    "delta",
    "desired_for",
    "difference_lower",
    "difference_upper",
    "encode_rollout",
    "encode_window",
    "evidence_problem",
    "judge",
    "new_rollout",
    "parse_duration",
    "parse_stages",
    "report",
    "request",
    "slower_than",
    "step",
    "view_of",
    "wilson_lower",
    "wilson_upper",
]
