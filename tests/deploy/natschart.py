"""What the official NATS chart (nats-io/k8s, chart ``nats`` 1.x) makes of our values files: the
server's ``nats.conf`` and the container and mounts of each server pod.

This follows the chart's templates for the values we set (``files/config/*.yaml``: the client
port and its TLS, leafnodes, cluster routes, monitoring, JetStream, ``config.merge`` with its
``$include`` keys and ``<< raw >>`` values; ``files/stateful-set/nats-container.yaml``: the
config and certificate mounts, ``SERVER_NAME``, ``container.env`` and ``container.patch``).
Anything else in a values file fails here rather than being ignored.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.containers import Container, Mount

CONFIG_DIR = "/etc/nats-config"
KNOWN_TOP = {"config", "tlsCA", "container", "podTemplate", "promExporter", "natsBox"}
KNOWN_CONFIG = {"cluster", "jetstream", "nats", "leafnodes", "monitor", "merge"}


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict)
    unknown = set(values) - KNOWN_TOP
    assert not unknown, f"{path}: values this renderer does not know: {unknown}"
    unknown = set(values.get("config", {})) - KNOWN_CONFIG
    assert not unknown, f"{path}: config values this renderer does not know: {unknown}"
    return values


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Helm's ``mergeOverwrite``: maps merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _tls(block: dict[str, Any], ca: dict[str, Any] | None, default_dir: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if block.get("secretName"):
        folder = str(block.get("dir", default_dir)).rstrip("/")
        out["cert_file"] = f"{folder}/{block.get('cert', 'tls.crt')}"
        out["key_file"] = f"{folder}/{block.get('key', 'tls.key')}"
    if ca and ca.get("enabled") and (ca.get("secretName") or ca.get("configMapName")):
        out["ca_file"] = (
            f"{str(ca.get('dir', '/etc/nats-ca-cert')).rstrip('/')}/{ca.get('key', 'ca.crt')}"
        )
    return _merge(out, block.get("merge", {}))


def server_config(values: dict[str, Any], release: str) -> dict[str, Any]:
    """The chart's config map before formatting (``files/config/config.yaml`` and its parts)."""
    config = values.get("config", {})
    ca = values.get("tlsCA")
    conf: dict[str, Any] = {
        "server_name": "<< $SERVER_NAME >>",
        "lame_duck_grace_period": "10s",
        "lame_duck_duration": "30s",
        "pid_file": "/var/run/nats/nats.pid",
        "port": config.get("nats", {}).get("port", 4222),
    }
    nats_tls = config.get("nats", {}).get("tls", {})
    if nats_tls.get("enabled"):
        conf["tls"] = _tls(nats_tls, ca, "/etc/nats-certs/nats")
    leaf = config.get("leafnodes", {})
    if leaf.get("enabled"):
        block: dict[str, Any] = {"port": leaf.get("port", 7422), "no_advertise": True}
        if leaf.get("tls", {}).get("enabled"):
            block["tls"] = _tls(leaf["tls"], ca, "/etc/nats-certs/leafnodes")
        conf["leafnodes"] = _merge(block, leaf.get("merge", {}))
    cluster = config.get("cluster", {})
    if cluster.get("enabled"):
        port = cluster.get("port", 6222)
        routes = [
            f"nats://{release}-{i}.{release}-headless:{port}"
            for i in range(cluster.get("replicas", 3))
        ]
        block = {
            "name": release,
            "port": port,
            "no_advertise": cluster.get("noAdvertise", True),
            "routes": routes,
        }
        conf["cluster"] = _merge(block, cluster.get("merge", {}))
    if config.get("monitor", {"enabled": True}).get("enabled", True):
        conf["http_port"] = config.get("monitor", {}).get("port", 8222)
    js = config.get("jetstream", {})
    if js.get("enabled"):
        store = js.get("fileStore", {"enabled": True})
        block = {"max_memory_store": 0}
        if store.get("enabled", True):
            block["store_dir"] = store.get("dir", "/data")
            size = store.get("maxSize") or store.get("pvc", {}).get("size", "10Gi")
            block["max_file_store"] = f"<< {size} >>"
        conf["jetstream"] = _merge(block, js.get("merge", {}))
    return _merge(conf, config.get("merge", {}))


