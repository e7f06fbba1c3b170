"""Desired state: which version of a model a group of nodes serves, and which entry a node obeys.

An assignment names a model, a version and a selector (tier, site, node name, labels; every
field it sets must match). It is kept in KV under ``<model>.<selector key>``, so one assignment
per model and selector exists at a time and a newer one for the same selector replaces it. A
node obeys, for each model, the most specific assignment that matches it: a node name beats
labels, labels beat a site, a site beats a tier, a tier beats the whole fleet; between equally
specific ones the later write wins.

Readers check what they read (``mesh.fleet.replay``): ``DesiredReader`` obeys an entry only when
its model and selector make the key it arrived under and its ``time`` is not older than the
newest seen under that key; an assignment is withdrawn by a delete marker carrying the withdrawn
entry (``withdrawn``, a later ``time``), never by a bare delete anyone could re-deliver.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from mesh.errors import InvalidArgumentError
from mesh.fleet.replay import ReplayGuard
from mesh.topology.subjects import check_token as _check_token
from mesh.wire.codec import (
    VERSION,
    finite,
    packb,
    require,
    require_kind,
    str_map,
    unpack_map,
)

KIND = "desired_state"


def check_token(value: str, what: str) -> str:
    """``mesh.topology.subjects.check_token`` as the mesh's typed error: these values come from a
    CLI argument or a KV value anyone with write access may have garbled."""
    try:
        return _check_token(value, what)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


_LABEL = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class Selector:
    """Which nodes an assignment is for; an unset field matches any node."""

    tier: str | None = None
    site: str | None = None
    node: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, terms: Iterable[str]) -> Selector:
        """``tier=edge``, ``site=line4``, ``node=edge-0``, ``label.k=v`` or ``k=v`` (a label);
        ``all`` (or no terms) is the whole fleet."""
        fields: dict[str, str] = {}
        labels: dict[str, str] = {}
        for term in terms:
            for part in term.split(","):
                part = part.strip()
                if not part or part == "all":
                    continue
                key, sep, value = part.partition("=")
                if not sep or not key or not value:
                    raise InvalidArgumentError(
                        f"selector term {part!r} is not key=value (tier=, site=, node=, label.K=)"
                    )
                if key in ("tier", "site", "node"):
                    if key in fields and fields[key] != value:
                        raise InvalidArgumentError(f"selector names {key} twice")
                    fields[key] = check_token(value, f"selector {key}")
                else:
                    name = key.removeprefix("label.")
                    if not _LABEL.match(name) or not _LABEL.match(value):
                        raise InvalidArgumentError(
                            f"label {name}={value}: labels are letters, digits, '_' and '-'"
                        )
                    labels[name] = value
        return cls(
            tier=fields.get("tier"), site=fields.get("site"), node=fields.get("node"),
            labels=labels,
        )  # fmt: skip

    def matches(self, tier: str, site: str, node: str, labels: Mapping[str, str]) -> bool:
        if self.tier is not None and self.tier != tier:
            return False
        if self.site is not None and self.site != site:
            return False
        if self.node is not None and self.node != node:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())

    @property
    def specificity(self) -> int:
        if self.node is not None:
            return 1000
        return 10 * len(self.labels) + 4 * (self.site is not None) + 2 * (self.tier is not None)

    @property
    def key(self) -> str:
        """The KV key part: tokens ``node=..``, ``label.k=v``, ``site=..``, ``tier=..``, or
        ``all``; deterministic, so the same selector always lands on the same key."""
        parts = [f"{k}={v}" for k, v in (("node", self.node), ("site", self.site)) if v]
        parts += [f"label.{k}={v}" for k, v in sorted(self.labels.items())]
        if self.tier:
            parts.append(f"tier={self.tier}")
        return ".".join(parts) or "all"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in ("tier", "site", "node"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class DesiredState:
    """``schemas/desired-state.schema.json``."""

    model: str
    version: str
    selector: Selector
    #: wall-clock unix seconds of the assignment.
    time: float
    #: who assigned it (the identity or tool), for the record.
    by: str = ""
    #: the body of a delete marker: the assignment under this key is withdrawn as of ``time``.
    withdrawn: bool = False
    #: a version to run in shadow beside ``version`` (a rollout's shadow stage): on copies of
    #: its inputs, off the reply path; it never answers.
    shadow: str | None = None

    @property
    def key(self) -> str:
        return desired_key(self.model, self.selector)

    def withdrawal(self, time: float, by: str = "") -> DesiredState:
        """What withdraws this assignment at ``time``."""
        return replace(self, time=time, by=by or self.by, withdrawn=True)


def desired_key(model: str, selector: Selector) -> str:
    return f"{check_token(model, 'model name')}.{selector.key}"


def encode_desired(state: DesiredState) -> bytes:
    return packb(
        {
            "v": VERSION,
            "kind": KIND,
            "model": state.model,
            "version": state.version,
            "selector": state.selector.as_dict(),
            "time": float(state.time),
            "by": state.by,
            **({"withdrawn": True} if state.withdrawn else {}),
            **({"shadow": state.shadow} if state.shadow is not None else {}),
        }
    )


def decode_desired(data: bytes) -> DesiredState:
    what = "desired state"
    obj = unpack_map(data, what)
    require_kind(obj, KIND, what)
    raw = require(obj, "selector", dict, what)
    selector = Selector(
        tier=_opt_token(raw.get("tier"), "tier", what),
        site=_opt_token(raw.get("site"), "site", what),
        node=_opt_token(raw.get("node"), "node", what),
        labels=str_map(raw.get("labels") or {}, "selector.labels", what),
    )
    by = obj.get("by", "")
    shadow = obj.get("shadow")
    if shadow is not None and not isinstance(shadow, str):
        raise InvalidArgumentError(f"{what} shadow must be a version name")
    return DesiredState(
        model=check_token(require(obj, "model", str, what), "model name"),
        version=check_version(require(obj, "version", str, what)),
        selector=selector,
        time=finite(require(obj, "time", (int, float), what), "time", what),
        by=by if isinstance(by, str) else "",
        withdrawn=obj.get("withdrawn") is True,
        shadow=None if shadow is None else check_version(shadow),
    )


def _opt_token(value: object, name: str, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} selector.{name} must be a string")
    return check_token(value, f"selector {name}")


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """How versions sort: numbers as numbers, the rest as text (``1-edge < 2-edge < 10-edge``,
    ``2.1 < 2.10``). A version assigned that sorts before the one served is a downgrade."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


