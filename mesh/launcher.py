"""Run the whole mesh on one machine: NATS hub and site, and each tier node as its own process.

Used by ``mesh up``, the demo, the benchmark and the fault tests. Every process started here
dies with its parent (``PR_SET_PDEATHSIG`` on Linux) and is stopped in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.embedded import Site
from mesh.errors import UnavailableError

READY_PREFIX = "MESH_NODE_READY"


def die_with_parent() -> None:
    """``preexec_fn`` for children: the kernel sends them SIGTERM when their parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NodeProcess:
    """One ``mesh node`` process from a settings mapping; ready once it prints its ready line.

    ``env`` adds environment variables (``OTEL_*`` for instance) to the process's environment.
    """

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        work_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.env = dict(env or {})
        self.config_path = work_dir / f"{name}.yaml"
        self.log_path = work_dir / f"{name}.log"
        self._proc: asyncio.subprocess.Process | None = None
        self.http_url: str | None = None
        self._log_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(
            self.config_path.write_text, yaml.safe_dump(self.settings, sort_keys=False)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.node",
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            await asyncio.wait_for(self._wait_ready(), timeout)
        except TimeoutError:
            await self.kill()
            raise UnavailableError(
                f"node {self.name} not ready after {timeout:.0f}s; see {self.log_path}"
            ) from None
        self._log_task = asyncio.create_task(self._copy_log())

    def _append_log(self, lines: list[bytes]) -> None:
        with self.log_path.open("ab") as log:
            log.writelines(lines)

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        lines: list[bytes] = []
        try:
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    output = b"".join(lines).decode(errors="replace")[-3000:]
                    raise UnavailableError(
                        f"node {self.name} exited during start-up; see {self.log_path}:\n{output}"
                    )
                lines.append(line)
                text = line.decode(errors="replace").strip()
                if text.startswith(READY_PREFIX):
                    for part in text.split()[1:]:
                        key, _, value = part.partition("=")
                        if key == "http":
                            self.http_url = value
                    return
        finally:
            await asyncio.to_thread(self._append_log, lines)

    async def _copy_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            await asyncio.to_thread(self._append_log, [line])

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def _end(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        task, self._log_task = self._log_task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2.0)
        self._proc = None


@dataclass
class MeshLayout:
    """Which nodes run where: the demo's three tiers unless told otherwise."""

    edge_manifest: Path
    gateway_manifest: Path
    cloud_manifest: Path
    edge_replicas: int = 1
    edge_threshold: float | None = None
    gateway_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EmbeddedMesh:
    """Hub and site NATS servers plus cloud, gateway and edge node processes.

    The cloud tier is on the hub; the gateway and edge tiers are on the site's leaf server, as
    DESIGN.md draws it. ``leaf_url`` lets a fault proxy sit on the leaf-to-hub link.
    """

    def __init__(
        self,
        layout: MeshLayout,
        work_dir: Path | None = None,
        node_env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.node_env = dict(node_env or {})
        self._own_dir = work_dir is None
        self.work_dir = Path(
            work_dir or Path(tempfile.gettempdir()) / f"mesh-up-{uuid.uuid4().hex}"
        )
        self.site = Site(self.work_dir / "nats")
        self.nodes: dict[str, NodeProcess] = {}

    @property
    def site_url(self) -> str:
        assert self.site.leaf is not None
        return self.site.leaf.url

    @property
    def hub_url(self) -> str:
        return self.site.hub.url

    async def start_servers(self, leaf_url: str | None = None) -> None:
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        await self.site.hub.start()
        await self.site.start(leaf_url)

    def node_settings(self, tier: str, index: int = 0) -> dict[str, Any]:
        lay = self.layout
        model: dict[str, Any] = {"name": "digits"}
        upstream: dict[str, Any] | None = None
        if tier == "cloud":
            model["manifest"] = str(lay.cloud_manifest)
            servers, zone, entry = [self.hub_url], "cloud", False
        elif tier == "gateway":
            model["manifest"] = str(lay.gateway_manifest)
            if lay.gateway_threshold is not None:
                model["threshold"] = lay.gateway_threshold
            servers, zone, entry = [self.site_url], "site", False
            upstream = {"tier": "cloud", "zone": "cloud"}
        else:
            model["manifest"] = str(lay.edge_manifest)
            if lay.edge_threshold is not None:
                model["threshold"] = lay.edge_threshold
            servers, zone, entry = [self.site_url], "device", True
            upstream = {"tier": "gateway", "zone": "site"}
        settings: dict[str, Any] = {
            "tier": tier,
            "node": f"{tier}-{index}",
            "zone": zone,
            "entry": entry,
            "nats": {"servers": servers},
            "models": [model],
            "http_port": 0,
            "hard_examples": {
                "upstream_domain": "hub" if tier == "gateway" else "site",
            },
        }
        if upstream is not None:
            settings["upstream"] = upstream
        extra = lay.extra.get(tier)
        if isinstance(extra, dict):
            _merge(settings, extra)
        return settings

    async def start_nodes(self) -> None:
        plan = [("cloud", 0), ("gateway", 0)] + [
            ("edge", i) for i in range(self.layout.edge_replicas)
        ]
        for tier, index in plan:
            name = f"{tier}-{index}"
            node = NodeProcess(
                name, self.node_settings(tier, index), self.work_dir, env=self.node_env
            )
            self.nodes[name] = node
            await node.start()

    async def start(self, leaf_url: str | None = None) -> None:
        await self.start_servers(leaf_url)
        await self.start_nodes()

    async def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            await node.stop()
        await self.site.stop()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
