"""What ``mesh rollout start|status|pause|resume|abort`` do: checked writes and reads of the
rollout records a controller (``mesh.fleet.controller``) drives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.fleet import registry
from mesh.fleet.desired import DesiredState, Revisioned, Selector, resolve
from mesh.fleet.liveness import is_online
from mesh.fleet.refusals import RetryRequest
from mesh.fleet.revocation import verify_revocation
from mesh.fleet.rollout import (
    Gate,
    Rollout,
    Stage,
    decode_rollout,
    encode_rollout,
    new_rollout,
    parse_duration,
    parse_stages,
    request,
    view_of,
)
from mesh.fleet.rollout.plan import distinct_stages, with_shadow
from mesh.fleet.rollouts_kv import ROLLOUT_BY, ROLLOUT_PREFIX, rollout_key, rollouts_bucket
from mesh.fleet.signing import SignatureError, load_trusted_keys, verify
from mesh.topology.streams import ROLLOUTS_BUCKET
from mesh.wire import NodeStatus


async def start_rollout(
    js: JetStreamContext,
    model: str,
    version: str,
    *,
    stages: str,
    soak: str | None = None,
    gate_terms: Sequence[str] = (),
    selector: Selector | None = None,
    trusted_keys: Sequence[str] = (),
    by: str = "",
    offline_after_s: float = 10.0,
    now: float | None = None,
    shadow: bool = False,
) -> Rollout:
    """Check everything, then store a pending rollout for the controller to drive; with
    ``shadow`` it begins with a shadow stage on the first stage's nodes. Refused,
    with nothing written: a version not in the registry or not signed by a trusted key, a bad
    stage list or gate, a selector naming another tier than the version's or matching no
    online node of it serving the model, a target that already refused the version, or a model
    with a rollout still running. The selector is narrowed to the version's tier, and stages
    that would add no node on this many targets are left out."""
    now = time.time() if now is None else now
    if not trusted_keys:
        raise InvalidArgumentError(
            "give the public keys nodes trust (--trusted-key or $MESH_TRUSTED_KEYS): a rollout "
            "starts only for a version they would load"
        )
    plan, tier = await _plan(js, model, version, stages, soak, gate_terms, trusted_keys)
    await refuse_revoked(js, model, version, trusted_keys)
    kv = await rollouts_bucket(js)
    existing = await _latest_unless_running(kv, model)
    heartbeats = await registry.read_heartbeats(js)
    selector = within_tier(selector or Selector(), tier, model, version, heartbeats)
    targets, suspect, previous = _targets(
        model, version, selector, heartbeats, now=now, offline_after_s=offline_after_s
    )
    _check_not_refused(model, version, heartbeats, targets)
    _check_not_shadowed(
        model, version, selector, heartbeats, targets, await registry.read_desired(js)
    )
    for served in sorted(set(previous.values())):
        if not await registry.has_version(js, model, served):
            holders = [n for n, v in previous.items() if v == served]
            raise InvalidArgumentError(
                f"{', '.join(holders[:3])} serve {model}@{served}, which is not in the "
                "registry: a rollout could not roll back to it (mesh models push it first)"
            )
    kept, _ = distinct_stages(plan, len(targets))
    if shadow:
        kept = with_shadow(kept, len(targets))
    rollout = new_rollout(
        model, version, Counter(previous.values()).most_common(1)[0][0], selector, kept,
        targets, now=now, by=by, suspect=suspect, previous_versions=previous,
        generation=_generation_after(existing),
    )  # fmt: skip
    encoded = encode_rollout(rollout)
    try:
        if existing is None:
            await kv.create(rollout_key(model), encoded)
        else:
            await kv.update(rollout_key(model), encoded, last=int(existing.revision or 0))
    except KeyWrongLastSequenceError:
        raise InvalidArgumentError(
            f"another rollout of {model} was started at the same moment; see mesh rollout status"
        ) from None
    return rollout


async def _plan(
    js: JetStreamContext,
    model: str,
    version: str,
    stages: str,
    soak: str | None,
    gate_terms: Sequence[str],
    trusted_keys: Sequence[str],
) -> tuple[list[Stage], str]:
    """The stages, once the version is in the registry and signed by a trusted key, and the
    tier its manifest says it is for; each stage's gate is the one the manifest declares,
    overridden by ``gate_terms`` and ``soak``."""
    if not await registry.has_version(js, model, version):
        raise NotFoundError(f"{model}@{version} is not in the registry: mesh models push it first")
    artifact = await registry.fetch(js, model, version)
    manifest = artifact.manifest
    verify(artifact.signature, manifest, artifact.onnx, load_trusted_keys(list(trusted_keys)))
    declared = manifest.get("rollout")
    gate = (
        Gate.from_dict((declared or {}).get("gate") or {}) if isinstance(declared, dict) else Gate()
    )
    gate = Gate.parse(gate_terms, gate)
    if soak is not None:
        gate = Gate.from_dict({"soak_s": parse_duration(soak)}, gate)
    tier = manifest.get("tier_hint")
    return parse_stages(stages, gate), tier if isinstance(tier, str) else ""


def within_tier(
    selector: Selector,
    tier: str,
    model: str,
    version: str,
    heartbeats: Mapping[str, NodeStatus | str],
) -> Selector:
    """The selector narrowed to the tier the version is made for (its manifest's
    ``tier_hint``): an edge model in the cloud tier would answer what the cloud is there for.
    A selector naming another tier, or a node of one, is refused; with no tier in the manifest,
    the selector must match nodes of one tier only."""
    label = f"{model}@{version}"
    if tier:
        why = f"{label} is made for tier {tier} (its manifest's tier_hint)"
        if selector.tier is not None and selector.tier != tier:
            raise InvalidArgumentError(
                f"{why}, the selector names tier {selector.tier}: a version rolls out only to "
                "the tier it is made for"
            )
        node = heartbeats.get(selector.node or "")
        if isinstance(node, NodeStatus) and node.tier != tier:
            raise InvalidArgumentError(
                f"{why}, node {node.node} is of tier {node.tier}: a version rolls out only to "
                "the tier it is made for"
            )
        return replace(selector, tier=tier)
    tiers = sorted(
        {
            s.tier
            for name, s in heartbeats.items()
            if isinstance(s, NodeStatus)
            and model in s.models
            and selector.matches(s.tier, s.site, name, s.labels)
        }
    )
    if len(tiers) > 1:
        raise InvalidArgumentError(
            f"{label}'s manifest names no tier (tier_hint) and selector {selector.key} matches "
            f"nodes of tiers {', '.join(tiers)}: name one with --selector tier=..."
        )
    return selector


async def refuse_revoked(
    js: JetStreamContext, model: str, version: str, trusted_keys: Sequence[str]
) -> None:
    """Refuse a version revoked by a key the nodes trust (they would refuse it)."""
    revocation = (await registry.read_revocations(js)).get(f"{model}@{version}")
    if revocation is None:
        return
    try:
        verify_revocation(revocation, load_trusted_keys(list(trusted_keys)))
    except SignatureError:
        return
    raise InvalidArgumentError(
        f"{model}@{version} is revoked ({revocation.reason}): nodes refuse it; push the fix "
        "under a new version"
    )


def _generation_after(existing: KeyValue.Entry | None) -> int:
    """The generation of a new rollout record: one more than the one it replaces."""
    if existing is None or not existing.value:
        return 1
    try:
        return decode_rollout(existing.value).generation + 1
    except InvalidArgumentError:
        return 1


async def _latest_unless_running(kv: KeyValue, model: str) -> KeyValue.Entry | None:
    """The model's latest rollout entry; refused while that rollout is still running."""
    try:
        existing = await kv.get(rollout_key(model))
    except KeyNotFoundError:
        return None
    if existing.value:
        try:
            held = decode_rollout(existing.value)
        except InvalidArgumentError:
            held = None
        if held is not None and held.active:
            raise InvalidArgumentError(
                f"rollout {held.id} of {model}@{held.version} is {held.state}: one rollout per "
                "model at a time (mesh rollout abort it first)"
            )
    return existing