def check_version(value: str) -> str:
    """A version name: letters, digits, '_', '-' and dots inside (it names a folder in a node's
    cache and a token of a revocation's key); a typed error otherwise."""
    bad_dots = value.startswith(".") or value.endswith(".") or ".." in value
    if not value or len(value) > 64 or bad_dots or not _LABEL.match(value.replace(".", "_")):
        raise InvalidArgumentError(f"model version {value[:70]!r} is not a version name")
    return value


@dataclass(frozen=True)
class Revisioned:
    """A desired state as read from KV, with its revision (the order of writes)."""

    state: DesiredState
    revision: int


def resolve(
    entries: Iterable[Revisioned],
    *,
    tier: str,
    site: str,
    node: str,
    labels: Mapping[str, str],
) -> dict[str, DesiredState]:
    """Per model, the assignment this node obeys: the most specific match, then the latest."""
    best: dict[str, tuple[int, int, DesiredState]] = {}
    for entry in entries:
        s = entry.state
        if not s.selector.matches(tier, site, node, labels):
            continue
        rank = (s.selector.specificity, entry.revision)
        held = best.get(s.model)
        if held is None or rank > held[:2]:
            best[s.model] = (*rank, s)
    return {model: held[2] for model, held in best.items()}


@dataclass
class DesiredReader:
    """The desired state as one reader obeys it, entry by entry as read from the bucket (history
    included), each checked against replays. ``keep`` chooses the assignments held (a node's
    agent keeps only those that match it)."""

    keep: Callable[[DesiredState], bool] = lambda state: True
    entries: dict[str, Revisioned] = field(default_factory=dict)
    _guard: ReplayGuard = field(default_factory=ReplayGuard)

    def apply(self, key: str, value: bytes, revision: int, deleted: bool) -> bool:
        """Take one entry read under ``key``; whether what is held changed. Raises
        ``InvalidArgumentError`` naming why an entry is not obeyed (the last good one stays)."""
        if deleted and not value:
            raise InvalidArgumentError(
                f"a delete of {key[:120]!r} without a withdrawal record is not obeyed"
            )
        state = decode_desired(value)
        problem = self._guard.check(key, state.key, state.time)
        if problem is not None:
            raise InvalidArgumentError(problem)
        if state.withdrawn or deleted:
            return self.entries.pop(key, None) is not None
        if not self.keep(state):
            return self.entries.pop(key, None) is not None
        self.entries[key] = Revisioned(state, revision)
        return True

    def newest(self, key: str) -> float | None:
        """The newest time seen under ``key``: a writer stamps after it (``replay.next_stamp``)."""
        return self._guard.newest(key)
