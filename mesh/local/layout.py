"""What a local mesh runs and with which settings: the layout (tiers, models, sites, the hub's
size), where each node stands (``NodeSpot``) and its typed settings (``NodePlanner``, one
builder for ``mesh up``, the demo, the soak, the fault tests and the bench). Nothing starts here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.security.identities import IdentitySpec
from mesh.security.permissions import Role
from mesh.settings import NodeSettings
from mesh.topology.streams import HUB_DOMAIN, StreamLimits

#: the tiers ``mesh up`` knows, lowest first, with their residency zones.
TIERS = ("edge", "gateway", "cloud")
ZONES = {"edge": "device", "gateway": "site", "cloud": "cloud"}


@dataclass
class MeshLayout:
    """Which nodes run where: the demo's three tiers unless told otherwise.

    ``extra`` holds settings by tier name, and by node name (``edge-1``) for one node's own.
    ``models`` (tier to model settings, as in a settings file) replaces the demo's digits
    manifests: the tiers it names run, lowest first, each escalating to the next one present,
    the lowest taking the entry subjects (``mesh up --models DIR``)."""

    edge_manifest: Path | None = None
    gateway_manifest: Path | None = None
    cloud_manifest: Path | None = None
    edge_replicas: int = 1
    edge_threshold: float | None = None
    gateway_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    models: dict[str, list[dict[str, Any]]] | None = None
    #: run the fleet: registry buckets on the hub and the site, a signing key, and every node
    #: with its agent (heartbeats, signed versions assigned with ``mesh fleet assign``).
    fleet: bool = False
    #: the entry tier consumes the site's event stream (``mesh publish``, ``client.publish``).
    events: bool = False
    #: share of confident answers the edge and gateway audit upstream (default: the setting's).
    audit_rate: float | None = None
    #: with ``fleet``: sign the versions the nodes serve and push them to the registry (what a
    #: rollout rolls back to), and run a ``mesh controller`` under supervision (``mesh up``).
    operated: bool = False
    #: servers of the hub: 1, or a cluster whose streams are replicated (R3) across them.
    hub_cluster: int = 1
    #: sites, each a leaf server and JetStream domain of its own with the tiers below the top.
    sites: int = 1
    #: the streams' limits (None: the documented defaults); the soak keeps hard examples small
    #: to fill their streams.
    limits: StreamLimits | None = None

    def site_names(self) -> list[str]:
        """``site`` alone, or ``site-0``, ``site-1``..."""
        if self.sites < 1:
            raise InvalidArgumentError(f"a mesh has at least one site, not {self.sites}")
        return ["site"] if self.sites == 1 else [f"site-{k}" for k in range(self.sites)]

    def hub_replicas(self) -> int:
        return min(3, self.hub_cluster)

    def tiers(self) -> list[str]:
        if self.models is None:
            return list(TIERS)
        unknown = sorted(set(self.models) - set(TIERS))
        if unknown:
            raise InvalidArgumentError(f"tiers {unknown} are not among {list(TIERS)}")
        return [tier for tier in TIERS if self.models.get(tier)]


@dataclass(frozen=True)
class NodeSpot:
    """Where one node of a local mesh stands: its tier, its number there, its site (None: the
    hub); its name is ``<tier>-<n>``, with the site in front when there are several."""

    tier: str
    index: int
    site: str | None
    name: str


class NodePlanner:
    """Every node of a layout and its settings, given where the servers listen: the top tier at
    the hub (given every hub member's URL), the others at each site's server."""

    def __init__(
        self,
        layout: MeshLayout,
        *,
        hub_urls: Sequence[str],
        site_urls: Mapping[str, str],
        work_dir: Path,
        signing_public: str | None,
    ) -> None:
        self.layout = layout
        self.tiers = layout.tiers()
        self.sites = layout.site_names()
        self.hub_urls = list(hub_urls)
        self.site_urls = dict(site_urls)
        self.work_dir = work_dir
        self.signing_public = signing_public

    @property
    def entry_tier(self) -> str:
        return self.tiers[0]

    def upstream_of(self, tier: str) -> str | None:
        at = self.tiers.index(tier)
        return self.tiers[at + 1] if at + 1 < len(self.tiers) else None

    def downstream_of(self, tier: str) -> str | None:
        at = self.tiers.index(tier)
        return self.tiers[at - 1] if at > 0 else None

    def domain_of(self, tier: str, site: str | None) -> str:
        return HUB_DOMAIN if tier == "cloud" or site is None else site

    def spots(self) -> list[list[NodeSpot]]:
        """Every node, in waves that start together: the top tier first, so each upstream serves
        before the nodes below it come up."""
        waves: list[list[NodeSpot]] = []
        for tier in reversed(self.tiers):
            if tier == "cloud":
                waves.append([NodeSpot(tier, 0, None, "cloud-0")])
                continue
            count = self.layout.edge_replicas if tier == "edge" else 1
            waves.append([self._spot(tier, i, site) for site in self.sites for i in range(count)])
        return waves

    def _spot(self, tier: str, index: int, site: str) -> NodeSpot:
        name = f"{tier}-{index}" if len(self.sites) == 1 else f"{site}-{tier}-{index}"
        return NodeSpot(tier, index, site, name)

    def identity(self, spot: NodeSpot) -> IdentitySpec:
        return node_identity(
            spot.name,
            spot.tier,
            upstream_tier=self.upstream_of(spot.tier),
            entry=spot.tier == self.entry_tier,
            downstream_tier=self.downstream_of(spot.tier),
            domain=self.domain_of(spot.tier, spot.site),
        )

    def _collect(self, spot: NodeSpot) -> tuple[str, list[str | None]] | None:
        """The tier below and the domains it runs in, as seen from ``spot``'s server."""
        below = self.downstream_of(spot.tier)
        if below is None:
            return None
        own = self.domain_of(spot.tier, spot.site)
        theirs = [spot.site] if spot.site is not None else self.sites
        domains = {self.domain_of(below, site) for site in theirs}
        return below, [None if d == own else d for d in sorted(domains)]

    def _servers(self, spot: NodeSpot) -> list[str]:
        if spot.site is None:
            return self.hub_urls
        return [self.site_urls[spot.site]]

    def _extra(self, spot: NodeSpot) -> dict[str, Any] | None:
        lay = self.layout
        extra = lay.extra.get(spot.tier)
        extra = extra if isinstance(extra, dict) else None
        own = lay.extra.get(spot.name)
        if isinstance(own, dict):
            # one node's own settings over its tier's (the demo's edge device on battery)
            extra = {**(extra or {}), **own}
        if lay.events and spot.tier == self.entry_tier:
            events = {"enabled": True, **(extra or {}).get("events", {})}
            extra = {**(extra or {}), "events": events}
        if lay.fleet:
            if self.signing_public is None:
                raise InvalidArgumentError("the fleet's signing key is made when servers start")
            domain = self.domain_of(spot.tier, spot.site)
            fleet = {
                "enabled": True,
                "domain": domain,
                "site": domain,
                "trusted_keys": [self.signing_public],
                "cache_dir": str(self.work_dir / "fleet" / "cache" / spot.name),
                "heartbeat_s": 1.0,
            }
            extra = {**(extra or {}), "fleet": {**fleet, **(extra or {}).get("fleet", {})}}
        return extra

    def settings(self, spot: NodeSpot, credentials: Path | None = None) -> NodeSettings:
        lay, tier = self.layout, spot.tier
        upstream = self.upstream_of(tier)
        common: dict[str, Any] = {
            "node": spot.name,
            "server": self._servers(spot),
            "zone": ZONES[tier],
            "collect": self._collect(spot),
            "credentials": credentials,
            "extra": self._extra(spot),
        }
        if lay.models is not None:
            return tier_node_settings(
                tier,
                entry=tier == self.entry_tier,
                upstream=(upstream, ZONES[upstream]) if upstream else None,
                models=lay.models[tier],
                **common,
            )
        if tier == "cloud":
            return tier_node_settings(tier, manifest=lay.cloud_manifest, **common)
        if tier == "gateway":
            return tier_node_settings(
                tier,
                manifest=lay.gateway_manifest,
                upstream=("cloud", "cloud"),
                threshold=lay.gateway_threshold,
                **common,
            )
        return tier_node_settings(
            tier,
            manifest=lay.edge_manifest,
            entry=True,
            upstream=("gateway", "site"),
            threshold=lay.edge_threshold,
            audit_rate=lay.audit_rate,
            **common,
        )


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
    server: str | Sequence[str],
    manifest: Path | None = None,
    zone: str,
    entry: bool = False,
    upstream: tuple[str, str] | None = None,
    threshold: float | None = None,
    collect: tuple[str, str | list[str | None] | None] | None = None,
    http_port: int | None = 0,
    credentials: Path | None = None,
    models: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    audit_rate: float | None = None,
) -> NodeSettings:
    """Settings of one node serving ``digits`` from ``manifest``; ``upstream`` is (tier, zone),
    ``collect`` the tier below whose hard examples it takes up and that tier's domain (or
    domains: the top tier takes up every site's).

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
        "nats": {
            "servers": [server] if isinstance(server, str) else list(server),
            "credentials": credentials,
        },
        "models": models,
        "http_port": http_port,
        "hard_examples": (
            {}
            if collect is None
            else {
                "collect_from": collect[0],
                "collect_domains": collect[1] if isinstance(collect[1], list) else [collect[1]],
            }
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