def _targets(
    model: str,
    version: str,
    selector: Selector,
    heartbeats: Mapping[str, NodeStatus | str],
    *,
    now: float,
    offline_after_s: float,
) -> tuple[list[str], set[str], dict[str, str]]:
    """The online nodes the selector matches that serve the model, those whose telemetry
    cannot be true, and what each serves now (what a failure returns it to: not what the
    desired state last said, since a version assigned there may have been refused)."""
    targets: list[str] = []
    suspect: set[str] = set()
    previous: dict[str, str] = {}
    for name, status in heartbeats.items():
        if isinstance(status, str):
            continue
        if not is_online(status, now, offline_after_s) or model not in status.models:
            continue
        if selector.matches(status.tier, status.site, name, status.labels):
            targets.append(name)
            previous[name] = status.models[model]
            view = view_of(model, version, name, status, now=now, offline_after_s=offline_after_s)
            if view.problem is not None:
                suspect.add(name)
    if not targets:
        raise InvalidArgumentError(
            f"selector {selector.key} matches no online node serving {model}: nothing to roll "
            "out to"
        )
    if Counter(previous.values()).most_common(1)[0][0] == version:
        raise InvalidArgumentError(
            f"most nodes matching {selector.key} already serve {model}@{version}"
        )
    return targets, suspect, previous


