"""What the kubelet would run, from manifests as ``kubectl kustomize`` renders them: each pod of a
StatefulSet, DaemonSet, Deployment or Job as a ``Container``, with its args, its environment
(field references, ConfigMap and Secret references and ``$(VAR)`` expansion as the kubelet does
them), its ConfigMap, Secret, claim and emptyDir volumes and ``subPath``/``subPathExpr`` mounts,
its ports, and its readiness probe as the health check.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.containers import MESH_ENTRYPOINT, Container, Mount


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize OVERLAY``: every resource it renders."""
    tool = kubectl()
    assert tool is not None
    done = subprocess.run(
        [tool, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(resources: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def data_of(resource: dict[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys and their bytes."""
    out = {k: str(v).encode() for k, v in (resource.get("data") or {}).items()}
    if resource["kind"] == "Secret":
        out = {k: base64.b64decode(v) for k, v in (resource.get("data") or {}).items()}
        out.update({k: str(v).encode() for k, v in (resource.get("stringData") or {}).items()})
    return out


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: a defined variable is replaced, an undefined one kept."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), text)


class Cluster:
    """The ConfigMaps and Secrets of one namespace, written out as the kubelet mounts them."""

    def __init__(self, resources: Iterable[dict[str, Any]], work: Path) -> None:
        self.work = work
        self.objects = {
            (r["kind"], r["metadata"]["name"]): r
            for r in resources
            if r["kind"] in {"ConfigMap", "Secret"}
        }

    def folder(self, kind: str, name: str, mode: int = 0o644) -> Path:
        resource = self.objects.get((kind, name))
        assert resource is not None, f"no {kind} {name}: the pods need it"
        path = self.work / kind.lower() / name
        if not path.exists():
            path.mkdir(parents=True)
            for key, value in data_of(resource).items():
                (path / key).write_bytes(value)
                (path / key).chmod(mode)
        return path

    def value(self, kind: str, name: str, key: str) -> str:
        resource = self.objects.get((kind, name))
        assert resource is not None, f"no {kind} {name}"
        data = data_of(resource)
        assert key in data, f"{kind} {name} has no key {key}"
        return data[key].decode()


def _environment(
    container: dict[str, Any], pod: str, machine: str, cluster: Cluster
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.update(
                {k: v.decode() for k, v in data_of(cluster.objects[("ConfigMap", name)]).items()}
            )
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            env.update(
                {k: v.decode() for k, v in data_of(cluster.objects[("Secret", name)]).items()}
            )
    fields = {"metadata.name": pod, "spec.nodeName": machine, "metadata.namespace": "edge-mesh"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            env[item["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            env[item["name"]] = cluster.value(
                "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            )
        elif "configMapKeyRef" in ref:
            env[item["name"]] = cluster.value(
                "ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            )
        else:
            raise AssertionError(f"{pod}: env {item['name']} from {ref} is not supported here")
    return env


def _volume_source(
    volume: dict[str, Any], pod: str, cluster: Cluster
) -> tuple[Path | None, str | None]:
    """(folder, None) for ConfigMap and Secret volumes, (None, volume name) for the others."""
    if "configMap" in volume:
        mode = volume["configMap"].get("defaultMode", 0o644)
        return cluster.folder("ConfigMap", volume["configMap"]["name"], mode), None
    if "secret" in volume:
        mode = volume["secret"].get("defaultMode", 0o644)
        return cluster.folder("Secret", volume["secret"]["secretName"], mode), None
    if "persistentVolumeClaim" in volume:
        return None, volume["persistentVolumeClaim"]["claimName"]
    if "hostPath" in volume:
        return None, f"{pod}-host-{volume['name']}"
    if "emptyDir" in volume:
        return None, f"{pod}-{volume['name']}"
    raise AssertionError(f"{pod}: volume {volume['name']} of an unsupported kind")


def _mounts(
    container: dict[str, Any],
    spec: dict[str, Any],
    pod: str,
    env: Mapping[str, str],
    cluster: Cluster,
    claims: Iterable[str],
) -> list[Mount]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = []
    for item in container.get("volumeMounts", []):
        name = item["name"]
        folder: Path | None = None
        volume: str | None = f"{pod}-{name}"
        if name not in claims:
            folder, volume = _volume_source(volumes[name], pod, cluster)
        sub = str(item.get("subPath") or expand(item.get("subPathExpr", ""), env))
        read_only = bool(item.get("readOnly"))
        if folder is not None:
            source = folder / sub if sub else folder
            mounts.append(Mount(item["mountPath"], source=source, read_only=read_only))
        else:
            assert not sub, f"{pod}: subPath into volume {name} is not supported here"
            mounts.append(Mount(item["mountPath"], volume=volume, read_only=read_only))
    return mounts


def _probe(container: dict[str, Any]) -> list[str] | None:
    probe = container.get("readinessProbe") or container.get("startupProbe")
    if not probe or "httpGet" not in probe:
        return None
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
    return ["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{port}{probe['httpGet']['path']}"]


def pods(
    workload: dict[str, Any], cluster: Cluster, machines: Iterable[str] = (), prefix: str = ""
) -> list[Container]:
    """The pods the workload's controller would create: a StatefulSet's ``name-i``, a
    Deployment's or Job's ``name-i`` for each replica, a DaemonSet's one per machine. ``prefix``
    tells apart the containers of two clusters (the pod's own name stays as it is)."""
    kind, name = workload["kind"], workload["metadata"]["name"]
    spec = workload["spec"]
    template = spec["template"]["spec"]
    if kind == "DaemonSet":
        placements = [(f"{name}-{m}", m) for m in machines]
    else:
        replicas = spec.get("replicas", 1) if kind != "Job" else spec.get("parallelism", 1)
        placements = [(f"{name}-{i}", "machine-0") for i in range(replicas)]
    claims = [c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])]
    out = []
    for pod, machine in placements:
        for container in template["containers"]:
            env = _environment(container, pod, machine, cluster)
            assert "command" not in container, f"{pod}: the image's entry point is the mesh command"
            args = [expand(str(a), env) for a in container.get("args", [])]
            security = template.get("securityContext", {})
            out.append(
                Container(
                    name=prefix
                    + (pod if len(template["containers"]) == 1 else f"{pod}-{container['name']}"),
                    image=container["image"],
                    argv=[*MESH_ENTRYPOINT, *args],
                    env=env,
                    mounts=_mounts(container, template, pod, env, cluster, claims),
                    ports=[p["containerPort"] for p in container.get("ports", [])],
                    user=f"{security.get('runAsUser', '')}:{security.get('runAsGroup', '')}",
                    healthcheck=_probe(container),
                    one_shot=kind == "Job",
                )
            )
    return out
