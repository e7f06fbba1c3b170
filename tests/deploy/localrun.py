"""Run what a container engine would run as local processes, from the deployment files as written.

Each container gets a root folder under which its mounts appear at their container paths (bind
mounts and secrets as links to the files, config files copied with their addresses rewritten,
named volumes shared between containers). Every ``host:port`` of another container and every
port a container listens on maps to a loopback port of its own; every container path in a
command, a variable or a config file maps to the container's folder. Nothing else is changed: a
wrong flag, path, port, variable or host name in the files fails as it would in a container.

The mesh image's ``mesh`` entry point runs as this interpreter's ``-m mesh.cli``, the NATS image
as the ``nats-server`` binary the suite uses; other images (Jaeger, Grafana, exporters) are not
run, and a container given in ``replacements`` (the collector) is served by the test instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import yaml

from mesh.local.servers import free_port
from mesh.local.supervisor import ChildProcess
from tests.deploy.containers import Container

#: config files whose text is rewritten when mounted (the others are linked as they are).
TEXT_CONFIG = (".yaml", ".yml", ".conf", ".json", ".sh")
#: settings keys a mesh process listens on: mapped to the container's loopback ports.
LISTEN_PORT_KEYS = ("http_port", "grpc_port", "port")
LISTEN_HOST_KEYS = ("http_host", "host")
ROOT = Path(__file__).resolve().parents[2]


class DeploymentError(AssertionError):
    """The deployment files ask for something that cannot work (an undeclared port, a missing
    file, a container that fails)."""


class LocalStack:
    """The containers of one deployment, run as processes under ``work``."""

    def __init__(
        self,
        containers: Mapping[str, Container],
        work: Path,
        *,
        hosts: Mapping[str, str] | None = None,
        nats_binary: str,
        ports: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        self.containers = dict(containers)
        self.work = work
        #: host name to container (compose: every service name; Kubernetes: Services).
        self.hosts = dict(hosts) if hosts is not None else {n: n for n in containers}
        self.nats_binary = nats_binary
        #: (container, port) to its loopback port; ``ports`` given are kept (configs made already)
        self.ports: dict[tuple[str, int], int] = dict(ports or {})
        self.processes: dict[str, ChildProcess] = {}
        self.exited: dict[str, int] = {}
        for container in self.containers.values():
            for port in container.ports:
                if (container.name, port) not in self.ports:
                    self.ports[(container.name, port)] = free_port()

    # ---- addresses and paths -----------------------------------------------------------------

    def port(self, container: str, port: int) -> int:
        try:
            return self.ports[(container, port)]
        except KeyError:
            raise DeploymentError(
                f"{container} is reached on port {port}, which it does not declare "
                f"(it declares {self.containers[container].ports})"
            ) from None

    def url(self, container: str, port: int, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port(container, port)}"

    def root(self, container: str) -> Path:
        return self.work / "containers" / container

    def local_path(self, container: str, target: str) -> Path:
        return self.root(container) / target.lstrip("/")

    def rewrite(self, text: str, owner: str) -> str:
        """``text`` as ``owner`` sees it here: addresses to loopback ports, paths to its root."""
        names = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
        pattern = re.compile(
            rf"(?<![\w.-])(?P<host>{names}|0\.0\.0\.0|127\.0\.0\.1|localhost):(?P<port>\d+)\b"
        )

        def address(match: re.Match[str]) -> str:
            host, port = match.group("host"), int(match.group("port"))
            target = owner if host in {"0.0.0.0", "127.0.0.1", "localhost"} else self.hosts[host]
            return f"127.0.0.1:{self.port(target, port)}"

        text = pattern.sub(address, text)
        targets = sorted({m.target for m in self.containers[owner].mounts}, key=len, reverse=True)
        if targets:
            # one pass: a path already moved under the root (/tmp/...) is not moved again
            paths = re.compile(
                rf"(?<![\w./-])(?P<target>{'|'.join(re.escape(t) for t in targets)})"
                rf"(?=$|[/\s\"',\]\)}};])",
                flags=re.MULTILINE,
            )
            text = paths.sub(lambda m: str(self.local_path(owner, m.group("target"))), text)
        return text

    def _settings_ports(self, text: str, owner: str) -> str:
        """A mesh settings file listens on the loopback ports mapped to its declared ones."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if not isinstance(data, dict) or not any(k in data for k in LISTEN_PORT_KEYS):
            return text
        for key in LISTEN_PORT_KEYS:
            if isinstance(data.get(key), int) and data[key] != 0:
                data[key] = self.port(owner, data[key])
        for key in LISTEN_HOST_KEYS:
            if data.get(key) == "0.0.0.0":
                data[key] = "127.0.0.1"
        return yaml.safe_dump(data, sort_keys=False)

    # ---- file systems --------------------------------------------------------------------------

    def materialize(self, container: Container) -> None:
        """The container's mounts at their paths under its root."""
        for mount in container.mounts:
            dest = self.local_path(container.name, mount.target)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            elif dest.is_dir():
                shutil.rmtree(dest)
            if mount.volume is not None:
                volume = self.work / "volumes" / mount.volume
                volume.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(volume, target_is_directory=True)
                continue
            assert mount.source is not None
            if not mount.source.exists() and mount.create_missing:
                mount.source.mkdir(parents=True)
            if not mount.source.exists():
                raise DeploymentError(f"{container.name} mounts {mount.source}, which is missing")
            if mount.source.is_file() and mount.source.suffix in TEXT_CONFIG and mount.read_only:
                self._copy_config(mount.source, dest, container.name)
            elif mount.source.is_dir() and mount.read_only:
                # a ConfigMap or Secret volume: its files, the config among them rewritten
                shutil.copytree(mount.source, dest, symlinks=False)
                for path in dest.rglob("*"):
                    if path.is_file() and path.suffix in TEXT_CONFIG:
                        self._copy_config(path, path, container.name)
            else:
                dest.symlink_to(mount.source, target_is_directory=mount.source.is_dir())

    def _copy_config(self, source: Path, dest: Path, owner: str) -> None:
        mode = source.stat().st_mode & 0o777
        text = self.rewrite(source.read_text(), owner)
        dest.write_text(self._settings_ports(text, owner))
        dest.chmod(mode)

    # ---- processes -----------------------------------------------------------------------------

    def argv(self, container: Container) -> list[str]:
        argv = [self.rewrite(arg, container.name) for arg in container.argv]
        if container.is_mesh and argv and argv[0] == "mesh":
            return [sys.executable, "-m", "mesh.cli", *argv[1:]]
        if container.image.startswith("nats:"):
            return [self.nats_binary, *argv]
        return argv

    def environment(self, container: Container) -> dict[str, str]:
        home = self.work / "home" / container.name
        home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "HOME": str(home),
            "LANG": "C.UTF-8",
        }
        env.update({k: self.rewrite(v, container.name) for k, v in container.env.items()})
        return env

    async def start(self, name: str, timeout: float = 60.0) -> None:
        container = self.containers[name]
        await asyncio.to_thread(self.materialize, container)
        child = ChildProcess(
            name,
            self.argv(container),
            self.work / "logs" / f"{name}.log",
            env=self.environment(container),
            cwd=self.root(name),
        )
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        await child.start(timeout)
        self.processes[name] = child

    async def wait_done(self, name: str, timeout: float = 120.0) -> int:
        async with asyncio.timeout(timeout):
            status = await self.processes[name].wait()
        self.exited[name] = status
        return status

    def healthy(self, name: str) -> bool:
        """The container's own healthcheck, run here as its engine would."""
        check = self.containers[name].healthcheck
        if check is None:
            raise DeploymentError(f"{name} has no healthcheck to wait on")
        argv = [self.rewrite(arg, name) for arg in check]
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    async def wait_healthy(self, name: str, timeout: float = 60.0) -> None:
        process = self.processes[name]
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(self.healthy, name):
                if not process.running:
                    raise DeploymentError(f"{name} exited: {self.log_tail(name)}")
                await asyncio.sleep(0.2)

    async def up(self, names: Iterable[str], *, served: Iterable[str] = ()) -> None:
        """Start ``names`` in their dependency order, each once its conditions hold; the
        containers in ``served`` are the test's (started already), the rest are not run."""
        pending = list(names)
        outside = set(served)
        started: set[str] = set()
        while pending:
            ready = [
                n
                for n in pending
                if all(
                    d.service in started or d.service in outside or d.service not in pending
                    for d in self.containers[n].depends_on
                )
            ]
            if not ready:
                raise DeploymentError(f"a dependency cycle among {pending}")
            name = ready[0]
            for dep in self.containers[name].depends_on:
                if dep.service in outside or dep.service not in self.processes:
                    continue
                if dep.condition == "service_healthy":
                    await self.wait_healthy(dep.service)
                elif dep.condition == "service_completed_successfully":
                    status = self.exited.get(dep.service)
                    if status is None:
                        status = await self.wait_done(dep.service)
                    if status != 0:
                        raise DeploymentError(
                            f"{dep.service} exited {status}: {self.log_tail(dep.service)}"
                        )
            await self.start(name)
            started.add(name)
            pending.remove(name)

    async def run_once(self, name: str, timeout: float = 180.0) -> None:
        """A one-shot container (``docker compose run --rm NAME``): it must exit 0."""
        await self.start(name)
        status = await self.wait_done(name, timeout)
        if status != 0:
            raise DeploymentError(f"{name} exited {status}: {self.log_tail(name)}")

    async def run_argv(self, name: str, argv: list[str], timeout: float = 120.0) -> str:
        """``docker compose run --rm NAME ARGS``: the container with another command, once; the
        name of that run (its log's)."""
        run = f"{name}-run-{len(self.processes)}"
        self.containers[run] = replace(self.containers[name], name=run, argv=argv)
        await self.run_once(run, timeout)
        return run

    async def restart(self, container: Container, timeout: float = 60.0) -> None:
        """The container recreated with new settings (``docker compose up -d NAME``)."""
        await self.processes.pop(container.name).stop()
        self.containers[container.name] = container
        await self.start(container.name, timeout)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.work / "logs" / f"{name}.log"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-chars:]
        return "(no log)"

    async def stop(self) -> None:
        for child in reversed(list(self.processes.values())):
            await child.stop()


def copy_project(sources: Iterable[str], dest: Path) -> Path:
    """The deployment folders copied (a container writes into its bind mounts, never into the
    repository), at the same places relative to each other."""
    for source in sources:
        shutil.copytree(ROOT / source, dest / source, symlinks=True)
    return dest


def readable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` (group ``gid``) may read ``path`` by its mode bits."""
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o400)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


def is_root() -> bool:
    return os.geteuid() == 0