def _check_not_refused(
    model: str, version: str, heartbeats: Mapping[str, NodeStatus | str], targets: list[str]
) -> None:
    """A target that refused the version before would fail the first stage it is in at once."""
    key = f"{model}@{version}"
    refused = {
        n: status.rejected[key]
        for n in targets
        if isinstance(status := heartbeats[n], NodeStatus) and key in status.rejected
    }
    if refused:
        name, reason = next(iter(refused.items()))
        raise InvalidArgumentError(
            f"{len(refused)} target node(s) refused {key} before ({name}: {reason}); once the "
            f"cause is fixed, clear the refusal with mesh fleet retry --all {model} {version}"
        )


def _check_not_shadowed(
    model: str,
    version: str,
    selector: Selector,
    heartbeats: Mapping[str, NodeStatus | str],
    targets: list[str],
    entries: list[Revisioned],
) -> None:
    """A rollout ends by assigning the version to its selector; an assignment more specific
    than that (a site, labels, a node) would keep some targets on another version for good.
    Refused up front, naming it. A node key an earlier rollout left (a node held to its own
    version after a rollback) is the controller's: this rollout takes it over."""
    mine = [
        e
        for e in entries
        if e.state.model == model
        and not (e.state.selector.node is not None and e.state.by.startswith(ROLLOUT_BY))
    ]
    top = max((e.revision for e in mine), default=0) + 1
    base = Revisioned(DesiredState(model, version, selector, time.time()), top)
    shadowed: dict[str, list[str]] = {}
    for name in targets:
        status = heartbeats[name]
        assert isinstance(status, NodeStatus)
        wins = resolve(
            [*mine, base], tier=status.tier, site=status.site, node=name, labels=status.labels
        ).get(model)
        if wins is not None and wins.key != base.state.key:
            shadowed.setdefault(wins.key, []).append(name)
    if shadowed:
        key, nodes = next(iter(shadowed.items()))
        raise InvalidArgumentError(
            f"assignment {key} is more specific than selector {selector.key} and covers "
            f"{len(nodes)} of its nodes ({', '.join(nodes[:3])}...): roll out with that "
            "selector, or remove the assignment"
        )


@dataclass(frozen=True)
class Retried:
    """What ``mesh fleet retry`` did: the nodes that had refused the version, and those whose
    heartbeat no longer shows the refusal."""

    refused: list[str]
    cleared: list[str]


async def clear_refusals(
    js: JetStreamContext,
    model: str,
    version: str,
    node: str | None,
    *,
    by: str = "",
    wait_s: float = 15.0,
) -> Retried:
    """Ask ``node`` (None: every node) to clear its refusal of ``model@version``, then wait
    up to ``wait_s`` for the heartbeats to show it cleared. A node that still has it assigned
    takes it again. Nothing is written when no node refused it."""
    if not await registry.has_version(js, model, version):
        raise NotFoundError(f"{model}@{version} is not in the registry")
    label = f"{model}@{version}"
    beats = await registry.read_heartbeats(js)
    if node is not None and node not in beats:
        raise NotFoundError(f"no node {node} in the fleet (mesh fleet status lists them)")
    refused = _refusing(beats, label, node)
    if not refused:
        return Retried([], [])
    await registry.request_retry(js, RetryRequest(model, version, node, time.time(), by))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    pending = refused
    while pending and loop.time() < deadline:
        await asyncio.sleep(0.5)
        pending = [n for n in _refusing(await registry.read_heartbeats(js), label, node)
                   if n in refused]  # fmt: skip
    return Retried(refused, [n for n in refused if n not in pending])


def _refusing(beats: Mapping[str, NodeStatus | str], label: str, node: str | None) -> list[str]:
    return sorted(
        name
        for name, beat in beats.items()
        if isinstance(beat, NodeStatus) and label in beat.rejected and node in (None, name)
    )