def format_config(conf: dict[str, Any]) -> str:
    """The chart's ``nats.formatConfig``: sorted JSON, ``$include`` keys as include directives,
    ``<< x >>`` strings unquoted."""
    text = json.dumps(conf, indent=2, sort_keys=True)
    text = re.sub(r'".*\$include": "(.*)",?', r"include \1;", text)
    return re.sub(r'"<<\s+(.*?)\s+>>"', r"\1", text)


def _patched_mounts(
    values: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    mounts = [
        op["value"]
        for op in values.get("container", {}).get("patch", [])
        if op["op"] == "add" and op["path"] == "/volumeMounts/-"
    ]
    volumes = {
        op["value"]["name"]: op["value"]
        for op in values.get("podTemplate", {}).get("patch", [])
        if op["op"] == "add" and op["path"] == "/spec/volumes/-"
    }
    return mounts, volumes


def pod_names(values: dict[str, Any], release: str) -> list[str]:
    cluster = values.get("config", {}).get("cluster", {})
    replicas = cluster.get("replicas", 3) if cluster.get("enabled") else 1
    return [f"{release}-{i}" for i in range(replicas)]


def listen_ports(values: dict[str, Any]) -> dict[str, int]:
    """Each config block's listening port, as the chart sets it."""
    config = values.get("config", {})
    ports = {"port": config.get("nats", {}).get("port", 4222), "http_port": 8222}
    if config.get("leafnodes", {}).get("enabled"):
        ports["leafnodes"] = config["leafnodes"].get("port", 7422)
    if config.get("cluster", {}).get("enabled"):
        ports["cluster"] = config["cluster"].get("port", 6222)
    return ports


def pod_config(values: dict[str, Any], release: str, local_port: Callable[[int], int]) -> str:
    """One server's nats.conf with its listening ports moved to ``local_port(port)`` (a test
    runs every server of the cluster on one machine); everything else as the chart renders it."""
    conf = server_config(values, release)
    for key, port in listen_ports(values).items():
        if key in {"port", "http_port"}:
            conf[key] = local_port(port)
        else:
            conf[key]["port"] = local_port(port)
    return format_config(conf)


def server_pods(
    values: dict[str, Any], release: str, conf_files: dict[str, Path], secrets: dict[str, Path]
) -> list[Container]:
    """The chart's server pods as containers; ``secrets`` maps a Secret's name to a folder
    holding its keys as files, as the kubelet mounts them."""
    config = values.get("config", {})
    base: list[Mount] = []
    for block, default in (
        (config.get("nats", {}).get("tls", {}), "/etc/nats-certs/nats"),
        (config.get("leafnodes", {}).get("tls", {}), "/etc/nats-certs/leafnodes"),
    ):
        if block.get("enabled") and block.get("secretName"):
            base.append(
                Mount(
                    block.get("dir", default), source=secrets[block["secretName"]], read_only=True
                )
            )
    ca = values.get("tlsCA", {})
    if ca.get("enabled") and ca.get("secretName"):
        base.append(
            Mount(
                ca.get("dir", "/etc/nats-ca-cert"), source=secrets[ca["secretName"]], read_only=True
            )
        )
    extra_mounts, volumes = _patched_mounts(values)
    for mount in extra_mounts:
        secret = volumes[mount["name"]]["secret"]["secretName"]
        base.append(Mount(mount["mountPath"], source=secrets[secret], read_only=True))
    env = {str(k): str(v) for k, v in values.get("container", {}).get("env", {}).items()}
    pods = []
    for pod in pod_names(values, release):
        mounts = [
            Mount(f"{CONFIG_DIR}/nats.conf", source=conf_files[pod], read_only=True),
            *base,
            Mount("/data", volume=f"{pod}-js"),
            Mount("/var/run/nats", volume=f"{pod}-run"),
        ]
        pods.append(
            Container(
                name=pod,
                image="nats:chart",
                argv=["--config", f"{CONFIG_DIR}/nats.conf"],
                env={"POD_NAME": pod, "SERVER_NAME": pod, **env},
                mounts=mounts,
                ports=list(listen_ports(values).values()),
                healthcheck=[
                    "curl",
                    "-fsS",
                    "-o",
                    "/dev/null",
                    "http://127.0.0.1:8222/healthz?js-enabled-only=true",
                ],
            )
        )
    return pods
