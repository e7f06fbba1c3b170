"""What a container engine would run, read from the deployment files: one ``Container`` per
compose service or Kubernetes pod container, with its command, environment, mounts and ports.

``compose_containers`` reads a compose file as ``docker compose`` does (variable interpolation,
YAML merge keys, the ``secrets:`` section, relative paths from the file's folder);
``tests.deploy.kube`` does the same for rendered Kubernetes manifests. ``tests.deploy.localrun``
then runs them as local processes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: the mesh image's ENTRYPOINT and default user (the Dockerfile's `runtime` and `tools` stages).
MESH_ENTRYPOINT = ("mesh",)
MESH_USER = "10001:10001"


@dataclass(frozen=True)
class Mount:
    """``target`` inside the container; ``source`` a host path, or ``volume`` a named volume."""

    target: str
    source: Path | None = None
    volume: str | None = None
    read_only: bool = False
    #: a bind mount's missing source is made as a folder (Docker does so for the short syntax).
    create_missing: bool = False


@dataclass(frozen=True)
class Condition:
    """What a container waits for before it starts: another one started, healthy or done."""

    service: str
    condition: str = "service_started"


@dataclass
class Container:
    """One process a container engine would start."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    user: str = ""
    healthcheck: list[str] | None = None
    depends_on: list[Condition] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    one_shot: bool = False

    @property
    def is_mesh(self) -> bool:
        return "edge-mesh" in self.image

    def mount_at(self, target: str) -> Mount | None:
        for mount in self.mounts:
            if mount.target == target:
                return mount
        return None


_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (``${NAME:?message}``) is not set."""


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-default}``,
    ``${NAME-default}``, ``${NAME:?error}``, ``${NAME?error}``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op = match.group("op") or ""
        arg = match.group("arg") or ""
        value = variables.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset else str(value)
        if op.endswith("?"):
            if unset:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        return "" if value is None else value

    return _VARIABLE.sub(one, text)


def _interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(path: Path, variables: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as the engine sees it: merge keys resolved, variables interpolated."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    result = _interpolated(data, variables)
    assert isinstance(result, dict)
    return result


def _command(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        pairs = (item.split("=", 1) for item in value)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _volume(spec: Any, base: Path) -> Mount:
    short = not isinstance(spec, dict)
    if isinstance(spec, dict):
        source, target = spec.get("source"), spec["target"]
        read_only = bool(spec.get("read_only"))
    else:
        parts = str(spec).split(":")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    if source is not None and (source.startswith((".", "/", "~"))):
        path = (base / source).resolve()
        return Mount(target, source=path, read_only=read_only, create_missing=short)
    return Mount(target, volume=source, read_only=read_only)


def _secret(spec: Any, secrets: Mapping[str, Any], base: Path) -> Mount:
    name = spec if isinstance(spec, str) else spec["source"]
    target = name if isinstance(spec, str) else spec.get("target", name)
    if not target.startswith("/"):
        target = f"/run/secrets/{target}"
    declared = secrets.get(name)
    assert isinstance(declared, dict) and "file" in declared, f"secret {name} is not a file"
    return Mount(target, source=(base / declared["file"]).resolve(), read_only=True)


def _healthcheck(spec: Any) -> list[str] | None:
    if not isinstance(spec, dict) or spec.get("disable"):
        return None
    test = spec.get("test")
    if isinstance(test, str):
        return ["sh", "-c", test]
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(test[1:])]
    return [str(t) for t in test[1:]]


def _depends_on(spec: Any) -> list[Condition]:
    if spec is None:
        return []
    if isinstance(spec, list):
        return [Condition(name) for name in spec]
    return [
        Condition(name, (how or {}).get("condition", "service_started"))
        for name, how in spec.items()
    ]


def _ports(service: Mapping[str, Any]) -> list[int]:
    ports: list[int] = []
    for item in service.get("expose", []):
        ports.append(int(str(item).split("/")[0]))
    for item in service.get("ports", []):
        text = str(item["target"] if isinstance(item, dict) else item)
        ports.append(int(text.split(":")[-1].split("/")[0]))
    return list(dict.fromkeys(ports))


def compose_containers(path: Path, variables: Mapping[str, str]) -> dict[str, Container]:
    """Every service of the compose file at ``path``, as the engine would start it."""
    data = load_compose(path, variables)
    base = path.parent
    secrets = data.get("secrets", {})
    out: dict[str, Container] = {}
    for name, service in data["services"].items():
        image = str(service.get("image", ""))
        mesh = "edge-mesh" in image
        entrypoint = _command(service.get("entrypoint")) or (list(MESH_ENTRYPOINT) if mesh else [])
        command = _command(service.get("command"))
        if mesh and not command and not service.get("entrypoint"):
            command = ["node", "--config", "/etc/mesh/node.yaml"]
        out[name] = Container(
            name=name,
            image=image,
            argv=[*entrypoint, *command],
            env=_environment(service.get("environment")),
            mounts=[_volume(v, base) for v in service.get("volumes", [])]
            + [_secret(s, secrets, base) for s in service.get("secrets", [])],
            ports=_ports(service),
            user=str(service.get("user", MESH_USER if mesh else "")),
            healthcheck=_healthcheck(service.get("healthcheck")),
            depends_on=_depends_on(service.get("depends_on")),
            profiles=[str(p) for p in service.get("profiles", [])],
            one_shot=str(service.get("restart", "no")) == "no",
        )
    return out