async def read_rollouts(js: JetStreamContext) -> dict[str, Rollout]:
    """Model to its latest rollout (read key by key: see ``registry.latest_entries``)."""
    kv = await rollouts_bucket(js)
    out: dict[str, Rollout] = {}
    for entry in await registry.latest_entries(js, kv, ROLLOUTS_BUCKET, f"{ROLLOUT_PREFIX}*"):
        with contextlib.suppress(InvalidArgumentError):
            rollout = decode_rollout(entry.value or b"")
            if rollout_key(rollout.model) == entry.key:  # not one re-delivered under another
                out[rollout.model] = rollout
    return out


#: what a read of the rollouts bucket may meet while a hub member is down or being replaced:
#: worth asking again, not the end of a wait (``nats.errors.TimeoutError`` is also an
#: ``asyncio.TimeoutError``, so a bare ``except TimeoutError`` would take it for the deadline;
#: JetStream's errors are ``nats.errors.Error``s too)
TRANSIENT_READ_ERRORS: tuple[type[BaseException], ...] = (NatsError,)


async def wait_rollout(
    js: JetStreamContext,
    model: str,
    done: Callable[[Rollout], bool],
    timeout_s: float,
    poll_s: float = 0.5,
) -> Rollout | None:
    """The rollout of ``model`` once ``done`` says so of it, or None if not within
    ``timeout_s``; reads that fail while the hub's members change are made again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            current = (await read_rollouts(js)).get(model)
        except TRANSIENT_READ_ERRORS:
            current = None
        if current is not None and done(current):
            return current
        await asyncio.sleep(min(poll_s, max(0.0, deadline - loop.time())))
    return None


async def wait_rollout_end(
    js: JetStreamContext, model: str, rollout_id: str, timeout_s: float, poll_s: float = 0.5
) -> Rollout | None:
    """The rollout ``rollout_id`` of ``model`` once it has ended (``wait_rollout``)."""
    return await wait_rollout(
        js, model, lambda r: r.id == rollout_id and not r.active, timeout_s, poll_s
    )


async def act(js: JetStreamContext, model: str, action: str, by: str = "") -> Rollout:
    """Pause, resume or abort the rollout of ``model`` (compare-and-set; retried on a race)."""
    kv = await rollouts_bucket(js)
    for _ in range(10):
        try:
            entry = await kv.get(rollout_key(model))
        except KeyNotFoundError:
            raise NotFoundError(f"no rollout of {model}") from None
        held = decode_rollout(entry.value or b"")
        await _check_latest(kv, model, held, int(entry.revision or 0))
        changed = request(held, action, time.time(), by)
        try:
            await kv.update(
                rollout_key(model), encode_rollout(changed), last=int(entry.revision or 0)
            )
        except KeyWrongLastSequenceError:
            await asyncio.sleep(0.05)
            continue
        return changed
    raise InvalidArgumentError(f"the rollout of {model} kept changing; try again")


async def _check_latest(kv: KeyValue, model: str, held: Rollout, revision: int) -> None:
    """Refuse to act on a record that is not its model's newest (an old one re-delivered into
    the bucket: the controllers ignore it, and a change made from it would be ignored too).
    Records written after ``revision`` (the one read) are not counted: the controller moved the
    rollout on meanwhile, and the compare-and-set that follows fails and reads again (counting
    them refused a pause of a rollout moving fast, naming an old record that was none)."""
    newest = held.generation
    with contextlib.suppress(NoKeysError):
        for entry in await kv.history(rollout_key(model)):
            if int(entry.revision or 0) > revision:
                continue
            with contextlib.suppress(InvalidArgumentError):
                newest = max(newest, decode_rollout(entry.value or b"").generation)
    if rollout_key(held.model) != rollout_key(model) or held.generation < newest:
        raise InvalidArgumentError(
            f"the latest record under {rollout_key(model)} is not the rollout of {model} "
            f"(generation {held.generation}, newest {newest}): an old record was re-delivered "
            "into the bucket; the controllers ignore it"
        )


def summary(rollout: Rollout) -> dict[str, Any]:
    """One rollout for ``mesh rollout status --json``: the record plus stage timings."""
    record: dict[str, Any] = json.loads(encode_rollout(rollout))
    record["stage_seconds"] = [
        round(s.judged_at - s.started_at, 1) if s.judged_at and s.started_at else None
        for s in rollout.log
    ]
    return record
