"""Typed settings of the tier nodes a local mesh runs: one builder for ``mesh up``, the demo, the
fault tests and the bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mesh.security.identities import IdentitySpec
from mesh.security.permissions import Role
from mesh.settings import NodeSettings


def node_identity(
    node: str,
    tier: str,
    *,
    upstream_tier: str | None = None,
    entry: bool = False,
    downstream_tier: str | None = None,
    domain: str | None = None,
) -> IdentitySpec:
    """The NATS identity of a tier node: its name is the node's, its rights its tier's (and
    its place: the tiers around it, its server's JetStream domain)."""
    return IdentitySpec(
        node,
        Role.NODE,
        tier=tier,
        upstream_tier=upstream_tier,
        entry=entry,
        downstream_tier=downstream_tier,
        domain=domain,
    )


def local_edge_identity(
    name: str, tier: str, *, upstream_tier: str | None = None, domain: str | None = None
) -> IdentitySpec:
    """The NATS identity of an edge hosted in an application's process (``Role.LOCAL_EDGE``):
    an edge node's rights, asked in-process instead of over NATS."""
    return IdentitySpec(
        name, Role.LOCAL_EDGE, tier=tier, upstream_tier=upstream_tier, domain=domain
    )


def tier_node_settings(
    tier: str,
    *,
    node: str,
    server: str,
    manifest: Path | None = None,
    zone: str,
    entry: bool = False,
    upstream: tuple[str, str] | None = None,
    threshold: float | None = None,
    collect: tuple[str, str | None] | None = None,
    http_port: int | None = 0,
    credentials: Path | None = None,
    models: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    audit_rate: float | None = None,
) -> NodeSettings:
    """Settings of one node serving ``digits`` from ``manifest``; ``upstream`` is (tier, zone),
    ``collect`` the tier below whose hard examples it takes up and that tier's domain.

    ``extra`` overrides any field, nested (``{"upstream": {"breaker": {...}}}``); the result is
    validated like a settings file, so a typo fails here and not in the child process."""
    if models is None:
        if manifest is None:
            raise ValueError(f"node {node}: give the digits manifest or the models")
        model: dict[str, Any] = {"name": "digits", "manifest": str(manifest)}
        if threshold is not None:
            model["threshold"] = threshold
        if audit_rate is not None:
            model["audit_rate"] = audit_rate
        models = [model]
    data: dict[str, Any] = {
        "tier": tier,
        "node": node,
        "zone": zone,
        "entry": entry,
        "nats": {"servers": [server], "credentials": credentials},
        "models": models,
        "http_port": http_port,
        "hard_examples": (
            {} if collect is None else {"collect_from": collect[0], "collect_domains": [collect[1]]}
        ),
    }
    if upstream is not None:
        data["upstream"] = {"tier": upstream[0], "zone": upstream[1]}
    if extra:
        _merge(data, extra)
    return NodeSettings.model_validate(data)


def settings_yaml(settings: NodeSettings) -> dict[str, Any]:
    """What a node's settings file holds: the fields that differ from the defaults."""
    data: dict[str, Any] = settings.model_dump(mode="json", exclude_defaults=True)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
