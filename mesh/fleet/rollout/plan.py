"""A rollout's plan: its stages (a node count, a cumulative share of the targets, or named
nodes; the last is all of them) and the gate each stage must pass (``schemas/rollout.schema.json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mesh.errors import InvalidArgumentError


@dataclass(frozen=True)
class Gate:
    """What a stage must show before the rollout moves on (``schemas/rollout.schema.json``).

    Fixed bounds are optional; the comparisons with the baseline (nodes still on the previous
    version, same window) always apply once both sides have enough evidence."""

    soak_s: float = 30.0
    min_requests: int = 50
    #: answers compared with the tier above before agreement is judged: with 150, a version
    #: agreeing 15 points less than a 0.93 baseline fails (its 90% upper bound is under the
    #: bound) 97% of the time, and one as good as the baseline passes 99.99%.
    min_samples: int = 150
    max_wait_s: float = 600.0
    deploy_timeout_s: float = 300.0
    max_error_rate: float | None = None
    max_degraded_rate: float | None = None
    max_escalation_rate: float | None = None
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_drift: float | None = None
    min_agreement: float | None = None
    max_error_rate_increase: float = 0.01
    max_escalation_rate_increase: float = 0.10
    max_p99_ratio: float = 3.0
    #: off unless declared: a version's drift is scored against its own reference, taken from
    #: its training split, so versions are not alike there (the float edge MLP reads 0.137 on
    #: held-out digits, its int8 build 0.0; the inputs are the same), and a default bound
    #: rolled a good version back on 500 simulated nodes. A fixed ``max_drift`` applies as set.
    max_drift_increase: float | None = None
    max_agreement_drop: float = 0.05
    #: labels each side (the version and the one it replaces, at the rollout's tier) needs
    #: before their labelled accuracies are compared; until then labels judge nothing.
    min_labels: int = 30
    max_label_accuracy_drop: float = 0.05
    #: a shadow stage's floor on how often the version answers as the serving one does: a
    #: better version disagrees with a worse one where that one is wrong, so this catches a
    #: broken version, not a worse one (agreement with the tier above and labels do that).
    min_serving_agreement: float = 0.5

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Gate | None = None) -> Gate:
        """A gate from ``data`` over ``base``; an unknown metric or a bad value is refused."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in known:
                raise InvalidArgumentError(
                    f"gate on unknown metric {name!r}; gates know {', '.join(sorted(known))}"
                )
            values[name] = _gate_value(name, raw)
        return replace(base or cls(), **values)

    @classmethod
    def parse(cls, terms: Iterable[str], base: Gate | None = None) -> Gate:
        """``max_error_rate=0.01``, ``soak_s=30s``, ``min_agreement=0.9``... (``--gate``)."""
        data: dict[str, str] = {}
        for term in terms:
            for part in term.split(","):
                part = part.strip()
                if not part:
                    continue
                name, sep, value = part.partition("=")
                if not sep:
                    raise InvalidArgumentError(f"gate term {part!r} is not metric=value")
                data[name.strip()] = value.strip()
        return cls.from_dict(data, base)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _gate_value(name: str, raw: Any) -> float | int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if name.endswith("_s"):
            return parse_duration(text)
        try:
            raw = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
        except ValueError:
            raise InvalidArgumentError(f"gate {name}={raw!r} is not a number") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise InvalidArgumentError(f"gate {name}={raw!r} is not a finite number")
    if raw < 0:
        raise InvalidArgumentError(f"gate {name}={raw} must not be negative")
    rate = name.endswith(("_rate", "_increase", "_drop", "_agreement"))
    if rate and raw > 1:
        raise InvalidArgumentError(f"gate {name}={raw} is a share, in [0, 1]")
    if name in ("min_requests", "min_samples", "min_labels"):
        if raw != int(raw):
            raise InvalidArgumentError(f"gate {name}={raw} must be a whole number")
        return int(raw)
    return float(raw)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InvalidArgumentError(f"duration {text!r} is not like 30s, 2m, 500ms")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]


