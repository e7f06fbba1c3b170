"""What a node says of its energy: the ``power`` part of its status (and fleet heartbeat), and
the event it publishes on ``mesh.telemetry.<node>`` each time its governor takes or gives back a
step. Same conventions as the other records: pure functions over bytes, unknown fields ignored,
``InvalidArgumentError`` on bad input (``schemas/node-status.schema.json``,
``schemas/power-step.schema.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.wire.codec import (
    VERSION,
    finite,
    optional,
    optional_number,
    packb,
    require,
    require_kind,
    unpack_map,
)

#: most step names a status or event carries (the ladder has five).
MAX_STEPS = 16


@dataclass(frozen=True, slots=True)
class PowerStatus:
    """The node's energy ledger and power governor now."""

    #: the device profile the ledger prices with (``rpi4``, ``x86-gateway``...).
    profile: str
    #: what prices a CPU-second: ``profile``, or the compute sensor that measured it.
    compute_source: str = "profile"
    #: average power of the node's ledger (compute and radio) over ``window_s``, in watts.
    watts: float | None = None
    window_s: float = 0.0
    #: the node's budget in watts now; None: no budget.
    budget_w: float | None = None
    #: the ladder's steps in effect, in the order taken.
    steps: list[str] = field(default_factory=list)
    #: share of unsure requests answered here, degraded ``power``.
    degrade_share: float = 0.0
    #: every step is taken and the node is still over its budget.
    unreachable: bool = False
    compute_j: float = 0.0
    radio_j: float = 0.0
    answers: int = 0
    #: the ledger's joules over its answers since the node started.
    joules_per_answer: float | None = None
    #: what one request and its reply upstream cost the radio at the sizes seen here: the
    #: device's energy per answer if everything went up (cloud-only).
    upstream_j: float | None = None
    #: the battery's level in percent, when read or reported.
    battery_percent: float | None = None
    #: the whole device's draw as a sensor measured it, in watts.
    sensor_w: float | None = None
    sensors: list[str] = field(default_factory=list)


def power_to_map(p: PowerStatus) -> dict[str, Any]:
    return {
        "profile": p.profile,
        "compute_source": p.compute_source,
        "watts": p.watts,
        "window_s": float(p.window_s),
        "budget_w": p.budget_w,
        "steps": list(p.steps),
        "degrade_share": float(p.degrade_share),
        "unreachable": p.unreachable,
        "compute_j": float(p.compute_j),
        "radio_j": float(p.radio_j),
        "answers": int(p.answers),
        "joules_per_answer": p.joules_per_answer,
        "upstream_j": p.upstream_j,
        "battery_percent": p.battery_percent,
        "sensor_w": p.sensor_w,
        "sensors": list(p.sensors),
    }


def power_from_map(obj: object, what: str) -> PowerStatus:
    where = f"{what} power"
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{where} must be a map")
    return PowerStatus(
        profile=require(obj, "profile", str, where),
        compute_source=optional(obj, "compute_source", str, "profile", where),
        watts=optional_number(obj, "watts", where),
        window_s=optional_number(obj, "window_s", where) or 0.0,
        budget_w=optional_number(obj, "budget_w", where),
        steps=_names(obj.get("steps"), "steps", where),
        degrade_share=optional_number(obj, "degrade_share", where) or 0.0,
        unreachable=optional(obj, "unreachable", bool, False, where),
        compute_j=optional_number(obj, "compute_j", where) or 0.0,
        radio_j=optional_number(obj, "radio_j", where) or 0.0,
        answers=max(0, optional(obj, "answers", int, 0, where)),
        joules_per_answer=optional_number(obj, "joules_per_answer", where),
        upstream_j=optional_number(obj, "upstream_j", where),
        battery_percent=optional_number(obj, "battery_percent", where),
        sensor_w=optional_number(obj, "sensor_w", where),
        sensors=_names(obj.get("sensors"), "sensors", where),
    )


@dataclass(frozen=True, slots=True)
class PowerStepEvent:
    """The governor took a step of its ladder (``applied``) or gave one back."""

    node: str
    tier: str
    step: str
    applied: bool
    #: the power the decision was made on, and the budget, in watts.
    watts: float
    budget_w: float | None
    #: what the step was measured to save, in watts (None before it was measured).
    saved_w: float | None
    #: the steps in effect after it.
    steps: list[str]
    degrade_share: float
    #: wall-clock unix seconds.
    time: float


def encode_power_step(event: PowerStepEvent) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": "power_step",
            "node": event.node,
            "tier": event.tier,
            "step": event.step,
            "applied": event.applied,
            "watts": float(event.watts),
            "budget_w": event.budget_w,
            "saved_w": event.saved_w,
            "steps": list(event.steps),
            "degrade_share": float(event.degrade_share),
            "time": float(event.time),
        }
    )


def decode_power_step(data: bytes) -> PowerStepEvent:
    what = "power step"
    obj = unpack_map(data, what)
    require_kind(obj, "power_step", what)
    return PowerStepEvent(
        node=require(obj, "node", str, what),
        tier=require(obj, "tier", str, what),
        step=require(obj, "step", str, what),
        applied=require(obj, "applied", bool, what),
        watts=finite(require(obj, "watts", (int, float), what), "watts", what),
        budget_w=optional_number(obj, "budget_w", what),
        saved_w=optional_number(obj, "saved_w", what),
        steps=_names(obj.get("steps"), "steps", what),
        degrade_share=optional_number(obj, "degrade_share", what) or 0.0,
        time=finite(require(obj, "time", (int, float), what), "time", what),
    )


def _names(value: object, key: str, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_STEPS:
        raise InvalidArgumentError(f"{what} {key} must be a list of at most {MAX_STEPS} names")
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{what} {key} must hold names")
    return list(value)
