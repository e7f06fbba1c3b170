"""The mesh's own processes as a local mesh runs them: a tier node, the ingress, the controller
and the console, each a ``ChildProcess`` ready once it printed its ready line (``mesh up``, the
demo, the soak, the fault tests and the bench start them; ``mesh.local.launcher`` composes them).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from mesh.local.layout import settings_yaml
from mesh.local.supervisor import ChildProcess, child_env
from mesh.services.node import READY_PREFIX
from mesh.settings import NodeSettings
from mesh.topology.processes import CONSOLE_READY, CONTROLLER_READY, INGRESS_READY

#: how a rig starts a mesh process: the ``mesh`` command of this interpreter, as a user would.
MESH_COMMAND = (sys.executable, "-m", "mesh.cli")


class MeshProcess:
    """One of the mesh's own processes as a ``ChildProcess``, ready once it printed the line
    that begins with ``ready``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        ready: str,
        env: Mapping[str, str] | None,
    ) -> None:
        self._child = ChildProcess(name, argv, log_path, ready_prefix=ready, env=child_env(env))

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child.running

    async def start(self, timeout: float = 60.0) -> None:
        await self._child.start(timeout)

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        await self._child.kill()

    async def stop(self) -> None:
        await self._child.stop()

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        return await self._child.wait()


class NodeProcess(MeshProcess):
    """One ``mesh node`` process from typed settings; ready once it prints its ready line.

    ``env`` adds environment variables (``OTEL_*`` for instance) to the process's environment.
    """

    def __init__(
        self,
        name: str,
        settings: NodeSettings,
        work_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.config_path = work_dir / f"{name}.yaml"
        self.log_path = work_dir / f"{name}.log"
        self.http_url: str | None = None
        argv = [*MESH_COMMAND, "node", "--config", str(self.config_path)]
        super().__init__(name, argv, self.log_path, READY_PREFIX, env)

    async def start(self, timeout: float = 60.0) -> None:
        text = yaml.safe_dump(settings_yaml(self.settings), sort_keys=False)
        await asyncio.to_thread(self.config_path.write_text, text)
        await super().start(timeout)
        http = self._child.info.get("http")
        self.http_url = http if http and http != "-" else None
        if self.http_url and self.settings.http_port == 0:
            # a restarted node serves its health and metrics where it did before, so whoever
            # scrapes it (or read mesh up's lines) still finds it
            port = int(self.http_url.rsplit(":", 1)[1].split("/")[0])
            self.settings = self.settings.model_copy(update={"http_port": port})


class IngressProcess(MeshProcess):
    """The ``mesh ingress`` process; ``http_url`` and ``grpc_address`` once it is ready."""

    READY = INGRESS_READY

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        super().__init__("ingress", argv, log_path, self.READY, env)
        self.http_url = ""
        self.grpc_address = ""

    async def start(self, timeout: float = 60.0) -> None:
        await super().start(timeout)
        self.http_url = self._child.info.get("http", "")
        self.grpc_address = self._child.info.get("grpc", "")


class ControllerProcess(MeshProcess):
    """A ``mesh controller`` process (the fleet's, driving rollouts); ready once it watches."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        super().__init__(name, argv, log_path, CONTROLLER_READY, env)


#: the reviewer identity the console labels with under ``mesh up`` and the demo.
CONSOLE_REVIEWER = "console-reviewer"


class ConsoleProcess(MeshProcess):
    """The ``mesh console`` process; ``url`` once it is ready. Restarted on the port it had."""

    READY = CONSOLE_READY

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self._argv = argv
        super().__init__("console", argv, log_path, self.READY, env)
        self.url = ""

    async def start(self, timeout: float = 60.0) -> None:
        if self.url and "--port" in self._child.argv:
            # a restart serves where the first start did, so the printed address stays good
            at = self._child.argv.index("--port") + 1
            self._child.argv[at] = self.url.rsplit(":", 1)[1]
        await super().start(timeout)
        self.url = self._child.info.get("http", "")


__all__ = [
    "CONSOLE_REVIEWER",
    "MESH_COMMAND",
    "ConsoleProcess",
    "ControllerProcess",
    "IngressProcess",
    "MeshProcess",
    "NodeProcess",
]