# --- stages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step: a node count, a cumulative share of the targets, or named nodes. A shadow
    stage runs the version beside the one its nodes serve, answering nobody (the first stage
    of a rollout that begins in shadow, on the canary's nodes)."""

    name: str
    gate: Gate
    count: int | None = None
    share: float | None = None
    nodes: tuple[str, ...] = ()
    shadow: bool = False

    def size(self, total: int) -> int:
        """How many of ``total`` targets serve the version once this stage is reached."""
        if self.share is not None:
            return min(total, max(1, math.ceil(self.share * total - 1e-9)))
        if self.count is not None:
            return min(total, self.count)
        return min(total, len(self.nodes))

    @property
    def is_whole(self) -> bool:
        return not self.shadow and self.share is not None and self.share >= 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "gate": self.gate.as_dict()}
        if self.shadow:
            out["shadow"] = True
        if self.share is not None:
            out["share"] = self.share
        elif self.count is not None:
            out["count"] = self.count
        else:
            out["nodes"] = list(self.nodes)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Stage:
        gate = Gate.from_dict(obj.get("gate") or {})
        share, count, nodes = obj.get("share"), obj.get("count"), obj.get("nodes")
        if sum(x is not None for x in (share, count, nodes)) != 1:
            raise InvalidArgumentError("a stage names one of share, count or nodes")
        return cls(
            name=str(obj.get("name", "")),
            gate=gate,
            share=float(share) if share is not None else None,
            count=int(count) if count is not None else None,
            nodes=tuple(str(n) for n in nodes) if nodes is not None else (),
            shadow=obj.get("shadow") is True,
        )


def parse_stages(text: str, gate: Gate) -> list[Stage]:
    """``1,10%,50%,100%``: a whole number is a node count, a percentage a share of the nodes
    matching the selector; the last stage must be 100% and the sizes must not shrink."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidArgumentError("give the stages, for example --stages 1,10%,50%,100%")
    stages: list[Stage] = []
    last_share = 0.0
    for i, part in enumerate(parts):
        name = "canary" if i == 0 and len(parts) > 1 else f"stage-{i + 1}"
        if i == len(parts) - 1:
            name = "all"
        if part.endswith("%"):
            try:
                share = float(part[:-1]) / 100.0
            except ValueError:
                raise InvalidArgumentError(f"stage {part!r} is not a percentage") from None
            if not 0.0 < share <= 1.0:
                raise InvalidArgumentError(f"stage {part!r} must be in (0%, 100%]")
            if share < last_share:
                raise InvalidArgumentError(f"stage {part!r} is smaller than the one before")
            last_share = share
            stages.append(Stage(name=name, gate=gate, share=share))
        else:
            try:
                count = int(part)
            except ValueError:
                raise InvalidArgumentError(
                    f"stage {part!r} is neither a node count nor a percentage"
                ) from None
            if count < 1:
                raise InvalidArgumentError(f"stage {part!r}: a stage has at least one node")
            stages.append(Stage(name=name, gate=gate, count=count))
    if not stages[-1].is_whole:
        raise InvalidArgumentError(
            f"the stages end at {parts[-1]}, not 100%: a rollout ends with every node matching "
            "its selector (add 100%)"
        )
    return stages


def distinct_stages(stages: Sequence[Stage], total: int) -> tuple[list[Stage], list[Stage]]:
    """The stages that each add nodes over ``total`` targets, and those left out: on a small
    fleet ``1,10%,50%`` are all one node, and soaking the same node three times proves nothing
    the first soak did not. A stage the size of the last one (every target) gives way to it."""
    kept: list[Stage] = []
    dropped: list[Stage] = []
    last = stages[-1]
    for stage in stages[:-1]:
        size = stage.size(total)
        if size >= last.size(total) or (kept and size <= kept[-1].size(total)):
            dropped.append(stage)
        else:
            kept.append(stage)
    return [*kept, last], dropped


def with_shadow(stages: Sequence[Stage], total: int) -> list[Stage]:
    """``stages`` begun with a shadow stage on the first stage's nodes (of ``total`` targets):
    the version runs beside what they serve, answering nobody, and is judged before it takes
    traffic there."""
    first = stages[0]
    shadow = Stage(name="shadow", gate=first.gate, count=first.size(total), shadow=True)
    return [shadow, *stages]
